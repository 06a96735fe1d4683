"""Models behind an HTTP endpoint: the common part of the ``oip``, ``http`` and ``medshield_api`` sources.

A :class:`RemoteModel` takes a batch ``[N, C, H, W]`` (already in the model's input space), sends it in
requests of ``batch_size`` images (many images per request) and returns the endpoint's outputs as
float32 ``[N, W]``: scores (logits or probabilities), or labels (``output_kind="labels"``, label-only
access: one class index per image, or one 0/1 decision per finding). Its transport counts the images
sent and answered, so the label-only oracle's query accounting stays exact over the network.

:class:`RemoteNet` presents a remote model to :class:`~medshield.targets.target.Target` as a
(non-differentiable) module: white-box attacks skip it; clean metrics, transfer and label-only
attacks run. A label-only endpoint's answers become one-hot probabilities (or +-20 logits), so
argmax/threshold decisions are the endpoint's own and nothing pretends to be a real score.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from medshield.errors import MedShieldError
from medshield.models import predict_labels
from medshield.targets.http import HttpTransport, RemoteError

Layout = Literal["NCHW", "NHWC", "flat"]
OutputKind = Literal["logits", "probabilities", "labels"]
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC", "flat")
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probabilities", "labels")
LABEL_LOGIT = 20.0
"""Logit magnitude given to a label-only answer (far past any threshold in (1e-6, 1 - 1e-6))."""


class RemoteModel(ABC):
    """Batched, counted access to a model behind HTTP.

    ``layout``: how a batch goes on the wire (NCHW, NHWC, or ``flat`` ``[n, C*H*W]``);
    ``output_kind``: what the endpoint returns (``labels`` means label-only access).
    """

    format: ClassVar[str] = "remote"

    def __init__(self, transport: HttpTransport, batch_size: int = 64, layout: Layout = "NCHW",
                 output_kind: OutputKind = "logits") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if layout not in LAYOUTS:
            raise MedShieldError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if output_kind not in OUTPUT_KINDS:
            raise MedShieldError(f"output kind must be one of {', '.join(OUTPUT_KINDS)}, got {output_kind!r}")
        self.transport, self.batch_size, self.layout, self.output_kind = transport, batch_size, layout, output_kind

    @property
    def url(self) -> str:
        return self.transport.url

    @property
    def queries(self) -> int:
        """Images the endpoint answered (what a metered service charges)."""
        return self.transport.queries

    @property
    def requests(self) -> int:
        """Requests the endpoint answered."""
        return self.transport.requests

    @property
    def has_scores(self) -> bool:
        return self.output_kind != "labels"

    def counts(self) -> dict[str, int]:
        """``{"queries", "rows_sent", "requests"}`` so far (records carry them)."""
        t = self.transport
        return {"queries": t.queries, "rows_sent": t.rows_sent, "requests": t.requests}

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Send one batch (laid out for the wire) and return its outputs ``[n, ...]``."""

    def ready(self) -> bool:
        """Whether the endpoint says it is ready (protocols without a probe: True)."""
        return True

    def metadata(self) -> dict[str, Any]:
        """What the endpoint says about the model (empty where the protocol has no metadata call)."""
        return {}

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The endpoint's outputs for ``x [N, C, H, W]``: float32 ``[N, W]``, in requests of ``batch_size``."""
        return self._batched(x, self._infer)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``int64 [N]`` (label-only answers as they are; scores by argmax, a single
        column thresholded at logit 0 / probability 0.5). A :data:`~medshield.attacks.decision.oracle.LabelFn`."""
        out = self.outputs(x)
        if self.output_kind == "labels":
            if out.shape[1] != 1:
                raise RemoteError(0, f"malformed response from {self.url}: label-only outputs need one label per "
                                     f"image, got {out.shape[1]} values per image")
            return out[:, 0].long()
        if self.output_kind == "probabilities" and out.shape[1] == 1:
            return (out[:, 0] >= 0.5).long()
        return predict_labels(out)

    __call__ = labels

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The endpoint's scores ``[N, K]``; a label-only endpoint raises :class:`MedShieldError`."""
        if not self.has_scores:
            raise MedShieldError(f"{self.url} answers labels only: no scores")
        return self.outputs(x)

    def _batched(self, x: torch.Tensor, infer: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a tensor [N, C, H, W], got {getattr(x, 'shape', type(x))}")
        arr = x.detach().to("cpu", torch.float32).numpy()
        parts = [self._checked(arr[i:i + self.batch_size], infer) for i in range(0, arr.shape[0], self.batch_size)]
        if not parts:
            return torch.empty(0, 0)
        return torch.from_numpy(np.concatenate(parts).astype(np.float32))

    def _checked(self, chunk: np.ndarray, infer: Any) -> np.ndarray:
        n = chunk.shape[0]
        out = np.asarray(infer(to_layout(chunk, self.layout)))
        if out.ndim == 0 or out.shape[0] != n:
            raise RemoteError(0, f"malformed response from {self.url}: {n} images sent, outputs of shape "
                                 f"{list(out.shape)} came back")
        out = out.reshape(n, -1)
        if out.shape[1] == 0 or not np.isfinite(out.astype(np.float64)).all():
            raise RemoteError(0, f"malformed response from {self.url}: outputs are empty or not finite numbers")
        return out


class RemoteNet(nn.Module):
    """A remote model as a module (model input -> outputs of width ``width``), without gradients.

    ``kind``/``task`` are the card's ``output.kind`` and ``output.task``. Label-only answers (class
    indices, or 0/1 per finding for multilabel) become one-hot probabilities, or logits +-:data:`LABEL_LOGIT`.
    """

    sends_queries = True  # see medshield.models.inference.sends_queries: never swept for a batch size

    def __init__(self, remote: RemoteModel, width: int | None, kind: str, task: str) -> None:
        super().__init__()
        self.remote, self.width, self.kind, self.task = remote, width, kind, task
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # so .parameters() gives the device

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.remote.outputs(x)
        if self.remote.output_kind == "labels":
            out = self.from_labels(out)
        return out.to(x.device)

    def from_labels(self, out: torch.Tensor) -> torch.Tensor:
        width = self.width or 2
        if self.task == "multilabel":
            if out.shape[1] != width or not ((out == 0) | (out == 1)).all():
                raise RemoteError(0, f"malformed response from {self.remote.url}: a label-only multilabel endpoint "
                                     f"must answer {width} 0/1 decisions per image, got {out.shape[1]} values")
            hot = out
        else:
            classes = max(width, 2)
            labels = out[:, 0]
            if out.shape[1] != 1 or ((labels != labels.round()) | (labels < 0) | (labels >= classes)).any():
                raise RemoteError(0, f"malformed response from {self.remote.url}: a label-only endpoint must answer "
                                     f"one class index in 0..{classes - 1} per image")
            hot = nn.functional.one_hot(labels.long(), classes).float()
            hot = hot[:, 1:] if width == 1 else hot
        return hot if self.kind == "probabilities" else (2 * hot - 1) * LABEL_LOGIT


def remote_models(module: nn.Module) -> list[RemoteModel]:
    """The remote models inside ``module`` (a Target's model), for query accounting."""
    return [m.remote for m in module.modules() if isinstance(m, RemoteNet)]


def remote_counts(module: nn.Module) -> dict[str, int] | None:
    """Summed ``{"queries", "rows_sent", "requests"}`` of the remote models inside ``module`` (None if local)."""
    found = remote_models(module)
    if not found:
        return None
    total = {"queries": 0, "rows_sent": 0, "requests": 0}
    for r in found:
        for k, v in r.counts().items():
            total[k] += v
    return total


def to_layout(batch: np.ndarray, layout: Layout) -> np.ndarray:
    """``[n, C, H, W]`` -> the wire layout: NCHW unchanged, NHWC transposed, ``flat`` = ``[n, C*H*W]``."""
    if layout == "NHWC":
        return np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
    if layout == "flat":
        return batch.reshape(batch.shape[0], -1)
    return batch


def numeric_array(data: Any, where: str) -> np.ndarray:
    """A JSON value (nested lists of numbers) as a numpy array, or a one-line :class:`RemoteError`."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        arr = np.asarray([], dtype=object)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise RemoteError(0, f"malformed response from {where}: outputs are not a (nested) list of numbers")
    return arr
