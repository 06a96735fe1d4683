"""Model sources: the registry that turns a card's ``model:`` section into a network.

A source is a function ``load(card, device) -> LoadedNet`` registered under the card's
``model.format`` with :func:`register_source`. The network it returns takes the model's own
input, ``(pixel * (range[1] - range[0]) + range[0] - mean) / std`` (NCHW float32), and returns the
raw outputs the card's ``output.kind`` names (logits or probabilities); :mod:`medshield.targets.target`
adds normalisation and the probability-to-logit step around it, so every attack sees [0, 1] pixels
and logits.

Plugging in a new source (a remote endpoint, another file format)::

    class MyOptions(pydantic.BaseModel):          # the extra ``model.*`` fields the format takes
        url: str
        timeout: float = 30.0

    @register_source("myformat", options=MyOptions, runs_model_code=False,
                     description="one line for `medshield target formats`")
    def load_myformat(card: TargetCard, device: torch.device) -> LoadedNet:
        opts = card.source_options(MyOptions)       # validated at card load: errors name card and field
        return LoadedNet(net=MyModule(opts.url), gradients=False, files=[], remote=True)

and import the module in ``medshield/targets/__init__.py`` so it registers. Nothing here unpickles:
weights come from safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel
from torch import nn

from medshield.registry import Registry

if TYPE_CHECKING:
    from medshield.targets.card import TargetCard


@dataclass
class LoadedNet:
    """What a source hands back.

    - ``net``: model input (normalised, NCHW float32) -> raw outputs ``[N, K]`` (or ``[N]``).
    - ``gradients``: ``net`` is differentiable end to end (white-box attacks may run).
    - ``files``: the files whose bytes identify the model (hashed into :attr:`Target.digest`).
    - ``runs_model_code``: loading executed code shipped with the model (TorchScript, Python factory, bundle).
    - ``predict_net``: optional separate prediction path (ONNX Runtime beside its PyTorch conversion); the
      label-only oracle and clean metrics use it, white-box attacks use ``net``.
    - ``num_outputs``: known output width (skips the probe forward pass, e.g. for remote endpoints).
    - ``remote``: queries leave the process (the oracle counts requests).
    - ``notes``: facts for ``medshield target check`` (conversion used, max abs difference, ...).
    """

    net: nn.Module | None
    gradients: bool
    files: list[Path] = field(default_factory=list)
    runs_model_code: bool = False
    predict_net: nn.Module | None = None
    num_outputs: int | None = None
    remote: bool = False
    notes: dict[str, Any] = field(default_factory=dict)
    pixel_model: nn.Module | None = None  # a ready [0,1]-pixel logits model (MedShield runs), used as is


SourceLoader = Callable[["TargetCard", torch.device], LoadedNet]
SOURCES: Registry[LoadedNet] = Registry("model format")
SOURCE_OPTIONS: dict[str, type[BaseModel] | None] = {}
SOURCE_INFO: dict[str, dict[str, Any]] = {}


def register_source(name: str, options: type[BaseModel] | None = None, runs_model_code: bool = False,
                    description: str = "") -> Callable[[SourceLoader], SourceLoader]:
    """Register a loader for ``model.format: name``; ``options`` validates the format's extra ``model.*`` fields."""

    def deco(loader: SourceLoader) -> SourceLoader:
        SOURCES.register(name)(loader)
        SOURCE_OPTIONS[name.lower()] = options
        SOURCE_INFO[name.lower()] = {"runs_model_code": runs_model_code, "description": description}
        return loader

    return deco


def file_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over the bytes of ``paths`` (folders: every file inside, sorted), names excluded."""
    h = hashlib.sha256()
    for path in sorted({Path(p) for p in paths}):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
