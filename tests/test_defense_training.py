"""A defended model is measurably more robust than an undefended one (small task, real training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medshield import api
from medshield.attacks import create_attack
from medshield.data import load_demo
from medshield.defenses.training import ANTHook, NoiseHook, build_training_hook
from medshield.evaluation.defense import add_gaps, gap_statements
from medshield.models import load_run
from medshield.models.train import TrainConfig

EPS = 8 / 255


def _robust_accuracy(model, x, y) -> float:  # noqa: ANN001
    res = create_attack("pgd", steps=5).attack(model, x, y, eps=EPS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((model(res.adversarial).argmax(1) == y).float().mean())


def test_build_training_hook() -> None:
    assert build_training_hook("none") is None
    assert isinstance(build_training_hook("noise", sigma=0.1), NoiseHook)
    hook = build_training_hook("ant", "fgsm", 2 / 255, sigma=0.02)
    assert isinstance(hook, ANTHook) and hook.sigma == 0.02
    with pytest.raises(Exception, match="did you mean 'ant'"):
        build_training_hook("anr", "fgsm")


def test_adversarial_training_raises_robustness(tmp_path: Path, demo_model) -> None:  # noqa: ANN001
    hook = build_training_hook("at", "fgsm", EPS)
    api.train("demo", tmp_path / "at", train_config=TrainConfig(epochs=2, batch_size=64, seed=0), hook=hook)
    defended = load_run(tmp_path / "at")[0]
    x, y = load_demo().test.get(slice(0, 200))
    undefended_acc, defended_acc = _robust_accuracy(demo_model, x, y), _robust_accuracy(defended, x, y)
    assert defended_acc > undefended_acc + 0.2, (undefended_acc, defended_acc)
    config = json.loads((tmp_path / "at" / "config.json").read_text())
    assert config["train"]["epochs"] == 2


def test_gap_statement_flags_weaker_strongest_attack() -> None:
    recs = [{"label": "at(fgsm)", "train_attack": "fgsm", "eval_attack": a, "eps": 0.01, "eps_label": "2/255",
             "clean_accuracy": 0.9, "robust_accuracy": r} for a, r in (("fgsm", 0.8), ("pgd", 0.3))]
    add_gaps(recs)
    assert recs[0]["gap"] == pytest.approx(0.5) and recs[0]["strongest_attack"] == "pgd"
    assert "gap of 50.0 points" in gap_statements(recs)[0]


def test_labels_carry_training_eps_and_stay_unique() -> None:
    from medshield.evaluation.defense import defense_label, unique_labels

    at2 = {"defense": "at", "train_attack": "mifgsm", "train_eps": 2 / 255}
    at8 = {**at2, "train_eps": 8 / 255}
    assert defense_label(at2) == "at(mifgsm 2/255)" and defense_label(at8) == "at(mifgsm 8/255)"
    assert defense_label({"defense": "noise", "train_attack": None, "train_eps": 2 / 255}) == "noise"
    assert unique_labels([("r2", [at2]), ("r8", [at8])]) == ["at(mifgsm 2/255)", "at(mifgsm 8/255)"]
    assert unique_labels([("small", [at2]), ("r18", [at2])]) == ["at(mifgsm 2/255) [small]", "at(mifgsm 2/255) [r18]"]


def test_report_has_one_panel_and_table_per_eval_eps(tmp_path: Path) -> None:
    from medshield.report.defense import write_defense_report

    recs = [{"label": lab, "train_attack": "mifgsm" if lab != "none" else None, "eval_attack": atk, "eps": e / 255,
             "eps_label": f"{e}/255", "clean_accuracy": 0.9, "robust_accuracy": acc}
            for lab in ("none", "at(mifgsm 2/255)") for atk in ("fgsm", "pgd") for e, acc in ((2, 0.7), (8, 0.1))]
    from medshield.evaluation.defense import add_gaps

    write_defense_report(add_gaps(recs), {}, tmp_path)
    md = (tmp_path / "defense.md").read_text()
    assert "eps 2/255" in md and "eps 8/255" in md and (tmp_path / "defense_bars.png").stat().st_size > 0
