"""PGD throughput: MedShield vs the raw cost of its forward+backward passes, foolbox and ART.

Same model, same batch, same eps and steps, measured round-robin and printed side by side in one run
(images/s); ``--json FILE`` writes ours_per_s, foolbox_per_s, art_per_s, raw_per_s (the forward +
input-gradient floor) and raw_batch (the batch all rows use):

    OMP_NUM_THREADS=1 python bench/bench_pgd.py --model smallcnn --batch 128 --repeats 3
    OMP_NUM_THREADS=1 python bench/bench_pgd.py --model resnet50 --size 224 --channels 3 --batch 4 --steps 3 --repeats 2 --json pgd224.json
    OMP_NUM_THREADS=1 python bench/bench_pgd.py --model densenet121 --size 224 --channels 3 --batch 4 --steps 5 --repeats 2
    python bench/bench_pgd.py --model resnet50 --size 224 --channels 3 --batch 64 --device cuda --json pgd224_gpu.json

On a GPU every row is timed up to ``torch.cuda.synchronize()``, so queued kernels count. APGD-CE has its own
benchmark (vs torchattacks, ART and pyautoattack): ``bench/bench_apgd.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medshield.attacks import pgd  # noqa: E402
from medshield.attacks.base import attack_loss  # noqa: E402
from medshield.models import create_model  # noqa: E402
from medshield.models.inference import synchronize  # noqa: E402

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
STEPS = 10  # --steps overrides
OURS, FOOLBOX, ART, RAW = "medshield PGD", "foolbox 3.3.4 LinfPGD", "ART 1.20.1 PGD", "raw fwd+input-grad"


def best_times(rows: dict[str, Callable[[], object]], repeats: int, device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Best-of-``repeats`` seconds per row, measured round-robin so background load hits every row alike."""
    for fn in rows.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def raw_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The floor: ``STEPS`` forward passes + input-gradient backward passes, nothing else."""
    for _ in range(STEPS):
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(attack_loss(model(xi), y, False), xi)


def raw_backward(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """``STEPS`` forward + ``loss.backward()`` (also computes weight gradients, as naive loops do)."""
    for _ in range(STEPS):
        xi = x.detach().requires_grad_(True)
        attack_loss(model(xi), y, False).backward()
        model.zero_grad(set_to_none=True)


def peers(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {}
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
        fb_pgd = fb.attacks.LinfPGD(steps=STEPS, rel_stepsize=0.25)
        out[FOOLBOX] = lambda: fb_pgd(fmodel, x, y, epsilons=eps)
    except ImportError as exc:
        print(f"foolbox unavailable: {exc}")
    try:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=2, clip_values=(0.0, 1.0),
                                device_type="gpu" if x.device.type == "cuda" else "cpu")
        art_pgd = ProjectedGradientDescentPyTorch(clf, eps=eps, eps_step=0.25 * eps, max_iter=STEPS, num_random_init=1,
                                                  batch_size=x.shape[0], verbose=False)
        xn, yn = x.cpu().numpy(), y.cpu().numpy()  # ART takes NumPy arrays (and copies them to its device)
        out[ART] = lambda: art_pgd.generate(xn, yn)
    except ImportError as exc:
        print(f"ART unavailable: {exc} (pip install adversarial-robustness-toolbox packaging)")
    return out


def main() -> None:
    global STEPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=2 / 255)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (model, images and every row's work)")
    parser.add_argument("--json", type=Path, help="write the contract figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    STEPS = args.steps
    torch.manual_seed(0)
    model = create_model(name=args.model, in_channels=args.channels, num_classes=2, image_size=args.size).eval().to(device)
    x = torch.rand(args.batch, args.channels, args.size, args.size).to(device)
    with torch.no_grad():  # the model's own labels, as bench_apgd: every image starts correctly classified
        y = model(x).argmax(1)
    attack = pgd(steps=STEPS)
    gen = torch.Generator().manual_seed(0)
    rows = {RAW: lambda: raw_passes(model, x, y),
            "raw fwd+loss.backward()": lambda: raw_backward(model, x, y),
            OURS: lambda: attack.attack(model, x, y, eps=args.eps, generator=gen)}
    rows.update(peers(model, x, y, args.eps))
    times = best_times(rows, args.repeats, device)
    ours = times[OURS]
    print(f"model={args.model} batch={args.batch} size={args.size}x{args.channels} steps={STEPS} device={device} "
          f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} (best of {args.repeats}, round-robin)")
    print(f"{'':32s} {'images/s':>10s} {'medshield speed / this':>24s}")
    for name, t in times.items():
        print(f"{name:32s} {args.batch / t:10.2f} {t / ours:24.2f}")
    print(f"medshield PGD / raw input-grad floor: {times[RAW] / ours:.2f} (target >= 0.9)")
    if args.json:
        per_s = {name: args.batch / t for name, t in times.items()}
        args.json.write_text(json.dumps({
            "ours_per_s": per_s[OURS], "foolbox_per_s": per_s.get(FOOLBOX), "art_per_s": per_s.get(ART),
            "raw_per_s": per_s[RAW], "raw_batch": args.batch, "raw_backward_per_s": per_s["raw fwd+loss.backward()"],
            "model": args.model, "size": args.size, "channels": args.channels, "steps": STEPS, "repeats": args.repeats,
            "threads": torch.get_num_threads(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_avg": os.getloadavg()[0]}, indent=2))


if __name__ == "__main__":
    main()
