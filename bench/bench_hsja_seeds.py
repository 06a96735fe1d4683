"""HSJA's median L2 over several seeds: ours vs foolbox (and ART) on the same model, images, start
points and budgets, so a low-budget difference can be told apart from one seed's luck.

    OMP_NUM_THREADS=1 python bench/bench_hsja_seeds.py --model resnet18 --size 128 --n-images 8 --budgets 200 \
        --seeds 5 --layout frozen --json seeds.json

Seed s drives ours' generator and foolbox's (torch's global RNG) and ART's (NumPy's). Prints each seed's
median per implementation, then the mean of the medians and the geometric mean over all (seed, image)
distances; ``--json`` keeps every distance (``{impl: [seed][budget][image]}``). ``--first-steps 1,0.35``
also runs ours with a shorter first HSJA step (the low-budget trade-off in docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_hsja as bh  # noqa: E402  (the target, its start points and the peers' HSJA runs)

from medshield.attacks.decision import LabelOracle, model_label_fn  # noqa: E402
from medshield.attacks.decision.hsja import HopSkipJump  # noqa: E402


def distances(oracle: LabelOracle, budgets: list[int]) -> list[list[float]]:
    """Per budget, every image's closest adversarial L2 found within it."""
    return [oracle.best(b)[1].tolist() for b in budgets]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bh.add_target_arguments(p)
    p.add_argument("--budgets", default="200")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--layout", default="frozen", choices=bh.LAYOUTS)
    p.add_argument("--art", action="store_true", help="also ART (slowest: one image at a time)")
    p.add_argument("--no-foolbox", action="store_true", help="ours only (with --first-steps: the trade-off alone)")
    p.add_argument("--first-steps", default="1", help="ours' HopSkipJump(first_step=...) values, comma-separated; "
                   "1 (the paper's) is 'ours', others 'ours_first_step_<v>'")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    model, x, y = bh.load_target(args)
    starts = bh.starts_for(x, y)
    label_fn = model_label_fn(model, layout=args.layout)
    steps = {("ours" if v == 1 else f"ours_first_step_{v:g}"): v for v in map(float, args.first_steps.split(","))}
    out: dict[str, list] = {name: [] for name in steps} | ({} if args.no_foolbox else {"foolbox": []}) \
        | ({"art": []} if args.art else {})
    for seed in range(args.seeds):
        for name, first_step in steps.items():
            oracle = LabelOracle(label_fn, x, y, budgets)
            HopSkipJump(first_step=first_step).run(oracle, torch.Generator().manual_seed(seed), starts=starts)
            out[name].append(distances(oracle, budgets))
        if not args.no_foolbox:
            torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
            out["foolbox"].append(distances(bh.foolbox_hsja(model, x, y, budgets)[0].oracle, budgets))
        if args.art:
            torch.manual_seed(seed), np.random.seed(seed)
            out["art"].append(distances(bh.art_hsja(model, x, y, budgets)[0].oracle, budgets))
        print(f"seed {seed}: " + "; ".join(f"{k} " + " ".join(f"{float(torch.tensor(v[-1][j]).median()):.4f}"
                                                            for j in range(len(budgets))) for k, v in out.items()),
              flush=True)
    for name, runs in out.items():
        d = torch.tensor(runs)  # seeds x budgets x images
        print(f"{name:8s} budgets {budgets}: mean of medians "
              + " ".join(f"{float(d[:, j].median(dim=1).values.mean()):.4f}" for j in range(len(budgets)))
              + "; geometric mean " + " ".join(f"{float(d[:, j].clamp_min(1e-9).log().mean().exp()):.4f}"
                                                for j in range(len(budgets))))
    if args.json:
        args.json.write_text(json.dumps({"budgets": budgets, "images": x.shape[0], "layout": args.layout, **out}))


if __name__ == "__main__":
    main()
