"""Pre-trained backbones: ImageNet weights from a local file or the torch hub cache (never downloaded),
or the backbone of another MedShield run (e.g. one trained on the Kermany chest X-rays, the project's own
substitute for ImageNet transfer learning where ImageNet weights cannot be had).

Safetensors files are read directly; torchvision ``.pth`` files from the hub cache are read with
``torch.load(weights_only=True)``, PyTorch's restricted loader that refuses arbitrary objects. A run's
weights are always ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from medshield.errors import CheckpointError
from medshield.models.nets import backbone_and_head

log = logging.getLogger(__name__)
HUB_PREFIX = {"resnet18": "resnet18-", "resnet50": "resnet50-", "densenet121": "densenet121-"}
RUN_WEIGHTS, RUN_CONFIG = "model.safetensors", "config.json"  # a run folder's files (as models.checkpoint)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedSource:
    """Where a backbone comes from: ``kind`` is ``imagenet`` (hub cache), ``file`` (ImageNet weights on
    disk) or ``run`` (a MedShield run folder; ``model`` is its config's model section)."""

    kind: str
    path: Path
    model: dict[str, Any] | None = None
    dataset: str | None = None

    @property
    def weights(self) -> Path:
        return self.path / RUN_WEIGHTS if self.kind == "run" else self.path

    def describe(self) -> dict[str, Any]:
        """What a fine-tuned run records in its config (so its identity changes with the backbone)."""
        out: dict[str, Any] = {"kind": self.kind, "path": str(self.path), "sha256": sha256_file(self.weights)}
        if self.kind == "run" and self.model is not None:
            out.update(model=self.model.get("name"), in_channels=self.model.get("in_channels"),
                       image_size=self.model.get("image_size"), dataset=self.dataset)
        return out

    def normalisation(self, in_channels: int) -> tuple[list[float], list[float]]:
        """Input mean/std the backbone was trained with: the run's own, else ImageNet's (grey: averaged)."""
        if self.kind == "run" and self.model and self.model.get("mean") and self.model.get("std"):
            return list(self.model["mean"]), list(self.model["std"])
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if in_channels == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        return list(mean), list(std)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_source(arch: str, source: str | Path) -> PretrainedSource:
    """``"imagenet"`` (torch hub cache), a MedShield run folder, or a weights file."""
    if str(source).lower() == "imagenet":
        return PretrainedSource("imagenet", find_hub_weights(arch))
    path = Path(source).expanduser()
    if not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"pretrained weights {path} not found (give 'imagenet', a weights file or a run folder)")
        return PretrainedSource("file", path)
    if not (path / RUN_CONFIG).is_file() or not (path / RUN_WEIGHTS).is_file():
        raise CheckpointError(f"--pretrained {path}: not a MedShield run folder (needs {RUN_CONFIG} and {RUN_WEIGHTS})")
    try:
        config = json.loads((path / RUN_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path / RUN_CONFIG} is not valid JSON ({exc})") from exc
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(f"{path / RUN_CONFIG} has no model section with a name")
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return PretrainedSource("run", path, model, data.get("dataset"))


def find_hub_weights(arch: str) -> Path:
    """The torchvision ImageNet checkpoint for ``arch`` in the torch hub cache."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    prefix = HUB_PREFIX.get(arch)
    hits = sorted(folder.glob(f"{prefix}*")) if prefix and folder.is_dir() else []
    if not hits:
        raise CheckpointError(
            f"no ImageNet weights for {arch} in {folder}; MedShield never downloads weights — copy "
            f"torchvision's {prefix}*.pth there or pass a file with --pretrained PATH"
        )
    return hits[-1]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path} not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # restricted unpickler refusal or corrupt file
        raise CheckpointError(f"cannot read {path} safely ({exc}); convert it to .safetensors") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def torchvision_to_monai(key: str) -> str:
    """Rename torchvision DenseNet keys to MONAI's (``denselayer1.norm1`` -> ``denselayer1.layers.norm1``)."""
    return re.sub(r"(denselayer\d+)\.(norm|relu|conv)\.?(\d)", r"\1.layers.\2\3", key)


def load_pretrained(net: nn.Module, arch: str, source: str | Path | PretrainedSource) -> int:
    """Copy backbone weights into ``net``; returns how many tensors were loaded.

    ``source`` is ``"imagenet"`` (torch hub cache), a weights file or a MedShield run folder (see
    :func:`load_run_backbone`). From ImageNet weights, grey inputs get the first conv's weights summed
    over RGB; shape mismatches (e.g. the small-input stem) are skipped with a warning.
    """
    src = source if isinstance(source, PretrainedSource) else resolve_source(arch, source)
    if src.kind == "run":
        return load_run_backbone(net, arch, src)
    path = src.path
    state = {torchvision_to_monai(k): v for k, v in read_state_dict(path).items()}
    own = net.state_dict()
    loaded, skipped = {}, []
    for key, value in state.items():
        if key not in own or key.startswith(("fc.", "classifier.", "class_layers.")):
            continue
        target = own[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != target.shape:
            skipped.append(key)
            continue
        loaded[key] = value
    if not loaded:
        raise CheckpointError(f"no tensor in {path} matches {arch}; is it the right architecture?")
    if skipped:
        warnings.warn(f"pretrained: skipped {len(skipped)} tensors with other shapes ({skipped[:3]}...)", stacklevel=2)
    net.load_state_dict(loaded, strict=False)
    log.info("loaded %d pretrained tensors from %s", len(loaded), path)
    return len(loaded)


def load_run_backbone(net: nn.Module, arch: str, src: PretrainedSource) -> int:
    """Copy every backbone tensor (weights and BatchNorm statistics) of a run of the same architecture,
    channels and stem into ``net``; the run's classification head is skipped (its class count may differ).
    Anything else that differs is a one-line :class:`CheckpointError`."""
    model = src.model or {}
    where = f"--pretrained {src.path}"
    if model.get("name") != arch:
        raise CheckpointError(f"{where}: that run is a {model.get('name')}, this model a {arch}; "
                              "the backbone must come from the same architecture")
    _, head = backbone_and_head(arch, net)
    skip = (f"{head}.",)
    state = {k[4:]: v for k, v in read_state_dict(src.weights).items() if k.startswith("net.")}
    theirs = {k: v for k, v in state.items() if not k.startswith(skip)}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(skip)}
    first_conv = next((v for v in own.values() if v.ndim == 4), None)
    channels = model.get("in_channels")
    if first_conv is not None and channels != first_conv.shape[1]:
        raise CheckpointError(f"{where}: that run takes {channels}-channel images, this model "
                              f"{first_conv.shape[1]}-channel ones; train both with or both without --rgb")
    missing = sorted(set(own) ^ set(theirs))
    shapes = [f"{k} is {list(theirs[k].shape)} there, {list(v.shape)} here" for k, v in own.items()
              if k in theirs and v.shape != theirs[k].shape]
    if missing or shapes:
        first = f"{missing[0]} is only in one of them" if missing else shapes[0]
        raise CheckpointError(f"{where}: its {arch} backbone does not fit this model ({first}; that run was "
                              f"trained at {model.get('image_size')} px and the stem depends on the image size)")
    net.load_state_dict(theirs, strict=False)
    log.info("loaded the %s backbone (%d tensors) of run %s", arch, len(theirs), src.path)
    return len(theirs)
