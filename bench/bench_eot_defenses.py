"""White-box PGD against the randomised defenses RND and DND: naive (one noisy draw per gradient) vs EOT
(gradient of the average over ``--samples`` draws; Athalye et al., ICML 2018) at the SAME number of model
queries (naive PGD gets ``samples`` times more steps), vs the undefended model.

Robust accuracy is judged by the defended model itself: a majority vote over ``--judge`` fresh draws.

    OMP_NUM_THREADS=1 python bench/bench_eot_defenses.py --run RUN --data-dir DATA --n 20 \
        --eps 1/255,2/255 --steps 10 --samples 8 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from fractions import Fraction
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medshield.api import load_run_and_data  # noqa: E402
from medshield.attacks import ExpectationModel, pgd  # noqa: E402
from medshield.defenses.inference import INFERENCE_DEFENSES  # noqa: E402
from medshield.models import class_logits  # noqa: E402

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
DEFENSES = {"none": {}, "rnd": {"nu": 0.02}, "dnd": {"m": 0.01, "n": 0.5}}  # the blackbox defaults


@torch.no_grad()
def majority(model: torch.nn.Module, x: torch.Tensor, draws: int) -> torch.Tensor:
    """Majority label over ``draws`` forward passes (one pass for a deterministic model)."""
    votes = torch.stack([class_logits(model(x)).argmax(1) for _ in range(draws)])
    return votes.mode(0).values


def robust(model: torch.nn.Module, adv: torch.Tensor, y: torch.Tensor, judge: int) -> float:
    return float((majority(model, adv, judge) == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--eps", default="1/255,2/255")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--judge", type=int, default=21)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    model, ds, _ = load_run_and_data(a.run, None, a.data_dir, "cpu")
    model.eval()
    part = ds.split("test")
    x, y = part.get(torch.randperm(len(part), generator=torch.Generator().manual_seed(a.seed))[: 4 * a.n])
    with torch.no_grad():
        keep = (class_logits(model(x)).argmax(1) == y).nonzero().flatten()[: a.n]
    x, y = x[keep], y[keep]
    rows = []
    for name, params in DEFENSES.items():
        defended = INFERENCE_DEFENSES.create(name, model=model, **params)
        clean = robust(defended, x, y, a.judge)
        for eps in [float(Fraction(e)) for e in a.eps.split(",")]:
            row = {"defense": name, **params, "images": len(y), "eps": eps, "clean": clean}
            gen = torch.Generator().manual_seed(a.seed)
            if name == "none":
                row["pgd"] = robust(defended, pgd(steps=a.steps).attack(model, x, y, eps=eps, generator=gen).adversarial,
                                    y, 1)
            else:
                naive = pgd(steps=a.steps * a.samples).attack(defended, x, y, eps=eps, generator=gen).adversarial
                eot = pgd(steps=a.steps).attack(ExpectationModel(defended, a.samples), x, y, eps=eps,
                                                generator=gen).adversarial
                row.update(naive_pgd=robust(defended, naive, y, a.judge), eot_pgd=robust(defended, eot, y, a.judge),
                           queries_per_image=a.steps * a.samples)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
