"""Local model sources: files on this machine. None of them unpickles an untrusted file.

| format | reads | runs the model's own code? |
| --- | --- | --- |
| ``medshield_run`` | ``model.safetensors`` + ``config.json`` of ``medshield train`` | no |
| ``python`` | ``module:factory`` + safetensors or a ``weights_only`` state dict | **yes**: your factory module |
| ``torchscript`` | a ``torch.jit.save`` archive | **yes**: the archive's TorchScript code (not arbitrary Python) |
| ``onnx`` | an ``.onnx`` file, run by ONNX Runtime; gradients through an exact PyTorch interpreter | no |
| ``monai_bundle`` | ``configs/inference.json`` ``network_def`` + ``models/model.safetensors`` or ``model.pt`` | **yes**: MONAI instantiates the config's ``_target_`` classes and evaluates its ``$`` expressions |
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from medshield.errors import CheckpointError
from medshield.models.checkpoint import load_run, load_tensors
from medshield.targets.card import CardError, TargetCard
from medshield.targets.onnx_torch import OnnxModule, UnsupportedOnnx
from medshield.targets.source import LoadedNet, register_source

try:  # optional: pip install 'medshield[targets]'
    import onnx
    import onnxruntime
except ImportError:  # pragma: no cover - exercised where the extra is absent
    onnx = onnxruntime = None

ONNX_CHECK_TOLERANCE = 1e-4  # max |torch - onnxruntime| on the check inputs for an "exact" conversion
ONNX_CHECK_INPUTS = 4


def read_state_dict(path: Path, field: str, card: TargetCard) -> dict[str, torch.Tensor]:
    """Weights from safetensors, or a ``torch.save`` state dict read with ``weights_only=True`` (PyTorch's
    restricted unpickler: tensors and containers only, never arbitrary objects)."""
    if not path.is_file():
        raise CardError(f"{card.where()}: {field}: {path} not found")
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head[:2] == b"PK" or head[:1] == b"\x80":
            state: Any = torch.load(path, map_location="cpu", weights_only=True)
        else:
            state = load_tensors(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CardError(f"{card.where()}: {field}: {path} is not a plain state dict; MedShield reads weights only with "
                        f"weights_only=True or safetensors ({str(exc).splitlines()[0][:160]})") from None
    except CheckpointError as exc:
        raise CardError(f"{card.where()}: {field}: {exc}") from None
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = [state[k] for k in ("state_dict", "model", "network", "model_state_dict") if isinstance(state.get(k), dict)]
        state = nested[0] if nested else state  # {"state_dict": {...}, "epoch": 3} style checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CardError(f"{card.where()}: {field}: {path} does not hold a state dict of tensors")
    return state


def load_weights(net: nn.Module, path: Path, field: str, card: TargetCard) -> None:
    state = read_state_dict(path, field, card)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CardError(f"{card.where()}: {field}: {path} does not fit the network ({str(exc).splitlines()[0][:200]}...)") from None


@register_source("medshield_run", description="a run folder written by `medshield train` (model.safetensors + config.json)")
def load_medshield_run(card: TargetCard, device: torch.device) -> LoadedNet:
    run = card.existing(card.model.path)
    model, _ = load_run(run, device)
    return LoadedNet(net=None, pixel_model=model, gradients=True, files=[run / "model.safetensors", run / "config.json"],
                     num_outputs=model.num_classes)


@register_source("torchscript", runs_model_code=True, description="a torch.jit.save archive (runs its TorchScript code)")
def load_torchscript(card: TargetCard, device: torch.device) -> LoadedNet:
    path = card.existing(card.model.path)
    try:
        net = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as exc:
        raise CardError(f"{card.where()}: model.path: {path} is not a TorchScript archive "
                        f"({str(exc).splitlines()[0][:160]}); save one with torch.jit.save(torch.jit.script(model))") from None
    return LoadedNet(net=net.eval(), gradients=True, files=[path], runs_model_code=True)


def import_factory(card: TargetCard) -> Any:
    """The callable named by ``model.factory`` (``module:function``), imported with ``model.code`` (default
    the card's folder) first on ``sys.path``."""
    spec = card.model.factory or ""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CardError(f"{card.where()}: model.factory: expected 'module:function', got {spec!r}")
    code = card.existing(card.model.code, "model.code") if card.model.code else card.folder
    sys.path.insert(0, str(code))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CardError(f"{card.where()}: model.factory: cannot import {module_name!r} from {code} ({exc})") from None
    finally:
        sys.path.remove(str(code))
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CardError(f"{card.where()}: model.factory: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CardError(f"{card.where()}: model.factory: {spec} is not callable")
    return obj


@register_source("python", runs_model_code=True,
                 description="module:factory building an nn.Module + safetensors or weights_only state dict (runs your code)")
def load_python(card: TargetCard, device: torch.device) -> LoadedNet:
    factory = import_factory(card)
    try:
        net = factory(**card.model.kwargs)
    except TypeError as exc:
        raise CardError(f"{card.where()}: model.kwargs: {card.model.factory} rejected them ({exc})") from None
    if not isinstance(net, nn.Module):
        raise CardError(f"{card.where()}: model.factory: {card.model.factory} returned {type(net).__name__}, not an nn.Module")
    files = factory_files(factory)
    if card.model.weights:
        weights = card.resolve(card.model.weights, "model.weights")
        load_weights(net, weights, "model.weights", card)
        files.append(weights)
    return LoadedNet(net=net.to(device).eval(), gradients=True, files=files, runs_model_code=True,
                     notes={} if card.model.weights else {"weights": "none given: the factory's own initialisation"})


def factory_files(factory: Any) -> list[Path]:
    """The source file of the factory's module: the model's code is part of its identity, so stored
    results are not reused after the code changes (the weights alone do not say what the model computes)."""
    try:
        source = inspect.getsourcefile(factory)
    except TypeError:
        source = None
    return [Path(source)] if source and Path(source).is_file() else []


class OrtNet(nn.Module):
    """An ONNX Runtime session as a (non-differentiable) module: float32 NCHW in, outputs out."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = isinstance(inp.shape[0], int) and inp.shape[0] == 1
        self.dtype = {"tensor(double)": "float64", "tensor(float16)": "float16"}.get(inp.type, "float32")
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # so .parameters() gives the device

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(self.dtype)
        if self.fixed_batch:
            outs = [self.session.run(None, {self.input_name: arr[i:i + 1]})[0] for i in range(arr.shape[0])]
            out = torch.from_numpy(np.concatenate(outs)) if outs else torch.empty(0)
        else:
            out = torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])
        return out.float().to(x.device)


class OnnxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    convert: bool = True  # try the exact PyTorch conversion for white-box attacks


@register_source("onnx", options=OnnxOptions,
                 description="an .onnx file: ONNX Runtime predictions; white-box through an exact PyTorch conversion")
def load_onnx(card: TargetCard, device: torch.device) -> LoadedNet:
    if onnx is None or onnxruntime is None:
        raise CardError(f"{card.where()}: model.format onnx needs onnx and onnxruntime: pip install 'medshield[targets]'")
    path = card.existing(card.model.path)
    try:
        proto = onnx.load(str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnx/onnxruntime raise their own exception types for corrupt files
        raise CardError(f"{card.where()}: model.path: {path} is not a valid ONNX model "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    ort_net = OrtNet(session)
    notes: dict[str, Any] = {"predictions": f"onnxruntime {onnxruntime.__version__}"}
    torch_net = None
    if card.source_options(OnnxOptions).convert:
        torch_net, conversion = convert_onnx(proto, ort_net, card)
        notes.update(conversion)
    return LoadedNet(net=torch_net.to(device) if torch_net is not None else None, gradients=torch_net is not None,
                     predict_net=ort_net, files=[path], notes=notes)


def convert_onnx(proto: Any, ort_net: OrtNet, card: TargetCard) -> tuple[nn.Module | None, dict[str, Any]]:
    """The PyTorch interpreter of the graph, kept only when it matches ONNX Runtime on a few inputs."""
    try:
        net = OnnxModule(proto).eval()
    except UnsupportedOnnx as exc:
        return None, {"conversion": None, "gradients_unavailable": str(exc)}
    g = torch.Generator().manual_seed(0)
    s, c = card.input.size, card.input.channels
    pixels = torch.rand(ONNX_CHECK_INPUTS, c, s, s, generator=g)
    mean, std = card.input.pixel_mean_std()
    x = (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    try:
        with torch.no_grad():
            diff = float((net(x).float() - ort_net(x)).abs().max())
    except Exception as exc:  # an operator the interpreter got wrong for this graph's shapes
        return None, {"conversion": None, "gradients_unavailable": f"conversion failed: {type(exc).__name__}: {exc}"[:300]}
    info = {"conversion": "medshield.targets.onnx_torch", "conversion_max_abs_diff": diff,
            "conversion_check_inputs": ONNX_CHECK_INPUTS}
    if not diff <= ONNX_CHECK_TOLERANCE:
        return None, {**info, "gradients_unavailable": f"conversion differs from onnxruntime by {diff:.3g}"}
    return net, info


@register_source("monai_bundle", runs_model_code=True,
                 description="a MONAI bundle folder: configs/inference.json network_def + models/model.safetensors|model.pt")
def load_monai_bundle(card: TargetCard, device: torch.device) -> LoadedNet:
    root = card.existing(card.model.path)
    configs = root / "configs"
    config_file = next((configs / f"inference.{ext}" for ext in ("json", "yaml", "yml") if (configs / f"inference.{ext}").is_file()), None)
    if config_file is None or not (configs / "metadata.json").is_file():
        raise CardError(f"{card.where()}: model.path: {root} is not a MONAI bundle (needs configs/metadata.json and "
                        "configs/inference.json)")
    from monai.bundle import ConfigParser  # MONAI takes seconds to import: only for bundles

    parser = ConfigParser()
    try:
        parser.read_meta(str(configs / "metadata.json"))
        parser.read_config(str(config_file))
        net = parser.get_parsed_content("network_def")
    except KeyError:
        raise CardError(f"{card.where()}: model.path: {config_file} has no network_def") from None
    except Exception as exc:  # MONAI raises many kinds for a bad config
        raise CardError(f"{card.where()}: model.path: cannot build network_def from {config_file} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if card.model.weights:
        weights, field = card.resolve(card.model.weights, "model.weights"), "model.weights"
    else:
        candidates = [root / "models" / "model.safetensors", root / "models" / "model.pt"]
        weights = next((p for p in candidates if p.is_file()), candidates[-1])
        field = "model.path"
    load_weights(net, weights, field, card)
    return LoadedNet(net=net.to(device).eval(), gradients=True, files=[weights, configs], runs_model_code=True)
