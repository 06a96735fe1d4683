from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medshield.data import load_dataset, stratified_split
from medshield.data.demo import load_demo
from medshield.data.folders import breakhis_patient
from medshield.errors import DataError


def test_pneumoniamnist_real(shared_data: Path) -> None:
    ds = load_dataset("pneumoniamnist", shared_data)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [4708, 524, 624]
    assert ds.test.class_counts(2) == [234, 390]
    x, y = ds.test.get(slice(0, 5))
    assert x.dtype == torch.float32 and x.shape == (5, 1, 28, 28)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert ds.positive_class == 1 and ds.class_names == ["normal", "pneumonia"]


def test_breastmnist_positive_is_malignant(shared_data: Path) -> None:
    ds = load_dataset("breastmnist", shared_data)
    assert ds.positive_class == 0 and len(ds.test) == 156


def test_rgb_and_resize(shared_data: Path) -> None:
    ds = load_dataset("pneumoniamnist", shared_data, rgb=True, resize=32)
    x, _ = ds.test.get(slice(0, 2))
    assert x.shape == (2, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2])


def test_missing_file_says_where(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pneumoniamnist.npz"):
        load_dataset("pneumoniamnist", tmp_path)


def test_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("pneumoniamnist", tmp_path)


def test_wrong_shapes(tmp_path: Path) -> None:
    arrays = {f"{s}_images": np.zeros((4, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((5, 1), np.uint8) for s in ("train", "val", "test")}
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError, match="labels"):
        load_dataset("pneumoniamnist", tmp_path)


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(DataError, match="did you mean 'pneumoniamnist'"):
        load_dataset("pneumoniamnst")


def test_demo_is_deterministic_and_balanced() -> None:
    a, b = load_demo(seed=3), load_demo(seed=3)
    assert torch.equal(a.train.data, b.train.data)
    assert a.test.class_counts(2) == [250, 250]
    assert a.synthetic and "SYNTHETIC" in a.description
    assert not torch.equal(load_demo(seed=4).train.data, a.train.data)


def test_demo_opacity_brighter_in_lungs() -> None:
    ds = load_demo(size=28)
    x, y = ds.train.images(), ds.train.labels
    lungs = x[:, 0, 8:20, 4:10].mean(dim=(1, 2)) + x[:, 0, 8:20, 18:24].mean(dim=(1, 2))
    assert lungs[y == 1].mean() > lungs[y == 0].mean() + 0.02


def test_stratified_split_deterministic() -> None:
    labels = torch.tensor([0] * 50 + [1] * 150)
    a = stratified_split(labels, seed=1)
    b = stratified_split(labels, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    tr, va, te = a
    assert len(tr) + len(va) + len(te) == 200
    assert int((labels[va] == 0).sum()) == 5 and int((labels[te] == 1).sum()) == 15
    assert not set(tr.tolist()) & set(te.tolist())


def test_group_split_keeps_patients_together() -> None:
    labels = torch.tensor([0] * 40 + [1] * 40)
    groups = [f"p{i // 4}" for i in range(80)]
    parts = stratified_split(labels, seed=0, groups=groups)
    owners = [{groups[i] for i in p.tolist()} for p in parts]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])


def _write_tree(root: Path, layout: dict[str, int], size: int = 40) -> None:
    rng = np.random.default_rng(0)
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size + 7), dtype=np.uint8)).save(root / folder / f"im{i}.png")


def test_kermany_tree_splits_val(tmp_path: Path) -> None:
    _write_tree(tmp_path / "chest_xray", {"train/NORMAL": 10, "train/PNEUMONIA": 20, "test/NORMAL": 3, "test/PNEUMONIA": 4})
    ds = load_dataset("chest_xray", tmp_path, size=32)
    assert len(ds.test) == 7 and len(ds.train) + len(ds.val) == 30 and len(ds.val) == 3
    assert ds.test.get(slice(0, 1))[0].shape == (1, 1, 32, 32)


def test_real_kermany_folder(shared_data: Path) -> None:
    ds = load_dataset("chest_xray", shared_data, size=32)
    assert ds.test.class_counts(2) == [234, 390]


def test_covid_ct_with_and_without_lists(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"CT_COVID": 10, "CT_NonCOVID": 10})
    ds = load_dataset("covid_ct", tmp_path, size=32)
    assert len(ds.train) == 16 and ds.class_names == ["non-covid", "covid"]
    for short, folder in (("COVID", "CT_COVID"), ("NonCOVID", "CT_NonCOVID")):
        (tmp_path / "Data-split" / short).mkdir(parents=True)
        for split, names in (("train", range(6)), ("val", range(6, 8)), ("test", range(8, 10))):
            (tmp_path / "Data-split" / short / f"{split}{folder}.txt").write_text("\n".join(f"im{i}.png" for i in names))
    ds = load_dataset("covid_ct", tmp_path, size=32)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [12, 4, 4]


def test_breakhis_rgb_patient_split(tmp_path: Path) -> None:
    for cls, tag in (("benign", "B"), ("malignant", "M")):
        for p in range(10):
            d = tmp_path / "BreaKHis_v1" / cls / "SOB" / "x" / f"pat{p}" / "40X"
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((30, 30, 3), p * 10, np.uint8)).save(d / f"SOB_{tag}_A-14-{p}{tag}X-40-00{i}.png")
    ds = load_dataset("breakhis", tmp_path, size=32, rgb=True)
    assert ds.channels == 3 and len(ds.train) + len(ds.val) + len(ds.test) == 40
    assert breakhis_patient(Path("SOB_B_A-14-22549AB-40-001.png")) == "14-22549AB"


def test_generic_folder_and_corrupt_image(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"a": 10, "b": 10})
    ds = load_dataset("folder", tmp_path, size=28)
    assert ds.class_names == ["a", "b"]
    (tmp_path / "a" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.png"):
        load_dataset("folder", tmp_path, size=28)
