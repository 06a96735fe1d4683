"""Target cards and local model sources (issue 14): a classifier trained OUTSIDE MedShield (a plain
PyTorch loop over a MONAI net on real PneumoniaMNIST images) exported as a Python factory +
safetensors, TorchScript, ONNX and a MONAI bundle, then audited through cards."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from medshield import api
from medshield.attacks.decision import model_label_fn
from medshield.cli import app
from medshield.evaluation.blackbox import BlackboxConfig, run_job
from medshield.models import create_model, save_run
from medshield.targets import GRADIENTS_UNAVAILABLE, CardError, load_card, open_target
from medshield.targets.data import load_target_data

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

runner = CliRunner()
NET_KWARGS = {"in_shape": [1, 28, 28], "classes": 2, "channels": [4, 8], "strides": [2, 2], "num_res_units": 0,
              "act": "relu", "norm": None}
CONTRACT_CARD = """\
model: {format: torchscript, path: model.pt}        # also: onnx, python, monai_bundle, medshield_run, oip, http
input: {size: 28, channels: 1, mean: [0.5], std: [0.5]}   # the model receives (pixel in [0,1] - mean) / std
output: {kind: logits, task: binary, classes: [normal, pneumonia], positive: [pneumonia]}
"""
HEAD = "input: {size: 28, channels: 1, mean: [0.5], std: [0.5]}\n" \
       "output: {kind: logits, task: binary, classes: [normal, pneumonia], positive: [pneumonia]}\n"


def _err(result) -> str:  # noqa: ANN001
    return result.stderr if hasattr(result, "stderr") else result.output


def train_outside(data: Path) -> tuple[torch.nn.Module, float]:
    """A plain PyTorch training loop (no MedShield code): MONAI Classifier, 2 epochs on 2,000 images."""
    from monai.networks.nets import Classifier

    d = np.load(data / "pneumoniamnist.npz")
    x = torch.from_numpy(d["train_images"][:2000]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(d["train_labels"][:2000]).long().flatten()
    xt = torch.from_numpy(d["test_images"]).float().div(255).unsqueeze(1)
    yt = torch.from_numpy(d["test_labels"]).long().flatten()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = Classifier(**NET_KWARGS)
            opt = torch.optim.Adam(net.parameters(), 3e-3)
            for _ in range(2):
                for idx in torch.randperm(len(x)).split(64):
                    loss = torch.nn.functional.cross_entropy(net((x[idx] - 0.5) / 0.5), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net((xt - 0.5) / 0.5).argmax(1) == yt).double().mean())
    finally:
        torch.set_num_threads(threads)
    return net, acc


def export_all(net: torch.nn.Module, root: Path) -> dict[str, Path]:
    """Write the model as a Python factory + safetensors, TorchScript, ONNX and a MONAI bundle, with a card each."""
    root.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(root / "weights.safetensors"))
    torch.jit.save(torch.jit.script(net), str(root / "model.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 1, 28, 28), str(root / "model.onnx"), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    bundle = root / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "pneumonia test net"}))
    (bundle / "configs" / "inference.json").write_text(json.dumps(
        {"network_def": {"_target_": "monai.networks.nets.Classifier", **NET_KWARGS}}))
    torch.save(state, bundle / "models" / "model.pt")
    kwargs = json.dumps(NET_KWARGS)
    cards = {
        "python": f"model: {{format: python, factory: 'monai.networks.nets:Classifier', weights: weights.safetensors, kwargs: {kwargs}}}\n",
        "torchscript": "model: {format: torchscript, path: model.pt}\n",
        "onnx": "model: {format: onnx, path: model.onnx}\n",
        "monai_bundle": "model: {format: monai_bundle, path: bundle}\n",
    }
    paths = {}
    for name, model_line in cards.items():
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(model_line + HEAD)
    (root / "card.yaml").write_text(CONTRACT_CARD)
    return paths


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    net, acc = train_outside(shared_data)
    root = tmp_path_factory.mktemp("byom") / "models"
    cards = export_all(net, root)
    return {"root": root, "cards": cards, "accuracy": acc, "data": shared_data, "digest": tree_digest(root)}


def test_contract_card_check_and_attack(exported: dict, tmp_path: Path) -> None:
    """The issue's exact YAML: `target check` prints one JSON object whose test.accuracy is the model's
    test accuracy; `attack --target` writes OUT/whitebox.json as --run does."""
    card = exported["root"] / "card.yaml"
    r = runner.invoke(app, ["target", "check", str(card), "--dataset", "pneumoniamnist", "--data-dir", str(exported["data"])])
    assert r.exit_code == 0, _err(r)
    report = json.loads(r.stdout)
    assert report["test"]["accuracy"] == pytest.approx(exported["accuracy"], abs=1e-12)
    assert report["output_shape"] == [624, 2] and report["input_shape"] == [1, 28, 28]
    assert report["gradients"] is True and report["deterministic"] is True
    assert report["target"]["runs_model_code"] is True and report["target"]["format"] == "torchscript"
    out = tmp_path / "wb"
    r = runner.invoke(app, ["attack", "--target", str(card), "--dataset", "pneumoniamnist", "--data-dir",
                            str(exported["data"]), "--attack", "pgd", "--eps", "8/255", "--n", "64", "--steps", "10", "--out", str(out)])
    assert r.exit_code == 0, _err(r)
    records = json.loads((out / "whitebox.json").read_text())
    assert records[0]["run"] == "card" and records[0]["attack"] == "pgd" and records[0]["eps"] == pytest.approx(8 / 255)
    assert records[0]["robust_accuracy"] < records[0]["clean_accuracy"]
    assert records[0]["checks"]["within_budget"]["ok"]


def test_clean_metrics_identical_across_formats(exported: dict) -> None:
    results = {name: api.target_check(card, "pneumoniamnist", exported["data"]) for name, card in exported["cards"].items()}
    acc = {name: r["test"]["accuracy"] for name, r in results.items()}
    assert len(set(acc.values())) == 1 and acc["python"] == pytest.approx(exported["accuracy"], abs=1e-12), acc
    for name, r in results.items():
        assert r["test"]["auc"] == pytest.approx(results["python"]["test"]["auc"], abs=1e-6), name
        assert r["gradients"] and r["deterministic"], name
    notes = results["onnx"]["target"]["notes"]
    assert notes["conversion_max_abs_diff"] < 1e-4
    assert results["onnx"]["white_box_vs_predictions"]["same_label"] == 1.0
    assert results["onnx"]["target"]["runs_model_code"] is False
    assert results["monai_bundle"]["target"]["runs_model_code"] is True
    print(f"\nclean test accuracy / AUC per format (624 images): "
          f"{ {n: (round(r['test']['accuracy'], 4), round(r['test']['auc'], 4)) for n, r in results.items()} }")


def test_pgd_identical_python_torchscript_onnx(exported: dict, tmp_path: Path) -> None:
    robust = {}
    for name in ("python", "torchscript", "onnx"):
        recs = api.attack(str(exported["cards"][name]), tmp_path / name, dataset="pneumoniamnist",
                          data_dir=exported["data"], attacks=["pgd"], eps=[8 / 255], n=100, grid=False,
                          attack_kwargs={"pgd": {"steps": 10}})
        robust[name] = recs[0]["robust_accuracy"]
    assert robust["python"] == robust["torchscript"], robust
    assert abs(robust["onnx"] - robust["python"]) <= 0.01, robust
    assert robust["python"] < 0.7
    print(f"\nPGD 8/255 (10 steps, 100 images) robust accuracy per format: {robust}")


def test_hsja_l2_identical_in_process_and_onnxruntime(exported: dict) -> None:
    """Label-only HSJA with the same seed: per-image L2 identical on the PyTorch model and through ONNX
    Runtime (the ONNX target's prediction path), with the same query counts. The two runtimes' logits
    differ by < 1e-6 (different conv kernels), so images are taken every 4th of the test split and
    their clean logit margins are checked to be far above that."""
    py = open_target(exported["cards"]["python"])
    ort = open_target(exported["cards"]["onnx"])
    assert type(ort.model.net[0]).__name__ == "OrtNet"  # predictions really go through onnxruntime
    ds = load_target_data(py, "pneumoniamnist", exported["data"])
    part = ds.split("test")
    idx = torch.arange(0, 28, 4)
    x, y = part.images(idx), part.labels[idx]
    with torch.no_grad():
        lp, lo = py.model(x), ort.model(x)
    assert float((lp - lo).abs().max()) < 1e-5 and float((lp[:, 1] - lp[:, 0]).abs().min()) > 1e-3
    keep = model_label_fn(py.model)(x) == y
    x, y = x[keep], y[keep]
    cfg = BlackboxConfig(attacks=["hsja"], budgets=[150], n_images=len(y), seed=0, norm="l2")
    a = run_job("hsja", model_label_fn(py.model), x, y, cfg, 7, "py")
    b = run_job("hsja", model_label_fn(ort.model), x, y, cfg, 7, "ort")
    assert len(y) >= 5 and a["l2"] == b["l2"] and a["queries"] == b["queries"] and a["sent_attack"] == b["sent_attack"]
    assert sum(np.isfinite(a["l2"]["150"])) >= 4
    print(f"\nHSJA (seed 7, 150 queries, {len(y)} images) per-image L2, in process = onnxruntime: "
          f"{np.round(a['l2']['150'], 4).tolist()}; queries {a['queries']}")


def test_onnx_without_conversion_runs_label_only(exported: dict, tmp_path: Path) -> None:
    card = exported["root"] / "onnx_noconv.yaml"
    card.write_text("model: {format: onnx, path: model.onnx, convert: false}\n" + HEAD)
    target = open_target(card)
    assert not target.gradients and target.model is not None
    r = runner.invoke(app, ["attack", "--target", str(card), "--dataset", "pneumoniamnist", "--data-dir",
                            str(exported["data"]), "--attack", "pgd", "--eps", "8/255", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and GRADIENTS_UNAVAILABLE in _err(r) and len(_err(r).strip().splitlines()) == 1
    # transfer: the ONNX target is attacked with adversarials made on the TorchScript model
    recs = api.transfer([str(exported["cards"]["torchscript"]), str(card)], tmp_path / "t", dataset="pneumoniamnist",
                        data_dir=exported["data"], eps=8 / 255, n=64)
    assert {(r["source"], r["target"]) for r in recs} == {("torchscript", "torchscript"), ("torchscript", "onnx_noconv")}
    pair = {r["target"]: r["robust_accuracy"] for r in recs}
    assert pair["torchscript"] == pytest.approx(pair["onnx_noconv"], abs=1 / 64)


def test_probabilities_card_gives_same_decisions(exported: dict) -> None:
    """A model returning softmax probabilities: the card says so and MedShield gets logits back (log p)."""
    code = exported["root"] / "probs_net.py"
    code.write_text("import torch\nfrom monai.networks.nets import Classifier\n\n"
                    "def build(**kw):\n    return torch.nn.Sequential(Classifier(**kw), torch.nn.Softmax(dim=1))\n")
    state = {f"0.{k}": v for k, v in open_target(exported["cards"]["python"]).model.net[0].state_dict().items()}
    save_file(state, str(exported["root"] / "probs.safetensors"))
    card = exported["root"] / "probs.yaml"
    card.write_text(f"model: {{format: python, factory: 'probs_net:build', weights: probs.safetensors, "
                    f"kwargs: {json.dumps(NET_KWARGS)}}}\n" + HEAD.replace("kind: logits", "kind: probabilities"))
    rep = api.target_check(card, "pneumoniamnist", exported["data"])
    assert rep["test"]["accuracy"] == pytest.approx(exported["accuracy"], abs=1e-12)
    assert 0 <= rep["outputs"]["min"] and rep["outputs"]["max"] <= 1 and rep["logits"]["max"] <= 0


def test_medshield_run_card(tmp_path: Path) -> None:
    """A run folder is a card: a YAML card naming it (input/output read from the run) gives the same model."""
    demo_run = tmp_path / "run"
    save_run(demo_run, create_model(name="smallcnn"), extra={"data": {"dataset": "demo", "classes": ["normal", "abnormal"],
                                                                     "positive_class": 1}})
    card = tmp_path / "run.yaml"
    card.write_text(f"model: {{format: medshield_run, path: {demo_run}}}\n")
    a, b = open_target(demo_run), open_target(card)
    assert a.format == b.format == "medshield_run" and a.model_digest == b.model_digest
    assert a.class_names == b.class_names and a.positive_class == b.positive_class
    x = torch.rand(4, a.channels, a.image_size, a.image_size)
    assert torch.equal(a.model(x), b.model(x)) and a.model.config.name == "smallcnn"
    assert a.name == "run" and b.name == "run" and a.positive_names == ["abnormal"]


@pytest.mark.parametrize(("text", "field"), [
    ("model: {format: torchscript, path: model.pt}\ninput: {size: 28, channels: 2}\n"
     "output: {kind: logits, task: binary, classes: [a, b]}\n", "input.channels"),
    ("model: {format: torchscrpt, path: model.pt}\n" + HEAD, "model.format: unknown model format 'torchscrpt'; did you mean 'torchscript'"),
    ("model: {format: torchscript, path: model.pt}\ninput: {size: 28, channels: 1}\n"
     "output: {kind: logits, task: binary, classes: [a, b], positive: [c]}\n", "output: positive names ['c']"),
    ("model: {format: torchscript, path: missing.pt}\n" + HEAD, "model.path:"),
    ("model: {format: torchscript, path: model.pt}\n" + HEAD + "colour: blue\n", "colour: Extra inputs"),
    ("model: {format: onnx, path: model.onnx, url: x}\n" + HEAD, "model.url: Extra inputs"),
    ("model: {format: torchscript, path: model.pt\n", "not valid YAML at line"),
    ("model: {format: python, factory: nosuchmodule_xyz:build}\n" + HEAD, "model.factory: cannot import"),
    ("model: {format: torchscript, path: model.pt}\ninput: {size: 28, channels: 1}\n"
     "output: {kind: logits, task: multiclass, classes: [a, b, c]}\n", "output.classes: the model gives 2 outputs"),
])
def test_bad_cards_one_line_naming_field(exported: dict, tmp_path: Path, text: str, field: str) -> None:
    card = exported["root"] / "bad.yaml"
    card.write_text(text)
    r = runner.invoke(app, ["target", "check", str(card), "--dataset", "pneumoniamnist", "--data-dir", str(exported["data"])])
    err = _err(r).strip()
    assert r.exit_code == 2 and err.startswith(f"error: {card}") and field in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_files_refused_and_nothing_overwritten(exported: dict, tmp_path: Path) -> None:
    root = exported["root"]
    (root / "garbage.pt").write_bytes(b"not a model at all")
    (root / "garbage.onnx").write_bytes(b"\x08\x07garbage")
    torch.save({"net": torch.nn.Linear(2, 2)}, root / "pickled.pt")  # a whole module: needs the full unpickler
    cases = {"model: {format: torchscript, path: garbage.pt}\n": "is not a TorchScript archive",
             "model: {format: onnx, path: garbage.onnx}\n": "is not a valid ONNX model",
             f"model: {{format: python, factory: 'monai.networks.nets:Classifier', weights: pickled.pt, kwargs: {json.dumps(NET_KWARGS)}}}\n":
                 "model.weights:",
             f"model: {{format: python, factory: 'monai.networks.nets:Classifier', weights: model.pt, kwargs: {json.dumps(NET_KWARGS)}}}\n":
                 "model.weights:"}
    for model_line, message in cases.items():
        card = tmp_path / "c.yaml"
        card.write_text(model_line.replace("garbage", str(root / "garbage")).replace("pickled.pt", str(root / "pickled.pt"))
                        .replace("weights: model.pt", f"weights: {root / 'model.pt'}") + HEAD)
        with pytest.raises(CardError, match=message):
            open_target(card)
    for extra in ("garbage.pt", "garbage.onnx", "pickled.pt"):
        (root / extra).unlink()
    for leftover in ("bad.yaml", "onnx_noconv.yaml", "probs.yaml", "probs_net.py", "probs.safetensors"):
        (root / leftover).unlink(missing_ok=True)
    for cache in root.rglob("__pycache__"):
        for f in cache.iterdir():
            f.unlink()
        cache.rmdir()
    assert tree_digest(root) == exported["digest"]  # loading, checking and attacking never wrote a model file


def test_card_paths_relative_to_card_folder(exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    card = load_card(exported["cards"]["torchscript"])
    assert card.resolve(card.model.path) == exported["root"] / "model.pt"
    assert card.label == "torchscript" and len(card.digest()) == 64


def test_audit_of_the_four_exports(exported: dict, tmp_path: Path) -> None:
    """`medshield audit --target` over the Python, TorchScript, ONNX and MONAI-bundle exports of the model
    trained outside MedShield, in one campaign: clean metrics identical; PGD robust accuracy identical
    for Python, TorchScript and the bundle, within 1 point for the ONNX conversion."""
    import yaml

    cfg = {"clean": {"bootstrap": 50}, "transfer": {"enabled": False}, "blackbox": {"enabled": False},
           "detection": {"enabled": False},
           "whitebox": {"attacks": ["pgd"], "eps": ["8/255"], "n_images": 100, "attack_options": {"pgd": {"steps": 10}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cards = [str(exported["cards"][k]) for k in ("python", "torchscript", "onnx", "monai_bundle")]
    r = runner.invoke(app, ["audit", "--target", ",".join(cards), "--dataset", "pneumoniamnist", "--data-dir",
                            str(exported["data"]), "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, _err(r)
    res = json.loads((tmp_path / "a" / "audit.json").read_text())
    clean = {c["run"]: (c["accuracy"], c["auc"], c["sensitivity"], c["specificity"]) for c in res["clean"]}
    assert len(clean) == 4 and len(set(clean.values())) == 1, clean
    assert clean["python"][0] == pytest.approx(exported["accuracy"], abs=1e-12)
    robust = {w["run"]: w["robust_accuracy"] for w in res["whitebox"]}
    assert robust["python"] == robust["torchscript"] == robust["monai_bundle"], robust
    assert abs(robust["onnx"] - robust["python"]) <= 0.01 and robust["python"] < clean["python"][0], robust
    print(f"\naudit of 4 exports (624 test images; PGD 8/255, 10 steps, 100 images): clean accuracy/AUC "
          f"{clean['python'][:2]} for all; robust accuracy {robust}")


def test_python_factory_code_is_part_of_the_model_digest(tmp_path: Path) -> None:
    """Same card, same (absent) weights, different factory code: a different model, so a different digest;
    the same code twice gives the same digest."""
    for name, act in (("net_relu", "ReLU"), ("net_tanh", "Tanh")):
        (tmp_path / f"{name}.py").write_text(
            "import torch\n\ndef build():\n    torch.manual_seed(0)\n"
            f"    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 8), torch.nn.{act}(), "
            "torch.nn.Linear(8, 2))\n")
        (tmp_path / f"{name}.yaml").write_text(f"model: {{format: python, factory: '{name}:build'}}\n" + HEAD)
    relu, tanh = open_target(tmp_path / "net_relu.yaml"), open_target(tmp_path / "net_tanh.yaml")
    assert relu.model_digest != tanh.model_digest
    assert open_target(tmp_path / "net_relu.yaml").model_digest == relu.model_digest
    assert "weights" in relu.notes
