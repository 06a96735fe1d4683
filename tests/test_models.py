from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medshield.attacks import ExpectationModel
from medshield.defenses.inference import DND
from medshield.errors import CheckpointError, MedShieldError
from medshield.models import class_logits, create_model, load_run, predict_labels, save_run
from medshield.models.bounded import eval_mode
from medshield.models.checkpoint import load_tensors
from medshield.models.pretrained import load_pretrained, torchvision_to_monai


@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "resnet50", "densenet121"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 64])
def test_factory_shapes(name: str, channels: int, size: int) -> None:
    model = create_model(name=name, in_channels=channels, num_classes=3, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_factory_full_size(name: str) -> None:
    model = create_model(name=name, in_channels=3, num_classes=2, image_size=224).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 2)


def test_unknown_model_suggests() -> None:
    with pytest.raises(MedShieldError, match="did you mean 'resnet18'"):
        create_model(name="resnet81")


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="image_size"):
        create_model(name="smallcnn", image_size=16)
    with pytest.raises(ValueError, match="in_channels"):
        create_model(name="smallcnn", in_channels=2)


def test_normalisation_inside_wrapper() -> None:
    model = create_model(name="smallcnn").eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - 0.5) / 0.5))


def test_single_logit_helpers() -> None:
    z = torch.tensor([[-2.0], [3.0]])
    assert predict_labels(z).tolist() == [0, 1]
    assert torch.allclose(torch.softmax(class_logits(z), 1)[:, 1], torch.sigmoid(z[:, 0]))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = create_model(name="resnet18", num_classes=1).eval()
    save_run(tmp_path, model, {"note": "x"})
    again, config = load_run(tmp_path)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert config["note"] == "x" and config["model"]["num_classes"] == 1


def test_pickle_checkpoint_refused(tmp_path: Path) -> None:
    model = create_model(name="smallcnn")
    save_run(tmp_path, model)
    torch.save(model.state_dict(), tmp_path / "model.safetensors")  # a pickle in disguise
    with pytest.raises(CheckpointError, match="pickle"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_tensors(tmp_path / "nope.safetensors")


def test_transfer_learning_from_local_file(tmp_path: Path) -> None:
    source = create_model(name="resnet18", in_channels=3, image_size=64).net
    weights = {k: v for k, v in source.state_dict().items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "w.safetensors"))
    model = create_model(name="resnet18", in_channels=1, image_size=64, pretrained=str(tmp_path / "w.safetensors"),
                         freeze_backbone=True, num_classes=2)
    assert torch.allclose(model.net.conv1.weight, weights["conv1.weight"].sum(1, keepdim=True))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("net.fc") for n in trainable)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.net.fc)
    assert model.config.mean[0] == pytest.approx(0.449, abs=1e-3)  # ImageNet statistics for pretrained


def test_torchvision_densenet_keys() -> None:
    assert torchvision_to_monai("features.denseblock1.denselayer1.norm.1.weight") == \
        "features.denseblock1.denselayer1.layers.norm1.weight"
    assert torchvision_to_monai("features.denseblock1.denselayer2.conv2.weight") == \
        "features.denseblock1.denselayer2.layers.conv2.weight"


def test_pretrained_missing_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(CheckpointError, match="never downloads"):
        load_pretrained(create_model(name="resnet18").net, "resnet18", "imagenet")


def test_resolve_device() -> None:
    from medshield.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MedShieldError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MedShieldError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_load_run_on_device(tmp_path: Path) -> None:
    save_run(tmp_path / "run", create_model(name="smallcnn", num_classes=2), {"data": {}})
    loaded, _ = load_run(tmp_path / "run", "auto")
    assert next(loaded.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_eval_mode_restores_each_submodule_not_the_wrapper_recursively() -> None:
    """A fresh wrapper (train mode) around an eval-mode model with dropout: after an attack-style
    ``eval_mode(wrapper)`` the wrapped model must still be in eval mode (its predictions deterministic)."""
    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    inner.eval()
    for wrapper in (DND(inner, m=0.0, n=0.0), ExpectationModel(inner, samples=2)):
        assert wrapper.training
        with eval_mode(wrapper):
            assert not wrapper.training and not inner.training
        assert wrapper.training and not any(m.training for m in inner.modules())
        x = torch.rand(16, 1, 2, 2)
        with torch.no_grad():
            assert torch.equal(wrapper(x), wrapper(x))
