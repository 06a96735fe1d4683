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


def fake_oip_app(model: "torch.nn.Module", name: str = "tiny", labels_only: bool = False,  # noqa: F821
                 mean: float = 0.0, std: float = 1.0):  # noqa: ANN201
    """A minimal Open Inference Protocol server in FastAPI around a pixel-space model (fast tests; the real
    MLServer test is in test_oip.py). It undoes ``(x - mean) / std`` and counts images in ``app.state.served``."""
    import numpy as np
    import torch
    from fastapi import FastAPI, HTTPException

    app = FastAPI()
    app.state.served = 0

    @app.get("/v2/health/ready")
    def ready() -> dict:
        return {"ready": True}

    @app.get(f"/v2/models/{name}")
    def metadata() -> dict:
        return {"name": name, "versions": ["1"], "platform": "pytorch",
                "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]}

    @app.post("/v2/models/{model_name}/infer")
    def infer(model_name: str, body: dict) -> dict:
        if model_name != name:
            raise HTTPException(404, f"Model {model_name} not found")
        tensor = body["inputs"][0]
        if tensor["name"] != "pixels" or tensor["datatype"] != "FP32":
            raise HTTPException(400, f"unexpected input {tensor['name']}/{tensor['datatype']}")
        x = torch.from_numpy(np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))
        with torch.no_grad():
            logits = model(x * std + mean)
        app.state.served += x.shape[0]
        if labels_only:
            lab = logits.argmax(1)
            return {"model_name": name, "outputs": [{"name": "label", "shape": [x.shape[0]], "datatype": "INT64",
                                                     "data": lab.tolist()}]}
        return {"model_name": name, "outputs": [
            {"name": "probs", "shape": list(logits.shape), "datatype": "FP32", "data": logits.softmax(1).flatten().tolist()},
            {"name": "logits", "shape": list(logits.shape), "datatype": "FP32", "data": logits.flatten().tolist()}]}

    return app
