"""Audit campaigns: config validation, report contents, identical results across executors and after a
SIGKILL, and the HTML report in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medshield.campaign.config import CampaignConfig, default_yaml, load_config
from medshield.errors import MedShieldError

SMALL = {
    "clean": {"bootstrap": 50},
    "whitebox": {"attacks": ["fgsm", "pgd"], "eps": ["2/255", "8/255"], "n_images": 40, "grid_images": 1},
    "transfer": {"n_images": 40},
    "blackbox": {"attacks": ["hsja", "gbba"], "budgets": [100, 300], "defenses": ["none", "rnd:nu=0.04"], "n_images": 4,
                 "shard_size": 2},
    "detection": {"attacks": ["hsja"], "budget": 300, "n_images": 2},
}


def write_config(path: Path, **extra: object) -> Path:
    path.write_text(yaml.safe_dump({**SMALL, **extra}))
    return path


def test_config_defaults_roundtrip_and_errors(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "c.yaml", seed=3))
    assert cfg.seed == 3 and cfg.blackbox.budgets == [100, 300] and cfg.whitebox.norm == "linf"
    assert CampaignConfig.model_validate(yaml.safe_load(default_yaml())) == CampaignConfig()
    (tmp_path / "bad.yaml").write_text("whitebox:\n  atacks: [fgsm]\n")
    with pytest.raises(MedShieldError, match="whitebox.atacks"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "neg.yaml").write_text("blackbox:\n  budgets: [0]\n")
    with pytest.raises(MedShieldError, match="budgets"):
        load_config(tmp_path / "neg.yaml")
    with pytest.raises(MedShieldError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_device_reaches_every_job_and_cpu_keeps_job_arguments(tmp_path: Path, demo_run: Path) -> None:
    from medshield.campaign.runner import plan

    cpu = load_config(write_config(tmp_path / "c.yaml", defenses={"enabled": True}))
    auto = cpu.model_copy(update={"device": "auto"})
    cpu_jobs, auto_jobs = (plan(c, [str(demo_run)], "demo", None, tmp_path) for c in (cpu, auto))
    assert [j.key for j in cpu_jobs] == [j.key for j in auto_jobs]
    assert all("device" not in j.kwargs for j in cpu_jobs)
    assert all(j.kwargs["device"] == "auto" for j in auto_jobs)
    (tmp_path / "bad.yaml").write_text("device: gpu\n")
    with pytest.raises(MedShieldError, match="device"):
        load_config(tmp_path / "bad.yaml")


def test_unknown_attack_fails_before_work(tmp_path: Path, demo_run: Path) -> None:
    from medshield.campaign.audit import audit

    cfg = load_config(write_config(tmp_path / "c.yaml")).model_copy()
    cfg.whitebox.attacks = ["pgdd"]
    with pytest.raises(Exception, match="pgd"):
        audit([str(demo_run)], tmp_path / "r", config=cfg)
    assert not (tmp_path / "r" / "jobs.json").exists()


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, demo_run: Path, demo_run2: Path) -> tuple[Path, dict]:
    from medshield.campaign.audit import audit

    out = tmp_path_factory.mktemp("audit")
    res = audit([str(demo_run), str(demo_run2)], out, config=write_config(out / "c.yaml"))
    return out, res


def test_audit_writes_records_figures_and_verdicts(audited: tuple[Path, dict]) -> None:
    out, res = audited
    for name in ("report.html", "report.md", "report.pdf", "audit.json", "findings.json", "timings.json",
                 "robust_vs_eps.png", "grid.png", "grid_run2.png", "transfer.png", "l2_vs_queries.png", "strips.png"):
        assert (out / name).is_file(), name
    assert {r["run"] for r in res["clean"]} == {"run", "run2"}
    assert all(r["accuracy"] > 0.8 for r in res["clean"])
    wb = {(r["run"], r["attack"], r["eps_label"]): r for r in res["whitebox"]}
    assert wb[("run", "pgd", "8/255")]["robust_accuracy"] < wb[("run", "pgd", "8/255")]["clean_accuracy"] - 0.3
    assert all(r["max_linf"] <= r["eps"] + 1e-6 for r in res["whitebox"])
    bb = [r for r in res["blackbox"] if r["run"] == "run"]
    assert {(r["attack"], r["defense"], r["budget"]) for r in bb} == {(a, d, b) for a in ("hsja", "gbba")
                                                                     for d in ("none", "rnd") for b in (100, 300)}
    assert all(r["defended_clean_accuracy"] is not None for r in bb)
    assert {r["defense_spec"] for r in bb} == {"none", "rnd:nu=0.04"}
    assert res["detection"] and res["detection"][0]["records"][0]["kind"] == "attack:hsja"
    assert len(res["transfer"]) == 4
    html = (out / "report.html").read_text()
    assert 'class="verdict' in html and "per pixel" in html and "data:image/png;base64," in html
    assert "src=\"http" not in html and "<script" not in html
    assert 'id="summary"' in html and "RND (input noise σ = 0.04)" in html and "RND:NU" not in html
    md = (out / "report.md").read_text()
    assert "## Executive summary" in md and "![" in md
    text = (out / "audit.json").read_text()
    assert '"seconds"' not in text  # wall-clock times live in timings.json
    from medshield.report.schema import validate_audit

    validate_audit(json.loads(text))
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    assert "grid_examples" not in text and (out / "grid_examples.npz").is_file()


def test_report_figures_come_from_stored_records_only(audited: tuple[Path, dict], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The report never loads a model or re-runs an attack: the grid comes from the stored examples."""
    from medshield.campaign import jobs
    from medshield.evaluation import services
    from medshield.evaluation.whitebox import GRID_EXAMPLES, load_grid_examples
    from medshield.report.audit import make_figures

    out, res = audited
    for module, name in ((services, "load_target_and_data"), (jobs, "_load_target"), (jobs, "open_target")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("the report loaded a model"))
    examples = load_grid_examples(out / GRID_EXAMPLES)
    assert set(examples) == {"run", "run2"}
    figs = make_figures(res, tmp_path, ["somewhere/run", "elsewhere/run2"], examples)
    assert figs["grid"].stat().st_size > 1000 and {"robust_vs_eps", "transfer", "strips"} <= set(figs)


def test_rerun_reuses_every_job(audited: tuple[Path, dict], demo_run: Path, demo_run2: Path) -> None:
    from medshield.campaign.audit import audit

    out, _ = audited
    before = (out / "audit.json").read_bytes()
    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    audit([str(demo_run), str(demo_run2)], out, config=out / "c.yaml")
    assert (out / "audit.json").read_bytes() == before
    # stored jobs keep their wall-clock seconds: a recomputed job would have changed them
    assert json.loads((out / "jobs.json").read_text())["jobs"] == jobs


def _audit_cmd(run: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medshield.cli", "audit", "--run", str(run), "--out", str(out), "--config",
            str(config), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "MEDSHIELD_NO_PROGRESS": "1"}


def test_sigkill_and_resume_gives_identical_results(tmp_path: Path, demo_run: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", transfer={"enabled": False}, detection={"enabled": False},
                       whitebox={**SMALL["whitebox"], "attacks": ["fgsm", "pgd", "mifgsm"]})
    full = tmp_path / "full"
    subprocess.run(_audit_cmd(demo_run, full, cfg), check=True, env=_env(), capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_audit_cmd(demo_run, killed, cfg), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    total = len(json.loads((full / "jobs.json").read_text())["jobs"])
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if (killed / "jobs.json").is_file():
            try:
                done = len(json.loads((killed / "jobs.json").read_text())["jobs"])
            except json.JSONDecodeError:
                done = 0
            if done >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= done < total, f"kill landed after {done} of {total} jobs"
    assert not (killed / "audit.json").exists()
    subprocess.run(_audit_cmd(demo_run, killed, cfg), check=True, env=_env(), capture_output=True)
    assert (killed / "audit.json").read_bytes() == (full / "audit.json").read_bytes()


def test_process_pool_matches_inline(tmp_path: Path, demo_run: Path) -> None:
    from medshield.campaign.audit import audit

    cfg = write_config(tmp_path / "c.yaml", transfer={"enabled": False}, detection={"enabled": False})
    audit([str(demo_run)], tmp_path / "one", config=cfg)
    audit([str(demo_run)], tmp_path / "two", config=cfg, workers=2)
    assert (tmp_path / "one" / "audit.json").read_bytes() == (tmp_path / "two" / "audit.json").read_bytes()


def test_ray_matches_inline(tmp_path: Path, demo_run: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'medshield[ray]'")
    from medshield.campaign.audit import audit

    cfg = write_config(tmp_path / "c.yaml", transfer={"enabled": False}, detection={"enabled": False},
                       blackbox={**SMALL["blackbox"], "defenses": ["none"]})
    audit([str(demo_run)], tmp_path / "one", config=cfg)
    audit([str(demo_run)], tmp_path / "ray", config=cfg, executor="ray", workers=2)
    assert (tmp_path / "one" / "audit.json").read_bytes() == (tmp_path / "ray" / "audit.json").read_bytes()


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not path:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright; uses the system chromium)")
    return path


def test_report_renders_in_headless_chromium(audited: tuple[Path, dict], tmp_path: Path) -> None:
    """The report in headless Chromium (no errors, no broken images, the summary's threat table first),
    screenshots of it and of the PDF's first pages (pdftoppm); MEDSHIELD_SCREENSHOT=DIR keeps them."""
    from playwright.sync_api import sync_playwright

    from medshield.report.pdf import FLAGS

    browser_path = chromium()
    out, _ = audited
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=FLAGS[1:])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"failed {r.url}"))
        page.goto((out / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        n_images = page.evaluate("document.images.length")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        rows = page.evaluate("document.querySelectorAll('#summary table tbody tr').length")
        first = page.evaluate("document.querySelector('section').id")
        words = page.evaluate("Array.from(document.querySelectorAll('#summary .sev')).map(e => e.textContent)")
        shots = [tmp_path / "report.png", tmp_path / "report_full.png"]
        page.screenshot(path=str(shots[0]), full_page=False)
        page.screenshot(path=str(shots[1]), full_page=True)
        browser.close()
    assert errors == []
    assert n_images >= 6 and broken == 0
    assert first == "summary" and rows >= 8 and set(words) <= {"HIGH", "MEDIUM", "LOW", "PASS"} and words
    assert shots[0].stat().st_size > 10_000
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm:
        subprocess.run([pdftoppm, "-r", "70", "-png", "-f", "1", "-l", "3", str(out / "report.pdf"), str(tmp_path / "pdf")],
                       check=True)
        pages = sorted(tmp_path.glob("pdf-*.png"))
        assert len(pages) == 3 and all(p.stat().st_size > 5_000 for p in pages)
        shots += pages
    if os.environ.get("MEDSHIELD_SCREENSHOT"):
        keep = Path(os.environ["MEDSHIELD_SCREENSHOT"])
        keep.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, keep / shot.name)
