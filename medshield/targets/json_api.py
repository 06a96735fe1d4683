"""A model behind any JSON API, described by a small request/response template (``format: http``).

The request body is a JSON template in which the string ``"$images"`` stands for the batch (nested
lists in the card's ``layout``, normalised as the card's ``input`` says) and ``"$n"`` for its size;
the response's outputs are found at a dotted path (``predictions``, ``result.scores``,
``outputs.0.data``; integers index lists). The value found there must hold one row per image: scores
``[n, K]`` or, for ``output.kind: labels``, labels ``[n]``. Example card section::

    model:
      format: http
      url: https://triage.example.org/api/v1/classify
      headers: {Authorization: "Bearer ${TRIAGE_TOKEN}"}     # ${VAR}: read from the environment
      request: {instances: "$images", return: probabilities}
      response: predictions
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medshield.errors import MedShieldError
from medshield.targets.http import HttpTransport, RemoteError
from medshield.targets.remote import Layout, OutputKind, RemoteModel, numeric_array

IMAGES, COUNT = "$images", "$n"


class JsonApiModel(RemoteModel):
    """``POST url`` with ``request`` (a JSON template) and read the outputs at ``response`` (a dotted path)."""

    format = "http"

    def __init__(self, url: str, request: Any = None, response: str = "predictions", layout: Layout = "NCHW",
                 output_kind: OutputKind = "logits", headers: Mapping[str, str] | None = None,
                 timeout: float = 30.0, batch_size: int = 64, retries: int = 0, http: Any = None) -> None:
        request = {"instances": IMAGES} if request is None else request
        if _count(request, IMAGES) != 1:
            raise MedShieldError(f"model.request must contain the placeholder {IMAGES!r} exactly once, "
                                 f"got {_count(request, IMAGES)}")
        if not response or not isinstance(response, str):
            raise MedShieldError("model.response must be a dotted path to the outputs, e.g. 'predictions'")
        super().__init__(HttpTransport(url, headers, timeout, retries, http), batch_size, layout, output_kind)
        self.template, self.path = request, response

    def request_body(self, batch: np.ndarray) -> Any:
        return fill(self.template, batch.tolist(), batch.shape[0])

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        answer = self.transport.post("", self.request_body(batch), rows=batch.shape[0])
        return numeric_array(dotted(answer, self.path, f"POST {self.transport.url}"), f"POST {self.transport.url}")


def fill(template: Any, images: list[Any], n: int) -> Any:
    """A copy of ``template`` with ``"$images"`` replaced by ``images`` and ``"$n"`` by ``n``."""
    if template == IMAGES:
        return images
    if template == COUNT:
        return n
    if isinstance(template, dict):
        return {k: fill(v, images, n) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, images, n) for v in template]
    return template


def dotted(value: Any, path: str, where: str = "the response") -> Any:
    """The value at a dotted ``path`` (``a.b.0.c``); a one-line :class:`RemoteError` naming the missing step."""
    for step in path.split("."):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        else:
            raise RemoteError(0, f"malformed response from {where}: no {step!r} on the path {path!r}")
    return value


def _count(template: Any, token: str) -> int:
    if template == token:
        return 1
    if isinstance(template, dict):
        return sum(_count(v, token) for v in template.values())
    if isinstance(template, list):
        return sum(_count(v, token) for v in template)
    return 0
