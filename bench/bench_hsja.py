"""HSJA side by side: MedShield's batched HSJA vs the model's raw batched forward throughput, and vs
foolbox's and ART's HopSkipJumpAttack on the same model, images and query budgets.

Budget matching: every implementation talks to the same counting wrapper, which counts each forward
row as one query for the image it belongs to (foolbox sends one row per image per call; ART sends
all rows of one image per call) and keeps, per image, the closest adversarial found within each
budget -- the same any-time accounting MedShield's oracle uses. foolbox counts iterations
(``steps``) and ART ``max_iter``: both are given enough iterations to pass the largest budget; rows
past an image's budget are still answered (the peers cannot be stopped) but never counted toward
a result.

The raw rate is the model's plain forward (eval, inference mode) at its best batch size from a
measured sweep (8..4096 rows), printed with the sweep. By default ours runs the forward
``model_label_fn`` measures for itself (batch size and memory layout: channels-last where it was
faster with identical labels; printed, and in the JSON as ``ours_forward``); the raw rate of that
same forward at that batch is printed too. ``--path`` instead runs ours through an explicit inference
path (medshield.models.inference: channels_last, bf16, compile); the peers always get the plain model.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_hsja.py --run /tmp/runs/pn_small --n-images 8 --budgets 1000,2000,5000 --json out.json
    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_hsja.py --model resnet18 --size 128 --n-images 4 --budgets 500,1000
    python bench/bench_hsja.py --run RUN --n-images 16 --budgets 1000,2000,5000 --device cuda --json gpu.json

``--device cuda`` puts the model on the GPU for every implementation (foolbox's and ART's own
device handling, ours through ``model_label_fn``); the images and the accounting stay on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medshield.attacks.decision import LabelOracle, model_label_fn  # noqa: E402
from medshield.attacks.decision.hsja import HopSkipJump  # noqa: E402
from medshield.data import load_dataset  # noqa: E402
from medshield.evaluation.blackbox import select_images  # noqa: E402
from medshield.models import class_logits, create_model, load_run, model_device, predict_labels  # noqa: E402
from medshield.models.inference import (LAYOUTS, ForwardChoice, fast_forward, forward_choice, forward_rates,  # noqa: E402
                                       inference_path, path_forward)


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
            pred = predict_labels(logits).cpu()
        self.oracle._record(idx, x.detach().clamp(0, 1).cpu(), self.oracle._sequence_numbers(idx), pred != self.oracle.labels[idx])
        self.oracle.queries += torch.bincount(idx, minlength=n)
        return logits


def medians(oracle: LabelOracle) -> list[float]:
    return [float(oracle.best(b)[1].median()) for b in oracle.budgets]


def starts_for(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same adversarial start for every implementation: the first image of the other class
    (uniform noise is never adversarial for these models, so each library's own init would differ)."""
    return torch.stack([x[torch.nonzero(y != label).squeeze(1)[0]] for label in y])


def run_ours(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int],
             path: str = "default", layout: str = "auto") -> tuple[tuple[list[float], float, int], ForwardChoice]:
    target = inference_path(model, path)
    label_fn = model_label_fn(target, layout=layout)
    label_fn(x[:8])  # the batch-size and layout choice (once per model and input size) is set-up, not attack time
    oracle = LabelOracle(label_fn, x, y, budgets)
    start = time.perf_counter()
    HopSkipJump().run(oracle, torch.Generator().manual_seed(0), starts=starts_for(x, y))
    result = medians(oracle), time.perf_counter() - start, int(oracle.queries.sum())
    path = "contiguous" if layout == "auto" else layout
    return result, forward_choice(target, x.shape[1:], path=path)  # cached: the choice the run used


def peer_steps(budgets: list[int]) -> int:
    """HSJA iterations the peers get: sum_{t<=T} 100 sqrt(t) + ~40 per step passes the largest budget."""
    return next(t for t in range(1, 500) if sum(100 * (s**0.5) + 40 for s in range(1, t + 1)) > max(budgets))


def foolbox_hsja(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> tuple[Counting, float]:
    """foolbox's HSJA from :func:`starts_for`: its counting wrapper (distances per budget) and seconds."""
    import foolbox as fb

    wrapped = Counting(model, x, y, budgets).eval()
    device = model_device(model)
    fmodel = fb.PyTorchModel(wrapped, bounds=(0, 1), device=device)
    attack = fb.attacks.HopSkipJumpAttack(steps=peer_steps(budgets), initial_gradient_eval_steps=100,
                                          max_gradient_eval_steps=10_000, gamma=1.0, constraint="l2")
    start = time.perf_counter()
    attack.run(fmodel, x.to(device), fb.criteria.Misclassification(y.to(device)), starting_points=starts_for(x, y).to(device))
    return wrapped, time.perf_counter() - start


def art_hsja(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> tuple[Counting, float]:
    """ART's HSJA (one image at a time) from :func:`starts_for`: its counting wrapper and seconds."""
    from art.attacks.evasion import HopSkipJump as ArtHSJ
    from art.estimators.classification import PyTorchClassifier

    wrapped = Counting(model, x, y, budgets).eval()
    clf = PyTorchClassifier(model=wrapped, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=2,
                            clip_values=(0.0, 1.0), device_type="gpu" if model_device(model).type == "cuda" else "cpu")
    attack = ArtHSJ(clf, norm=2, max_iter=peer_steps(budgets), max_eval=10_000, init_eval=100, init_size=100, verbose=False)
    start = time.perf_counter()
    starts = starts_for(x, y).numpy().astype(np.float32)
    for i in range(x.shape[0]):
        wrapped.current = i
        attack.generate(x[i:i + 1].numpy().astype(np.float32), x_adv_init=starts[i:i + 1])
    return wrapped, time.perf_counter() - start


def run_foolbox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> tuple[list[float], float, int]:
    wrapped, seconds = foolbox_hsja(model, x, y, budgets)
    return medians(wrapped.oracle), seconds, wrapped.rows


def run_art(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int]) -> tuple[list[float], float, int]:
    wrapped, seconds = art_hsja(model, x, y, budgets)
    return medians(wrapped.oracle), seconds, wrapped.rows


def raw_forward(model: nn.Module, x: torch.Tensor) -> tuple[float, int, dict[int, float]]:
    """The model's plain forward (eval, inference mode) in rows/s at its best batch size from a sweep."""
    with torch.inference_mode():
        rates = forward_rates(model, x.shape[1:], min_seconds=0.3, device=model_device(model))
    best = max(rates, key=rates.__getitem__)
    return rates[best], best, rates


def load_target(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model and ``n`` correctly classified test images (a trained run), or, without ``--run``, a
    seeded randomly initialised ``--model`` whose own predictions are the labels (rates do not depend
    on training; every implementation attacks the same classifier)."""
    if args.run:
        model, _ = load_run(args.run)
    else:
        torch.manual_seed(args.init_seed)
        model = create_model(name=args.model, in_channels=1, num_classes=2, image_size=args.size)
    model.eval()
    part = load_dataset(args.dataset, args.data_dir, resize=None if args.run else args.size).test
    if args.run:
        idx = select_images(model_label_fn(model), part, args.n_images, seed=0)
        return model, part.images(idx.tolist()), part.labels[idx]
    x = part.images(list(range(min(len(part.labels), 256))))
    pred = model_label_fn(model)(x)
    half = args.n_images // 2
    idx = torch.cat([torch.nonzero(pred == c).squeeze(1)[:n] for c, n in ((0, half), (1, args.n_images - half))])
    if idx.numel() < args.n_images or pred[idx].unique().numel() < 2:
        raise SystemExit(f"error: init seed {args.init_seed} does not predict both classes; try another --init-seed")
    return model, x[idx], pred[idx]


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """The options :func:`load_target` reads (a trained run, or a seeded random-init model) and ``--n-images``."""
    p.add_argument("--run", help="a trained run (default: a random-init --model at --size)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--init-seed", type=int, default=2)
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--n-images", type=int, default=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_target_arguments(p)
    p.add_argument("--budgets", default="1000,2000,5000")
    p.add_argument("--peers", default="foolbox,art")
    p.add_argument("--path", default="default", help="ours' inference path: default, channels_last, bf16, compile (+)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help="ours' label function's forward: auto (measured "
                   "layout, the library default), contiguous, channels_last or frozen (a frozen inference graph)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the model runs (images stay on the CPU)")
    p.add_argument("--json", type=Path, help="write the contract figures here")
    args = p.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    model, x, y = load_target(args)
    model = model.to(args.device)
    fwd, fwd_batch, sweep = raw_forward(model, x)
    ours, choice = run_ours(model, x, y, budgets, args.path, args.layout)
    rows = {"medshield": ours}
    with torch.inference_mode():
        target = inference_path(model, args.path)
        forward = fast_forward(target, choice) if args.layout == "auto" else path_forward(target, args.layout)
        ours_raw = forward_rates(forward, x.shape[1:], [choice.batch], min_seconds=0.3,
                                 device=model_device(model))[choice.batch]
    for peer in [s for s in args.peers.split(",") if s]:
        rows[peer] = {"foolbox": run_foolbox, "art": run_art}[peer](model, x, y, budgets)
    print(f"images {tuple(x.shape)}, budgets {budgets}, threads {torch.get_num_threads()}, ours' path {args.path}")
    print("raw forward sweep (rows/s): " + ", ".join(f"{b}: {r:,.0f}" for b, r in sweep.items()))
    print(f"raw forward at its best batch {fwd_batch}: {fwd:,.0f} rows/s")
    layout = (choice.layout if args.layout == "auto" else f"{args.layout} (pinned)") if args.path == "default" \
        else f"path {args.path}"
    print(f"ours' forward: batch {choice.batch}, {layout} (layout rates {', '.join(f'{k} {v:,.0f}' for k, v in choice.layout_rates.items()) or 'not timed'}, "
          f"labels identical {choice.labels_identical}); raw rate of that forward {ours_raw:,.0f} rows/s")
    print(f"{'impl':<10} {'queries/s':>10} {'vs fwd':>7} {'ours/this':>9} " + " ".join(f"{'med@' + str(b):>10}" for b in budgets)
          + "  median L2 ours/this")
    ours_med, ours_s, ours_q = rows["medshield"]
    rate = {name: q / secs for name, (_, secs, q) in rows.items()}
    for name, (med, secs, q) in rows.items():
        ratio = " ".join(f"{o / m:.3f}" for o, m in zip(ours_med, med))
        print(f"{name:<10} {rate[name]:>10,.0f} {rate[name] / fwd:>7.2f} {rate['medshield'] / rate[name]:>9.2f} "
              + " ".join(f"{m:>10.4f}" for m in med) + f"  {ratio}")
    if args.json:
        out = {"ours_per_s": rate["medshield"], "foolbox_per_s": rate.get("foolbox"), "art_per_s": rate.get("art"),
               "raw_per_s": fwd, "raw_batch": fwd_batch, "raw_sweep": {str(b): r for b, r in sweep.items()},
               "ours_path": args.path, "ours_forward": {**choice.record(), "layout": layout, "raw_per_s": ours_raw},
               "images": x.shape[0], "image_shape": list(x.shape[1:]), "budgets": budgets,
               "threads": torch.get_num_threads(), "device": args.device, "load_avg": os.getloadavg()[0]}
        for name in rows:
            key = "ours" if name == "medshield" else name
            out[f"{key}_median_l2"] = {str(b): m for b, m in zip(budgets, rows[name][0])}
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
