"""Training cost per epoch of the CPU models side by side, at one image size.

    python bench/bench_model_cost.py [--data-dir ../shared/data] [--dataset covid_ct] [--size 128]
        [--models smallcnn,resnet18] [--repeats 2]

Trains each model for one epoch (MedShield's loop, augmentation on), alternating models `--repeats`
times so machine noise falls on all of them, and prints the best seconds per epoch, the ratio to the
first model, and each model's convolution multiply-accumulates per image. Falls back to the demo data
when the dataset is absent.
"""

from __future__ import annotations

import argparse

import torch

from medshield.api import seeded
from medshield.data import load_dataset
from medshield.errors import DataError
from medshield.models import create_model
from medshield.models.nets import conv_macs
from medshield.models.train import TrainConfig

from bench_train import timed_training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--dataset", default="covid_ct")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--models", default="smallcnn,resnet18")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    try:
        ds = load_dataset(args.dataset, args.data_dir, size=args.size)
    except DataError:
        ds = load_dataset("demo", size=args.size)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    cfg = TrainConfig(epochs=1, batch_size=32, patience=2)
    best = {m: float("inf") for m in models}
    for _ in range(args.repeats):
        for name in models:
            with seeded(0):
                net = create_model(name=name, in_channels=ds.channels, num_classes=ds.num_classes, image_size=args.size)
            best[name] = min(best[name], timed_training(net, ds, cfg))
    print(f"dataset {ds.name} {args.size}x{args.size}, {len(ds.train)} training images, {torch.get_num_threads()} threads")
    print(f"{'model':>12} {'s/epoch':>8} {'vs first':>9} {'conv MMAC/img':>14}")
    for name in models:
        with seeded(0):
            net = create_model(name=name, in_channels=ds.channels, num_classes=ds.num_classes, image_size=args.size)
        macs = conv_macs(net, args.size, ds.channels) / 1e6
        print(f"{name:>12} {best[name]:8.1f} {best[name] / best[models[0]]:9.2f} {macs:14.1f}")


if __name__ == "__main__":
    main()
