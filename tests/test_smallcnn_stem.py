"""SmallCNN stays cheap at every input size (a strided stem above 63 px) and old runs still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medshield.models import create_model, load_run
from medshield.models.checkpoint import save_tensors
from medshield.models.nets import SmallCNN, conv_macs, smallcnn_stem


@pytest.mark.parametrize(("size", "stem"), [(28, 1), (63, 1), (64, 2), (128, 4), (224, 4)])
def test_stem_brings_inputs_to_32_63_px(size: int, stem: int) -> None:
    assert smallcnn_stem(size) == stem
    assert 28 <= size // stem < 64


def test_cost_at_224_is_close_to_cost_at_56() -> None:
    big = conv_macs(create_model(name="smallcnn", image_size=224), 224)
    small = conv_macs(create_model(name="smallcnn", image_size=56), 56)
    legacy = conv_macs(SmallCNN(1, 2, stem=1), 224)
    assert big < 1.5 * small  # the stem and the 32-channel first block add about a quarter
    assert legacy > 10 * big  # what it cost before


def test_run_without_stem_field_loads_as_before(tmp_path: Path) -> None:
    """A 128 px smallcnn run written before ``stem`` existed (no field in config.json) loads unchanged."""
    legacy = create_model(name="smallcnn", image_size=128, stem=1)
    cfg = legacy.config.to_dict()
    del cfg["stem"]
    (tmp_path / "config.json").write_text(json.dumps({"model": cfg}))
    save_tensors(tmp_path / "model.safetensors", legacy.state_dict())
    model, _ = load_run(tmp_path)
    x = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x), legacy.eval()(x))
    assert model.config.stem == 1


def test_new_run_round_trips_its_stem(tmp_path: Path) -> None:
    model = create_model(name="smallcnn", image_size=128)
    assert model.config.stem == 4
    (tmp_path / "config.json").write_text(json.dumps({"model": model.config.to_dict()}))
    save_tensors(tmp_path / "model.safetensors", model.state_dict())
    loaded, _ = load_run(tmp_path)
    assert loaded.config.stem == 4
