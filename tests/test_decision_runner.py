"""Black-box runner summaries, the Markdown table with GBBA/HSJA ratios, and the figures."""

from __future__ import annotations

import json

import pytest

from medshield.defenses.inference import INFERENCE_DEFENSES, DefenseSpec
from medshield.errors import MedShieldError
from medshield.evaluation.blackbox import BlackboxConfig, summarise
from medshield.report.blackbox_plots import markdown_table, plot_l2_vs_queries, plot_strips


def job(l2_by_budget: dict[int, list[float]]) -> dict:
    return {"l2": {str(b): v for b, v in l2_by_budget.items()}, "seconds": 2.0,
            "first_adversarial": {str(b): [0.5] * 4 for b in l2_by_budget}}


def test_summary_table_and_plots(tmp_path) -> None:  # noqa: ANN001
    cfg = BlackboxConfig(budgets=[1000, 5000], n_bootstrap=200)
    hsja = summarise("hsja", DefenseSpec("none"), [job({1000: [2.0, 4.0], 5000: [1.0, 2.0]}), job({1000: [3.0], 5000: [1.0]})], cfg)
    gbba = summarise("gbba", DefenseSpec("none"), [job({1000: [1.0, 2.0, float("inf")], 5000: [0.5, 1.0, 1.5]})], cfg)
    assert [r["budget"] for r in hsja] == [1000, 5000]
    assert hsja[0]["mean_l2"] == pytest.approx(3.0) and hsja[0]["median_l2"] == pytest.approx(3.0)
    assert hsja[0]["n_images"] == 3 and hsja[0]["seconds"] == pytest.approx(4.0)
    lo, hi = hsja[0]["mean_l2_ci"]
    assert 2.0 <= lo <= 3.0 <= hi <= 4.0
    assert gbba[0]["success_rate"] == pytest.approx(2 / 3) and gbba[0]["l2_per_image"][2] is None
    summary = {"records": hsja + gbba, "image_shape": [1, 2, 2], "first_image": [0.0] * 4,
               "strips": {"hsja|none": job({1000: [], 5000: []})["first_adversarial"]}}
    table = markdown_table(summary)
    assert "| none | GBBA/HSJA | mean | 0.500 | 0.750 |" in table
    assert plot_l2_vs_queries(summary, tmp_path / "a.png").stat().st_size > 1000
    assert plot_strips(summary, tmp_path / "b.png").stat().st_size > 1000


def test_defense_registry_hook() -> None:
    assert INFERENCE_DEFENSES.names() == ["dnd", "none", "rnd"]
    with pytest.raises(MedShieldError, match="did you mean 'none'"):
        INFERENCE_DEFENSES.get("nne")


def test_parse_defense_specs() -> None:
    parse = DefenseSpec.parse
    assert (parse("none").name, parse("none").resolved()) == ("none", {})
    assert (parse("rnd").name, parse("rnd").resolved()) == ("rnd", {"nu": 0.02})
    assert parse(" DND:m=0.03 ").resolved() == {"m": 0.03, "n": 0.5}
    assert parse("dnd:n=1:m=0.01").label() == "dnd:m=0.01:n=1"
    # explicit parameters stay apart from the registry's defaults
    assert parse("rnd").explicit == {} and str(parse("rnd")) == "rnd"
    assert parse(" DND:m=0.03 ").explicit == {"m": 0.03} and str(parse(" DND:m=0.03 ")) == "dnd:m=0.03"
    assert parse(str(parse("dnd:n=1:m=0.01"))) == parse("dnd:m=0.01:n=1")
    with pytest.raises(MedShieldError, match="expected NAME:KEY=NUMBER"):
        parse("rnd:nu")
    with pytest.raises(MedShieldError, match="expected NAME:KEY=NUMBER"):
        parse("rnd:nu=abc")
    with pytest.raises(MedShieldError, match="no parameter 'm'.*nu"):
        parse("rnd:m=0.1")
    with pytest.raises(MedShieldError, match="did you mean 'rnd'"):
        parse("rdn:nu=0.1")


def test_defended_clean_accuracy_params_adaptive_and_resume(demo_model, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from medshield.data import load_demo
    from medshield.evaluation import blackbox as bb
    from medshield.models import predict, predict_labels

    part = load_demo().test
    cfg = BlackboxConfig(attacks=["hsja"], budgets=[50, 100], defenses=[DefenseSpec.parse("none"), DefenseSpec.parse("rnd:nu=0.3")], n_images=2,
                         n_bootstrap=10, clean_repeats=2, adaptive_k=3)
    summary = bb.run_blackbox(demo_model, part, tmp_path, cfg, positive_class=1)
    none, rnd = summary["records"][0], summary["records"][2]
    plain = float((predict_labels(predict(demo_model, part.images())) == part.labels).float().mean())
    assert none["defended_clean_accuracy"] == pytest.approx(plain) and none["flip_rate"] == 0.0
    assert rnd["defense"] == "rnd" and rnd["defense_params"] == {"nu": 0.3} and rnd["defense_spec"] == "rnd:nu=0.3"
    assert rnd["flip_rate"] > 0 and rnd["adaptive_k"] == 3
    assert none["adaptive_k"] == 1  # the deterministic model answers the same every time: no repeats spent
    jobs = json.loads((tmp_path / "jobs.json").read_text())["jobs"]
    attack_jobs = [j for key, j in jobs.items() if not key.startswith("clean|")]
    assert all(sum(j["queries"]) == j["sent_attack"] and max(j["queries"]) <= 100 for j in attack_jobs)
    rnd_jobs = [j for key, j in jobs.items() if key.startswith("rnd")]
    assert rnd_jobs and all(q % 3 == 0 for j in rnd_jobs for q in j["queries"])  # every logical query costs 3
    monkeypatch.setattr(bb, "clean_job", lambda *a, **k: pytest.fail("clean metrics recomputed"))
    monkeypatch.setattr(bb, "run_job", lambda *a, **k: pytest.fail("attack job recomputed"))
    again = bb.run_blackbox(demo_model, part, tmp_path, cfg, positive_class=1)
    assert again["records"] == summary["records"]
    assert "| rnd:nu=0.3 |" in markdown_table(summary)


def test_adaptive_k_spends_no_repeats_on_a_deterministic_model(demo_model, tmp_path) -> None:  # noqa: ANN001
    """Repeating a query to a model that always answers the same wastes budget: the undefended model is
    attacked with every query (k = 1) whatever ``adaptive_k``, so its figure is not understated."""
    from medshield.data import load_demo
    from medshield.evaluation.blackbox import run_blackbox

    part = load_demo().test
    plain = run_blackbox(demo_model, part, tmp_path / "k1", BlackboxConfig(attacks=["hsja"], budgets=[60], n_images=2,
                                                                            n_bootstrap=10, clean_repeats=1))
    asked = run_blackbox(demo_model, part, tmp_path / "k3", BlackboxConfig(attacks=["hsja"], budgets=[60], n_images=2,
                                                                            n_bootstrap=10, clean_repeats=1, adaptive_k=3))
    assert asked["records"][0]["adaptive_k"] == 1 and asked["config"]["adaptive_k"] == 3
    assert asked["records"][0]["l2_per_image"] == plain["records"][0]["l2_per_image"]


def test_noisy_target_claims_are_checked_against_the_classifier() -> None:
    """A target that answers coin flips lets the attacker 'find' adversarials everywhere; the evaluator
    must report them as claims (with their L2) that fool neither the classifier nor, reliably, the target."""
    import torch

    from medshield.evaluation.blackbox import run_job, summarise

    gen = torch.Generator().manual_seed(0)

    def coin(x: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, 2, (x.shape[0],), generator=gen)

    def truth(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=torch.long)  # the classifier itself never errs

    x, y = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.zeros(3, dtype=torch.long)
    cfg = BlackboxConfig(attacks=["hsja"], budgets=[40, 120], n_images=3, n_bootstrap=10, verify_repeats=200)
    job = run_job("hsja", coin, x, y, cfg, seed=0, desc="coin", base_fn=truth)
    rec = summarise("hsja", DefenseSpec("rnd"), [job], cfg)
    for r in rec:
        assert r["claim_rate"] == 1.0 and r["success_rate"] == 0.0 and r["verified_mean_l2"] is None
        assert r["defended_success_rate"] == pytest.approx(0.5, abs=0.1)
    claims = [rec[0]["l2_per_image"], rec[1]["l2_per_image"]]
    assert all(b <= a for a, b in zip(*claims))  # claims only get closer with budget


def test_defended_records_split_claims_from_real_adversarials(demo_model, tmp_path) -> None:  # noqa: ANN001
    from medshield.data import load_demo
    from medshield.evaluation.blackbox import run_blackbox

    cfg = BlackboxConfig(attacks=["hsja"], budgets=[50, 150], defenses=[DefenseSpec.parse("none"), DefenseSpec.parse("rnd:nu=0.2")], n_images=3,
                         n_bootstrap=10, clean_repeats=1, verify_repeats=5)
    recs = run_blackbox(demo_model, load_demo().test, tmp_path, cfg)["records"]
    none, rnd = recs[:2], recs[2:]
    for r in none:
        assert r["claim_rate"] == r["success_rate"] == r["defended_success_rate"]
        assert r["verified_mean_l2"] == pytest.approx(r["mean_l2"])
    for r in rnd:
        assert r["success_rate"] <= r["claim_rate"] and 0.0 <= r["defended_success_rate"] <= 1.0
    assert rnd[1]["mean_l2"] <= rnd[0]["mean_l2"]
    jobs = json.loads((tmp_path / "jobs.json").read_text())["jobs"]
    rnd_jobs = [j for k, j in jobs.items() if k.startswith("rnd")]
    assert rnd_jobs and all("claim_l2" in j and "defended_fool_rate" in j for j in rnd_jobs)


def test_runner_calls_the_attacks_entry_point(monkeypatch) -> None:  # noqa: ANN001
    """The black-box runner goes through ``DecisionAttack.__call__`` (the entry point users call), and
    gets the same answer a user gets."""
    import torch

    from medshield.attacks.decision import DecisionAttack, model_label_fn
    from medshield.attacks.decision.hsja import HopSkipJump
    from medshield.evaluation.blackbox import run_job

    from tests.conftest import MeanThreshold

    fn = model_label_fn(MeanThreshold(scale=8.0))
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2)) * 0.4
    y = torch.zeros(3, dtype=torch.long)
    cfg = BlackboxConfig(attacks=["hsja"], budgets=[60, 120], n_images=3, n_bootstrap=10)
    calls = []
    original = DecisionAttack.__call__
    monkeypatch.setattr(DecisionAttack, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    job = run_job("hsja", fn, x, y, cfg, seed=5, desc="t")
    assert calls == [1]
    direct = HopSkipJump(norm="l2")(fn, x, y, [60, 120], generator=torch.Generator().manual_seed(5))
    assert job["l2"]["120"] == direct[120].l2.tolist() and job["queries"] == direct.oracle.queries.tolist()
    assert job["sent_attack"] == sum(job["queries"])


def test_default_layout_is_pinned_and_another_is_part_of_the_job(demo_model, tmp_path) -> None:  # noqa: ANN001
    """Channels-last logits differ from contiguous in the last bit: the default pins contiguous (a seed
    reproduces bit for bit); a run with another layout keeps its jobs apart."""
    from medshield.data import load_demo
    from medshield.evaluation.blackbox import run_blackbox

    part = load_demo().test
    base = dict(attacks=["hsja"], budgets=[30], n_images=2, n_bootstrap=10, clean_repeats=1)
    assert BlackboxConfig().layout == "contiguous"
    run_blackbox(demo_model, part, tmp_path, BlackboxConfig(**base))
    run_blackbox(demo_model, part, tmp_path, BlackboxConfig(**base, layout="channels_last"))
    keys = [k for k in json.loads((tmp_path / "jobs.json").read_text())["jobs"] if "|hsja|" in k]
    assert len(keys) == 2 and sum("|layout=channels_last" in k for k in keys) == 1
