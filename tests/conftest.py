"""Shared fixtures: tiny models and data, and the real datasets in ../shared/data (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from medshield.models.bounded import BoundedModel
from medshield.models.factory import ModelConfig

os.environ.setdefault("MEDSHIELD_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDSHIELD_TEST_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real MedMNIST files; tests that need them skip with a reason where they are absent."""
    if not (SHARED_DATA / "pneumoniamnist.npz").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (set MEDSHIELD_TEST_DATA to the folder holding pneumoniamnist.npz)")
    return SHARED_DATA


class TinyNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = nn.functional.adaptive_avg_pool2d(h, 4)
        return self.fc(h.flatten(1))


class MeanThreshold(nn.Module):
    """Two logits ``[-s, s] * scale`` with ``s`` the mean pixel minus ``threshold``: class 1 above it. A
    linear boundary whose distance from any image is known; the parameter lets ``model_label_fn`` find
    the device."""

    def __init__(self, threshold: float = 0.5, scale: float = 10.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True) - self.threshold
        return torch.cat([-m, m], 1) * self.scale


def tiny_model(in_channels: int = 1, num_classes: int = 2, seed: int = 0) -> BoundedModel:
    """A tiny deterministic CNN in a BoundedModel (eval mode)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BoundedModel(TinyNet(in_channels, num_classes), num_classes)
    model.config = ModelConfig(name="tiny", in_channels=in_channels, num_classes=num_classes)  # type: ignore[assignment]
    return model.eval()


@pytest.fixture
def tiny() -> BoundedModel:
    return tiny_model()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: ``smallcnn`` trained for 2 epochs on the synthetic demo data (accuracy > 0.9)."""
    from medshield.api import train
    from medshield.models.train import TrainConfig

    run = tmp_path_factory.mktemp("demo_model") / "run"
    train("demo", run, train_config=TrainConfig(epochs=2, batch_size=64, seed=0))
    return run


@pytest.fixture(scope="session")
def demo_run2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second demo run (seed 1, 1 epoch): a transfer target for ``demo_run``."""
    from medshield.api import train
    from medshield.models.train import TrainConfig

    run = tmp_path_factory.mktemp("demo_model2") / "run2"
    train("demo", run, train_config=TrainConfig(epochs=1, batch_size=64, seed=1))
    return run


@pytest.fixture(scope="session")
def demo_model(demo_run: Path) -> BoundedModel:
    """The ``demo_run`` model, eval mode."""
    from medshield.models import load_run

    return load_run(demo_run)[0]
