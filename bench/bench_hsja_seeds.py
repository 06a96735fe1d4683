"""HSJA's median L2 over several seeds: ours vs foolbox (and ART) on the same model, images, start
points and budgets, so a low-budget difference can be told apart from one seed's luck.

    OMP_NUM_THREADS=1 python bench/bench_hsja_seeds.py --model resnet18 --size 128 --n-images 8 --budgets 200 \
        --seeds 5 --layout frozen --json seeds.json

Seed s drives ours' generator and foolbox's (torch's global RNG) and ART's (NumPy's). Prints each seed's
median per implementation, then the mean of the medians and the geometric mean over all (seed, image)
distances; ``--json`` keeps every distance (``{impl: [seed][budget][image]}``).
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
import bench_hsja as bh  # noqa: E402  (the target, the start points and the counting wrapper)

from medshield.attacks.decision import LabelOracle, model_label_fn  # noqa: E402
from medshield.attacks.decision.hsja import HopSkipJump  # noqa: E402


def peer_steps(budgets: list[int]) -> int:
    """HSJA iterations that pass the largest budget (as bench_hsja gives the peers)."""
    return next(t for t in range(1, 500) if sum(100 * (s**0.5) + 40 for s in range(1, t + 1)) > max(budgets))


def run_foolbox(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, starts: torch.Tensor,
                budgets: list[int]) -> list[list[float]]:
    import foolbox as fb

    wrapped = bh.Counting(model, x, y, budgets).eval()
    attack = fb.attacks.HopSkipJumpAttack(steps=peer_steps(budgets), initial_gradient_eval_steps=100,
                                          max_gradient_eval_steps=10_000, gamma=1.0, constraint="l2")
    attack.run(fb.PyTorchModel(wrapped, bounds=(0, 1)), x, fb.criteria.Misclassification(y), starting_points=starts)
    return [wrapped.oracle.best(b)[1].tolist() for b in budgets]


def run_art(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, starts: torch.Tensor,
            budgets: list[int]) -> list[list[float]]:
    from art.attacks.evasion import HopSkipJump as ArtHSJ
    from art.estimators.classification import PyTorchClassifier

    wrapped = bh.Counting(model, x, y, budgets).eval()
    clf = PyTorchClassifier(model=wrapped, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=2, clip_values=(0.0, 1.0))
    attack = ArtHSJ(clf, norm=2, max_iter=peer_steps(budgets), max_eval=10_000, init_eval=100, init_size=100,
                    verbose=False)
    s = starts.numpy().astype(np.float32)
    for i in range(x.shape[0]):
        wrapped.current = i
        attack.generate(x[i:i + 1].numpy().astype(np.float32), x_adv_init=s[i:i + 1])
    return [wrapped.oracle.best(b)[1].tolist() for b in budgets]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a trained run (default: a random-init --model at --size)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--init-seed", type=int, default=2)
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--budgets", default="200")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--layout", default="frozen", choices=bh.LAYOUTS)
    p.add_argument("--art", action="store_true", help="also ART (slowest: one image at a time)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    model, x, y = bh.load_target(args)
    starts = bh.starts_for(x, y)
    label_fn = model_label_fn(model, layout=args.layout)
    out: dict[str, list] = {"ours": [], "foolbox": []} | ({"art": []} if args.art else {})
    for seed in range(args.seeds):
        oracle = LabelOracle(label_fn, x, y, budgets)
        HopSkipJump().run(oracle, torch.Generator().manual_seed(seed), starts=starts)
        out["ours"].append([oracle.best(b)[1].tolist() for b in budgets])
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        out["foolbox"].append(run_foolbox(model, x, y, starts, budgets))
        if args.art:
            torch.manual_seed(seed), np.random.seed(seed)
            out["art"].append(run_art(model, x, y, starts, budgets))
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
