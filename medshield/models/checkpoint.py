"""Run checkpoints: ``model.safetensors`` + ``config.json``. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medshield.errors import CheckpointError, MedShieldError
from medshield.models.bounded import BoundedModel
from medshield.models.factory import ModelConfig, create_model, replace_head
from medshield.types import to_jsonable

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(to_jsonable(obj), indent=2) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} not found") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a pickle/zip checkpoint is refused with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header ("{"); its first byte
    # may well be 0x80 or its first two "PK", so those only mean pickle/zip when no "{" follows
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path} is a pickle checkpoint; MedShield never unpickles files. Save a state dict with "
            "safetensors.torch.save_file instead"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from exc


def save_run(run_dir: Path, model: BoundedModel, extra: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (model config + ``extra``) into ``run_dir``."""
    run_dir = Path(run_dir)
    save_tensors(run_dir / MODEL_FILE, model.state_dict())
    write_json(run_dir / CONFIG_FILE, {"model": model.config.to_dict(), **(extra or {})})


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available) as a ``torch.device``; a clear error
    when CUDA is asked for and absent."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise MedShieldError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedShieldError(f"device {device!r} asked for but this PyTorch sees no CUDA GPU; use --device cpu")
    return dev


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[BoundedModel, dict[str, Any]]:
    """Rebuild the model of a run directory (eval mode) and return it with its config."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found (train one with `medshield train`)")
    config = read_json(run_dir / CONFIG_FILE)
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} has no 'model' section")
    if not isinstance(config["model"], dict) or not isinstance(config.get("data", {}), dict):
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: 'model' and 'data' must be JSON objects")
    fields = {k: v for k, v in config["model"].items() if k in ModelConfig.__dataclass_fields__}
    fields.setdefault("stem", 1)  # runs written before the smallcnn stem existed had none
    for key in ("in_channels", "num_classes", "image_size"):
        value = fields.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{run_dir / CONFIG_FILE}: model.{key} must be a positive integer, got {value!r}")
    if not isinstance(fields.get("name", ""), str):
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: model.name must be a string, got {fields['name']!r}")
    dropout = fields.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: model.dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(fields.get("backbone") or {}, dict):
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: model.backbone must be a JSON object, got {fields['backbone']!r}")
    for key in ("mean", "std"):
        values = fields.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise CheckpointError(f"{run_dir / CONFIG_FILE}: model.{key} must be a list of numbers, got {values!r}")
    try:
        cfg = ModelConfig(**fields)
        cfg.pretrained = None  # weights come from the checkpoint
        was_pretrained = config["model"].get("pretrained")
        model = create_model(cfg)
        if was_pretrained and not cfg.freeze_backbone:  # create_model already gave a frozen-backbone run its head
            replace_head(cfg.name, model.net, cfg.num_classes, cfg.dropout)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # wrong types in a hand-edited config.json
        reason = str(exc).strip().splitlines()[0][:150] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{run_dir / CONFIG_FILE} has malformed model settings ({reason})") from None
    state = load_tensors(run_dir / MODEL_FILE)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{run_dir / MODEL_FILE} does not match its config.json ({str(exc)[:200]})") from exc
    model.config.pretrained = was_pretrained
    return model.to(resolve_device(device)).eval(), config
