"""A Python client for a MedShield server; a remote label oracle is a thin wrapper over it.

>>> clf = RemoteClassifier("http://127.0.0.1:8000", api_key="...", batch_size=64)
>>> labels = clf.labels(images)          # LongTensor [N]; clf.queries counts the images answered
>>> probs = clf.scores(images)           # only where the deployment exposes scores
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import torch

from medshield.errors import BudgetExceeded, MedShieldError
from medshield.server.app import KEY_HEADER


class RemoteError(MedShieldError):
    """The server refused a request (4xx) or failed (5xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.detail = message


class AuthenticationError(RemoteError):
    """401: the API key is missing or wrong."""


class Forbidden(RemoteError):
    """403: the key was blocked (e.g. by the attack-stream detector)."""


class RateLimited(RemoteError, BudgetExceeded):
    """429: the key's budget is spent (``retry_after`` None) or it must wait ``retry_after`` seconds."""

    def __init__(self, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class RemoteClassifier:
    """Labels (and scores, where allowed) from a served model; packs images into batch requests.

    ``queries`` counts the images the server answered, which is what the server charges.
    ``http``: an httpx-compatible client to use instead (e.g. FastAPI's ``TestClient(app)``).
    ``wait_on_rate_limit`` sleeps for Retry-After (up to ``max_wait`` seconds in total) instead of
    raising on a rate limit; a spent budget always raises :class:`RateLimited`.
    """

    def __init__(self, url: str, api_key: str, batch_size: int = 64, timeout: float = 30.0,
                 wait_on_rate_limit: bool = False, max_wait: float = 60.0, http: Any = None) -> None:

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.wait_on_rate_limit, self.max_wait = wait_on_rate_limit, max_wait
        self.queries = 0
        self.requests = 0
        self._headers = {KEY_HEADER: api_key}
        self._http = http if http is not None else _http_client(self.url, timeout)
        self._info: dict[str, Any] | None = None

    def __enter__(self) -> RemoteClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def info(self) -> dict[str, Any]:
        """The server's ``/v1/model`` metadata (cached)."""
        if self._info is None:
            self._info = self._checked(self._http.get("/v1/model", headers=self._headers)).json()
        return self._info

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``LongTensor[N]`` for ``x`` ``[N,C,H,W]`` in [0, 1]."""
        out = [torch.tensor(r["labels"], dtype=torch.long) for r in self._predict(x)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    __call__ = labels

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, K]``; raises if the deployment does not expose scores."""
        out = []
        for r in self._predict(x):
            if r.get("scores") is None:
                raise MedShieldError("this deployment does not expose scores (start it with --allow-scores)")
            out.append(torch.tensor(r["scores"], dtype=torch.float32))
        return torch.cat(out) if out else torch.empty(0)

    def _predict(self, x: torch.Tensor) -> list[dict[str, Any]]:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a tensor [N,C,H,W], got {getattr(x, 'shape', type(x))}")
        x = x.detach().to("cpu", torch.float32).contiguous()
        return [self._post(chunk) for chunk in x.split(self.batch_size)]

    def _post(self, chunk: torch.Tensor) -> dict[str, Any]:
        payload = {"array": {"shape": list(chunk.shape), "dtype": "float32",
                             "data": base64.b64encode(chunk.numpy().astype("<f4").tobytes()).decode("ascii")}}
        waited = 0.0
        while True:
            try:
                response = self._checked(self._http.post("/v1/predict", json=payload, headers=self._headers))
            except RateLimited as exc:
                if not self.wait_on_rate_limit or exc.retry_after is None or waited + exc.retry_after > self.max_wait:
                    raise
                time.sleep(exc.retry_after)
                waited += exc.retry_after
                continue
            self.requests += 1
            self.queries += len(chunk)
            return response.json()

    @staticmethod
    def _checked(response: Any) -> Any:
        if response.status_code < 400:
            return response
        try:
            detail = str(response.json().get("detail", response.text))
        except (ValueError, AttributeError):
            detail = response.text[:200]
        status = response.status_code
        if status == 401:
            raise AuthenticationError(status, detail)
        if status == 403:
            raise Forbidden(status, detail)
        if status == 429:
            retry = response.headers.get("Retry-After")
            raise RateLimited(status, detail, float(retry) if retry and _is_number(retry) else None)
        raise RemoteError(status, detail)


def _http_client(url: str, timeout: float) -> Any:
    import httpx

    return httpx.Client(base_url=url, timeout=timeout)


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False
