"""Models behind an HTTP endpoint: the common part of the ``oip``, ``http`` and ``medshield_api`` sources.

A :class:`RemoteModel` takes images in [0, 1] ``[N, C, H, W]``, applies the card's normalisation and
tensor layout, sends them in batches of ``batch_size`` (one request per batch, many images per
request) and returns the endpoint's outputs as a float tensor ``[N, K]`` (scores) or labels
``int64 [N]`` (label-only endpoints). No gradients leave a remote model: white-box attacks skip it;
transfer and label-only attacks run. The transport counts the images sent and answered, so the query
accounting of the label-only oracle stays exact over the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from medshield.errors import MedShieldError
from medshield.models import predict_labels
from medshield.targets.http import HttpTransport, RemoteError

Layout = Literal["NCHW", "NHWC", "flat"]
OutputKind = Literal["logits", "probabilities", "labels"]
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC", "flat")
OUTPUT_KINDS: tuple[str, ...] = ("logits", "probabilities", "labels")


class RemoteModel(ABC):
    """Batched, counted access to a model behind HTTP.

    ``mean``/``std``: per-channel normalisation applied before sending (the endpoint receives
    ``(pixel - mean) / std``, as the card's ``input`` says); ``layout``: how a batch is laid out on
    the wire; ``output_kind``: what the endpoint returns (``labels`` means label-only access).
    """

    format: ClassVar[str] = "remote"

    def __init__(self, transport: HttpTransport, batch_size: int = 64, layout: Layout = "NCHW",
                 output_kind: OutputKind = "logits", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if layout not in LAYOUTS:
            raise MedShieldError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if output_kind not in OUTPUT_KINDS:
            raise MedShieldError(f"output kind must be one of {', '.join(OUTPUT_KINDS)}, got {output_kind!r}")
        self.transport, self.batch_size, self.layout, self.output_kind = transport, batch_size, layout, output_kind
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = None if std is None else np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)

    # -- accounting -----------------------------------------------------------------------------
    @property
    def queries(self) -> int:
        """Images the endpoint answered (what a metered service charges)."""
        return self.transport.queries

    @property
    def requests(self) -> int:
        return self.transport.requests

    @property
    def has_scores(self) -> bool:
        return self.output_kind != "labels"

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol-specific ----------------------------------------------------------------------
    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Send one batch (already normalised and laid out) and return the raw outputs ``[n, ...]``."""

    def ready(self) -> bool:
        """Whether the endpoint says it is ready to serve (protocols without a probe: True)."""
        return True

    def metadata(self) -> dict[str, Any]:
        """What the endpoint says about the model (empty where the protocol has no metadata call)."""
        return {}

    # -- public ---------------------------------------------------------------------------------
    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs for ``x [N, C, H, W]`` in [0, 1]: float ``[N, K]`` or, label-only, int64 ``[N]``."""
        return self._batched(x, self._infer, self.output_kind == "labels")

    def _batched(self, x: torch.Tensor, infer: Callable[[np.ndarray], np.ndarray], labels: bool) -> torch.Tensor:
        """Run ``infer`` over ``x`` in requests of ``batch_size`` images; labels come back int64 ``[N]``."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a tensor [N, C, H, W], got {getattr(x, 'shape', type(x))}")
        arr = x.detach().to("cpu", torch.float32).numpy()
        parts = [self._checked_infer(arr[i:i + self.batch_size], infer, labels)
                 for i in range(0, arr.shape[0], self.batch_size)]
        if not parts:
            return torch.empty(0, dtype=torch.long) if labels else torch.empty(0, 0)
        out = np.concatenate(parts)
        return torch.from_numpy(out.reshape(-1).astype(np.int64)) if labels else torch.from_numpy(out.astype(np.float32))

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes ``int64 [N]`` (argmax of logits/probabilities; a single logit or
        probability column is thresholded at 0 / 0.5). A :data:`~medshield.attacks.decision.oracle.LabelFn`."""
        out = self.outputs(x)
        if self.output_kind == "labels":
            return out
        if self.output_kind == "probabilities" and out.shape[1] == 1:
            return (out[:, 0] >= 0.5).long()
        return predict_labels(out)

    __call__ = labels

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The endpoint's scores ``[N, K]``; a label-only endpoint raises :class:`MedShieldError`."""
        if not self.has_scores:
            raise MedShieldError(f"{self.transport.url} answers labels only (output kind 'labels'): no scores")
        return self.outputs(x)

    def _checked_infer(self, chunk: np.ndarray, infer: Callable[[np.ndarray], np.ndarray], labels: bool) -> np.ndarray:
        n = chunk.shape[0]
        if self.mean is not None:
            chunk = chunk - self.mean
        if self.std is not None:
            chunk = chunk / self.std
        chunk = to_layout(chunk.astype(np.float32, copy=False), self.layout)
        out = np.asarray(infer(chunk))
        if out.ndim == 0 or out.shape[0] != n:
            raise RemoteError(0, f"malformed response from {self.transport.url}: {n} images sent, outputs of "
                                 f"shape {list(out.shape)} came back")
        out = out.reshape(n, -1)
        if labels and out.shape[1] != 1:
            raise RemoteError(0, f"malformed response from {self.transport.url}: label-only outputs need one "
                                 f"label per image, got {out.shape[1]} values per image")
        if not np.issubdtype(out.dtype, np.number) or not np.isfinite(out.astype(np.float64)).all():
            raise RemoteError(0, f"malformed response from {self.transport.url}: outputs are not finite numbers")
        return out


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
