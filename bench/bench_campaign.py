"""One audit campaign on 1 worker, on 2 workers (process pool) and on 2 Ray workers, side by side.

    python bench/bench_campaign.py [--run RUN] [--out /tmp/bench_campaign]

Trains a demo ``smallcnn`` if no run is given. Prints wall times, speed-ups and whether the three
``audit.json`` files are byte-identical (they must be)."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

CONFIG = {
    "clean": {"bootstrap": 200},
    "whitebox": {"attacks": ["fgsm", "bim", "pgd", "mifgsm"], "eps": ["1/255", "2/255", "4/255"], "n_images": 300},
    "transfer": {"enabled": False},
    "blackbox": {"attacks": ["hsja", "gbba"], "budgets": [500, 1000], "defenses": ["none", "rnd"], "n_images": 8,
                 "shard_size": 2},
    "detection": {"enabled": False},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_campaign"))
    args = ap.parse_args()
    from medshield.api import train
    from medshield.campaign.audit import audit
    from medshield.campaign.config import CampaignConfig
    from medshield.models.train import TrainConfig

    shutil.rmtree(args.out, ignore_errors=True)
    run = args.run
    if run is None:
        run = args.out / "model"
        train("demo", run, train_config=TrainConfig(epochs=2, seed=0))
    cfg = CampaignConfig.model_validate(CONFIG)
    times, outputs = {}, {}
    for label, executor, workers in (("local x1", "local", 1), ("local x2 (pool)", "local", 2), ("ray x2", "ray", 2)):
        try:
            if executor == "ray":
                import ray  # noqa: F401
        except ImportError:
            print(f"{label}: skipped (pip install 'medshield[ray]')")
            continue
        out = args.out / f"{executor}{workers}"
        start = time.perf_counter()
        audit([str(run)], out, config=cfg.model_copy(update={"executor": executor, "workers": workers}))
        times[label] = time.perf_counter() - start
        outputs[label] = (out / "audit.json").read_bytes()
    base = times["local x1"]
    print(f"{'executor':<18}{'wall s':>9}{'speed-up':>10}")
    for label, t in times.items():
        print(f"{label:<18}{t:>9.1f}{base / t:>10.2f}")
    print("audit.json identical across executors:", len(set(outputs.values())) == 1)


if __name__ == "__main__":
    main()
