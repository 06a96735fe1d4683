"""Training-time cost of each white-box defense vs clean training, side by side in one run.

    OMP_NUM_THREADS=1 python bench/bench_defense_training.py [--data-dir ../shared/data] [--model smallcnn]
        [--train-attack mifgsm --train-steps 5] [--images 1024] [--repeats 2]

One epoch of MedShield's training loop (``train_model``: augmentation, validation, checkpoints) on the
first ``--images`` training images (64 validation images), once per defense (none, noise, AT, ANT; AT/ANT with adversarials
from the model being trained and from a fixed pre-trained copy), best of ``--repeats``. Prints images/s
and the time relative to clean training. Expected: a k-step attack costs about k forward+backward
passes per batch, and AT/ANT then train on twice the batch, so roughly (k + 2)x clean.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from bench_train import bench_dataset, parser, timed_training

from medshield.api import seeded
from medshield.defenses.training import build_training_hook
from medshield.models import create_model
from medshield.models.train import TrainConfig

SETTINGS = [("none", "online"), ("noise", "online"), ("at", "online"), ("ant", "online"), ("at", "fixed"),
            ("ant", "fixed")]


def one_epoch(model_name: str, ds, hook, cfg: TrainConfig) -> float:  # noqa: ANN001
    with seeded(0):
        return timed_training(create_model(name=model_name), ds, cfg, hook=hook)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--train-attack", default="mifgsm")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--images", type=int, default=1024, help="training images per epoch (a prefix of the split)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    name, ds = bench_dataset(args)
    ds = replace(ds, train=ds.train.subset(torch.arange(min(args.images, len(ds.train)))),
                 val=ds.val.subset(torch.arange(min(64, len(ds.val)))))  # keep validation out of the comparison
    cfg = TrainConfig(epochs=1, patience=2)
    with seeded(0):
        fixed = create_model(name=args.model)  # a stand-in pre-trained model: the cost does not depend on its weights
    print(f"dataset {name}, model {args.model}, {len(ds.train)} images x 1 epoch, batch {cfg.batch_size}, "
          f"{torch.get_num_threads()} threads, train attack {args.train_attack} x {args.train_steps} steps")
    print(f"{'defense':>8} {'source':>7} {'img/s':>8} {'time vs clean':>14}")
    times: dict[tuple[str, str], list[float]] = {s: [] for s in SETTINGS}
    one_epoch(args.model, ds, None, cfg)  # warm-up (allocator, kernels), not timed
    for _ in range(args.repeats):  # interleave the settings so machine noise hits all of them
        for defense, source in SETTINGS:
            hook = build_training_hook(defense, args.train_attack, 2 / 255, steps=args.train_steps, source=source,
                                       fixed_model=fixed if source == "fixed" else None)
            times[(defense, source)].append(one_epoch(args.model, ds, hook, cfg))
    clean = min(times[("none", "online")])
    for (defense, source), t in times.items():
        src = source if defense in ("at", "ant") else "-"
        print(f"{defense:>8} {src:>7} {len(ds.train) / min(t):8.1f} {min(t) / clean:13.2f}x")


if __name__ == "__main__":
    main()
