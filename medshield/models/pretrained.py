"""Loading ImageNet weights from a local file or the torch hub cache (never downloaded).

Safetensors files are read directly; torchvision ``.pth`` files from the hub cache are read with
``torch.load(weights_only=True)``, PyTorch's restricted loader that refuses arbitrary objects.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from medshield.errors import CheckpointError

log = logging.getLogger(__name__)
HUB_PREFIX = {"resnet18": "resnet18-", "resnet50": "resnet50-", "densenet121": "densenet121-"}


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


def load_pretrained(net: nn.Module, arch: str, source: str | Path) -> int:
    """Copy matching backbone weights into ``net``; returns how many tensors were loaded.

    ``source`` is ``"imagenet"`` (torch hub cache) or a file. Grey inputs get the first conv's
    weights summed over RGB; shape mismatches (e.g. the small-input stem) are skipped with a warning.
    """
    path = find_hub_weights(arch) if str(source).lower() == "imagenet" else Path(source).expanduser()
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
