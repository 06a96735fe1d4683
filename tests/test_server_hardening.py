"""Issue 19 findings 2-4 and 6: admission before work, decoding bombs, audit of every request, no silent
input changes.

How cost is measured: ``tracemalloc`` peak of Python/NumPy/zlib allocations (Pillow's and pydicom's
buffers are Python objects or NumPy arrays, so a decoded 4096x4096 image shows as >= 64 MB) and
``time.process_time`` (CPU seconds of this process, all threads) around the refused request.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from medshield.defenses.limits import QueryLimiter
from medshield.server.audit import read_audit
from medshield.server.decode import InputSpec, decode_image_file
from server_helpers import AUTH, KEY, dicom_bytes, make_client, png_bytes, serve_on_loopback

pytest.importorskip("fastapi")

PEAK_LIMIT = 8 << 20  # bytes a refusal may allocate at peak
CPU_LIMIT = 0.5  # CPU seconds a refusal may take


def png_bomb(side: int = 4096, colour: int = 6) -> bytes:
    """A valid PNG declaring ``side`` x ``side`` RGBA (colour type 6) of zeros: ~70 KB compressed, 64 MB decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + side * 4)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def deflate_dicom(rows: int = 28, padding: int = 64 << 20) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM: a valid 28x28 image plus ``padding`` zero bytes in a
    private element; ~65 KB on the wire for 64 MB inflated."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.add_new(0x00091010, "OB", b"")  # placeholder for the padding, written below
    ds.PixelData = b"\1\0" * (rows * rows)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    raw = body.getvalue()
    # the private element (0009,1010) OB with 0 length: its header is 12 bytes; splice in the padding
    marker = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", 0)
    at = raw.index(marker)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(raw[:at] + marker[:8] + struct.pack("<I", padding))]
    step = 1 << 20
    parts += [comp.compress(b"\0" * min(step, padding - k)) for k in range(0, padding, step)]
    parts += [comp.compress(raw[at + len(marker):]), comp.flush()]
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta)
    return b"\0" * 128 + b"DICM" + head.getvalue() + b"".join(parts)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"png": png_bomb(), "dicom": deflate_dicom()}


def measured(fn):
    """(result, peak bytes allocated, CPU seconds) of ``fn()``."""
    tracemalloc.start()
    cpu = time.process_time()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1], time.process_time() - cpu
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind, status", [("png", 422), ("dicom", 413)])
def test_bombs_are_refused_with_bounded_memory_and_cpu(tmp_path: Path, bombs: dict[str, bytes], kind: str,
                                                       status: int) -> None:
    data = bombs[kind]
    assert len(data) < 100_000
    client = make_client(tmp_path)
    client.post("/v1/predict", files={"file": ("warm.png", png_bytes(np.zeros((28, 28), np.uint8)))}, headers=AUTH)
    response, peak, cpu = measured(lambda: client.post("/v1/predict", files={"file": ("x", data)}, headers=AUTH))
    assert response.status_code == status, response.text
    assert peak < PEAK_LIMIT and cpu < CPU_LIMIT, f"{kind} bomb: peak {peak / 2**20:.1f} MiB, {cpu:.2f} s CPU"
    print(f"{kind} bomb ({len(data) / 1024:.0f} KB): HTTP {status}, peak {peak / 2**20:.2f} MiB, CPU {cpu * 1000:.0f} ms")


def test_a_valid_deflated_dicom_still_decodes() -> None:
    data = deflate_dicom(padding=1 << 16)
    x = decode_image_file(data, InputSpec(1, 28))
    assert x.shape == (1, 1, 28, 28) and torch.allclose(x, torch.full_like(x, 1 / 65535))


def test_spent_or_blocked_key_never_reaches_the_body_or_the_decoder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import medshield.server.app as app_module

    client = make_client(tmp_path, limiter=QueryLimiter(budget=1))
    image = {"file": ("x.png", png_bytes(np.zeros((28, 28), np.uint8)))}
    assert client.post("/v1/predict", files=image, headers=AUTH).status_code == 200  # spends the budget

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the decoder ran for a refused key")

    for name in ("decode_image_file", "decode_json_batch", "read_body"):
        monkeypatch.setattr(app_module, name, forbidden)
    response = client.post("/v1/predict", files=image, headers=AUTH)
    assert response.status_code == 429 and "budget" in response.json()["detail"]
    assert client.post("/v1/predict", json={"images": [[[0.0] * 28] * 28]}, headers=AUTH).status_code == 429
    service = client.app.state.service
    other = "key-bravo-0123456789"
    service.state.block(service.keys.identify(other), "test block")
    blocked = client.post("/v1/predict", files=image, headers={"X-API-Key": other})
    assert blocked.status_code == 403 and "test block" in blocked.json()["detail"]


def test_every_request_is_audited_with_its_final_status(tmp_path: Path) -> None:
    client = make_client(tmp_path)
    assert client.get("/v1/model", headers=AUTH).status_code == 200
    assert client.get("/v1/predict", headers=AUTH).status_code == 405
    assert client.get("/v1/nothing").status_code == 404
    assert client.post("/v1/predict", content=b"x", headers={**AUTH, "content-type": "text/plain"}).status_code == 415
    records = read_audit(tmp_path / "audit.jsonl")
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("GET", "/v1/model", 200), ("GET", "/v1/predict", 405), ("GET", "/v1/nothing", 404), ("POST", "/v1/predict", 415)]
    assert records[0]["key_id"] and "detail" in records[3]
    assert client.app.state.service.state.audit_records() == records  # the same records in the state store


def _raw_request(url: str, head: str, body: bytes, close_after: bool) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        if close_after:
            return b""
        return sock.recv(65536)


def _wait_for(path: Path, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(records := read_audit(path)) >= count:
            return records
        time.sleep(0.05)
    return read_audit(path) if path.is_file() else []


def test_disconnect_mid_body_is_logged_with_its_real_status_and_forwarded_for_is_not_trusted(tmp_path: Path) -> None:
    from medshield.server.app import UVICORN_OPTIONS

    client = make_client(tmp_path)
    with serve_on_loopback(client.app, **UVICORN_OPTIONS) as url:
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
                "X-Forwarded-For: 203.0.113.7\r\nContent-Length: 100000\r\n\r\n")
        _raw_request(url, head, b'{"images": [[[0.1, 0.2', close_after=True)
        records = _wait_for(tmp_path / "audit.jsonl", 1)
    assert len(records) == 1 and records[0]["status"] == 499, records
    assert records[0]["client"] == "127.0.0.1"  # not the forged 203.0.113.7


def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    from medshield.server.app import UVICORN_OPTIONS

    client = make_client(tmp_path, trusted_proxies=["127.0.0.1"])
    with serve_on_loopback(client.app, **UVICORN_OPTIONS) as url:
        head = (f"GET /v1/model HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                "X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\nConnection: close\r\n\r\n")
        assert b" 200 " in _raw_request(url, head, b"", close_after=False)
        records = _wait_for(tmp_path / "audit.jsonl", 1)
    assert records[0]["client"] == "203.0.113.7"  # the right-most address the trusted proxy saw


def test_no_silent_input_changes(tmp_path: Path) -> None:
    client = make_client(tmp_path)
    over = np.full((28, 28), 5000, np.uint16)  # BitsStored 12 holds at most 4095
    response = client.post("/v1/predict", files={"file": ("x.dcm", dicom_bytes(over, bits=12))}, headers=AUTH)
    assert response.status_code == 422 and "BitsStored=12" in response.json()["detail"]
    rgb16 = png_rgb16()
    response = client.post("/v1/predict", files={"file": ("x.png", rgb16)}, headers=AUTH)
    assert response.status_code == 415 and "16-bit colour" in response.json()["detail"]
    row = [0.5] * 27
    response = client.post("/v1/predict", json={"images": [[row + [True]] * 28]}, headers=AUTH)
    assert response.status_code == 422 and "true/false" in response.json()["detail"]
    for junk in (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"\xff\xd8\xff" + b"junk" * 10):
        detail = client.post("/v1/predict", files={"file": ("x", junk)}, headers=AUTH).json()["detail"]
        assert "0x" not in detail and " at " not in detail, detail
    ok = client.post("/v1/predict", json={"images": [[row + [1]] * 28]}, headers=AUTH)  # integers are numbers
    assert ok.status_code == 200


def png_rgb16() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\0" + (np.arange(28 * 3, dtype=">u2") * 700).tobytes() for _ in range(28))
    ihdr = struct.pack(">IIBBBBB", 28, 28, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_image_headers_are_checked_before_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong size, several frames or 16-bit colour never reach Pillow's pixel decoder."""
    from PIL import ImageFile

    from medshield.server.decode import InputError

    def no_load(self: object) -> None:
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    spec = InputSpec(1, 28)
    for data, fragment in ((png_bytes(np.zeros((64, 64), np.uint8)), "28x28"), (png_bomb(64), "28x28"),
                           (png_rgb16(), "16-bit colour"), (apng(), "frames")):
        with pytest.raises(InputError, match=fragment):
            decode_image_file(data, spec)


def apng() -> bytes:
    from PIL import Image

    frames = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def test_json_scan_for_booleans_only_when_the_body_holds_them() -> None:
    from medshield.server.decode import decode_json_batch

    spec = InputSpec(1, 28)
    with pytest.raises(Exception, match="true/false"):
        decode_json_batch({"images": [[[False] * 28] * 28]}, spec)
    assert decode_json_batch({"images": [[[0.0] * 28] * 28]}, spec, check_bools=False).shape == (1, 1, 28, 28)
    assert json.dumps(True) == "true"
