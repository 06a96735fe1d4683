"""HSJA side by side: MedShield's batched HSJA vs the model's raw batched forward throughput, and vs
foolbox's and ART's HopSkipJumpAttack on the same model, images and query budgets.

Budget matching: every implementation talks to the same counting wrapper, which counts each forward
row as one query for the image it belongs to (foolbox sends one row per image per call; ART sends
all rows of one image per call) and keeps, per image, the closest adversarial found within each
budget -- the same any-time accounting MedShield's oracle uses. foolbox counts iterations
(``steps``) and ART ``max_iter``: both are given enough iterations to pass the largest budget; rows
past an image's budget are still answered (the peers cannot be stopped) but never counted toward
a result.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_hsja.py --run /tmp/runs/pn_small --n-images 8 --budgets 1000,2000,5000
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

from medshield.attacks.decision import LabelOracle, model_label_fn  # noqa: E402
from medshield.attacks.decision.hsja import HopSkipJump  # noqa: E402
from medshield.data import load_dataset  # noqa: E402
from medshield.evaluation.blackbox import select_images  # noqa: E402
from medshield.models import class_logits, load_run, predict_labels  # noqa: E402


class Counting(nn.Module):
    """Logits of ``model`` for a peer library, with MedShield's per-image any-time accounting."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, budgets: list[int]) -> None:
        super().__init__()
        self.model = model
        self.oracle = LabelOracle(model_label_fn(model), images, labels, budgets)
        self.current: int | None = None  # ART: the image being attacked
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        n = self.oracle.n
        idx = torch.full((x.shape[0],), self.current) if self.current is not None else torch.arange(x.shape[0]) % n
        self.rows += x.shape[0]
        with torch.no_grad():
            logits = class_logits(self.model(x))
            pred = predict_labels(logits)
        self.oracle._record(idx, x.detach().clamp(0, 1), self.oracle._sequence_numbers(idx), pred != self.oracle.labels[idx])
        self.oracle.queries += torch.bincount(idx, minlength=n)
        return logits


def medians(oracle: LabelOracle) -> list[float]:
    return [float(oracle.best(b)[1].median()) for b in oracle.budgets]


def starts_for(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same adversarial start for every implementation: the first image of the other class
    (uniform noise is never adversarial for these models, so each library's own init would differ)."""
    return torch.stack([x[torch.nonzero(y != label).squeeze(1)[0]] for label in y])


def run_ours(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> tuple[list[float], float, int]:
    oracle = LabelOracle(model_label_fn(model), x, y, budgets)
    start = time.perf_counter()
    HopSkipJump().run(oracle, torch.Generator().manual_seed(0), starts=starts_for(x, y))
    return medians(oracle), time.perf_counter() - start, int(oracle.queries.sum())


def run_foolbox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> tuple[list[float], float, int]:
    import foolbox as fb

    wrapped = Counting(model, x, y, budgets).eval()
    fmodel = fb.PyTorchModel(wrapped, bounds=(0, 1))
    # sum_{t<=T} 100 sqrt(t) + ~40 per step passes the largest budget for T below
    steps = next(t for t in range(1, 500) if sum(100 * (s**0.5) + 40 for s in range(1, t + 1)) > max(budgets))
    attack = fb.attacks.HopSkipJumpAttack(steps=steps, initial_gradient_eval_steps=100, max_gradient_eval_steps=10_000,
                                          gamma=1.0, constraint="l2")
    start = time.perf_counter()
    attack.run(fmodel, x, fb.criteria.Misclassification(y), starting_points=starts_for(x, y))
    return medians(wrapped.oracle), time.perf_counter() - start, wrapped.rows


def run_art(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> tuple[list[float], float, int]:
    from art.attacks.evasion import HopSkipJump as ArtHSJ
    from art.estimators.classification import PyTorchClassifier

    wrapped = Counting(model, x, y, budgets).eval()
    clf = PyTorchClassifier(model=wrapped, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=2,
                            clip_values=(0.0, 1.0))
    steps = next(t for t in range(1, 500) if sum(100 * (s**0.5) + 40 for s in range(1, t + 1)) > max(budgets))
    attack = ArtHSJ(clf, norm=2, max_iter=steps, max_eval=10_000, init_eval=100, init_size=100, verbose=False)
    start = time.perf_counter()
    starts = starts_for(x, y).numpy().astype(np.float32)
    for i in range(x.shape[0]):
        wrapped.current = i
        attack.generate(x[i:i + 1].numpy().astype(np.float32), x_adv_init=starts[i:i + 1])
    return medians(wrapped.oracle), time.perf_counter() - start, wrapped.rows


def raw_forward(model: nn.Module, x: torch.Tensor, rows: int, batch: int = 4096) -> float:
    """Rows per second of the model's plain batched forward on ``rows`` random inputs."""
    data = torch.rand(batch, *x.shape[1:])
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(max(1, rows // batch)):
            model(data)
    return max(1, rows // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--budgets", default="1000,2000,5000")
    p.add_argument("--peers", default="foolbox,art")
    args = p.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    model, _ = load_run(args.run)
    model.eval()
    part = load_dataset(args.dataset, args.data_dir).test
    idx = select_images(model_label_fn(model), part, args.n_images, seed=0)
    x, y = part.images(idx.tolist()), part.labels[idx]
    rows = {}
    rows["medshield"] = run_ours(model, x, y, budgets)
    for peer in [s for s in args.peers.split(",") if s]:
        rows[peer] = {"foolbox": run_foolbox, "art": run_art}[peer](model, x, y, budgets)
    fwd = raw_forward(model, x, rows["medshield"][2])
    print(f"images {x.shape[0]}, budgets {budgets}, raw batched forward {fwd:,.0f} img/s")
    print(f"{'impl':<10} {'queries/s':>10} {'vs fwd':>7} " + " ".join(f"{'med@' + str(b):>10}" for b in budgets) + "  ratio ours/peer")
    ours = rows["medshield"][0]
    for name, (med, secs, q) in rows.items():
        ratio = " ".join(f"{o / m:.3f}" for o, m in zip(ours, med))
        print(f"{name:<10} {q / secs:>10,.0f} {q / secs / fwd:>7.2f} " + " ".join(f"{m:>10.4f}" for m in med) + f"  {ratio}")


if __name__ == "__main__":
    main()
