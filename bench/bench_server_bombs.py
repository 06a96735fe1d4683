"""Load test on 127.0.0.1: valid clients' latency with and without a client sending decoding bombs.

    python bench/bench_server_bombs.py [--seconds 8] [--clients 4] [--out /tmp/bench_bombs]

Starts ``medshield serve`` (one worker, SQLite state, JSON-lines audit log) on a free loopback port
in a subprocess, then runs two phases of ``--seconds`` each: (A) ``--clients`` threads sending valid
28x28 PNGs back to back, (B) the same plus one thread sending bombs (a 4096x4096 RGBA PNG of ~70 KB
and a ~65 KB deflated DICOM that inflates to 64 MB) on its own key. Prints each phase's valid-request
p50/p99 latency, the p99 ratio B/A, the bombs' statuses and whether the audit log holds exactly one
line per request sent.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

KEYS = ("bench-valid-key-0123456789", "bench-bomb-key-0123456789")


def png(side: int, colour: int = 0, fill: int = 99) -> bytes:
    """A PNG of ``side`` x ``side`` (colour type 0 grey or 6 RGBA) filled with ``fill``, built by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    bands = 4 if colour == 6 else 1
    comp = zlib.compressobj(9)
    row = b"\0" + bytes([fill]) * (side * bands)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dicom_bomb(padding: int = 64 << 20) -> bytes:
    """A 28x28 Deflated-transfer-syntax DICOM carrying ``padding`` zero bytes in a private element."""
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
    ds.Rows = ds.Columns = 28
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = b"\1\0" * (28 * 28)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pad = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", padding)
    step = 1 << 20
    z = comp.compress(pad) + b"".join(comp.compress(b"\0" * min(step, padding - k)) for k in range(0, padding, step))
    z += comp.compress(body.getvalue()) + comp.flush()
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta)
    return b"\0" * 128 + b"DICM" + head.getvalue() + z


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    from medshield.models import create_model, save_run

    save_run(workdir / "run", create_model(name="smallcnn", in_channels=1, num_classes=2, image_size=28))
    (workdir / "keys.txt").write_text("\n".join(KEYS) + "\n")
    port = free_port()
    cmd = [sys.executable, "-m", "medshield.cli", "serve", "--run", str(workdir / "run"), "--port", str(port),
           "--api-keys", str(workdir / "keys.txt"), "--state", str(workdir / "state.db"),
           "--audit-log", str(workdir / "audit.jsonl")]
    proc = subprocess.Popen(cmd, env={**os.environ, "MEDSHIELD_API_KEYS": ""}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))] if ordered else float("nan")


def phase(url: str, seconds: float, clients: int, bombs: list[bytes] | None) -> dict[str, Any]:
    import httpx

    valid = png(28)
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    statuses: dict[str, dict[int, int]] = {"valid": {}, "bomb": {}}
    sent = [0]
    lock = threading.Lock()

    def count(kind: str, status: int) -> None:
        with lock:
            statuses[kind][status] = statuses[kind].get(status, 0) + 1
            sent[0] += 1

    def good() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = c.post("/v1/predict", files={"file": ("x.png", valid)}, headers={"X-API-Key": KEYS[0]})
                with lock:
                    latencies.append(time.perf_counter() - t)
                count("valid", r.status_code)

    def bad() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            k = 0
            while time.monotonic() < stop:
                r = c.post("/v1/predict", files={"file": ("x", bombs[k % len(bombs)])}, headers={"X-API-Key": KEYS[1]})
                count("bomb", r.status_code)
                k += 1

    threads = [threading.Thread(target=good) for _ in range(clients)] + ([threading.Thread(target=bad)] if bombs else [])
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = [1000 * v for v in latencies]
    return {"requests": sent[0], "valid_requests": len(ms), "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2), "statuses": {k: dict(v) for k, v in statuses.items() if v}}


def run_load(seconds: float = 8.0, clients: int = 4, workdir: Path | None = None) -> dict[str, Any]:
    """Phase A (valid only), phase B (valid + bombs), then the audit-log count; returns the figures."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_bombs_"))
    workdir.mkdir(parents=True, exist_ok=True)
    bombs = [png(4096, colour=6, fill=0), dicom_bomb()]
    proc, url = start_server(workdir)
    try:
        import httpx

        for _ in range(5):  # warm-up, counted as requests sent
            httpx.post(f"{url}/v1/predict", files={"file": ("x.png", png(28))}, headers={"X-API-Key": KEYS[0]}, timeout=60)
        warm = 5
        a = phase(url, seconds, clients, None)
        b = phase(url, seconds, clients, bombs)
    finally:
        proc.terminate()
        proc.wait(30)
    lines = (workdir / "audit.jsonl").read_text().splitlines()
    health = sum(1 for ln in lines if '"/v1/health"' in ln)  # the start-up probes
    sent = warm + a["requests"] + b["requests"]
    return {"clients": clients, "seconds_per_phase": seconds, "bomb_sizes_kb": [round(len(x) / 1024) for x in bombs],
            "without_bombs": a, "with_bombs": b, "p99_ratio": round(b["p99_ms"] / a["p99_ms"], 3),
            "requests_sent": sent, "audit_lines": len(lines) - health, "workdir": str(workdir)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    print(json.dumps(run_load(args.seconds, args.clients, args.out), indent=2))


if __name__ == "__main__":
    main()
