"""Training throughput: MedShield's loop vs a bare PyTorch loop, same model, data and batch size.

    python bench/bench_train.py [--data-dir ../shared/data] [--model smallcnn] [--epochs 2]

Prints images/s for each and the ratio (target >= 0.9). Our loop's time includes what it does
beyond the bare loop: per-epoch validation, best-checkpoint and resume-state writes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from medshield.api import seeded
from medshield.data import load_dataset
from medshield.models import create_model
from medshield.models.augment import AffineAugment
from medshield.models.train import TrainConfig, train_model


def bare_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, bs: int, augment: bool) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    aug, gen = AffineAugment(), torch.Generator().manual_seed(0)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), bs):
            xb, yb = x[perm[i : i + bs]], y[perm[i : i + bs]]
            if augment:
                xb = aug(xb, gen)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def timed_training(model, ds, cfg: TrainConfig, hook=None) -> float:  # noqa: ANN001
    """Seconds of MedShield's ``train_model`` (optionally with a defense hook) in a throwaway run folder."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_model(model, ds, Path(tmp), cfg, hook=hook)
        return time.perf_counter() - start


def ours(model, ds, epochs: int, bs: int, augment: bool) -> float:  # noqa: ANN001
    return timed_training(model, ds, TrainConfig(epochs=epochs, batch_size=bs, augment=augment, patience=epochs + 1))


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every training benchmark shares: data, dataset, model."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--model", default="smallcnn")
    return p


def bench_dataset(args: argparse.Namespace) -> tuple[str, object]:
    """The requested dataset, or the built-in demo data where its file is absent."""
    name = args.dataset if (Path(args.data_dir) / f"{args.dataset}.npz").is_file() else "demo"
    return name, load_dataset(name, args.data_dir)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    name, ds = bench_dataset(args)
    x, y = ds.train.images(), ds.train.labels
    n = len(x) * args.epochs
    print(f"dataset {name}, model {args.model}, {len(x)} images x {args.epochs} epochs, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'augment':>8} {'bare img/s':>11} {'ours img/s':>11} {'ratio':>6}")
    for augment in (False, True):
        times = {"bare": [], "ours": []}
        for _ in range(3):  # alternate to spread machine noise over both
            with seeded(0):
                times["bare"].append(bare_loop(create_model(name=args.model), x, y, args.epochs, args.batch_size, augment))
            with seeded(0):
                times["ours"].append(ours(create_model(name=args.model), ds, args.epochs, args.batch_size, augment))
        bare, mine = n / min(times["bare"]), n / min(times["ours"])
        print(f"{augment!s:>8} {bare:11.1f} {mine:11.1f} {mine / bare:6.3f}")


if __name__ == "__main__":
    main()
