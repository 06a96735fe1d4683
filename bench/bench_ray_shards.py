"""One black-box campaign job (HSJA, no defense) sharded by image, on 1 and on N local Ray workers,
side by side: wall times, the speed-up and whether the two ``audit.json`` files are byte-identical.

    OMP_NUM_THREADS=1 python bench/bench_ray_shards.py --run RUN --dataset pneumoniamnist --data-dir ../shared/data \
        --n-images 8 --shard-size 2 --budgets 500,1000 --workers 2 [--per-image] [--json out.json]

Each worker runs its shards with one torch thread (``threads_per_job``), so on a machine with N
idle cores N workers should approach N times one worker. On GPUs: ``--device cuda --gpus-per-job 1``
(N workers need N GPUs); on a running cluster: ``--address HEAD_IP:6379``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MEDSHIELD_NO_PROGRESS", "1")

from medshield.campaign.config import CampaignConfig  # noqa: E402
from medshield.campaign.runner import run_campaign  # noqa: E402


def config(args: argparse.Namespace, workers: int) -> CampaignConfig:
    off = {"enabled": False}
    return CampaignConfig.model_validate({
        "clean": off, "whitebox": off, "transfer": off, "detection": off, "defenses": off,
        "blackbox": {"attacks": [args.attack], "defenses": ["none"], "n_images": args.n_images,
                     "shard_size": args.shard_size, "budgets": [int(b) for b in args.budgets.split(",")],
                     "per_image": args.per_image},
        "executor": "ray", "workers": workers, "threads_per_job": 1, "device": args.device,
        "gpus_per_job": args.gpus_per_job, "address": args.address})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--dataset", default="pneumoniamnist")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--attack", default="hsja")
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=2)
    ap.add_argument("--budgets", default="500,1000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-image", action="store_true", help="seed and attack each image on its own (records "
                    "independent of --shard-size)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (every job's device)")
    ap.add_argument("--gpus-per-job", type=float, default=0.0, help="Ray num_gpus per job (1 = one GPU each)")
    ap.add_argument("--address", help="an existing Ray cluster (default: a local one)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_ray_shards"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    times, outputs = {}, {}
    for workers in (1, args.workers):
        out = args.out / f"ray{workers}"
        start = time.perf_counter()
        run_campaign(config(args, workers), [args.run], out, dataset=args.dataset, data_dir=args.data_dir)
        times[workers] = time.perf_counter() - start
        outputs[workers] = (out / "audit.json").read_bytes()
    identical = outputs[1] == outputs[args.workers]
    speedup = times[1] / times[args.workers]
    shards = -(-args.n_images // args.shard_size)
    print(f"{args.attack}, {args.n_images} images in {shards} shards of {args.shard_size}"
          f"{' (per image)' if args.per_image else ''}, budgets {args.budgets}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for workers, t in times.items():
        print(f"ray x{workers:<3} {t:8.1f} s")
    print(f"speed-up x{args.workers}/x1: {speedup:.2f}; audit.json identical: {identical}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": {str(w): t for w, t in times.items()}, "speedup": speedup,
                                         "identical": identical, "shards": shards, "load_avg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
