"""Issue 19 finding 1: a job's identity is its inputs, so a rerun never returns another config's records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medshield.evaluation.store import RecordStore, StaleRecordError

CFG = {"clean": {"bootstrap": 20},
       "whitebox": {"attacks": ["fgsm"], "eps": ["2/255"], "n_images": 20, "grid_images": 1},
       "transfer": {"enabled": False}, "blackbox": {"enabled": False}, "detection": {"enabled": False}}


def config(path: Path, **changes: object) -> Path:
    data = json.loads(json.dumps(CFG))
    for dotted, value in changes.items():
        *head, last = dotted.split("__")
        node = data
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data))
    return path


def same_name(src: Path, parent: Path) -> Path:
    """A copy of the run ``src`` in ``parent/run`` (the folder name every model gets here)."""
    dst = parent / "run"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, demo_run: Path, demo_run2: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("same_name")
    return same_name(demo_run, root / "a"), same_name(demo_run2, root / "b")


def test_another_model_in_a_folder_of_the_same_name_is_recomputed_not_reused(
        tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    from medshield.campaign.audit import audit

    a, b = two_models
    cfg = config(tmp_path / "c.yaml")
    first = audit([str(a)], tmp_path / "out", config=cfg)
    with pytest.raises(StaleRecordError, match=r"weights .* -> ") as err:
        audit([str(b)], tmp_path / "out", config=cfg)
    assert "\n" not in str(err.value) and "--overwrite" in str(err.value)
    again = audit([str(b)], tmp_path / "out", config=cfg, overwrite=True)
    fresh = audit([str(b)], tmp_path / "fresh", config=cfg)
    assert again["clean"] == fresh["clean"] and again["whitebox"] == fresh["whitebox"]
    assert (tmp_path / "out" / "audit.json").read_bytes() == (tmp_path / "fresh" / "audit.json").read_bytes()
    assert first["whitebox"] != again["whitebox"]  # the two models do differ (else this test proves nothing)


@pytest.fixture(scope="module")
def audited_a(tmp_path_factory: pytest.TempPathFactory, two_models: tuple[Path, Path]) -> Path:
    from medshield.campaign.audit import audit

    out = tmp_path_factory.mktemp("audited") / "out"
    audit([str(two_models[0])], out, config=config(out.parent / "c.yaml"))
    return out


@pytest.mark.parametrize("change, named", [
    ({"whitebox__eps": ["8/255"]}, "eps"),
    ({"seed": 1}, "seed"),
    ({"whitebox__n_images": 10}, "n_images"),
    ({"clean__bootstrap": 30}, "bootstrap"),
])
def test_changed_eps_seed_or_n_is_refused_with_the_difference_named(
        tmp_path: Path, two_models: tuple[Path, Path], audited_a: Path, change: dict[str, object], named: str) -> None:
    from medshield.campaign.audit import audit

    out = tmp_path / "out"
    shutil.copytree(audited_a, out)
    before = (out / "jobs.json").read_bytes()
    with pytest.raises(StaleRecordError, match=rf"\b{named}\b"):
        audit([str(two_models[0])], out, config=config(tmp_path / "c2.yaml", **change))
    assert (out / "jobs.json").read_bytes() == before  # refused before any work


def test_changed_eps_with_overwrite_recomputes_only_that_job(tmp_path: Path, two_models: tuple[Path, Path],
                                                             audited_a: Path) -> None:
    from medshield.campaign.audit import audit

    out = tmp_path / "out"
    shutil.copytree(audited_a, out)
    old = json.loads((out / "jobs.json").read_text())["jobs"]
    changed = config(tmp_path / "c2.yaml", whitebox__eps=["8/255"])
    res = audit([str(two_models[0])], out, config=changed, overwrite=True)
    new = json.loads((out / "jobs.json").read_text())["jobs"]
    clean_key = next(k for k in old if k.startswith("clean|"))
    assert new[clean_key] == old[clean_key]  # unchanged inputs: reused (its stored seconds kept)
    assert [round(r["eps"] * 255, 6) for r in res["whitebox"]] == [8.0]
    fresh = audit([str(two_models[0])], tmp_path / "fresh", config=changed)
    assert res["whitebox"] == fresh["whitebox"]


def test_cli_names_the_difference_in_one_line_with_exit_2(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    from typer.testing import CliRunner

    from medshield.cli import app

    a, b = two_models
    cfg = config(tmp_path / "c.yaml", clean__enabled=False)
    out = tmp_path / "out"
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "--run", str(a), "--out", str(out), "--config", str(cfg)]).exit_code == 0
    res = runner.invoke(app, ["audit", "--run", str(b), "--out", str(out), "--config", str(cfg)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "weights" in lines[0]
    res = runner.invoke(app, ["audit", "--run", str(b), "--out", str(out), "--config", str(cfg), "--overwrite"])
    assert res.exit_code == 0, res.output


def test_store_keeps_inputs_and_names_differences(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "s.json")
    store.get_or_run("k", lambda: {"v": 1}, {"eps": 0.01, "seed": 0})
    again = RecordStore(tmp_path / "s.json")
    assert again.get_or_run("k", lambda: {"v": 2}, {"eps": 0.01, "seed": 0}) == {"v": 1}
    with pytest.raises(StaleRecordError, match=r"eps 0\.01 -> 0\.02"):
        again.get_or_run("k", lambda: {"v": 3}, {"eps": 0.02, "seed": 0})
    forced = RecordStore(tmp_path / "s.json", overwrite=True)
    assert forced.get_or_run("k", lambda: {"v": 3}, {"eps": 0.02, "seed": 0}) == {"v": 3}
    (tmp_path / "old.json").write_text(json.dumps({"jobs": {"k": {"v": 1}}}))  # an old store without inputs
    with pytest.raises(StaleRecordError, match="older MedShield"):
        RecordStore(tmp_path / "old.json").get_or_run("k", lambda: {"v": 2}, {"eps": 0.01})
