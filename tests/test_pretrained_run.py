"""A backbone pre-trained by another MedShield run (`--pretrained RUN_DIR`): loaded without its head,
recorded in the config, kept frozen (BatchNorm statistics too), and refused when it does not fit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medshield import api
from medshield.cli import app
from medshield.data import Dataset, ImageSet
from medshield.errors import CheckpointError, MedShieldError
from medshield.models import create_model, load_run
from medshield.models.checkpoint import save_run
from medshield.models.train import TrainConfig, train_model

runner = CliRunner()


def _source_run(path: Path, name: str = "smallcnn", num_classes: int = 3, seed: int = 5, **kw: object) -> Path:
    """A run folder whose weights (and BatchNorm statistics) are far from a fresh model's."""
    torch.manual_seed(seed)
    model = create_model(name=name, num_classes=num_classes, **kw)
    with torch.no_grad():
        for key, value in model.net.state_dict().items():
            if value.is_floating_point():
                value.add_(torch.randn_like(value) * 0.1 + 0.3)
    save_run(path, model, {"data": {"dataset": "demo"}})
    return path


def _backbone(model: torch.nn.Module, head: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.net.state_dict().items() if not k.startswith(f"{head}.")}


def test_run_backbone_is_loaded_head_skipped_and_recorded(tmp_path: Path) -> None:
    run = _source_run(tmp_path / "kermany")
    source, _ = load_run(run)
    model = create_model(name="smallcnn", num_classes=2, pretrained=str(run), freeze_backbone=True)
    theirs, ours = _backbone(source, "head"), _backbone(model, "head")
    assert ours.keys() == theirs.keys() and len(ours) > 10
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # weights and BN running statistics
    assert model.net.head[-1].out_features == 2  # a new head for another class count
    assert model.config.mean == source.config.mean  # the source run's normalisation, not ImageNet's
    digest = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert model.config.backbone == {"kind": "run", "path": str(run), "sha256": digest, "model": "smallcnn",
                                     "in_channels": 1, "image_size": 28, "dataset": "demo"}
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head"}


def test_frozen_backbone_does_not_change_in_training(tmp_path: Path) -> None:
    run = _source_run(tmp_path / "src", num_classes=2)
    model = create_model(name="smallcnn", num_classes=2, pretrained=str(run), freeze_backbone=True)
    before, head = _backbone(model, "head"), model.net.head[-1].weight.clone()
    g = torch.Generator().manual_seed(0)
    small = ImageSet(torch.randint(0, 256, (64, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(64) % 2)
    ds = Dataset("noise", small, small, small, ["a", "b"], 1)
    train_model(model, ds, tmp_path / "ft", TrainConfig(epochs=1, batch_size=32, monitor="loss"))
    after = _backbone(model, "head")
    assert any(k.endswith("running_mean") for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    assert not torch.equal(head, model.net.head[-1].weight)  # the head did train


@pytest.mark.parametrize(("kw", "match"), [
    ({"name": "resnet18"}, "that run is a smallcnn, this model a resnet18"),
    ({"name": "smallcnn", "in_channels": 3}, "1-channel images, this model 3-channel"),
    ({"name": "smallcnn", "image_size": 64}, "does not fit this model.*trained at 28 px"),
])
def test_backbone_mismatch_is_one_line(tmp_path: Path, kw: dict, match: str) -> None:
    run = _source_run(tmp_path / "src")
    with pytest.raises(CheckpointError, match=match) as err:
        create_model(pretrained=str(run), **kw)
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a MedShield run folder"):
        create_model(pretrained=str(tmp_path / "empty"))


def test_cli_fine_tunes_from_a_run_and_identity_follows_the_backbone(tmp_path: Path) -> None:
    src = _source_run(tmp_path / "src", num_classes=2)
    common = ["train", "--dataset", "demo", "--epochs", "1", "--batch-size", "128", "--no-augment"]
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "ft"), "--pretrained", str(src), "--freeze-backbone"])
    assert r.exit_code == 0, r.output
    backbone = json.loads((tmp_path / "ft" / "config.json").read_text())["model"]["backbone"]
    assert backbone["kind"] == "run" and backbone["path"] == str(src)
    model, _ = load_run(tmp_path / "ft")  # the fine-tuned run reloads (new head, frozen backbone)
    assert torch.equal(model.net.features[0][0].weight, load_run(src)[0].net.features[0][0].weight)
    other = _source_run(tmp_path / "src2", num_classes=2, seed=6)  # other weights, same architecture
    again = create_model(name="smallcnn", pretrained=str(other), freeze_backbone=True).config.backbone
    assert again["sha256"] != backbone["sha256"]  # so the config (part of a job's identity) differs
    with pytest.raises(MedShieldError, match="is the run being trained"):
        api.train("demo", src, pretrained=str(src), overwrite=True)
    assert (src / "model.safetensors").is_file()
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "bad"), "--model", "resnet18", "--pretrained", str(src)])
    assert r.exit_code == 2 and "error: --pretrained" in r.output and "same architecture" in r.output


def test_safetensors_header_starting_like_a_pickle_loads(tmp_path: Path) -> None:
    """A header length whose low byte is 0x80 (one file in 256) once read as 'a pickle checkpoint'."""
    from safetensors.torch import save_file

    from medshield.models.checkpoint import load_tensors

    path = tmp_path / "w.safetensors"
    for pad in range(64):
        save_file({"w": torch.ones(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(load_tensors(path)["w"], torch.ones(2))
