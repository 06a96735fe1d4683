"""The audit report from hand-made records: severity rules, the executive summary, the JSON Schema,
``compare`` and the ``--fail-on`` exit statuses (no model needed, except the one CLI audit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit_records import audit, bb, hardened, wb
from medshield.report import severity as sev
from medshield.report.audit import write_report
from medshield.report.compare import compare, regressions, write_compare
from medshield.report.naming import config_rows, defense_name
from medshield.report.schema import SCHEMA_VERSION, validate_audit


def by_threat(res: dict, threat: str) -> sev.Finding:
    return next(f for f in sev.findings(res) if f.threat == threat)


@pytest.mark.parametrize(("flip2", "flip8", "level"), [(0.5, 1.0, "high"), (0.49, 0.5, "medium"), (0.1, 0.3, "medium"),
                                                       (0.05, 0.3, "low"), (0.05, 0.09, "none")])
def test_whitebox_rule(flip2: float, flip8: float, level: str) -> None:
    f = by_threat(audit(wb_flip_2=flip2, wb_flip_8=flip8), "whitebox")
    assert f.severity == level
    assert f.ci is not None and f.ci[0] <= f.metrics["flip"] <= f.ci[1]
    assert "missed disease" in (f.direction or "") and "false alarm" in (f.direction or "")


def test_whitebox_worst_case_over_attacks_and_eps_boundary() -> None:
    res = audit(wb_flip_2=0.0, wb_flip_8=0.0)
    res["whitebox"].append(wb("model", "apgd", 2 / 255, 0.6))  # a stronger attack added later decides the level
    assert by_threat(res, "whitebox").severity == "high"
    res = audit(wb_flip_2=0.0, wb_flip_8=0.0)
    res["whitebox"].append(wb("model", "pgd", 3 / 255, 0.9))  # above 2/255: at most medium
    assert by_threat(res, "whitebox").severity == "medium"


@pytest.mark.parametrize(("rms", "level"), [(7.9, "high"), (9.0, "medium"), (17.0, "none")])
def test_label_only_rule(rms: float, level: str) -> None:
    # RMS at 1K queries; 4K queries halve it, 500 double it (audit_records.audit)
    assert by_threat(audit(rms_1k=rms), "label_only").severity == level


def test_label_only_counts_images_not_medians() -> None:
    res = audit()
    res["blackbox"] = [bb("model", "hsja", "none", 1000, [2.0] * 3 + [None] * 5)]  # 3 of 8 fooled
    f = by_threat(res, "label_only")
    assert f.severity == "medium" and f.metrics["fooled_small_budget"] == pytest.approx(3 / 8)
    res["blackbox"] = [bb("model", "hsja", "none", 1000, [9.0] * 8), bb("model", "hsja", "none", 5000, [2.0] * 2 + [9.0] * 6)]
    assert by_threat(res, "label_only").severity == "low"  # 2 of 8 within 8/255, only at 5K queries


@pytest.mark.parametrize(("acc", "auc", "level"), [(0.66, 0.8, "high"), (0.95, 0.7, "high"), (0.82, 0.93, "medium"),
                                                   (0.88, 0.97, "low"), (0.95, 0.99, "none")])
def test_poor_clean_performance_is_a_finding(acc: float, auc: float, level: str) -> None:
    f = by_threat(audit(clean=acc, auc=auc), "clean")
    assert f.severity == level
    assert (f.remedy is None) == (level == "none")


@pytest.mark.parametrize(("caught", "level"), [(0.25, "high"), (0.75, "medium"), (1.0, "none")])
def test_detection_and_transfer_rules(caught: float, level: str) -> None:
    assert by_threat(audit(detected=caught), "detection").severity == level
    assert by_threat(audit(transfer=0.6), "transfer").severity == "high"
    assert by_threat(audit(transfer=0.03), "transfer").severity == "none"


def test_defense_findings_and_remedies() -> None:
    res = audit(rms_1k=3.0)
    d = next(f for f in sev.findings(res) if f.threat == "defense")
    assert d.defense == "RND (input noise σ = 0.02)"  # a readable name, not RND:NU=0.02
    assert d.severity == "medium"  # 4x the RMS: 12/255 at 1K, 6/255 at 4K queries
    assert "non-adaptive" in d.evidence and "85.0%" in d.evidence
    lo = by_threat(res, "label_only")
    assert lo.severity == "high" and "RND" in (lo.remedy or "")
    res["defenses"] = [{"base_run": "model", "defense": "at", "train_attack": "mifgsm", "eval_attack": a, "eps": 2 / 255,
                        "clean_accuracy": 0.88, "robust_accuracy": r} for a, r in (("fgsm", 0.8), ("pgd", 0.7))]
    found = sev.findings(res)
    at = next(f for f in found if f.defense == "adversarial training (AT)")
    assert at.severity == "medium" and at.metrics["flip"] == pytest.approx((0.88 - 0.7) / 0.88)
    white = next(f for f in found if f.threat == "whitebox")
    assert "adversarial training (AT) lowered this to MEDIUM" in (white.remedy or "") and "-4.0 points" in white.remedy


def test_levels_and_fail_threshold() -> None:
    found = sev.findings(audit())
    assert sev.overall(found) == "high"
    assert sev.at_or_above(found, "low") and all(f.severity != "none" for f in sev.at_or_above(found, "low"))
    with pytest.raises(ValueError, match="high, medium or low"):
        sev.at_or_above(found, "critical")
    assert sev.wilson(0, 0) is None and sev.wilson(5, 10)[0] == pytest.approx(0.2366, abs=1e-3)


def test_names_and_config_values_read_as_written() -> None:
    assert defense_name("dnd:m=0.01:n=0.5") == "DND (input noise σ = 0.01, output noise σ = 0.5)"
    assert defense_name("none") == "no defense" and defense_name("at") == "adversarial training (AT)"
    rows = dict(config_rows({"seed": 0, "whitebox": {"attacks": ["fgsm", "pgd"], "n_images": None},
                             "blackbox": {"defenses": ["none", "rnd:nu=0.04"], "budgets": [1000, 5000]}}))
    assert rows == {"seed": "0", "whitebox.attacks": "fgsm, pgd", "whitebox.n_images": "all",
                    "blackbox.defenses": "no defense, RND (input noise σ = 0.04)", "blackbox.budgets": "1,000, 5,000"}


def test_schema_accepts_audits_and_rejects_broken_ones() -> None:
    import jsonschema

    res = audit()
    assert res["schema_version"] == SCHEMA_VERSION
    validate_audit(res)
    res["future_section"] = [{"anything": 1}]  # readers ignore what they do not know
    validate_audit(res)
    for broken in ({k: v for k, v in res.items() if k != "schema_version"},
                   {**res, "whitebox": [{**res["whitebox"][0], "success_rate": 1.5}]},
                   {**res, "clean": [{"run": "m"}]}):
        with pytest.raises(jsonschema.ValidationError):
            validate_audit(broken)


def test_report_opens_with_the_threat_table(tmp_path: Path) -> None:
    res = audit(clean=0.66, auc=0.7)
    paths = write_report(res, tmp_path, {}, "Audit", provenance={"command": "medshield audit --run m",
                                                                 "versions": {"medshield": "0.1.0"}}, pdf=False)
    page = paths["html"].read_text()
    summary = page[page.index('id="summary"'):page.index("</section>", page.index('id="summary"'))]
    assert "<table" in summary and "White-box evasion" in summary and "Query-stream detection" in summary
    assert '<span class="sev high">HIGH</span>' in summary and "Overall rating: HIGH" in summary
    assert "did not test" in summary and "poisoning" in summary
    assert page.index('id="summary"') < page.index('id="findings"') < page.index('id="whitebox"') < page.index('id="annex"')
    assert "RND:NU" not in page and "RND (input noise σ = 0.02)" in page and "...</td>" not in page
    assert "not a compliance certificate" in page and "medshield audit --run m" in page
    assert "n = 200 of 600 test images (seeded subsample)" in page
    findings = json.loads((tmp_path / "findings.json").read_text())
    assert findings["overall"] == "high" and {f["threat"] for f in findings["findings"]} >= {"clean", "whitebox"}
    md = paths["markdown"].read_text()
    assert "**HIGH**" in md and "](#whitebox)" in md


def test_compare_better_and_worse(tmp_path: Path) -> None:
    v1, v2 = audit("model"), hardened("model_at")
    cmp = compare(v1, v2)
    assert cmp["models"] == {"model": "model_at"}
    change = {c["threat"]: c["change"] for c in cmp["changes"] if not c["defense"]}
    assert change["whitebox"] == "better" and change["label_only"] == "better" and change["transfer"] == "better"
    assert regressions(cmp, "low") == []
    back = compare(v2, v1)
    assert {c["threat"] for c in regressions(back, "high")} >= {"whitebox", "transfer"}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "audit.json").write_text(json.dumps(v1))
    (tmp_path / "b.json").write_text(json.dumps(v2))
    out = write_compare(tmp_path / "a", tmp_path / "b.json", tmp_path / "c")
    assert out["counts"]["better"] >= 3
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "HIGH → MEDIUM" in md and "| better | White-box evasion | model → model_at | HIGH |" in md


def test_compare_cli_exit_status(tmp_path: Path) -> None:
    from medshield.cli import app

    (tmp_path / "v1.json").write_text(json.dumps(hardened("m")))
    (tmp_path / "v2.json").write_text(json.dumps(audit("m")))
    run = CliRunner().invoke
    worse = run(app, ["compare", str(tmp_path / "v1.json"), str(tmp_path / "v2.json"), "--out", str(tmp_path / "c"),
                      "--fail-on", "high"])
    assert worse.exit_code == 3, worse.output
    assert (tmp_path / "c" / "compare.json").is_file() and (tmp_path / "c" / "compare.md").is_file()
    better = run(app, ["compare", str(tmp_path / "v2.json"), str(tmp_path / "v1.json"), "--out", str(tmp_path / "d"),
                       "--fail-on", "low"])
    assert better.exit_code == 0, better.output
    assert run(app, ["compare", str(tmp_path / "v1.json"), str(tmp_path / "nope.json")]).exit_code == 2
    assert run(app, ["compare", str(tmp_path / "v1.json"), str(tmp_path / "v2.json"), "--out", str(tmp_path / "e"),
                     "--fail-on", "severe"]).exit_code == 2


def test_audit_fail_on_exit_status(tmp_path: Path, demo_run: Path) -> None:
    """An undefended model fails --fail-on low (exit 3); a bad level is a usage error (exit 2)."""
    import yaml

    from medshield.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"clean": {"bootstrap": 20}, "transfer": {"enabled": False},
                                   "blackbox": {"enabled": False}, "detection": {"enabled": False},
                                   "whitebox": {"attacks": ["fgsm"], "eps": ["2/255", "8/255"], "n_images": 24,
                                                "grid_images": 1}}))
    base = ["audit", "--run", str(demo_run), "--config", str(cfg), "--out", str(tmp_path / "a")]
    res = CliRunner().invoke(app, [*base, "--fail-on", "low"])
    assert res.exit_code == 3, res.output
    assert (tmp_path / "a" / "report.html").is_file() and (tmp_path / "a" / "report.pdf").stat().st_size > 1000
    validate_audit(json.loads((tmp_path / "a" / "audit.json").read_text()))
    res = CliRunner().invoke(app, [*base, "--fail-on", "catastrophic"])
    assert res.exit_code == 2 and "high, medium or low" in res.output
    assert "--fail-on" in CliRunner().invoke(app, ["audit", "--help"]).output


@pytest.mark.slow
def test_compare_demo_model_with_its_adversarially_trained_copy(tmp_path: Path, demo_run: Path) -> None:
    """Two audits of the demo: the model, then the same model fine-tuned with adversarial training (AT)."""
    import yaml

    from medshield.api import defend
    from medshield.campaign.audit import audit as run_audit
    from medshield.models.train import TrainConfig

    hardened_run = tmp_path / "run_at"
    defend("demo", hardened_run, "at", init_from=demo_run, train_eps=4 / 255, train_steps=3,
           train_config=TrainConfig(epochs=2, batch_size=64, seed=0), eval_attacks=["fgsm"], eval_n=50)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"clean": {"bootstrap": 50}, "transfer": {"enabled": False},
                                   "detection": {"enabled": False},
                                   "whitebox": {"attacks": ["fgsm", "pgd"], "eps": ["2/255", "8/255"], "n_images": 100,
                                                "grid_images": 1},
                                   "blackbox": {"attacks": ["hsja"], "budgets": [200, 500], "defenses": ["none"],
                                                "n_images": 4, "shard_size": 4}}))
    run_audit([str(demo_run)], tmp_path / "v1", config=cfg)
    run_audit([str(hardened_run)], tmp_path / "v2", config=cfg)
    cmp = write_compare(tmp_path / "v1", tmp_path / "v2", tmp_path / "cmp")
    assert cmp["models"] == {"run": "run_at"}
    white = next(c for c in cmp["changes"] if c["threat"] == "whitebox")
    assert white["change"] == "better" and white["new"]["score"] < white["old"]["score"] - 0.2
    assert regressions(cmp, "high") == []
