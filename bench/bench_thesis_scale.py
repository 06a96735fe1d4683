"""Thesis-scale wall time of the label-only attacks on this machine: HSJA, GBBA and OPT on a few images at a
fraction of the thesis's budget, timed, and the projection to the thesis's 50 images x 20K queries.

The thesis attacks 50 images with 20,000 label queries each, per attack and defense. On a CPU that is
what decides whether an audit is feasible, so this prints each attack's measured wall time and query
rate and the projection ``seconds x (50 / images) x (20,000 / largest budget)``, which assumes the rate
measured holds over the longer run (the mix of large and small oracle calls shifts as a run goes on:
HSJA's probe batches grow with its iterations), and says that it is a projection:

    OMP_NUM_THREADS=1 python bench/bench_thesis_scale.py --model resnet50 --size 224 --n-images 2 --budgets 500,2000 [--layout frozen]
    python bench/bench_thesis_scale.py --model resnet50 --size 224 --n-images 5 --budgets 5000,20000 --device cuda

The target is bench_hsja's: a seeded, randomly initialised ``--model`` labelled by its own predictions
(``--run`` for a trained one), with the same adversarial starts for every attack, so the rates do not
depend on training. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hsja import add_target_arguments, load_target, starts_for  # noqa: E402

from medshield.models.inference import LAYOUTS  # noqa: E402

from medshield.attacks.decision import DECISION_ATTACKS, LabelFn, LabelOracle, model_label_fn  # noqa: E402

THESIS_IMAGES, THESIS_QUERIES = 50, 20_000


def time_attack(name: str, label_fn: LabelFn, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> dict:
    """One attack on every image from :func:`starts_for`: wall seconds, queries, median L2 per budget."""
    oracle = LabelOracle(label_fn, x, y, budgets)
    start = time.perf_counter()
    DECISION_ATTACKS.create(name).run(oracle, torch.Generator().manual_seed(0), starts=starts_for(x, y))
    seconds = time.perf_counter() - start
    queries = int(oracle.queries.sum())
    return {"seconds": seconds, "queries": queries, "queries_per_s": queries / seconds,
            "median_l2": {str(b): float(oracle.best(b)[1].median()) for b in budgets},
            "projected_thesis_hours": seconds * (THESIS_IMAGES / x.shape[0]) * (THESIS_QUERIES / max(budgets)) / 3600}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_arguments(p)
    p.set_defaults(model="resnet50", size=224, n_images=2, init_seed=5)  # seed 5 predicts both classes at 224 px
    p.add_argument("--attacks", default="hsja,gbba,opt")
    p.add_argument("--budgets", default="500,2000")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help="the label function's forward: auto (the library "
                   "default), contiguous, channels_last or frozen (a frozen inference graph, as `medshield blackbox --layout`)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the model runs (images stay on the CPU)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    budgets = sorted(int(b) for b in args.budgets.split(","))
    model, x, y = load_target(args)
    model = model.to(args.device)
    label_fn = model_label_fn(model, layout=args.layout)
    label_fn(x[:8])  # the batch-size and layout choice (once per model and input size) is set-up, not attack time
    rows = {name: time_attack(name, label_fn, x, y, budgets) for name in args.attacks.split(",")}
    total = sum(r["projected_thesis_hours"] for r in rows.values())
    print(f"images {tuple(x.shape)}, budgets {budgets}, layout {args.layout}, device {args.device}, "
          f"threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'attack':<8} {'seconds':>9} {'queries':>9} {'q/s':>8}  median L2 per budget   projected {THESIS_IMAGES} images "
          f"x {THESIS_QUERIES:,} queries")
    for name, r in rows.items():
        med = " ".join(f"{v:.3f}" for v in r["median_l2"].values())
        print(f"{name:<8} {r['seconds']:>9.1f} {r['queries']:>9,} {r['queries_per_s']:>8.1f}  {med:<21}  "
              f"{r['projected_thesis_hours']:.1f} h")
    print(f"projected, all {len(rows)} attacks, one defense: {total:.1f} h (a projection from "
          f"{x.shape[0]} images x {max(budgets):,} queries, not a measurement)")
    if args.json:
        args.json.write_text(json.dumps({
            "attacks": rows, "projected_thesis_hours": total, "images": x.shape[0], "image_shape": list(x.shape[1:]),
            "budgets": budgets, "thesis_images": THESIS_IMAGES, "thesis_queries": THESIS_QUERIES,
            "model": args.run or args.model, "init_seed": None if args.run else args.init_seed, "layout": args.layout,
            "device": args.device, "threads": torch.get_num_threads(),
            "load_avg": os.getloadavg()[0]}, indent=2))


if __name__ == "__main__":
    main()
