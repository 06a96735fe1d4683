"""The system under test as one value: :class:`Target`, built from a card by :func:`build_target`.

Every attack, defense and report takes a ``Target`` (or its ``model``): a torch module on [0, 1]
pixels that returns logits in MedShield's convention (``[N, 1]`` single sigmoid logit or ``[N, 2]``
for binary, ``[N, K]`` softmax logits for multiclass, ``[N, K]`` one sigmoid logit per finding for
multilabel). Normalisation lives inside (a :class:`BoundedModel`); probabilities are turned into
logits with a clamp. ``open_target`` accepts a card file, a MedShield run folder or a Target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medshield.errors import MedShieldError
from medshield.models.bounded import BoundedModel, eval_mode
from medshield.models.checkpoint import resolve_device
from medshield.targets.card import CardError, TargetCard, card_from_run, load_card
from medshield.targets.source import SOURCE_INFO, SOURCES, LoadedNet, file_digest

PROB_EPS = 1e-6
GRADIENTS_UNAVAILABLE = "gradients unavailable: white-box skipped, transfer and label-only attacks run"


class ProbabilitiesToLogits(nn.Module):
    """Probabilities -> logits with a clamp to ``[eps, 1 - eps]``: ``log p`` for softmax outputs (same
    softmax), ``logit p`` for one sigmoid output or per-finding sigmoids."""

    def __init__(self, sigmoid: bool, eps: float = PROB_EPS) -> None:
        super().__init__()
        self.sigmoid, self.eps = sigmoid, eps

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        p = p.clamp(self.eps, 1 - self.eps)
        return torch.logit(p) if self.sigmoid else torch.log(p)


class Columns(nn.Module):
    """``[N]`` outputs as ``[N, 1]`` so every task has a 2-D output."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.unsqueeze(1) if y.ndim == 1 else y.flatten(1)


@dataclass
class Target:
    """A loaded card: the model in pixel space plus what attacks and reports need to know about it.

    ``model`` answers predictions (clean metrics, label-only oracle); ``white_box`` is the
    differentiable model for gradient attacks, ``None`` when gradients are unavailable (an ONNX file
    without an exact PyTorch conversion, a remote endpoint).
    """

    card: TargetCard
    model: nn.Module
    white_box: nn.Module | None
    num_outputs: int
    model_digest: str
    runs_model_code: bool = False
    remote: bool = False
    notes: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def name(self) -> str:
        return self.card.label

    @property
    def format(self) -> str:
        return self.card.model.format

    @property
    def task(self) -> str:
        return self.card.output.task

    @property
    def class_names(self) -> list[str]:
        return list(self.card.output.classes)

    @property
    def positive_names(self) -> list[str]:
        return self.card.output.positive_names

    @property
    def positive_class(self) -> int | None:
        """The disease class index of a binary or single-positive multiclass task (what metrics call positive)."""
        idx = self.card.output.positive_indices
        return idx[0] if len(idx) == 1 and self.task != "multilabel" else None

    @property
    def channels(self) -> int:
        return self.card.input.channels

    @property
    def image_size(self) -> int:
        return self.card.input.size

    @property
    def gradients(self) -> bool:
        return self.white_box is not None

    @property
    def digest(self) -> str:
        """Identity of the system under test: model bytes and card content together."""
        return f"{self.model_digest[:16]}-{self.card.digest()[:16]}"

    def require_gradients(self) -> nn.Module:
        """The white-box model, or a one-line error saying which attacks still run."""
        if self.white_box is None:
            raise MedShieldError(f"{self.name}: {GRADIENTS_UNAVAILABLE}")
        return self.white_box

    @torch.no_grad()
    def is_deterministic(self, x: torch.Tensor | None = None) -> bool:
        """Whether the same input twice gives the same outputs (a randomised model needs EOT attacks)."""
        if x is None:
            g = torch.Generator().manual_seed(0)
            x = torch.rand(2, self.channels, self.image_size, self.image_size, generator=g)
        with eval_mode(self.model):
            a, b = self.model(x.to(self.device)), self.model(x.to(self.device))
        return bool(torch.equal(a, b))

    def identity(self) -> dict[str, Any]:
        """What goes into records and job keys: name, format, and the digests of model and card."""
        return {"target": self.name, "format": self.format, "model_digest": self.model_digest,
                "card_digest": self.card.digest()}

    def describe(self) -> dict[str, Any]:
        return {**self.identity(), "task": self.task, "classes": self.class_names, "positive": self.positive_names,
                "input": {"size": self.image_size, "channels": self.channels, "mean": self.card.input.mean,
                          "std": self.card.input.std, "range": list(self.card.input.range)},
                "output_kind": self.card.output.kind, "num_outputs": self.num_outputs,
                "gradients": self.gradients, "runs_model_code": self.runs_model_code, "remote": self.remote,
                **({"notes": self.notes} if self.notes else {})}


def pixel_model(net: nn.Module, card: TargetCard, num_outputs: int) -> BoundedModel:
    """``net`` (model input -> raw outputs) as a [0, 1]-pixel logits model."""
    layers: list[nn.Module] = [net, Columns()]
    if card.output.kind == "probabilities":
        layers.append(ProbabilitiesToLogits(sigmoid=card.output.task == "multilabel" or num_outputs == 1))
    mean, std = card.input.pixel_mean_std()
    return BoundedModel(nn.Sequential(*layers), num_outputs, mean, std).eval()


@torch.no_grad()
def probe_outputs(net: nn.Module, card: TargetCard, device: torch.device) -> int:
    """Output width from one forward pass on a mid-grey image."""
    x = torch.full((1, card.input.channels, card.input.size, card.input.size), 0.5, device=device)
    mean, std = card.input.pixel_mean_std()
    x = (x - torch.tensor(mean, device=device).view(1, -1, 1, 1)) / torch.tensor(std, device=device).view(1, -1, 1, 1)
    try:
        with eval_mode(net):
            y = net(x)
    except Exception as exc:  # the user's model failed on the card's input shape
        raise CardError(f"{card.where()}: the model fails on a {tuple(x.shape)} input (input.size/channels?): "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    if not isinstance(y, torch.Tensor):
        raise CardError(f"{card.where()}: the model returns {type(y).__name__}, not a tensor of outputs")
    return 1 if y.ndim == 1 else int(math.prod(y.shape[1:]))


def check_outputs(card: TargetCard, n: int) -> None:
    out = card.output
    expected = (1, 2) if out.task == "binary" else (len(out.classes),)
    if n not in expected:
        raise CardError(f"{card.where()}: output.classes: the model gives {n} outputs but a {out.task} task with "
                        f"classes {out.classes} needs {' or '.join(map(str, expected))}")


def build_target(card: TargetCard, device: str | torch.device | None = None) -> Target:
    """Load the card's model through its source and wrap it in pixel space."""
    dev = resolve_device(device or card.device)
    loaded: LoadedNet = SOURCES.get(card.model.format)(card, dev)
    predict_raw = loaded.predict_net or loaded.net
    if loaded.pixel_model is not None:
        model = loaded.pixel_model
        n = int(getattr(model, "num_classes", 0)) or loaded.num_outputs or 0
        white = model if loaded.gradients else None
    else:
        if predict_raw is None:
            raise CardError(f"{card.where()}: format {card.model.format} gave no model")
        n = loaded.num_outputs or card.output.outputs or probe_outputs(predict_raw, card, dev)
        model = pixel_model(predict_raw, card, n).to(dev)
        white = None
        if loaded.gradients and loaded.net is not None:
            white = model if loaded.predict_net is None else pixel_model(loaded.net, card, n).to(dev)
    check_outputs(card, n)
    info = SOURCE_INFO.get(card.model.format, {})
    digest = file_digest(loaded.files) if loaded.files else card.digest()
    return Target(card=card, model=model, white_box=white, num_outputs=n, model_digest=digest,
                  runs_model_code=loaded.runs_model_code or bool(info.get("runs_model_code")),
                  remote=loaded.remote, notes=dict(loaded.notes), device=dev)


def open_target(ref: str | Path | TargetCard | Target, device: str | torch.device | None = None) -> Target:
    """A Target from a card file, a MedShield run folder, a loaded card, or a Target (returned as is)."""
    if isinstance(ref, Target):
        return ref
    if isinstance(ref, TargetCard):
        return build_target(ref, device)
    path = Path(ref).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "configs").is_dir():
        raise CardError(f"{path} looks like a MONAI bundle: write a card with model: {{format: monai_bundle, path: {path}}}")
    if path.is_dir():
        return build_target(card_from_run(path), device or "cpu")
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        return build_target(load_card(path), device)
    raise CardError(f"{path} not found: give a target card (.yaml) or a MedShield run folder")


def ref_name(ref: str | Path | Target) -> str:
    """The name records use for a target reference: a run folder's name, a card's ``name`` (else its stem)."""
    if isinstance(ref, Target):
        return ref.name
    path = Path(ref)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        return load_card(path).label
    return path.name
