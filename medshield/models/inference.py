"""Fast label/logit inference: the forward batch size from a measured sweep, and optional inference
paths (channels-last, bfloat16 autocast, ``torch.compile``) that callers enable only where they keep
the model's labels identical (tests/test_inference_paths.py checks them on the PneumoniaMNIST test set).

On a CPU a convolutional net's throughput peaks at a batch that keeps its activations in cache
(SmallCNN at 28 px: about 64 rows, ~2.5x the rate at 4096), so a fixed large batch is slow; the
best size depends on the model, the input size, the thread count and the device, hence the sweep.
The same measurement picks the memory layout: at the chosen batch, channels-last weights and inputs
are timed against contiguous ones and kept only when faster and label-identical on the probe batch
(:func:`forward_choice`). A frozen TorchScript graph optimised for inference (:class:`Frozen`, batch
norm folded into the convolutions) is faster still on CPU, but only ever pinned by the caller, never
chosen by the measurement: its logits differ from the module's by ~1e-7, which is enough to flip labels
at the decision-boundary points where label-only attacks end, so the attack's answers and a check
against the plain module could disagree there.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from medshield.models.bounded import eval_mode, model_device, predict_labels

MIN_CHUNK = 8
"""Smallest chunk ever sent: oneDNN's per-row results are identical for every batch of >= 8 rows at a
fixed thread count (measured on SmallCNN and ResNet-18), while a single row can differ in the last bit,
so chunking at >= 8 rows never changes a label."""

SWEEP_SIZES = tuple(2**k for k in range(3, 13))  # 8 .. 4096
LAYOUT_MARGIN = 1.03
"""Channels-last is chosen only when it answers at least this many times the contiguous rate: on a
tie (1-channel inputs, small nets) the plain layout stays, so timing noise does not flip the choice."""
PATHS = ("contiguous", "channels_last", "frozen")
"""Forward paths of a local model: the module itself, channels-last memory format, a frozen graph."""
LAYOUTS = ("auto", *PATHS)
"""What a label function can use: the measured choice (auto) or a pinned path."""
log = logging.getLogger(__name__)


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
        synchronize(device)
        rates[size] = calls * size / (time.perf_counter() - start)
        worse = worse + 1 if rates[size] < 0.8 * max(rates.values()) else 0
        if worse >= patience or elapsed / calls > max_call_seconds:
            break
    return rates


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU. Timings end with it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class ForwardChoice:
    """How a local model answers fastest, as measured: the forward batch size (a sweep of the ``swept``
    path's forward: contiguous unless the caller pinned a path), and whether channels-last beat
    contiguous at that batch with identical labels on the probe batch."""

    batch: int
    channels_last: bool = False
    rates: dict[int, float] = field(default_factory=dict)  # rows/s per batch size (of the swept path)
    layout_rates: dict[str, float] = field(default_factory=dict)  # rows/s at ``batch``: contiguous, channels_last
    labels_identical: bool | None = None  # channels-last vs contiguous on the probe; None: not tried
    swept: str = "contiguous"  # the forward path the batch sweep timed (one of PATHS)

    @property
    def layout_tried(self) -> bool:
        return self.labels_identical is not None

    @property
    def layout(self) -> str:
        if self.swept != "contiguous":
            return self.swept
        return "channels_last" if self.channels_last else "contiguous"

    def record(self) -> dict[str, object]:
        """The choice as a JSON record (bench output, logs)."""
        return {"batch": self.batch, "layout": self.layout, "layout_rates": self.layout_rates,
                "labels_identical": self.labels_identical, "swept": self.swept}


_BEST: weakref.WeakKeyDictionary[nn.Module, dict[tuple, ForwardChoice]] = weakref.WeakKeyDictionary()


def _versions(tensors: Iterable[torch.Tensor]) -> tuple:
    """Identity and in-place version of each tensor: changes when a weight is replaced or updated."""
    return tuple((id(t), t.data_ptr(), t._version) for t in tensors)


class ChannelsLast:
    """``model``'s forward with its 4-D weights and the inputs in channels-last memory format. The
    caller's module is left alone: the weights are copied (through ``torch.func.functional_call``) and
    copied again whenever one of them changes (in-place update or a new parameter), so a model trained
    between calls is never answered with stale weights."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._key: tuple = ()
        self._weights: dict[str, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        convs = [(name, p) for name, p in self.model.named_parameters() if p.ndim == 4]
        key = _versions(p for _, p in convs)
        if key != self._key:
            with torch.no_grad():
                self._weights = {name: p.detach().contiguous(memory_format=torch.channels_last) for name, p in convs}
            self._key = key
        return functional_call(self.model, self._weights, (x.contiguous(memory_format=torch.channels_last),))


class Frozen:
    """``model``'s forward as a frozen TorchScript graph optimised for inference
    (``torch.jit.optimize_for_inference``: batch norm folded into the convolutions, oneDNN kernels;
    1.27x the plain forward of ResNet-18 at 128 px on one CPU thread, measured). Traced in eval mode on
    first use and again whenever a weight or buffer changes, so a model trained between calls is never
    answered with stale weights; the caller's module is left alone. Logits agree with the module's to
    ~1e-7: the same labels on test images, not always at boundary points, so callers pin it (label
    functions with ``layout="frozen"``) and check their adversarials with the same forward."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._key: tuple = ()
        self._graph: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = _versions((*self.model.parameters(), *self.model.buffers()))
        if self._graph is None or key != self._key:
            with eval_mode(self.model), torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python values baked into the graph
                traced = torch.jit.trace(self.model, x[:MIN_CHUNK].clone(), check_trace=False)  # any batch size after
                self._graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            self._key = key
        return self._graph(x)


def check_path(path: str) -> str:
    """``path`` if it is one of :data:`PATHS`, else a one-line ValueError."""
    if path not in PATHS:
        raise ValueError(f"forward path must be one of {', '.join(PATHS)}, got {path!r}")
    return path


def path_forward(model: nn.Module, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward through one of :data:`PATHS`."""
    check_path(path)
    return ChannelsLast(model) if path == "channels_last" else Frozen(model) if path == "frozen" else model


def can_use_channels_last(model: nn.Module, row_shape: Sequence[int]) -> bool:
    """Images (rows ``[C, H, W]``) into a model with 4-D (conv) weights, and no explicit inference path
    already set by the caller (an :class:`InferencePath` keeps its own)."""
    return (len(row_shape) == 3 and not isinstance(model, InferencePath)
            and any(p.ndim == 4 for p in model.parameters()))


def _layout_rates(forwards: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, device: torch.device,
                  rounds: int = 3, min_seconds: float = 0.05) -> dict[str, float]:
    """Best rows/s of each forward on ``x`` over ``rounds`` interleaved timings (load changes hit both)."""
    best = dict.fromkeys(forwards, 0.0)
    for fwd in forwards.values():
        fwd(x)
    for _ in range(rounds):
        for name, fwd in forwards.items():
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < min_seconds or calls == 0:
                fwd(x)
                calls += 1
            synchronize(device)
            best[name] = max(best[name], calls * x.shape[0] / (time.perf_counter() - start))
    return best


def _choose_layout(model: nn.Module, x: torch.Tensor, probe: torch.Tensor | None,
                   device: torch.device) -> tuple[bool, dict[str, float], bool]:
    """(channels-last?, rates per layout at ``x``'s batch, labels identical on the probe)."""
    fast = ChannelsLast(model)
    rates = _layout_rates({"contiguous": model, "channels_last": fast}, x, device)
    rows = x if probe is None else torch.cat([x, probe.to(device=device, dtype=x.dtype)])
    same = all(torch.equal(predict_labels(model(c)), predict_labels(fast(c))) for c in rows.split(x.shape[0]))
    return same and rates["channels_last"] >= LAYOUT_MARGIN * rates["contiguous"], rates, same


def forward_choice(model: nn.Module, row_shape: Sequence[int], sizes: Sequence[int] = SWEEP_SIZES,
                   probe: torch.Tensor | None = None, layouts: bool = True, path: str = "contiguous",
                   forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ForwardChoice:
    """The fastest forward of ``model`` (eval mode, inference mode) for rows of ``row_shape``: the batch
    size from a contiguous sweep, then (``layouts``) channels-last vs contiguous timed at that batch
    (interleaved, best of 3); channels-last is kept only if it is :data:`LAYOUT_MARGIN` faster and gives
    the same label as contiguous on every row of the probe batch (the sweep's seeded batch plus
    ``probe``, e.g. the caller's first queries). A caller that pins ``path`` (channels_last or frozen:
    their best batch differs from the module's; ResNet-18's frozen graph at 128 px peaks at 16 rows, the
    module at 8) gets the batch from a sweep of that path's ``forward`` (its own instance, or a new
    one) and no layout comparison. Measured once per (model, row shape, thread count, device, path),
    cached for the model's lifetime, and logged."""
    check_path(path)
    device = model_device(model)
    key = (tuple(row_shape), torch.get_num_threads(), str(device), path)
    cache = _BEST.setdefault(model, {})
    choice = cache.get(key)
    want_layout = (layouts and path == "contiguous" and (choice is None or not choice.layout_tried)
                   and can_use_channels_last(model, row_shape))
    if choice is not None and not want_layout:
        return choice
    with eval_mode(model), torch.inference_mode():
        if choice is None:
            swept = model if path == "contiguous" else forward or path_forward(model, path)
            rates = forward_rates(swept, row_shape, sizes, device=device)
            choice = ForwardChoice(max(rates, key=rates.__getitem__), rates=rates, swept=path)
        if want_layout:
            x = torch.rand(choice.batch, *row_shape, generator=torch.Generator().manual_seed(1)).to(device)
            cl, layout_rates, same = _choose_layout(model, x, probe, device)
            choice = ForwardChoice(choice.batch, cl, choice.rates, layout_rates, same)
    cache[key] = choice
    log.info("forward choice for %s rows %s: %s", type(model).__name__, tuple(row_shape), choice.record())
    return choice


def best_batch_size(model: nn.Module, row_shape: Sequence[int], sizes: Sequence[int] = SWEEP_SIZES) -> int:
    """The fastest forward batch size of ``model`` for rows of ``row_shape`` (:func:`forward_choice`)."""
    return forward_choice(model, row_shape, sizes, layouts=False).batch


def fast_forward(model: nn.Module, choice: ForwardChoice) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward in the layout ``choice`` picked (or the pinned path it swept)."""
    return path_forward(model, choice.layout)


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
