"""Multi-label classifiers: per-finding metrics, a multi-label task built from real PneumoniaMNIST
images (2x2 mosaics, finding k = pneumonia in tile k), and attacks that hide one finding while the
others stay unchanged (white-box and label-only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medshield.attacks.multilabel import FindingAttack, code_starts, codes, decision_fn, finding_label_fn
from medshield.data import load_dataset
from medshield.data.multilabel import mosaic_dataset
from medshield.evaluation.metrics import multilabel_metrics
from medshield.evaluation.multilabel import (
    FindingAttackConfig, clean_finding_metrics, finding_blackbox_records, finding_whitebox_records,
)
from medshield.models.bounded import BoundedModel


def test_multilabel_metrics_per_finding() -> None:
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]])
    p = np.array([[0.9, 0.2], [0.8, 0.4], [0.3, 0.7], [0.1, 0.1], [0.45, 0.3], [0.6, 0.35]])
    m = multilabel_metrics(y, p, ["a", "b"], thresholds=[0.5, 0.3], n_bootstrap=200)
    a, b = m["findings"]["a"], m["findings"]["b"]
    assert a["auc"] == pytest.approx(8 / 9) and a["sensitivity"] == pytest.approx(2 / 3) and a["specificity"] == pytest.approx(2 / 3)
    assert b["auc"] == 1.0 and b["sensitivity"] == 1.0 and b["specificity"] == pytest.approx(2 / 3)  # 0.3 >= 0.3: positive
    assert a["threshold"] == 0.5 and b["prevalence"] == 0.5 and m["exact_match"] == pytest.approx(4 / 6)
    assert a["ci"]["auc"][0] <= a["auc"] <= a["ci"]["auc"][1] and m["macro"]["auc"] == pytest.approx((8 / 9 + 1) / 2)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        multilabel_metrics(y[:, :1], p, ["a", "b"])


def test_mosaics_keep_labels_and_splits(shared_data: Path) -> None:
    pn = load_dataset("pneumoniamnist", shared_data)
    ml = mosaic_dataset(pn, 2, 2, sizes={"train": 20, "val": 4, "test": 6}, seed=1)
    assert ml.test.data.shape == (6, 1, 56, 56) and ml.test.labels.shape == (6, 4)
    assert ml.class_names == ["pneumonia@r0c0", "pneumonia@r0c1", "pneumonia@r1c0", "pneumonia@r1c1"]
    tile = ml.test.data[0, :, 28:, :28]  # row 1, column 0 -> finding 2
    match = (pn.test.data == tile).flatten(1).all(1)
    assert match.any() and pn.test.labels[match][0] == ml.test.labels[0, 2]
    again = mosaic_dataset(pn, 2, 2, sizes={"train": 20, "val": 4, "test": 6}, seed=1)
    assert torch.equal(again.test.data, ml.test.data)


class MosaicNet(nn.Module):
    """A small CNN with one logit per finding from a linear layer over the whole feature map (every
    finding may use every tile, as a chest X-ray model's head uses the whole image)."""

    def __init__(self, findings: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16 * 14 * 14, findings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_finding_attack_contract() -> None:
    torch.manual_seed(0)
    model = BoundedModel(MosaicNet(), 4, [0.5], [0.5]).eval()
    x = torch.rand(6, 1, 56, 56, generator=torch.Generator().manual_seed(0))
    dec = decision_fn(model)(x)
    before = x.clone()
    res = FindingAttack(1, "add", steps=5).attack(model, x, dec, eps=4 / 255, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before) and res.linf.max() <= 4 / 255 + 1e-6 and res.adversarial.min() >= 0
    after = decision_fn(model)(res.adversarial)
    assert torch.equal(res.success, (after[:, 1] == 1) & (torch.cat([after[:, :1], after[:, 2:]], 1) ==
                                                          torch.cat([dec[:, :1], dec[:, 2:]], 1)).all(1))
    assert finding_label_fn(model, 1)(x).tolist() == dec[:, 1].tolist()
    assert codes(dec).tolist() == [int(sum(int(v) << j for j, v in enumerate(row))) for row in dec.tolist()]
    starts, found = code_starts(x, codes(dec), x.flip(0), codes(dec).flip(0))
    assert found.all() and torch.equal(codes(decision_fn(model)(starts)), codes(dec))
    with pytest.raises(ValueError, match="mode"):
        FindingAttack(0, "remove")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def mosaic_model(shared_data: Path) -> tuple[BoundedModel, torch.Tensor, torch.Tensor, list[str]]:
    """MosaicNet trained by a plain BCE loop: 3 epochs over 1,500 training mosaics (56x56)."""
    ml = mosaic_dataset(load_dataset("pneumoniamnist", shared_data), 2, 2,
                        sizes={"train": 1500, "val": 10, "test": 300}, seed=0)
    torch.manual_seed(0)
    net = MosaicNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for xb, yb in ml.train.batches(50, generator=g, shuffle=True):
            opt.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(net((xb - 0.5) / 0.5), yb.float()).backward()
            opt.step()
    x, y = ml.test.get(slice(0, 300))
    return BoundedModel(net, 4, [0.5], [0.5]).eval(), x, y, ml.class_names


def test_per_finding_metrics_and_hide_one_finding(mosaic_model) -> None:  # noqa: ANN001
    model, x, y, names = mosaic_model
    clean = clean_finding_metrics(model, x, y, names, 0.5, n_bootstrap=200)
    aucs = {n: round(f["auc"], 3) for n, f in clean["findings"].items()}
    assert all(a > 0.85 for a in aucs.values()), aucs
    cfg = FindingAttackConfig(eps=[8 / 255], modes=("hide",), steps=20)
    records = finding_whitebox_records(model, x[:60], names, 0.5, cfg)
    assert [r["finding"] for r in records] == names and all(r["n"] > 0 for r in records)
    n = sum(r["n"] for r in records)
    success = sum(r["success_rate"] * r["n"] for r in records) / n
    unchanged = sum(r["others_unchanged_rate"] * r["n"] for r in records) / n
    assert unchanged >= 0.95 and success >= 0.3, (success, unchanged)
    print(f"\nmosaic per-finding AUC {aucs}; hide one finding at 8/255 (20 steps, {n} attacks on 60 images): "
          f"success {success:.3f}, others unchanged {unchanged:.3f}")


@pytest.mark.slow
def test_keeping_term_is_what_keeps_the_others(mosaic_model) -> None:  # noqa: ANN001
    """Ablation: the same attack without the keeping term changes other findings more often."""
    model, x, _, names = mosaic_model
    rates = {}
    for weight in (10.0, 0.0):
        cfg = FindingAttackConfig(eps=[8 / 255], modes=("hide",), steps=20, keep_weight=weight)
        records = finding_whitebox_records(model, x[:60], names, 0.5, cfg)
        n = sum(r["n"] for r in records)
        rates[weight] = sum(r["others_unchanged_rate"] * r["n"] for r in records) / n
    assert rates[10.0] >= 0.95 and rates[10.0] > rates[0.0], rates
    print(f"\nothers unchanged with / without the keeping term: {rates[10.0]:.3f} / {rates[0.0]:.3f}")


def test_label_only_hide_one_finding(mosaic_model) -> None:  # noqa: ANN001
    model, x, _, names = mosaic_model
    cfg = FindingAttackConfig(modes=("hide",), budgets=[150, 400], seed=0)
    records = finding_blackbox_records(model, x[:6], names[:1], 0.5, cfg, pool=x)
    last = records[-1]
    assert last["budget"] == 400 and last["n"] > 0 and last["keep_others"]
    assert last["success_rate"] >= 0.5 and last["others_unchanged_rate"] == 1.0  # the code oracle demands it
    assert records[0]["median_l2"] >= last["median_l2"]  # more queries, closer adversarials
    print(f"\nlabel-only hide {names[0]} (HSJA, keep others): success {last['success_rate']:.2f}, "
          f"median L2 {records[0]['median_l2']:.2f} at 150 -> {last['median_l2']:.2f} at 400 queries")


def write_card_and_manifest(model: BoundedModel, x: torch.Tensor, y: torch.Tensor, names: list[str], folder: Path,
                            n_test: int = 40, **output: object) -> None:
    """``folder/card.yaml`` (a TorchScript export of ``model``) and ``folder/labels.csv``: PNG mosaics with
    one 0/1 column per finding; the first ``n_test`` are the test split, then 10 val and 10 train."""
    import csv

    import yaml
    from PIL import Image

    torch.jit.trace(model.net, x[:2]).save(str(folder / "model.pt"))
    rows = []
    for i in range(n_test + 20):
        Image.fromarray((x[i, 0] * 255).round().byte().numpy()).save(folder / f"m{i}.png")
        rows.append({"path": f"m{i}.png", **{n: int(v) for n, v in zip(names, y[i].tolist())},
                     "split": "test" if i < n_test else ("val" if i < n_test + 10 else "train")})
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    card = {"model": {"format": "torchscript", "path": "model.pt"},
            "input": {"size": 56, "channels": 1, "mean": [0.5], "std": [0.5]},
            "output": {"kind": "logits", "task": "multilabel", "classes": names, "thresholds": 0.5, **output}}
    (folder / "card.yaml").write_text(yaml.safe_dump(card))


def test_target_check_reports_findings_of_a_multilabel_card(mosaic_model, tmp_path: Path) -> None:  # noqa: ANN001
    """A TorchScript multi-label model + a CSV manifest of PNG mosaics (one 0/1 column per finding):
    `target check` reports per-finding AUC/sensitivity/specificity equal to the in-process metrics."""
    from medshield import api

    model, x, y, names = mosaic_model
    write_card_and_manifest(model, x, y, names, tmp_path)
    check = api.target_check(tmp_path / "card.yaml", manifest=tmp_path / "labels.csv")
    ours = clean_finding_metrics(model, x[:40], y[:40], names, 0.5)
    for name in names:
        got = check["test"]["findings"][name]
        assert got["auc"] == pytest.approx(ours["findings"][name]["auc"], abs=1e-9)
        assert (got["sensitivity"], got["specificity"]) == (ours["findings"][name]["sensitivity"],
                                                            ours["findings"][name]["specificity"])
    assert check["test"]["accuracy"] == pytest.approx(ours["exact_match"])
    # the CLI: per-finding metrics and a hide-one-finding attack into OUT/findings.json
    import json

    from typer.testing import CliRunner

    from medshield.cli import app

    r = CliRunner().invoke(app, ["target", "findings", str(tmp_path / "card.yaml"), "--manifest", str(tmp_path / "labels.csv"),
                                 "--out", str(tmp_path / "f"), "--eps", "8/255", "--n-images", "12", "--modes", "hide",
                                 "--no-label-only"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "f" / "findings.json").read_text())
    assert [w["finding"] for w in saved["whitebox"]] == [n for n in names if any(w["finding"] == n for w in saved["whitebox"])]
    assert saved["clean"]["findings"][names[0]]["auc"] == pytest.approx(ours["findings"][names[0]]["auc"])
    assert all(w["mode"] == "hide" and w["eps"] == pytest.approx(8 / 255) for w in saved["whitebox"]) and saved["whitebox"]
    bad = CliRunner().invoke(app, ["target", "findings", str(tmp_path / "card.yaml"), "--manifest", str(tmp_path / "labels.csv"),
                                   "--out", str(tmp_path / "g"), "--modes", "remove"])
    assert bad.exit_code == 2 and "--modes must be hide" in bad.output


def test_audit_of_a_multilabel_card_reports_per_finding(mosaic_model, tmp_path: Path) -> None:  # noqa: ANN001
    """`medshield audit --target CARD` on a multi-label card (TorchScript, CSV manifest of PNG mosaics of
    real PneumoniaMNIST radiographs): per-finding clean metrics equal to the in-process ones, a white-box
    hide/add job per disease finding with the others unchanged on >= 95% of images, a label-only attack
    on one finding's decision, and the per-finding table in the report, its executive summary and
    audit.json (valid against the published schema)."""
    import json

    import yaml
    from typer.testing import CliRunner

    from medshield.cli import app
    from medshield.report.schema import validate_audit

    model, x, y, names = mosaic_model
    disease = [names[0], names[3]]
    write_card_and_manifest(model, x, y, names, tmp_path, n_test=60, positive=disease)
    cfg = {"clean": {"bootstrap": 100}, "whitebox": {"eps": ["8/255"], "n_images": 60},
           "blackbox": {"budgets": [150, 400], "n_images": 6}, "transfer": {"enabled": False},
           "detection": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "audit"
    r = CliRunner().invoke(app, ["audit", "--target", str(tmp_path / "card.yaml"), "--dataset", str(tmp_path / "labels.csv"),
                                 "--config", str(tmp_path / "c.yaml"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "audit.json").read_text())
    validate_audit(res)
    ml = res["multilabel"]
    ours = clean_finding_metrics(model, x[:60], y[:60], names, 0.5, n_bootstrap=100)
    for name in names:
        assert ml["clean"][0]["findings"][name]["auc"] == pytest.approx(ours["findings"][name]["auc"], abs=1e-9)
        assert ml["clean"][0]["findings"][name]["ci"]["auc"][0] <= ours["findings"][name]["auc"]
    wb = ml["whitebox"]
    assert sorted({(w["finding"], w["mode"]) for w in wb}) == sorted((f, m) for f in disease for m in ("hide", "add"))
    hide = [w for w in wb if w["mode"] == "hide"]
    n = sum(w["n"] for w in hide)
    success = sum(w["success_rate"] * w["n"] for w in hide) / n
    unchanged = sum(w["others_unchanged_rate"] * w["n"] for w in hide) / n
    assert unchanged >= 0.95 and success >= 0.3, (success, unchanged)
    lo = ml["label_only"]
    assert {(r["finding"], r["mode"]) for r in lo} == {(disease[0], "hide")} and [r["budget"] for r in lo] == [150, 400]
    assert lo[-1]["others_unchanged_rate"] == 1.0
    found = json.loads((out / "findings.json").read_text())["findings"]
    assert {f["threat"] for f in found} == {"finding_whitebox", "finding_label_only"}
    html = (out / "report.html").read_text()
    summary = html[html.index('id="summary"'):html.index('id="findings"')]
    assert all(name in summary for name in names) and "hide one (white-box)" in summary
    assert "Multi-label: results per finding" in html and (out / "report.pdf").stat().st_size > 0
    manifest = (tmp_path / "labels.csv").read_text().splitlines()
    first = manifest[1].split(",")
    first[1] = "1" if first[1] == "0" else "0"  # one label changed in place: other data, refused by name
    (tmp_path / "labels.csv").write_text("\n".join([manifest[0], ",".join(first), *manifest[2:]]) + "\n")
    again = CliRunner().invoke(app, ["audit", "--target", str(tmp_path / "card.yaml"), "--dataset", str(tmp_path / "labels.csv"),
                                     "--config", str(tmp_path / "c.yaml"), "--out", str(out)])
    assert again.exit_code == 2 and "args.dataset.sha256" in again.output, again.output
    print(f"\naudit of a multi-label card (4 findings, 60 test mosaics): AUC "
          f"{[round(ml['clean'][0]['findings'][k]['auc'], 3) for k in names]}; hide one disease finding at 8/255 "
          f"(20 steps, {n} attacks): success {success:.3f}, others unchanged {unchanged:.3f}; label-only hide "
          f"{disease[0]} at 400 queries: success {lo[-1]['success_rate']:.2f} (n={lo[-1]['n']})")
