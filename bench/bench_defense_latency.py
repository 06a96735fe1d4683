"""What the noise defenses cost at inference: RND / DND vs the undefended model, side by side.

Latency (batch 1, median of many calls) and throughput (batch 256, best of repeats) on smallcnn and
resnet18 (random init: the cost does not depend on the weights), measured round-robin in one run so
background load hits every row alike:

    OMP_NUM_THREADS=1 python bench/bench_defense_latency.py --size 28 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medshield.defenses.inference import DefenseSpec  # noqa: E402
from medshield.models import create_model  # noqa: E402

DEFENSES = {"none": {}, "rnd": {"nu": 0.02}, "dnd": {"m": 0.01, "n": 0.5}}  # explicit: the registry's defaults


def timed(rows: dict[str, Callable[[], object]], calls: int) -> dict[str, list[float]]:
    """Seconds per call for each row, ``calls`` rounds, rows interleaved within each round."""
    for fn in rows.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(calls):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def bench_model(name: str, size: int, batch: int, latency_calls: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = create_model(name=name, in_channels=1, num_classes=2, image_size=size).eval()
    wrapped = {d: DefenseSpec.of(d, **p).build(model, seed=0) for d, p in DEFENSES.items()}
    one = torch.rand(1, 1, size, size)
    many = torch.rand(batch, 1, size, size)

    def call(m: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(x)
        return run

    lat = timed({d: call(m, one) for d, m in wrapped.items()}, latency_calls)
    thr = timed({d: call(m, many) for d, m in wrapped.items()}, repeats)
    base_lat, base_thr = statistics.median(lat["none"]), min(thr["none"])
    print(f"\nmodel={name} size={size} threads={torch.get_num_threads()}  (latency: median of {latency_calls}; "
          f"throughput: best of {repeats} at batch {batch})")
    print(f"{'defense':10s} {'latency ms':>11s} {'x none':>7s} {'images/s':>10s} {'x none':>7s}")
    for d in DEFENSES:
        ms, ips = statistics.median(lat[d]) * 1e3, batch / min(thr[d])
        print(f"{d:10s} {ms:11.3f} {ms / (base_lat * 1e3):7.2f} {ips:10.1f} {ips / (batch / base_thr):7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smallcnn,resnet18")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for name in args.models.split(","):
        bench_model(name.strip(), args.size, args.batch, args.latency_calls, args.repeats)


if __name__ == "__main__":
    main()
