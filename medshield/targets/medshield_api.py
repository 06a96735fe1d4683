"""A model served by ``medshield serve`` (``format: medshield_api``); also the Python client of that API.

>>> clf = RemoteClassifier("http://127.0.0.1:8000", api_key="...", batch_size=64)
>>> labels = clf.labels(images)          # LongTensor [N]; clf.queries counts the images answered
>>> probs = clf.scores(images)           # only where the deployment exposes scores (--allow-scores)

Images travel as exact float32 arrays in [0, 1] (base64); the server applies the model's own
normalisation, so a card for this source needs no ``mean``/``std``.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import torch

from medshield.errors import MedShieldError
from medshield.targets.http import (
    AuthenticationError, Forbidden, HttpTransport, RateLimited, RemoteError, checked,
)
from medshield.targets.remote import RemoteModel, numeric_array

KEY_HEADER = "X-API-Key"
"""The header that carries a MedShield API key (the server reads the same name)."""

__all__ = ["KEY_HEADER", "AuthenticationError", "Forbidden", "RateLimited", "RemoteClassifier", "RemoteError",
           "checked"]


class RemoteClassifier(RemoteModel):
    """Labels (and scores, where allowed) from a MedShield server; packs images into batch requests.

    ``queries`` counts the images the server answered, which is what the server charges.
    ``http``: an httpx-compatible client to use instead (e.g. FastAPI's ``TestClient(app)``).
    ``wait_on_rate_limit`` sleeps for Retry-After (up to ``max_wait`` seconds in total) instead of
    raising on a rate limit; a spent budget always raises :class:`RateLimited`.
    """

    format = "medshield_api"

    def __init__(self, url: str, api_key: str, batch_size: int = 64, timeout: float = 30.0,
                 wait_on_rate_limit: bool = False, max_wait: float = 60.0, http: Any = None,
                 retries: int = 0, returns: str = "labels") -> None:
        if not api_key:
            raise MedShieldError("a MedShield API target needs an API key (model.api_key_env names its variable)")
        transport = HttpTransport(url, {KEY_HEADER: api_key}, timeout, retries, http)
        if returns not in ("labels", "scores"):
            raise MedShieldError(f"returns must be 'labels' or 'scores', got {returns!r}")
        super().__init__(transport, batch_size, layout="NCHW",
                         output_kind="probabilities" if returns == "scores" else "labels")
        self.wait_on_rate_limit, self.max_wait = wait_on_rate_limit, max_wait
        self._info: dict[str, Any] | None = None

    @property
    def has_scores(self) -> bool:
        """Whether the deployment exposes scores (``medshield serve --allow-scores``)."""
        return bool(self.info().get("scores_exposed"))

    def info(self) -> dict[str, Any]:
        """The server's ``/v1/model`` metadata (cached)."""
        if self._info is None:
            self._info = self.transport.get("/v1/model")
        return self._info

    metadata = info

    def ready(self) -> bool:
        return self.transport.get_status("/v1/health") == 200

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, K]``; raises if the deployment does not expose scores."""
        return self._batched(x, self._infer_scores)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self.output_kind == "probabilities":
            return self._infer_scores(batch)
        return numeric_array(self._predict(batch).get("labels"), f"POST {self.url}/v1/predict")

    def _infer_scores(self, batch: np.ndarray) -> np.ndarray:
        answer = self._predict(batch)
        if answer.get("scores") is None:
            raise MedShieldError("this deployment does not expose scores (start it with --allow-scores)")
        return numeric_array(answer["scores"], f"POST {self.url}/v1/predict")

    def _predict(self, batch: np.ndarray) -> dict[str, Any]:
        payload = {"array": {"shape": list(batch.shape), "dtype": "float32",
                             "data": base64.b64encode(batch.astype("<f4").tobytes()).decode("ascii")}}
        answer = self._post(payload, batch.shape[0])
        if not isinstance(answer, dict):
            raise RemoteError(0, f"malformed response from POST {self.url}/v1/predict: not a JSON object")
        return answer

    def _post(self, payload: dict[str, Any], rows: int) -> Any:
        waited = 0.0
        while True:
            try:
                return self.transport.post("/v1/predict", payload, rows=rows)
            except RateLimited as exc:
                if not self.wait_on_rate_limit or exc.retry_after is None or waited + exc.retry_after > self.max_wait:
                    raise
                time.sleep(exc.retry_after)
                waited += exc.retry_after
