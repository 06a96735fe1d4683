"""APGD-CE throughput: MedShield vs the raw cost of its forward+backward passes, and vs the APGD of
torchattacks, ART and pyautoattack (the reference AutoAttack code), side by side in one run.

Same model, same batch, same eps and steps (one restart each); foolbox has no APGD, so the JSON's
foolbox_per_s is null:

    OMP_NUM_THREADS=1 python bench/bench_apgd.py --model smallcnn --batch 128 --steps 20 --repeats 3 [--json out.json]
    OMP_NUM_THREADS=1 python bench/bench_apgd.py --model densenet121 --size 224 --channels 3 --batch 4 --steps 5 --repeats 2
    python bench/bench_apgd.py --model resnet50 --size 224 --channels 3 --batch 64 --steps 10 --device cuda --json apgd224_gpu.json

Peers are optional (``pip install --no-deps torchattacks pyautoattack``; ART is
``adversarial-robustness-toolbox``); missing ones are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pgd import best_times  # noqa: E402

from medshield.attacks import APGD  # noqa: E402
from medshield.attacks.base import attack_loss  # noqa: E402
from medshield.models import create_model  # noqa: E402

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
OURS = "medshield APGD-CE"


def raw_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """The floor: ``steps + 1`` forward passes + input-gradient backward passes (APGD's gradient calls)."""
    for _ in range(steps + 1):
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(attack_loss(model(xi), y, False), xi)


def peers(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> dict[str, Callable[[], object]]:
    """The peers' APGD-CE rows on the same model, batch, eps and steps (one restart), on ``x``'s device."""
    out: dict[str, Callable[[], object]] = {}
    try:
        import torchattacks

        ta = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)
        out[f"torchattacks {torchattacks.__version__} APGD"] = lambda: ta(x, y)
    except ImportError as exc:
        print(f"torchattacks unavailable: {exc} (pip install --no-deps torchattacks)")
    try:
        import art
        from art.attacks.evasion import AutoProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=2, clip_values=(0.0, 1.0),
                                device_type="gpu" if x.device.type == "cuda" else "cpu")
        art_apgd = AutoProjectedGradientDescent(clf, norm="inf", eps=eps, eps_step=2 * eps, max_iter=steps,
                                                nb_random_init=1, batch_size=x.shape[0], loss_type="cross_entropy",
                                                verbose=False)
        xn, yn = x.cpu().numpy(), y.cpu().numpy()  # ART takes NumPy arrays (and copies them to its device)
        out[f"ART {art.__version__} AutoPGD"] = lambda: art_apgd.generate(xn, yn)
    except ImportError as exc:
        print(f"ART unavailable: {exc}")
    try:
        from pyautoattack.autopgd_base import APGDAttack

        ref = APGDAttack(model, n_iter=steps, n_restarts=1, eps=eps, norm="Linf", loss="ce", seed=0, device=x.device)
        out["pyautoattack 0.2.0 APGD"] = lambda: ref.perturb(x, y)
    except ImportError as exc:
        print(f"pyautoattack unavailable: {exc} (pip install --no-deps pyautoattack)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=2 / 255)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (model, images and every row's work)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(name=args.model, in_channels=args.channels, num_classes=2, image_size=args.size).eval().to(device)
    x = torch.rand(args.batch, args.channels, args.size, args.size).to(device)
    with torch.no_grad():  # labels = the model's own predictions: every image is correctly classified, so
        y = model(x).argmax(1)  # peers that skip misclassified images (torchattacks, pyautoattack) attack them all
    attack = APGD(steps=args.steps, loss="ce")
    gen = torch.Generator().manual_seed(0)
    floor = f"raw {args.steps + 1}x fwd+input-grad"
    rows = {floor: lambda: raw_passes(model, x, y, args.steps),
            OURS: lambda: attack.attack(model, x, y, eps=args.eps, generator=gen)}
    rows.update(peers(model, x, y, args.eps, args.steps))
    times = best_times(rows, args.repeats, device)
    ours = times[OURS]
    print(f"model={args.model} batch={args.batch} size={args.size}x{args.channels} steps={args.steps} device={device} "
          f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} (best of {args.repeats}, round-robin)")
    print(f"{'':34s} {'images/s':>10s} {'medshield speed / this':>24s}")
    for name, t in times.items():
        print(f"{name:34s} {args.batch / t:10.2f} {t / ours:24.2f}")
    print(f"{OURS} / raw input-grad floor: {times[floor] / ours:.2f}")
    if args.json:
        per_s = {name: args.batch / t for name, t in times.items()}
        peer = lambda prefix: next((v for k, v in per_s.items() if k.startswith(prefix)), None)  # noqa: E731
        args.json.write_text(json.dumps({
            "ours_per_s": per_s[OURS], "raw_per_s": per_s[floor], "raw_batch": args.batch, "foolbox_per_s": None,
            "art_per_s": peer("ART"), "torchattacks_per_s": peer("torchattacks"), "autoattack_per_s": peer("pyautoattack"),
            "model": args.model, "batch": args.batch, "size": args.size, "channels": args.channels, "steps": args.steps,
            "eps": args.eps, "threads": torch.get_num_threads(), "repeats": args.repeats, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "load_avg": os.getloadavg()[0],
            "images_per_second": per_s,
            "speed_ratio_vs_medshield": {name: t / ours for name, t in times.items()},
        }, indent=2))


if __name__ == "__main__":
    main()
