"""White-box runner, transfer matrix, sanity checks, reports and the CLI, on tiny models."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from torch import nn

from medshield.attacks import create_attack
from medshield.evaluation.checks import check_randomised, check_result, check_softmax_output, check_zero_gradients
from medshield.evaluation.store import RecordStore
from medshield.evaluation.transfer import accuracy_matrix, transfer_records
from medshield.evaluation.whitebox import WhiteboxJob, run_whitebox, select_direction
from medshield.types import eps_label, parse_eps
from medshield.report import adversarial_grid, heatmap, line_plot, markdown_table, pivot_table
from medshield.types import AttackResult, Norm

REQUIRED = {"attack", "eps", "norm", "clean_accuracy", "robust_accuracy", "success_rate", "mean_linf", "max_linf",
            "mean_l2", "seconds", "sensitivity", "specificity", "directions", "checks"}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(24, 1, 28, 28, generator=g), torch.arange(24) % 2


def test_parse_eps_fractions_and_errors() -> None:
    assert parse_eps("0.5/255, 2/255,0.1") == pytest.approx((0.5 / 255, 2 / 255, 0.1))
    assert eps_label(2 / 255) == "2/255" and eps_label(0.5 / 255) == "0.5/255"
    assert parse_eps("1.5", norm="l2") == (1.5,)  # L2 budgets may exceed 1
    for bad in ("abc", "", "-1/255", "1/2/3", "0", "1.5", "1/0", "nan"):
        with pytest.raises(ValueError):
            parse_eps(bad)


def test_run_whitebox_records_and_resume(tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = data
    model = tiny_model()
    job = WhiteboxJob(attacks=["fgsm", "pgd", "cw"], eps=[1 / 255, 8 / 255], attack_kwargs={"pgd": {"steps": 3}, "cw": {"steps": 10, "binary_search_steps": 1}})
    store = RecordStore(tmp_path / "jobs.json")
    recs = run_whitebox(model, x, y, job, positive_class=1, store=store, meta={"run": "tiny"})
    assert len(recs) == 6 and all(REQUIRED <= set(r) for r in recs)
    for r in recs:
        assert r["max_linf"] <= r["eps"] + 1e-6
        assert r["robust_accuracy"] <= r["clean_accuracy"] + 1e-9 or r["attack"] == "cw"
        assert set(r["directions"]) == {"disease_to_normal", "normal_to_disease"}
        assert all(c["ok"] for c in r["checks"].values())
    pgd = {r["eps"]: r["robust_accuracy"] for r in recs if r["attack"] == "pgd"}
    assert pgd[8 / 255] <= pgd[1 / 255]
    json.dumps(recs)  # plain JSON
    import medshield.evaluation.whitebox as wb

    monkeypatch.setattr(wb, "run_batched", lambda *a, **k: pytest.fail("finished jobs must not be recomputed"))
    again = run_whitebox(model, x, y, job, positive_class=1, store=RecordStore(tmp_path / "jobs.json"),
                         meta={"run": "tiny"})
    assert again == recs  # resumed from disk


def test_direction_restricts_images(data) -> None:
    x, y = data
    idx = select_direction(y, "disease_to_normal", 1)
    assert bool((y[idx] == 1).all()) and idx.numel() == 12
    with pytest.raises(ValueError, match="positive"):
        select_direction(y, "normal_to_disease", None)
    job = WhiteboxJob(attacks=["fgsm"], eps=[2 / 255], direction="normal_to_disease")
    (rec,) = run_whitebox(tiny_model(), x, y, job, positive_class=1)
    assert rec["n"] == 12 and rec["directions"]["disease_to_normal"]["n"] == 0


class Noisy(nn.Module):
    def __init__(self, base: nn.Module, softmax: bool = False) -> None:
        super().__init__()
        self.base, self.softmax = base, softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out.softmax(1) if self.softmax else out + torch.randn_like(out)


def test_checks_flag_bad_models(data) -> None:
    x, y = data
    with pytest.warns(UserWarning, match="randomised_model"):
        assert not check_randomised(Noisy(tiny_model()), x)["ok"]
    with pytest.warns(UserWarning, match="softmax"):
        assert not check_softmax_output(Noisy(tiny_model(), softmax=True), x)["ok"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_randomised(tiny_model(), x)["ok"] and check_softmax_output(tiny_model(), x)["ok"]
    flat = tiny_model()
    for p in flat.parameters():
        nn.init.zeros_(p)
    with pytest.warns(UserWarning, match="zero_gradients"):
        assert not check_zero_gradients(flat, x, y)["ok"]
    bad = x + 0.5
    bad[0, 0, 0, 0] = float("nan")
    res = AttackResult(bad, torch.zeros(24, dtype=torch.bool), torch.zeros(24), torch.zeros(24), torch.zeros(24, dtype=torch.long), 0.0)
    with pytest.warns(UserWarning):
        checks = check_result(res, x, 0.1, Norm.LINF)
    assert not checks["no_nans"]["ok"] and not checks["within_budget"]["ok"] and not checks["within_bounds"]["ok"]


def test_transfer_matrix(data) -> None:
    x, y = data
    models = {"a": tiny_model(seed=0), "b": tiny_model(seed=1)}
    recs = transfer_records(models, x, y, create_attack("mifgsm", steps=3), 8 / 255, positive_class=1)
    names, matrix = accuracy_matrix(recs)
    assert names == ["a", "b"] and len(recs) == 4
    white = {r["source"]: r for r in recs if r["white_box"]}
    assert all(r["robust_accuracy"] <= r["clean_accuracy"] for r in white.values())
    assert all(0 <= v <= 1 for row in matrix for v in row)


def test_report_pieces(tmp_path: Path) -> None:
    recs = [{"attack": a, "eps": e, "robust_accuracy": 1 - e * 10, "clean_accuracy": 0.9, "d": {"x": 1}}
            for a in ("fgsm", "pgd") for e in (0.01, 0.02)]
    table = markdown_table(recs, ["attack", ("d.x", "nested"), ("robust_accuracy", "robust")], {"robust_accuracy": ".2f"})
    assert table.splitlines()[0] == "| attack | nested | robust |" and "| fgsm | 1 | 0.90 |" in table
    piv = pivot_table(recs, ["eps"], "attack", "robust_accuracy", fmt=".1f")
    assert piv.splitlines()[0] == "| eps | fgsm | pgd |" and len(piv.splitlines()) == 4
    assert line_plot(recs, "eps", "robust_accuracy", "attack", tmp_path / "p.png", baseline="clean_accuracy").stat().st_size > 1000
    assert heatmap([[0.1, 0.9], [0.5, 0.2]], ["a", "b"], ["a", "b"], tmp_path / "h.png").stat().st_size > 1000
    x = torch.rand(2, 1, 8, 8)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    grid = adversarial_grid(x, (x + 0.01).clamp(0, 1), probs, probs.flip(1), tmp_path / "g.png", class_names=["n", "p"],
                            true_labels=torch.tensor([0, 1]))
    assert grid.stat().st_size > 1000


@pytest.fixture
def demo_run(tmp_path: Path) -> Path:
    from medshield.models import create_model, save_run

    torch.manual_seed(0)
    model = create_model(name="smallcnn", in_channels=1, num_classes=2, image_size=28)
    run = tmp_path / "run"
    save_run(run, model, {"data": {"dataset": "demo"}})
    return run


def test_cli_attack_and_transfer(tmp_path: Path, demo_run: Path) -> None:
    from typer.testing import CliRunner

    from medshield.cli import app

    out = tmp_path / "wb"
    args = ["attack", "--run", str(demo_run), "--attack", "fgsm,pgd", "--eps", "1/255,4/255", "--n", "16",
            "--steps", "2", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = json.loads((out / "whitebox.json").read_text())
    assert len(recs) == 4 and {r["attack"] for r in recs} == {"fgsm", "pgd"}
    for name in ("whitebox.md", "robust_vs_eps.png", "grid.png", "grid_examples.npz"):
        assert (out / name).is_file()
    # the grid is drawn from the stored examples: originals, adversarials within eps, both predictions
    from medshield.evaluation.whitebox import load_grid_examples

    (ex,) = load_grid_examples(out / "grid_examples.npz").values()
    assert ex["attack"] == "pgd" and ex["eps"] == pytest.approx(1 / 255)
    assert ex["original"].shape == ex["adversarial"].shape and ex["original"].shape[0] == ex["labels"].shape[0] > 0
    assert float((ex["adversarial"] - ex["original"]).abs().max()) <= 1 / 255 + 1e-6
    assert torch.allclose(ex["clean_probs"].sum(1), torch.ones(ex["labels"].shape[0]), atol=1e-5)
    bad = CliRunner().invoke(app, ["attack", "--run", str(demo_run), "--attack", "pdg", "--out", str(out)])
    assert bad.exit_code == 2 and "did you mean 'pgd'" in bad.output
    bad = CliRunner().invoke(app, ["attack", "--run", str(demo_run), "--eps", "two", "--out", str(out)])
    assert bad.exit_code == 2 and "cannot parse eps" in bad.output
    res = CliRunner().invoke(app, ["transfer", "--source", f"{demo_run},{demo_run}", "--n", "8", "--eps", "4/255",
                                   "--out", str(tmp_path / "tr")])
    assert res.exit_code == 0, res.output
    tr = json.loads((tmp_path / "tr" / "transfer.json").read_text())
    assert len(tr["robust_accuracy"]) == 1 or len(tr["records"]) == 4
