"""Built-in SYNTHETIC demo data: chest-radiograph phantoms with and without focal opacities.

These are not real patients and carry no clinical meaning. They exist so ``medshield demo`` runs
offline anywhere. Each image is a soft thorax silhouette with two darker lung fields, mediastinum
and heart shadows, curved ribs, film grain and low-frequency noise; class 1 ("opacity") adds one to
three Gaussian focal opacities inside the lungs. Everything is deterministic from the seed.
"""

from __future__ import annotations

import torch

from medshield.data.base import Dataset, ImageSet

DEMO_CLASSES = ["normal", "opacity"]
DEMO_SPLITS = {"train": 2000, "val": 300, "test": 500}


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=g)).view(n, 1, 1)


def _ellipse(xx: torch.Tensor, yy: torch.Tensor, cx, cy, ax, ay, soft: float) -> torch.Tensor:
    r = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
    return torch.sigmoid((1.0 - r) / soft)


def chest_phantoms(labels: torch.Tensor, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Render one phantom per label (0 normal, 1 opacity) as float32 ``[N, 1, size, size]`` in [0, 1]."""
    n = labels.shape[0]
    g = torch.Generator().manual_seed(seed)
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    soft = 2.5 / size
    body = _ellipse(xx, yy, _u(g, n, -0.04, 0.04), 0.05, _u(g, n, 0.78, 0.92), _u(g, n, 0.9, 1.0), soft)
    img = 0.12 + 0.45 * body
    lung_ax, lung_ay = _u(g, n, 0.26, 0.32), _u(g, n, 0.52, 0.62)
    lung_cx, lung_cy = _u(g, n, 0.36, 0.44), _u(g, n, -0.05, 0.05)
    lungs = _ellipse(xx, yy, -lung_cx, lung_cy, lung_ax, lung_ay, soft) + _ellipse(
        xx, yy, lung_cx, lung_cy, lung_ax, lung_ay, soft)
    img = img - _u(g, n, 0.25, 0.33) * lungs
    img = img + 0.2 * _ellipse(xx, yy, 0.0, 0.0, 0.09, 0.95, soft)  # spine / mediastinum
    img = img + 0.18 * _ellipse(xx, yy, _u(g, n, 0.08, 0.16), 0.3, _u(g, n, 0.22, 0.28), 0.26, soft)  # heart
    img = img + _ribs(xx, yy, g, n, soft) * body
    img = img + _opacities(xx, yy, g, labels, lung_cx, lung_cy, lung_ax, lung_ay)
    low = torch.nn.functional.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=(size, size),
                                          mode="bicubic", align_corners=False)[:, 0]
    img = img + 0.03 * low + 0.03 * torch.randn(n, size, size, generator=g)
    contrast, gamma = _u(g, n, 0.85, 1.15), _u(g, n, 0.85, 1.15)
    img = ((img.clamp(0, 1) * contrast).clamp(0, 1)) ** gamma
    return img.clamp(0, 1).unsqueeze(1).float()


def _ribs(xx: torch.Tensor, yy: torch.Tensor, g: torch.Generator, n: int, soft: float) -> torch.Tensor:
    ribs = torch.zeros(n, *xx.shape)
    start, curve = _u(g, n, -0.75, -0.65), _u(g, n, 0.2, 0.3)
    for k in range(7):
        centre = start + 0.2 * k + curve * xx**2
        ribs = ribs + torch.sigmoid((0.035 - (yy - centre).abs()) / (soft / 2))
    return 0.07 * ribs * (xx.abs() > 0.1)


def _opacities(xx, yy, g, labels, lung_cx, lung_cy, lung_ax, lung_ay) -> torch.Tensor:
    n = labels.shape[0]
    out = torch.zeros(n, *xx.shape)
    count = torch.randint(1, 4, (n,), generator=g)
    for j in range(3):
        side = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).view(n, 1, 1)
        cx = side * lung_cx + lung_ax * _u(g, n, -0.5, 0.5)
        cy = lung_cy + lung_ay * _u(g, n, -0.6, 0.6)
        radius, amp = _u(g, n, 0.12, 0.22), _u(g, n, 0.16, 0.3)
        blob = amp * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
        active = ((labels == 1) & (count > j)).float().view(n, 1, 1)
        out = out + active * blob
    return out


def load_demo(size: int = 28, seed: int = 0, rgb: bool = False) -> Dataset:
    """The synthetic ``demo`` dataset: balanced, 2000/300/500 images, deterministic from ``seed``."""
    sets = {}
    for i, (split, count) in enumerate(DEMO_SPLITS.items()):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        labels = torch.randperm(count, generator=g) % 2
        images = chest_phantoms(labels, size, seed=seed * 1000 + 17 + i)
        sets[split] = ImageSet((images * 255).round().to(torch.uint8), labels, rgb=rgb)
    return Dataset("demo", class_names=list(DEMO_CLASSES), positive_class=1, synthetic=True,
                   description=f"SYNTHETIC chest-radiograph phantoms ({size}x{size}), not patient data",
                   **sets)
