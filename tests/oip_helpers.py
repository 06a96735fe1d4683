"""Start a real Open Inference Protocol server (MLServer, in its own virtual environment) on loopback.

MLServer pins fastapi/protobuf versions that clash with ours, so it lives in ``.venv-oip`` (created
by ``.ci/run``; by hand: ``python3 -m venv .venv-oip && .venv-oip/bin/pip install torch==2.13.0
mlserver==1.7.1``). Tests that need it skip with that reason where it is absent.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
OIP_VENV = Path(os.environ.get("MEDSHIELD_OIP_VENV", ROOT / ".venv-oip"))
RUNTIME_DIR = Path(__file__).resolve().parent / "oip"


def mlserver_bin() -> Path:
    exe = OIP_VENV / "bin" / "mlserver"
    if not exe.is_file():
        pytest.skip(f"MLServer not installed at {OIP_VENV} (create it: python3 -m venv .venv-oip && "
                    ".venv-oip/bin/pip install torch==2.13.0 mlserver==1.7.1; .ci/run does this)")
    return exe


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class OIPServer:
    url: str
    metrics_url: str
    count_file: Path
    model: str

    def images_answered(self) -> int:
        """The runtime's own count: images in every request it answered."""
        text = self.count_file.read_text() if self.count_file.exists() else ""
        return sum(int(line) for line in text.split())

    def infer_requests(self) -> int:
        """MLServer's Prometheus counter of successful infer requests for the model."""
        text = httpx.get(self.metrics_url, timeout=10).text
        found = re.search(rf'model_infer_request_success_total\{{model="{self.model}"[^}}]*\}} ([0-9.e+]+)', text)
        return int(float(found.group(1))) if found else 0

    def reset_counts(self) -> None:
        self.count_file.write_text("")


@contextmanager
def mlserver_torchscript(model_file: Path, workdir: Path, name: str = "classifier",
                         startup_s: float = 90.0) -> Iterator[OIPServer]:
    """Serve a TorchScript classifier with the counting runtime on free 127.0.0.1 ports."""
    exe = mlserver_bin()
    http_port, grpc_port, metrics_port = free_ports(3)
    repo = workdir / "mlserver"
    (repo / name).mkdir(parents=True)
    count_file = workdir / "served.txt"
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "debug": False, "gzip_enabled": False}))
    (repo / name / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "oip_runtime.CountingTorchScript",
        "parameters": {"uri": str(model_file), "extra": {"count_file": str(count_file)}}}))
    log = (workdir / "mlserver.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(RUNTIME_DIR)}
    proc = subprocess.Popen([str(exe), "start", str(repo)], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                if httpx.get(f"{url}/v2/models/{name}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(f"MLServer did not start: {(workdir / 'mlserver.log').read_text()[-1500:]}")
            time.sleep(0.25)
        yield OIPServer(url, f"http://127.0.0.1:{metrics_port}/metrics", count_file, name)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
