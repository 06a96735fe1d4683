"""Bounded loopback load test of `medshield serve`: predictions/s, errors, p50/p99 latency.

Starts the server as a subprocess on 127.0.0.1 (a free port), drives it with an async httpx load
generator that stops after ``--requests`` requests or ``--max-seconds``, whichever comes first, then
stops the server. Run once per configuration to compare (e.g. ``--defense none`` vs ``dnd``):

    python bench/bench_server.py --run /tmp/runs/pn_small --batch 1 --requests 3000 --concurrency 16
    python bench/bench_server.py --run /tmp/runs/pn_small --batch 32 --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # loopback only, never anything else


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def payloads(mode: str, batch: int, shape: tuple[int, int, int], n: int, seed: int) -> list[dict]:
    """Pre-encoded request bodies (httpx kwargs), so the generator measures the server, not encoding."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.random((batch, *shape), dtype=np.float32)
        if mode == "png":
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray((x[0, 0] * 255).astype(np.uint8)).save(buf, "PNG")
            out.append({"files": {"file": ("x.png", buf.getvalue(), "image/png")}})
        elif mode == "json":
            out.append({"content": json.dumps({"images": x.tolist()}).encode(), "headers": {"content-type": "application/json"}})
        else:
            arr = {"shape": list(x.shape), "dtype": "float32", "data": base64.b64encode(x.tobytes()).decode()}
            out.append({"content": json.dumps({"array": arr}).encode(), "headers": {"content-type": "application/json"}})
    return out


async def drive(url: str, key: str, bodies: list[dict], requests: int, concurrency: int, max_seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    predictions = 0
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued, predictions
        while issued < requests and time.perf_counter() < deadline:
            body = bodies[issued % len(bodies)]
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/predict", **body)
                ok = r.status_code == 200
                if ok:
                    predictions += len(r.json()["labels"])
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"requests": issued, "ok_requests": len(latencies), "predictions": predictions, "seconds": round(elapsed, 3),
            "predictions_per_s": round(predictions / elapsed, 1), "requests_per_s": round(len(latencies) / elapsed, 1),
            "errors": errors, "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "stopped_by_time": time.perf_counter() >= deadline}


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = %s
wrk.body = io.open(%s, "rb"):read()
"""


def run_wrk(url: str, key: str, body: dict, seconds: float, concurrency: int, tmp: str) -> dict:
    """The same load from wrk (C, one thread): lighter than the Python generator on a shared 2-core box."""
    import re
    import shutil

    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (apt-get install wrk) or use --tool httpx")
    body_path, script = Path(tmp) / "body.json", Path(tmp) / "post.lua"
    body_path.write_bytes(body["content"])
    script.write_text(WRK_SCRIPT % (json.dumps(key), json.dumps(str(body_path))))
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, int(seconds))}s", "--latency", "-s", str(script), f"{url}/v1/predict"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\b", out, re.M)
        return round(float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)], 2) if m else float("nan")

    total = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    errors = {**({"non2xx": int(non2xx.group(1))} if non2xx else {}), **({"socket": sock.group(1)} if sock else {})}
    return {"requests": total, "requests_per_s": rps, "errors": errors, "p50_ms": ms("50"), "p99_ms": ms("99"),
            "wrk_output": out.strip().splitlines()[-12:]}


def start_server(args: argparse.Namespace, defense: str, key: str, port: int, tmp: str) -> subprocess.Popen:
    env = {**os.environ, "MEDSHIELD_API_KEYS": key, "OMP_NUM_THREADS": str(args.server_threads),
           "MEDSHIELD_LOG": "WARNING"}
    cmd = [sys.executable, "-m", "medshield.cli", "serve", "--run", str(args.run), "--host", HOST, "--port", str(port),
           "--defense", defense, "--detector", args.detector,
           *[f"--defense-param={kv}" for kv in (args.defense_param if defense != "none" else [])], "--audit-log", str(Path(tmp) / "audit.jsonl"), "--max-batch", str(max(args.batch, 1))]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not become healthy in time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--defense", default="none", help="none, rnd, dnd (comma-separated: one server each, side by side)")
    p.add_argument("--defense-param", action="append", default=[], help="NAME=VALUE for the defense; repeatable")
    p.add_argument("--detector", default="none", help="none or stream")
    p.add_argument("--mode", choices=["b64", "json", "png"], default="b64")
    p.add_argument("--batch", type=int, default=1, help="images per request (png: always 1)")
    p.add_argument("--requests", type=int, default=2000, help="stop after this many requests")
    p.add_argument("--max-seconds", type=float, default=60.0, help="and after this many seconds")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--tool", choices=["httpx", "wrk"], default="httpx",
                   help="load generator: the async httpx one here (bounded by --requests and --max-seconds) "
                        "or wrk (bounded by --max-seconds; json/b64 modes only)")
    p.add_argument("--server-threads", type=int, default=1, help="OMP/torch threads of the server")
    args = p.parse_args()
    if args.requests < 1 or args.max_seconds <= 0 or args.max_seconds > 600:
        raise SystemExit("--requests must be >= 1 and --max-seconds in (0, 600]")
    config = json.loads((args.run / "config.json").read_text())["model"]
    shape = (config["in_channels"], config["image_size"], config["image_size"])
    batch = 1 if args.mode == "png" else args.batch
    results = [bench_one(args, defense.strip(), shape, batch) for defense in args.defense.split(",")]
    base = results[0]["predictions_per_s"]
    for r in results:
        r["throughput_vs_first"] = round(r["predictions_per_s"] / base, 3) if base else None
        print(json.dumps({"model": config["name"], "input": list(shape), **r}, indent=2))


def bench_one(args: argparse.Namespace, defense: str, shape: tuple[int, int, int], batch: int) -> dict:
    key, port = secrets.token_urlsafe(24), free_port()
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(args, defense, key, port, tmp)
        try:
            wait_healthy(url, proc)
            bodies = payloads(args.mode, batch, shape, 64, seed=0)
            asyncio.run(drive(url, key, bodies, args.warmup, min(args.concurrency, 4), 30))
            if args.tool == "wrk":
                if args.mode == "png":
                    raise SystemExit("--tool wrk sends JSON bodies; use --mode b64 or json")
                result = run_wrk(url, key, bodies[0], args.max_seconds, args.concurrency, tmp)
                result["predictions_per_s"] = round(result["requests_per_s"] * batch, 1)
            else:
                result = asyncio.run(drive(url, key, bodies, args.requests, args.concurrency, args.max_seconds))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    result.pop("wrk_output", None)
    return {"defense": defense, "defense_params": args.defense_param if defense != "none" else [],
            "detector": args.detector, "mode": args.mode, "tool": args.tool, "batch": batch,
            "concurrency": args.concurrency, "server_threads": args.server_threads, "cpus": os.cpu_count(),
            "loadavg_1min": round(os.getloadavg()[0], 2), **result}


if __name__ == "__main__":
    main()
