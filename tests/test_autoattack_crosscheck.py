"""Cross-check against the reference AutoAttack code (``pyautoattack``, test-only dependency): on the same
PneumoniaMNIST model and images, our APGD / AutoAttack robust accuracy must be at most the reference's
standard version + 1 point, at two eps (1/255 and 2/255, one test each). Slow (a model is trained; the
standard version runs Square with 5,000 queries on the images still standing); ``pip install --no-deps
pyautoattack``.

The reference's targeted members need at least 10 classes (DLR-targeted reads the 3rd/4th largest logit,
and the standard version uses 9 target classes), so it attacks the model padded with 8 constant logits of
-1000: the same decisions, gradients and margins as the 2-class model. Its APGD-T and FAB-T are aimed at
the one reachable target class (``targets=1``; the other 8 are padding no attack can reach), the same
attack as the standard version's 9 targets at a ninth of the cost."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from medshield.attacks import APGD, AutoAttack
from medshield.models import class_logits, predict_labels


class Padded(nn.Module):
    """A 2-class model with ``extra`` constant -1000 logits appended (never predicted)."""

    def __init__(self, model: nn.Module, extra: int = 8) -> None:
        super().__init__()
        self.model, self.extra = model, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = class_logits(self.model(x))
        return torch.cat([z, z.new_full((z.shape[0], self.extra), -1000.0)], dim=1)


def crosscheck(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = 0,
               targets: int = 9) -> dict[str, Any]:
    """Robust accuracy of the reference standard AutoAttack (its APGD-T/FAB-T on ``targets`` classes), our
    APGD-CE and our AutoAttack (standard)."""
    ref_module = pytest.importorskip("pyautoattack")
    ref = ref_module.AutoAttack(Padded(model).eval(), norm="Linf", eps=eps, version="standard", seed=seed, device="cpu")
    ref.apgd_targeted.n_target_classes = ref.fab.n_target_classes = targets
    ref_adv, _ = ref.run_standard_evaluation(x, y, batch_size=x.shape[0])
    with torch.no_grad():
        ref_acc = float((predict_labels(model(ref_adv)) == y).float().mean())
    gen = torch.Generator().manual_seed(seed)
    apgd = APGD(steps=100).attack(model, x, y, eps=eps, generator=gen)
    aa = AutoAttack().attack(model, x, y, eps=eps, generator=gen)
    return {"eps": eps, "clean": float((predict_labels(model(x)) == y).float().mean()), "reference_autoattack": ref_acc,
            "medshield_apgd_ce": 1 - apgd.success_rate, "medshield_autoattack": 1 - aa.success_rate,
            "broken_by": {k: aa.extras["broken_by"].count(k) for k in set(aa.extras["broken_by"]) if k}}


@pytest.fixture(scope="module")
def pn_model_and_images(shared_data, tmp_path_factory) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A smallcnn trained 1 epoch on PneumoniaMNIST (seed 0) and 30 seeded test images."""
    pytest.importorskip("pyautoattack")
    from medshield.api import load_run_and_data, train
    from medshield.models.train import TrainConfig

    run = tmp_path_factory.mktemp("crosscheck") / "pn"
    train("pneumoniamnist", run, data_dir=shared_data, model="smallcnn", train_config=TrainConfig(epochs=1, seed=0))
    model, ds, _ = load_run_and_data(str(run), None, str(shared_data), "cpu")
    part = ds.split("test")
    idx = torch.randperm(len(part), generator=torch.Generator().manual_seed(0))[:30].sort().values
    x, y = part.get(idx)
    return model.eval(), x, y


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1 / 255, 2 / 255], ids=["eps1_255", "eps2_255"])
def test_autoattack_matches_reference_on_pneumoniamnist(pn_model_and_images, eps: float) -> None:
    model, x, y = pn_model_and_images
    res = crosscheck(model, x, y, eps, targets=1)
    print(f"\ncrosscheck n={len(y)}: {res}")
    assert res["medshield_autoattack"] <= res["reference_autoattack"] + 0.01, res
    assert res["medshield_apgd_ce"] <= res["reference_autoattack"] + 0.05, res
