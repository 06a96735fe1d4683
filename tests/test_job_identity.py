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


# ---- the stand-alone commands (attack, transfer, blackbox, with --run or --target CARD) ----

def cards(root: Path, two_models: tuple[Path, Path]) -> tuple[Path, Path]:
    """Two cards with the very same text, each beside its own model folder (different weights)."""
    out = []
    for name, run in zip("ab", two_models):
        folder = root / name
        shutil.copytree(run, folder / "model")
        (folder / "card.yaml").write_text("name: device\nmodel: {format: medshield_run, path: model}\n")
        out.append(folder / "card.yaml")
    return out[0], out[1]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in records]


def cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from medshield.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def one_line_error(code: int, output: str, *named: str) -> None:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), output
    assert "--overwrite" in lines[0] and all(n in lines[0] for n in named), lines[0]


ATTACK = ("--dataset", "demo", "--attack", "fgsm", "--eps", "4/255", "--n", "24")


def test_attack_target_with_another_cards_model_is_refused_then_recomputed(
        tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    """Fails on the old main: `attack --target` keyed its jobs by the card's name, so card B (another
    model under the same name) got card A's records."""
    a, b = cards(tmp_path, two_models)
    out = tmp_path / "out"
    assert cli("attack", "--target", a, *ATTACK, "--out", out)[0] == 0
    first = (out / "whitebox.json").read_bytes()
    store = (out / "whitebox_jobs.json").read_bytes()
    assert cli("attack", "--target", a, *ATTACK, "--out", out)[0] == 0  # same inputs: reused
    assert (out / "whitebox.json").read_bytes() == first and (out / "whitebox_jobs.json").read_bytes() == store
    one_line_error(*cli("attack", "--target", b, *ATTACK, "--out", out), "model.model")
    assert (out / "whitebox_jobs.json").read_bytes() == store  # refused before any work
    assert cli("attack", "--target", b, *ATTACK, "--out", out, "--overwrite")[0] == 0
    assert cli("attack", "--target", b, *ATTACK, "--out", tmp_path / "fresh")[0] == 0
    again = untimed(json.loads((out / "whitebox.json").read_text()))
    assert again == untimed(json.loads((tmp_path / "fresh" / "whitebox.json").read_text()))
    assert again != untimed(json.loads(first))


@pytest.mark.parametrize("change, named", [
    (("--n", "12"), "data.n"), (("--seed", "1"), "seed"), (("--steps", "3"), "attack_config")])
def test_attack_run_with_other_images_seed_or_params_is_refused(
        tmp_path: Path, two_models: tuple[Path, Path], change: tuple[str, str], named: str) -> None:
    out = tmp_path / "out"
    args = ("attack", "--run", two_models[0], "--dataset", "demo", "--attack", "bim", "--eps", "4/255", "--n", "24",
            "--steps", "2", "--out", out)
    assert cli(*args)[0] == 0
    code, output = cli(*args[:-2], *change, "--out", out)
    one_line_error(code, output, named)


def test_transfer_with_another_model_is_refused_then_recomputed(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, b = cards(tmp_path, two_models)
    out = tmp_path / "out"
    args = ("--dataset", "demo", "--attack", "fgsm", "--eps", "4/255", "--n", "24", "--out", out)
    assert cli("transfer", "--source", two_models[0], "--target", a, *args)[0] == 0
    one_line_error(*cli("transfer", "--source", two_models[0], "--target", b, *args), "targets")
    assert cli("transfer", "--source", two_models[0], "--target", b, *args, "--overwrite")[0] == 0


BLACKBOX = ("--dataset", "demo", "--attack", "hsja", "--budgets", "40", "--n-images", "4")


def test_blackbox_target_with_another_cards_model_is_refused_then_recomputed(
        tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, b = cards(tmp_path, two_models)
    out = tmp_path / "out"
    assert cli("blackbox", "--target", a, *BLACKBOX, "--out", out)[0] == 0
    store = (out / "jobs.json").read_bytes()
    assert cli("blackbox", "--target", a, *BLACKBOX, "--out", out)[0] == 0  # same inputs: reused
    assert (out / "jobs.json").read_bytes() == store
    one_line_error(*cli("blackbox", "--target", b, *BLACKBOX, "--out", out), "model.model")
    assert (out / "jobs.json").read_bytes() == store
    code, output = cli("blackbox", "--target", b, *BLACKBOX, "--out", out, "--overwrite")
    assert code == 0, output
    assert cli("blackbox", "--target", b, *BLACKBOX, "--out", tmp_path / "fresh")[0] == 0
    fresh = json.loads((tmp_path / "fresh" / "blackbox.json").read_text())
    assert untimed(json.loads((out / "blackbox.json").read_text())["records"]) == untimed(fresh["records"])


def test_audit_target_card_runs_and_names_another_model(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    """Fails on the old main: the campaign fingerprinted a card path as a run folder (a traceback)."""
    from medshield.campaign.audit import audit

    a, b = cards(tmp_path, two_models)
    cfg = config(tmp_path / "c.yaml", clean__bootstrap=0)
    audit([str(a)], tmp_path / "out", config=cfg)
    with pytest.raises(StaleRecordError, match=r"run\.model "):
        audit([str(b)], tmp_path / "out", config=cfg)


def test_a_data_file_replaced_under_the_same_name_is_other_data(tmp_path: Path, shared_data: Path) -> None:
    """The campaign's job identity follows the bytes of the data files, not only the dataset's name."""
    import numpy as np

    from medshield.campaign.identity import job_inputs

    def identity(folder: Path) -> dict:
        return job_inputs("m:clean_job", {"run": None, "dataset": "pneumoniamnist", "data_dir": str(folder),
                                          "split": "test", "seed": 0})["args"]

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(shared_data / "pneumoniamnist.npz", a)
    shutil.copy(shared_data / "pneumoniamnist.npz", b)
    same = identity(a)
    assert same["data_files"] and identity(b)["data_files"] == same["data_files"]  # same bytes elsewhere: same data
    arrays = dict(np.load(b / "pneumoniamnist.npz"))
    arrays["test_labels"] = 1 - arrays["test_labels"]
    np.savez(b / "pneumoniamnist.npz", **arrays)
    assert identity(b)["data_files"] != same["data_files"]
    assert job_inputs("m:clean_job", {"dataset": "demo", "data_dir": None})["args"]["data_files"] is None
