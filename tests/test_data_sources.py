"""Data sources (issue 14): CSV manifests, DICOM via pydicom (rescale, window, MONOCHROME1), PNG/JPEG,
patient-grouped splits; one-line errors naming the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medshield.cli import app
from medshield.data import load_dataset, load_manifest, read_dicom
from medshield.errors import DataError
from medshield.models import create_model, save_run

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

runner = CliRunner()
SLOPE, INTERCEPT = 0.5, 10.0  # modality value m = stored * 0.5 + 10


def write_dicom(path: Path, grey: np.ndarray, patient: str = "p0", frames: int = 1) -> None:
    """``grey`` (uint8, bright = 255) as a MONOCHROME1 file (bright = low values) with rescale and window tags:
    m = 255 - grey, stored = (m - 10) / 0.5 as signed 16-bit; window 128/256 maps m to m / 255."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, "CR"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = str(SLOPE), str(INTERCEPT)
    ds.WindowCenter, ds.WindowWidth = "128", "256"
    stored = ((255.0 - grey.astype(np.float64)) - INTERCEPT) / SLOPE
    data = np.repeat(stored[None], frames, axis=0) if frames > 1 else stored
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = data.astype(np.int16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def images(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 real PneumoniaMNIST test images as PNG files and as MONOCHROME1 DICOM files, 8 patients, with manifests."""
    d = np.load(shared_data / "pneumoniamnist.npz")
    grey, labels = d["test_images"][:24], d["test_labels"][:24].flatten()
    root = tmp_path_factory.mktemp("sources")
    rows_png, rows_dcm = [], []
    for i, (g, label) in enumerate(zip(grey, labels)):
        cls = ["normal", "pneumonia"][int(label)]
        (root / "png" / cls).mkdir(parents=True, exist_ok=True)
        (root / "dcm" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(g).save(root / "png" / cls / f"img{i:02d}.png")
        write_dicom(root / "dcm" / cls / f"img{i:02d}.dcm", g, patient=f"p{i % 8}")
        rows_png.append([f"png/{cls}/img{i:02d}.png", cls, f"p{i % 8}"])
        rows_dcm.append([f"dcm/{cls}/img{i:02d}.dcm", cls, f"p{i % 8}"])
    for name, rows in (("png.csv", rows_png), ("dcm.csv", rows_dcm)):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows([["path", "label", "patient_id"], *rows])
    return {"root": root, "grey": grey, "labels": labels}


def test_dicom_monochrome1_rescale_window_matches_png(images: dict) -> None:
    root = images["root"]
    one = read_dicom(root / "dcm" / ("pneumonia" if images["labels"][0] else "normal") / "img00.dcm")
    assert one.dtype == np.float32 and np.array_equal(np.round(one * 255).astype(np.uint8), images["grey"][0])
    png = load_manifest(root / "png.csv", size=28, classes=["normal", "pneumonia"])
    dcm = load_manifest(root / "dcm.csv", size=28, classes=["normal", "pneumonia"])
    for split in ("train", "val", "test"):
        a, b = png.split(split), dcm.split(split)
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.images(), b.images()), float((a.images() - b.images()).abs().max())
    assert len(png.train) + len(png.val) + len(png.test) == 24


def test_dicom_class_folders_match_png(images: dict) -> None:
    root = images["root"]
    png = load_dataset("folder", root / "png", size=28)
    dcm = load_dataset("folder", root / "dcm", size=28)
    assert torch.equal(png.test.data, dcm.test.data) and torch.equal(png.train.data, dcm.train.data)


def test_multiframe_and_corrupt_dicom_refused(images: dict, tmp_path: Path) -> None:
    multi = tmp_path / "cine.dcm"
    write_dicom(multi, images["grey"][0], frames=3)
    with pytest.raises(DataError, match=r"cine.dcm: multi-frame DICOM \(3 frames\) is not supported"):
        read_dicom(multi)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10")
    with pytest.raises(DataError, match="broken.dcm"):
        read_dicom(bad)


def test_patient_grouped_split_is_deterministic(images: dict) -> None:
    a = load_manifest(images["root"] / "png.csv", size=28, seed=3)
    b = load_manifest(images["root"] / "png.csv", size=28, seed=3)
    rows = list(csv.DictReader(open(images["root"] / "png.csv")))
    patients = {}
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split).data, b.split(split).data)
    # map each image back to its patient through its pixels: no patient may appear in two splits
    pixels = {tuple(np.asarray(Image.open(images["root"] / r["path"])).flatten()[:40]): r["patient_id"] for r in rows}
    for split in ("train", "val", "test"):
        for img in a.split(split).data:
            key = tuple(np.round(img[0].numpy() * 255).astype(np.uint8).flatten()[:40])
            patients.setdefault(pixels[key], set()).add(split)
    assert all(len(s) == 1 for s in patients.values()) and len(patients) == 8
    assert a.class_names == ["normal", "pneumonia"] and a.extra["patients"] == 8


def test_manifest_errors_name_file_and_line(images: dict, tmp_path: Path) -> None:
    root = images["root"]
    (tmp_path / "nopath.csv").write_text("file,label\nx.png,0\n")
    with pytest.raises(DataError, match="nopath.csv: the manifest needs a 'path' column"):
        load_manifest(tmp_path / "nopath.csv")
    (root / "badlabel.csv").write_text("path,label\npng/normal/img01.png,normal\npng/normal/img01.png,cat\n")
    with pytest.raises(DataError, match=r"badlabel.csv:3: label 'cat'"):
        load_manifest(root / "badlabel.csv", size=28, classes=["normal", "pneumonia"])
    (root / "missing.csv").write_text("path,label\nnope.png,0\n")
    with pytest.raises(DataError, match="nope.png: image not found"):
        load_manifest(root / "missing.csv", size=28)


def test_multilabel_manifest(images: dict) -> None:
    root = images["root"]
    rows = [["path", "opacity", "effusion", "split"]]
    for i in range(12):
        cls = "pneumonia" if images["labels"][i] else "normal"
        rows.append([f"png/{cls}/img{i:02d}.png", int(images["labels"][i]), i % 2, ["train", "val", "test"][i % 3]])
    with open(root / "multi.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = load_manifest(root / "multi.csv", size=28)
    assert ds.class_names == ["opacity", "effusion"] and ds.extra["multilabel"]
    assert ds.test.labels.shape == (4, 2) and len(ds.train) == 4


def test_target_check_with_manifest(images: dict, tmp_path: Path) -> None:
    """`target check RUN --manifest CSV`: accuracy on the manifest's test split, computed by hand here too."""
    run = tmp_path / "run"
    model = create_model(name="smallcnn")
    save_run(run, model, extra={"data": {"dataset": "pneumoniamnist", "classes": ["normal", "pneumonia"], "positive_class": 1}})
    r = runner.invoke(app, ["target", "check", str(run), "--manifest", str(images["root"] / "dcm.csv")])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    ds = load_manifest(images["root"] / "dcm.csv", size=28, classes=["normal", "pneumonia"])
    with torch.no_grad():
        acc = float((model.eval()(ds.test.images()).argmax(1) == ds.test.labels).double().mean())
    assert report["test"]["accuracy"] == pytest.approx(acc, abs=1e-12) and report["data"]["n"] == len(ds.test)
