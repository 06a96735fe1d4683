"""Fast label/logit inference: the forward batch size from a measured sweep, and optional inference
paths (channels-last, bfloat16 autocast, ``torch.compile``) that callers enable only where they keep
the model's labels identical (tests/test_inference_paths.py checks them on the PneumoniaMNIST test set).

On a CPU a convolutional net's throughput peaks at a batch that keeps its activations in cache
(SmallCNN at 28 px: about 64 rows, ~2.5x the rate at 4096), so a fixed large batch is slow; the
best size depends on the model, the input size, the thread count and the device, hence the sweep.
"""

from __future__ import annotations

import copy
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from medshield.models.bounded import eval_mode, predict_labels

MIN_CHUNK = 8
"""Smallest chunk ever sent: oneDNN's per-row results are identical for every batch of >= 8 rows at a
fixed thread count (measured on SmallCNN and ResNet-18), while a single row can differ in the last bit,
so chunking at >= 8 rows never changes a label."""

SWEEP_SIZES = tuple(2**k for k in range(3, 13))  # 8 .. 4096
_BEST: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def chunks(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    """``x`` split into rows of ``size``; a tail shorter than :data:`MIN_CHUNK` joins the chunk before it."""
    n = x.shape[0]
    start = 0
    while start < n:
        stop = n if n - (start + size) < MIN_CHUNK else start + size
        yield x[start:stop]
        start = stop


def forward_rates(forward: Callable[[torch.Tensor], object], row_shape: Sequence[int],
                  sizes: Sequence[int] = SWEEP_SIZES, min_seconds: float = 0.05, max_call_seconds: float = 0.5,
                  device: torch.device | str = "cpu", patience: int = 2) -> dict[int, float]:
    """Rows per second of ``forward`` at each batch size (ascending), on seeded uniform inputs.

    Each size gets one warm-up call, then calls until ``min_seconds`` have passed. The sweep stops
    after ``patience`` sizes in a row below 0.8x the best rate (past the peak), or once one call takes
    longer than ``max_call_seconds``. Uses a private generator: the global RNG is left alone."""
    gen = torch.Generator().manual_seed(0)
    rates: dict[int, float] = {}
    worse = 0
    for size in sorted(sizes):
        x = torch.rand(size, *row_shape, generator=gen).to(device)
        forward(x)
        calls, start = 0, time.perf_counter()
        while True:
            forward(x)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        _sync(device)
        rates[size] = calls * size / (time.perf_counter() - start)
        worse = worse + 1 if rates[size] < 0.8 * max(rates.values()) else 0
        if worse >= patience or elapsed / calls > max_call_seconds:
            break
    return rates


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_batch_size(model: nn.Module, row_shape: Sequence[int], sizes: Sequence[int] = SWEEP_SIZES) -> int:
    """The fastest forward batch size of ``model`` (eval mode, inference mode) for rows of ``row_shape``,
    measured once per (model, row shape, thread count, device) and cached for the model's lifetime."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    key = (tuple(row_shape), torch.get_num_threads(), str(device))
    cache = _BEST.setdefault(model, {})
    if key not in cache:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                rates = forward_rates(model, row_shape, sizes, device=device)
        finally:
            model.train(was_training)
        cache[key] = max(rates, key=rates.__getitem__)
    return cache[key]


def sends_queries(model: nn.Module) -> bool:
    """Whether a module answers over the network (a remote target marks itself ``sends_queries = True``):
    a throughput sweep would send probe images to the live service, spending its query budget and
    showing up in its logs, so such a model keeps a fixed batch and is never swept."""
    return any(getattr(m, "sends_queries", False) for m in model.modules())


def is_stochastic(model: nn.Module) -> bool:
    """Whether a module draws its own randomness per call (owns a ``torch.Generator``, as the noise
    defenses do): chunking its inputs differently would change its draws, so its batch stays fixed."""
    return any(isinstance(getattr(m, "generator", None), torch.Generator) for m in model.modules())


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class InferencePath(nn.Module):
    """``model`` (a copy in eval mode; the caller's model is left alone) run through optional inference
    paths: ``channels_last`` memory format, ``autocast`` ("bf16" or "fp16") and ``torch.compile``.
    Outputs are float32 logits. Use a path only where it keeps the labels that matter identical
    (``labels_agree`` on the test set): near the decision boundary, where label-only attacks work, a
    lower-precision forward is a slightly different classifier.

    Example:
        fast = InferencePath(model, channels_last=True)
        label_fn = model_label_fn(fast)
    """

    def __init__(self, model: nn.Module, channels_last: bool = False, autocast: str | None = None,
                 compile: bool = False) -> None:
        super().__init__()
        if autocast is not None and autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST)} or None, got {autocast!r}")
        net = copy.deepcopy(model).eval()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.channels_last, self.dtype, self.compiled = channels_last, AUTOCAST.get(autocast or ""), compile
        self._forward = torch.compile(net, dynamic=True) if compile else net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            return self._forward(x).float()


def inference_path(model: nn.Module, spec: str) -> nn.Module:
    """``model`` behind the paths named in ``spec``, a '+'-joined subset of channels_last, bf16, fp16,
    compile ("default" or "" = the model itself)."""
    names = {s for s in spec.split("+") if s and s != "default"}
    unknown = names - {"channels_last", "bf16", "fp16", "compile"}
    if unknown or {"bf16", "fp16"} <= names:
        raise ValueError(f"unknown inference path {spec!r}; join channels_last, bf16 or fp16, compile with '+'")
    if not names:
        return model
    autocast = "bf16" if "bf16" in names else "fp16" if "fp16" in names else None
    return InferencePath(model, channels_last="channels_last" in names, autocast=autocast, compile="compile" in names)


def labels_agree(reference: Callable[[torch.Tensor], torch.Tensor], other: Callable[[torch.Tensor], torch.Tensor],
                 images: torch.Tensor) -> float:
    """Fraction of ``images`` on which two label functions agree."""
    return float((reference(images) == other(images)).float().mean())


def checked_inference_path(model: nn.Module, spec: str, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """:func:`inference_path`, kept only if it gives ``model``'s labels on every one of ``images`` (e.g.
    the test split); otherwise ``model`` itself, with a warning. On PneumoniaMNIST SmallCNN,
    channels_last and compile keep all 624 test labels, bf16 autocast flipped 2 (measured)."""
    fast = inference_path(model, spec)
    if fast is model:
        return model

    def labels(m: nn.Module) -> torch.Tensor:
        with eval_mode(m), torch.inference_mode():
            return torch.cat([predict_labels(m(c)) for c in images.split(batch_size)])

    agree = float((labels(model) == labels(fast)).float().mean())
    if agree < 1.0:
        warnings.warn(f"inference path {spec!r} changes {1 - agree:.2%} of the labels; using the plain model", stacklevel=2)
        return model
    return fast
