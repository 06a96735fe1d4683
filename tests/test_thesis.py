"""``medshield reproduce thesis`` on the real PneumoniaMNIST file with the ``tiny`` preset: the thesis's
figures beside ours in every chapter, resumption without retraining, and the missing-data error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medshield.campaign.thesis import (NOISE_TABLE, PRESETS, RATIOS, THESIS_FIGURES, THESIS_NUMBERS, comparability,
                                       dataset_config, figure_record, get_preset, preset_config, present,
                                       ratio_records, reproduce_thesis)
from medshield.report.thesis import NOT_TRANSCRIBED, write_thesis_report
from medshield.errors import MedShieldError


@pytest.fixture(scope="module")
def pneumonia_only(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding only pneumoniamnist.npz (the chest X-ray stand-in)."""
    folder = tmp_path_factory.mktemp("data")
    shutil.copy(shared_data / "pneumoniamnist.npz", folder)
    return folder


@pytest.fixture(scope="module")
def tiny_run(pneumonia_only: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("thesis")
    return out, reproduce_thesis(pneumonia_only, out, preset="tiny")


def test_thesis_numbers_are_the_published_ones() -> None:
    values = {(f.chapter, f.quantity, f.attack, f.defense, f.model): f.value for f in THESIS_NUMBERS
              if f.dataset == "chest" or f.attack}
    assert values[(3, "clean_accuracy", None, None, "ResNet-50")] == 95.86
    assert values[(3, "robust_accuracy", "mifgsm", None, "DenseNet-121")] == 0.0
    assert values[(3, "robust_accuracy", "fgsm", None, "ResNet-50")] == 7.69
    assert values[(4, "robust_accuracy", "mifgsm", "ant", "DenseNet-121")] == 85.34
    assert values[(5, "mean_l2", "gbba", "none", "DenseNet-121")] == 4.74
    assert values[(6, "mean_l2", "gbba", "dnd", "DenseNet-121")] == 38.98  # chapter 6 attacks with GBBA
    assert not any(f.chapter == 6 and f.attack != "gbba" for f in THESIS_NUMBERS)
    tables = {(f.chapter, f.quantity): f.table for f in THESIS_NUMBERS}
    assert tables[(3, "clean_accuracy")] == "3-3" and tables[(4, "robust_accuracy")] == "4-3"
    assert tables[(6, "mean_l2")] == "6-3"
    ct = {f.model: f.value for f in THESIS_NUMBERS if f.dataset == "ct"}
    assert ct == {"ResNet-50": 76.27, "DenseNet-121": 84.00}
    assert len(THESIS_NUMBERS) == 19 and len(RATIOS) == 4


def test_presets_run_the_thesis_way() -> None:
    """GBBA against RND/DND, Algorithm 1 for the FGSM columns, fixed-source AT/ANT, the 15K budget."""
    for name in ("quick", "mid", "full"):
        preset = get_preset(name)
        cfg = preset_config(preset)
        assert cfg.blackbox.defended_attacks == ["gbba"] and 15_000 in cfg.blackbox.budgets
        assert cfg.defenses.source == "fixed"
        for plan in preset.datasets:
            ds = dataset_config(cfg, plan)
            assert "fgsm_iter" in ds.whitebox.attacks and "fgsm_iter" in ds.defenses.eval_attacks
    for name in ("mid", "full"):
        ct = next(p for p in get_preset(name).datasets if p.role == "ct")
        assert dataset_config(preset_config(get_preset(name)), ct).defenses.train_attacks == {"at": "mifgsm",
                                                                                            "ant": "fgsm_iter"}


# The thesis's Tables 3-3..6-3 and the datasets each reports on (3-5/3-6 and 4-4/4-5 as pairs: which table of
# a pair holds which row is not transcribed here).
TABLES = {"chest": ["3-3", "3-4", "3-5", "3-6", "4-3", "4-4", "4-5", "5-4", "6-3"],
          "breast": ["3-3", "3-4", "4-2", "4-4", "4-5", "5-3", "6-2"],
          "ct": ["3-3", "3-4", "3-5", "3-6", "4-1", "5-2", "6-1"]}


def test_every_thesis_table_has_a_row_on_each_dataset() -> None:
    have = {(t, f.dataset) for f in THESIS_FIGURES for t in (f.table or "").split("/")}
    assert {(t, ds) for ds, tables in TABLES.items() for t in tables} <= have
    assert set(THESIS_NUMBERS) <= set(THESIS_FIGURES)  # every published figure sits in its table's slot
    assert sum(f.value is not None for f in THESIS_FIGURES) == len(THESIS_NUMBERS)
    assert {f.budget for f in THESIS_FIGURES if f.budget} == {1000, 5000, 10_000, 15_000, 20_000}
    for ds in TABLES:  # every dataset's campaign runs all four chapters, noise training where 4-4/4-5 exist
        plan = next(p for p in get_preset("mid").datasets if p.role == ds)
        cfg = dataset_config(preset_config(get_preset("mid")), plan)
        assert cfg.blackbox.enabled and cfg.defenses.enabled and cfg.whitebox.enabled and cfg.transfer.enabled
        assert ("noise" in cfg.defenses.defenses) == ("4-4" in TABLES[ds])


def test_not_transcribed_values_render_honestly_beside_ours(tmp_path: Path) -> None:
    """A slot without a published value reads "not transcribed" while ours is filled; label-only distances
    are the verified ones (a naive attacker's claim against RND may be the clean image itself: L2 0)."""
    plan = next(p for p in get_preset("mid").datasets if p.role == "chest")
    runs = {r: f"/x/{plan.run_name(r)}" for r in plan.models}
    res = {"clean": [{"run": plan.run_name("resnet"), "accuracy": 0.9}], "whitebox": [], "transfer": [],
           "defenses": [{"base_run": plan.run_name("densenet"), "defense": "noise", "eval_attack": "mifgsm",
                         "eps": 2 / 255, "clean_accuracy": 0.8, "robust_accuracy": 0.5}],
           "blackbox": [{"run": plan.run_name("densenet"), "attack": "gbba", "defense": "rnd", "budget": 20_000,
                         "mean_l2": 0.0, "verified_mean_l2": 1.5, "success_rate": 0.5, "claim_rate": 1.0,
                         "n_images": 2}]}
    records = [figure_record(f, plan if f.dataset == "chest" else None, runs if f.dataset == "chest" else None,
                             res if f.dataset == "chest" else None, 2 / 255, None) for f in THESIS_FIGURES]
    records += ratio_records(records, {"chest": plan})
    by = {(r["role"], r["table"], r["quantity"], r["attack"], r["defense"], r["budget"]): r for r in records}
    noise = by[("chest", NOISE_TABLE, "robust_accuracy", "mifgsm", "noise", None)]
    assert noise["thesis"] is None and noise["ours"] == 50.0
    rnd = by[("chest", "6-3", "mean_l2", "gbba", "rnd", 20_000)]
    assert rnd["thesis"] == 29.27 and rnd["ours"] == 1.5 and "1 of 2 images verified adversarial (2 claimed)" in rnd["note"]
    assert by[("chest", "6-3", "mean_l2", "gbba", "rnd", 15_000)]["ours"] is None
    ratio = by[("chest", "6-3", "l2_ratio", "gbba/gbba", "rnd/none", 20_000)]
    assert ratio["thesis"] == pytest.approx(29.27 / 2.23) and ratio["ours"] is None  # no GBBA-vs-none figure
    assert not any(r["quantity"] == "l2_ratio" and r["role"] == "breast" for r in records)  # not run, not published
    result = {"preset": "mid", "description": "d", "data_dir": "D", "datasets": [], "skipped": [], "eps": 2 / 255,
              "records": records}
    md = write_thesis_report(result, tmp_path)[1].read_text()
    assert NOT_TRANSCRIBED in md and "50.00%" in md and "1.5 (1/2)" in md and "29.3" in md and "15K" in md
    assert "| 4-4/4-5 |" in md and "| 6-2 |" in md and "| 5-2 |" in md


def test_comparability_never_claims_the_same_model() -> None:
    for preset in PRESETS.values():
        for plan in preset.datasets:
            for fig in (f for f in THESIS_FIGURES if f.dataset == plan.role):
                text = comparability(fig, plan)
                assert "same" not in text and "scale-free" not in text, text
                if fig.unit == "L2":
                    assert text.startswith("no:") and plan.input_text in text
                else:
                    assert text.startswith("roughly:") and plan.input_text in text and "epochs" in text
                    assert ("frozen" in text and plan.backbone_from) or "from scratch" in text
    mid, full = (next(p for p in get_preset(name).datasets if p.role == "ct") for name in ("mid", "full"))
    assert "initialised from our chest model, every layer fine-tuned" in comparability(THESIS_FIGURES[0], mid)
    assert "backbone from our chest model, frozen" in comparability(THESIS_FIGURES[0], full)


def test_mid_preset_names_its_data(shared_data: Path) -> None:
    mid = get_preset("mid")
    cfg = preset_config(mid)
    assert {p.role: (p.path, p.pixels) for p in mid.datasets} == {
        "chest": ("chest_xray", 64), "breast": ("breastmnist.npz", 64), "ct": ("COVID-CT", 64)}
    assert [p.role for p in mid.datasets][0] == "chest"  # the backbone source trains first
    assert all(p.backbone_from == "chest" for p in mid.datasets if p.role != "chest")
    assert cfg.blackbox.budgets == [1000, 5000, 10_000, 15_000, 20_000] and cfg.blackbox.n_images <= 4
    found, skipped = present(mid, shared_data)
    assert [p.role for p in found] == ["chest", "breast", "ct"] and not skipped


def test_every_chapter_has_thesis_and_ours(tiny_run: tuple[Path, dict]) -> None:
    out, result = tiny_run
    saved = json.loads((out / "thesis.json").read_text())
    assert saved["records"] == json.loads(json.dumps(result["records"]))
    for chapter in (3, 4, 5, 6):
        recs = [r for r in saved["records"] if r["chapter"] == chapter]
        assert recs, f"chapter {chapter} missing"
        for r in recs:
            assert {"chapter", "table", "dataset", "model", "quantity", "ours", "thesis", "unit", "note"} <= r.keys()
        assert any(r["thesis"] is not None for r in recs)
        chest = [r for r in recs if r["dataset"].startswith("chest")]
        assert any(r["ours"] is not None for r in chest), f"no measured figure of ours in chapter {chapter}"
    by = {(r["chapter"], r["quantity"], r["attack"], r["defense"]): r for r in saved["records"]
          if r["dataset"].startswith("chest")}
    clean = by[(3, "clean_accuracy", None, None)]
    assert 50 <= clean["ours"] <= 100 and clean["our_dataset"] == "pneumoniamnist"
    assert by[(4, "robust_accuracy", "fgsm", "at")]["ours"] is not None  # the AT fine-tune ran and was read back
    ratio = by[(6, "l2_ratio", "gbba/gbba", "rnd/none")]
    assert ratio["comparable"].startswith("roughly") and "scale-free" not in json.dumps(saved)
    assert "same data/model" not in json.dumps(saved)
    assert "fgsm_iter" in by[(4, "robust_accuracy", "fgsm", "none")]["note"]
    assert by[(4, "robust_accuracy", "mifgsm", "noise")]["ours"] is not None  # noise-only training (Tables 4-4/4-5)
    assert by[(3, "transfer_accuracy", "mifgsm", None)]["ours"] is not None
    assert ratio["thesis"] == pytest.approx(29.27 / 2.23)
    breast = [r for r in saved["records"] if r["dataset"].startswith("breast")]
    assert breast and all(r["ours"] is None and "breastmnist.npz not found" in r["note"] for r in breast)
    assert {r["table"] for r in breast} >= {"4-2", NOISE_TABLE, "5-3", "6-2"}
    assert any(s["dataset"] == "breastmnist" for s in saved["skipped"])


def test_markdown_shows_published_numbers(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    md = (out / "thesis.md").read_text()
    for text in ("95.86%", "96.03%", "83.28%", "85.34%", "32.5", "7.47", "4.74", "2.23", "29.3", "39", "13.13x",
                 "| thesis |", "| ours |", "comparable?"):
        assert text in md, text
    for chapter in (3, 4, 5, 6):
        assert f"## Chapter {chapter}:" in md
    html = (out / "thesis.html").read_text()
    assert "<table>" in html and "95.86%" in html
    assert (out / "pneumoniamnist" / "report.html").is_file()  # the campaign's own audit report


def test_rerun_reuses_models_and_jobs(tiny_run: tuple[Path, dict], pneumonia_only: Path) -> None:
    out, result = tiny_run
    weights = sorted((out / "models").rglob("model.safetensors"))
    assert len(weights) >= 2
    assert (out / "pneumoniamnist" / "models" / "pneumoniamnist_smallcnn-densenet_at_fixed-mifgsm").is_dir()
    before = {p: p.stat().st_mtime_ns for p in weights}
    jobs = (out / "pneumoniamnist" / "jobs.json").read_text()
    again = reproduce_thesis(pneumonia_only, out, preset="tiny")
    assert {p: p.stat().st_mtime_ns for p in weights} == before  # no retraining
    assert (out / "pneumoniamnist" / "jobs.json").read_text() == jobs  # no job re-run
    assert again["records"] == result["records"]


def test_missing_dataset_names_the_files(tmp_path: Path) -> None:
    with pytest.raises(MedShieldError, match=r"pneumoniamnist\.npz.*breastmnist\.npz"):
        reproduce_thesis(tmp_path, tmp_path / "out", preset="quick")
    (tmp_path / "chest_xray").mkdir()
    with pytest.raises(MedShieldError, match="--preset full"):
        reproduce_thesis(tmp_path, tmp_path / "out", preset="quick")


def test_config_yaml_overrides_a_section_only(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("blackbox:\n  n_images: 7\n")
    cfg = preset_config(get_preset("quick"), path)
    assert cfg.blackbox.n_images == 7
    assert cfg.blackbox.budgets == [1000, 5000, 10_000, 15_000, 20_000]  # the preset's, not the audit default
    path.write_text("blackbox:\n  n_imgs: 7\n")
    with pytest.raises(MedShieldError, match="n_imgs"):
        preset_config(get_preset("quick"), path)
    with pytest.raises(MedShieldError, match="unknown thesis preset"):
        get_preset("huge")


def test_cli_reports_missing_data_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medshield.cli import app

    res = CliRunner().invoke(app, ["reproduce", "thesis", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "no thesis dataset" in res.output and "pneumoniamnist.npz" in res.output


def test_plan_limits_sections_to_runs_and_defended_attacks(demo_run: Path, demo_run2: Path, tmp_path: Path) -> None:
    from medshield.campaign.config import CampaignConfig
    from medshield.campaign.runner import plan

    cfg = CampaignConfig.model_validate({
        "whitebox": {"attacks": ["fgsm"]}, "transfer": {"enabled": False}, "detection": {"enabled": False},
        "blackbox": {"attacks": ["hsja", "gbba"], "defenses": ["none", "rnd"], "n_images": 2, "shard_size": 2,
                     "defended_attacks": ["hsja"], "runs": [demo_run2.name]},
        "defenses": {"enabled": True, "defenses": ["at"], "runs": [demo_run.name]}, "calibration": {"enabled": False}})
    keys = [j.key for j in plan(cfg, [str(demo_run), str(demo_run2)], "demo", None, tmp_path)]
    assert f"whitebox|{demo_run.name}|fgsm" in keys and f"whitebox|{demo_run2.name}|fgsm" in keys
    blackbox = [k for k in keys if k.startswith("blackbox|")]
    fixed = cfg.model_copy(update={"defenses": cfg.defenses.model_copy(update={"source": "fixed",
                                                                               "train_attacks": {"at": "fgsm_iter"}})})
    jobs = [j for j in plan(fixed, [str(demo_run)], "demo", None, tmp_path) if j.key.startswith("defense|")]
    assert [j.key for j in jobs] == [f"defense|{demo_run.name}|at|fixed-fgsm_iter"]
    assert jobs[0].kwargs["train_source"] == "fixed" and jobs[0].kwargs["train_attack"] == "fgsm_iter"
    # a randomised defense is attacked adaptively by default (majority over 5 repeats): its key says so
    assert blackbox == [f"blackbox|{demo_run2.name}|{a}|{d}|l2|0{t}" for d, a, t in
                        (("none", "hsja", ""), ("none", "gbba", ""), ("rnd", "hsja", "|k5"))]
    assert [k for k in keys if k.startswith("defense|")] == [f"defense|{demo_run.name}|at"]


def test_a_resnet_fine_tuned_on_a_frozen_run_backbone_loads_back(tmp_path: Path) -> None:
    """The CT and breast models of the mid/full presets are resnets with a frozen backbone from the chest run:
    loading one must not replace its head twice (smallcnn hid this: its head takes any input width)."""
    import torch

    from medshield.models.checkpoint import load_run, save_run
    from medshield.models.factory import create_model

    save_run(tmp_path / "src", create_model(name="resnet18", in_channels=1, num_classes=2, image_size=32))
    tuned = create_model(name="resnet18", in_channels=1, num_classes=2, image_size=32,
                         pretrained=str(tmp_path / "src"), freeze_backbone=True).eval()
    save_run(tmp_path / "ft", tuned)
    loaded, _ = load_run(tmp_path / "ft")
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loaded(x), tuned(x))


def test_a_model_trained_otherwise_is_refused_or_retrained(tiny_run: tuple[Path, dict], pneumonia_only: Path,
                                                           tmp_path: Path) -> None:
    """A finished run in OUT from other settings (here: another epoch count) is never silently reused."""
    from medshield.campaign.thesis import train_models

    out = tmp_path / "out"
    shutil.copytree(tiny_run[0] / "models", out / "models")
    preset = get_preset("tiny")
    plan = preset.datasets[0]
    run = out / "models" / plan.run_name("resnet")
    config = json.loads((run / "config.json").read_text())
    config["train"]["epochs"] = 3
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(MedShieldError, match=r"trained otherwise.*train\.epochs 3 -> 1.*--overwrite"):
        train_models(plan, preset, pneumonia_only, out, seed=0)
    other = out / "models" / plan.run_name("densenet") / "model.safetensors"
    kept = other.stat().st_mtime_ns
    train_models(plan, preset, pneumonia_only, out, seed=0, overwrite=True)
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 1  # retrained as planned
    assert other.stat().st_mtime_ns == kept  # the model trained as planned is reused
