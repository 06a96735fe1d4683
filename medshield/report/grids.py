"""Image grids: original | adversarial | amplified perturbation, with predicted labels and confidences."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _to_image(t: torch.Tensor):
    t = t.detach().cpu().float()
    return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def amplify(delta: torch.Tensor) -> torch.Tensor:
    """Map a perturbation to [0, 1] for display: grey 0.5 is zero, the largest |delta| reaches 0 or 1."""
    scale = delta.abs().amax().clamp_min(1e-12)
    return (delta / scale * 0.5 + 0.5).clamp(0, 1)


def adversarial_grid(originals: torch.Tensor, adversarials: torch.Tensor, clean_probs: torch.Tensor,
                     adv_probs: torch.Tensor, path: str | Path, *, class_names: Sequence[str] | None = None,
                     true_labels: torch.Tensor | None = None, title: str | None = None) -> Path:
    """One row per image: original (true label, prediction, confidence) | adversarial (prediction,
    confidence) | perturbation amplified to the full grey range (its L-inf in /255 units)."""
    n = originals.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(clean_probs.shape[1])]
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.3 * n), dpi=110, squeeze=False)
    grey = originals.shape[1] == 1
    for i in range(n):
        pc, pa = clean_probs[i], adv_probs[i]
        truth = f"true {names[int(true_labels[i])]}\n" if true_labels is not None else ""
        delta = adversarials[i] - originals[i]
        panels = [
            (originals[i], f"{truth}pred {names[int(pc.argmax())]} ({float(pc.max()):.0%})"),
            (adversarials[i], f"adversarial\npred {names[int(pa.argmax())]} ({float(pa.max()):.0%})"),
            (amplify(delta), f"perturbation x{1 / max(float(delta.abs().max()), 1e-12):.0f}\nL∞={255 * float(delta.abs().max()):.2f}/255"),
        ]
        for ax, (img, label) in zip(axes[i], panels):
            ax.imshow(_to_image(img), cmap="gray" if grey else None, vmin=0, vmax=1)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
