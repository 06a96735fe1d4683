"""Shared helpers for the server tests: an app around a tiny model, image encoders."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient

from conftest import tiny_model
from medshield.defenses.limits import QueryLimiter
from medshield.server.app import ServeConfig, create_app
from medshield.server.auth import KeyStore

KEY, OTHER_KEY = "key-alpha-0123456789", "key-bravo-0123456789"
AUTH = {"X-API-Key": KEY}


def make_client(tmp_path: Path, channels: int = 1, limiter: QueryLimiter | None = None, detector: object = None,
                allow_scores: bool = False, state: object = None, **config: object) -> TestClient:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = ServeConfig(model_name="tiny", channels=channels, image_size=28, class_names=["normal", "pneumonia"],
                      allow_scores=allow_scores, audit_log=str(tmp_path / "audit.jsonl"), **config)  # type: ignore[arg-type]
    app = create_app(tiny_model(channels), KeyStore([KEY, OTHER_KEY]), cfg, limiter=limiter, detector=detector,
                     state=state)  # type: ignore[arg-type]
    return TestClient(app)


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, fmt)
    return buf.getvalue()


def dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 16) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def expected_labels(images: torch.Tensor, channels: int = 1) -> list[int]:
    from medshield.models import predict, predict_labels

    return predict_labels(predict(tiny_model(channels), images)).tolist()


@contextmanager
def serve_on_loopback(app: object, **options: object) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a free 127.0.0.1 port (loopback only); yields its URL.
    ``options``: more ``uvicorn.Config`` arguments."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 20 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
