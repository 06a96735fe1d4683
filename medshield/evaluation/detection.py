"""How well the stateful stream detector separates attack query streams from benign clients.

Attack streams: each decision-based attack (HSJA, GBBA, OPT) runs through the label-only oracle
with a hook that feeds every query batch to a :class:`StreamDetector`, one client per attacked image
(the attack's stream for that image, as an attacker working on one image at a time would send it).
Each record reports when each stream was flagged (query count): median, max, and the fraction
flagged within ``within`` queries (Chen, Carlini & Wagner 2020 report detections within a few
hundred queries for boundary-style attacks).

Benign streams: random subsets of the test split (stream lengths drawn in ``stream_sizes``) sent as
one client each, unchanged, with natural Gaussian noise, and with small random shifts; the flagged
fraction is the detector's false-positive rate per client. The threshold is calibrated on TRAIN images
only (never on the test streams it is judged on).

>>> summary = run_detection(model, ds, DetectionConfig(n_images=20))
>>> [(r["kind"], r["flagged_fraction"]) for r in summary["records"]]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medshield.attacks.decision import DECISION_ATTACKS, LabelOracle, model_label_fn
from medshield.data import Dataset
from medshield.defenses.detection import StreamDetector
from medshield.errors import MedShieldError
from medshield.evaluation.blackbox import select_images
from medshield.progress import progress_bar


@dataclass
class DetectionConfig:
    attacks: Sequence[str] = ("hsja", "gbba", "opt")
    n_images: int = 20  # attacked test images (one attack stream each, per attack)
    budget: int = 2000  # queries per attacked image
    within: int = 1000  # report the fraction of attack streams flagged within this many queries
    k: int = 10  # detector: neighbours averaged
    feature_size: int = 16  # detector: images average-pooled to feature_size^2
    history: int = 5000  # detector: queries remembered per client
    flag_after: int = 1  # detector: suspicious queries before a client is flagged
    fpr: float = 0.001  # per-query false-positive rate the threshold is calibrated to (train images)
    calibration_images: int = 5000  # train images used for calibration (seeded subset)
    n_streams: int = 200  # benign streams per kind
    stream_sizes: tuple[int, int] = (100, 500)  # benign stream length range (inclusive)
    noise_sigma: float = 0.015  # Gaussian noise of the "noisy" benign streams (pixel scale [0, 1])
    max_shift: int = 2  # pixels of random translation of the "shifted" benign streams
    seed: int = 0


def build_detector(train_images: torch.Tensor, cfg: DetectionConfig) -> StreamDetector:
    """A :class:`StreamDetector` with the threshold calibrated at ``cfg.fpr`` on (a seeded subset of) train images."""
    n = min(cfg.calibration_images, train_images.shape[0])
    pick = torch.randperm(train_images.shape[0], generator=torch.Generator().manual_seed(cfg.seed))[:n]
    det = StreamDetector(k=cfg.k, feature_size=cfg.feature_size, history=cfg.history, flag_after=cfg.flag_after)
    return det.calibrate(train_images[pick], fpr=cfg.fpr)


def flag_stats(flagged_at: list[int | None], within: int) -> dict[str, Any]:
    """Flagged fraction, fraction flagged within ``within`` queries, median/max query count at flagging."""
    hits = [f for f in flagged_at if f is not None]
    n = len(flagged_at)
    return {"n_streams": n, "flagged": len(hits), "flagged_fraction": len(hits) / n if n else 0.0,
            f"flagged_within_{within}": sum(f <= within for f in hits) / n if n else 0.0,
            "flagged_at_median": float(np.median(hits)) if hits else None,
            "flagged_at_max": int(max(hits)) if hits else None,
            "flagged_at_min": int(min(hits)) if hits else None}


def attack_stream_record(detector: StreamDetector, model: nn.Module, attack_name: str, x: torch.Tensor,
                         y: torch.Tensor, cfg: DetectionConfig) -> dict[str, Any]:
    """Run one attack on ``x`` with every query batch fed to ``detector`` (client = attack/image)."""
    detector.reset()
    flagged: dict[int, int | None] = {i: None for i in range(x.shape[0])}
    suspicious: dict[int, float] = {}

    def hook(idx: torch.Tensor, queries: torch.Tensor) -> None:
        for i in idx.unique().tolist():
            verdict = detector.observe(f"{attack_name}/{i}", queries[idx == i])
            flagged[i] = verdict.flagged_at
            suspicious[i] = verdict.suspicious / verdict.queries_seen

    attack = DECISION_ATTACKS.create(attack_name)
    start = time.perf_counter()
    with progress_bar(f"detect {attack_name}", total=x.shape[0] * cfg.budget) as advance:
        seen = [0]

        def report(o: LabelOracle) -> None:
            used = int(o.queries.sum())
            advance(used - seen[0], info=f"flagged {sum(f is not None for f in flagged.values())}/{o.n}")
            seen[0] = used

        oracle = attack(model_label_fn(model, layout="contiguous"), x, y, [cfg.budget], generator=torch.Generator().manual_seed(cfg.seed),
                        hooks=[hook], progress=report).oracle
    _, dist = oracle.best(cfg.budget)
    return {"kind": f"attack:{attack_name}", "stream": attack_name, **flag_stats(list(flagged.values()), cfg.within),
            "queries_mean": float(oracle.queries.float().mean()), "median_l2": float(dist.median()),
            "suspicious_fraction": float(np.mean(list(suspicious.values()))) if suspicious else 0.0,
            "flagged_at": list(flagged.values()), "seconds": time.perf_counter() - start}


def shift_images(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift] (edge pixels repeated)."""
    if max_shift <= 0:
        return x.clone()
    h, w = x.shape[-2:]
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    d = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(d)])


def benign_streams(images: torch.Tensor, kind: str, cfg: DetectionConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """``cfg.n_streams`` client streams: random subsets of ``images`` (distinct images within a stream,
    length uniform in ``cfg.stream_sizes``), as they are (``clean``), with Gaussian noise (``noisy``)
    or randomly shifted (``shifted``)."""
    lo, hi = cfg.stream_sizes
    hi = min(hi, images.shape[0])
    out = []
    for _ in range(cfg.n_streams):
        size = int(torch.randint(min(lo, hi), hi + 1, (1,), generator=generator))
        s = images[torch.randperm(images.shape[0], generator=generator)[:size]]
        if kind == "noisy":
            s = (s + cfg.noise_sigma * torch.randn(s.shape, generator=generator)).clamp(0, 1)
        elif kind == "shifted":
            s = shift_images(s, cfg.max_shift, generator)
        elif kind != "clean":
            raise ValueError(f"unknown benign stream kind {kind!r} (clean, noisy, shifted)")
        out.append(s)
    return out


def benign_record(detector: StreamDetector, images: torch.Tensor, kind: str, cfg: DetectionConfig) -> dict[str, Any]:
    """False positives: the fraction of benign client streams of ``kind`` that get flagged."""
    detector.reset()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    streams = benign_streams(images, kind, cfg, generator)
    verdicts = [detector.observe(f"{kind}/{i}", s) for i, s in enumerate(streams)]
    flagged_at = [v.flagged_at for v in verdicts]
    return {"kind": f"benign:{kind}", "stream": kind, **flag_stats(flagged_at, cfg.within),
            "stream_length_mean": float(np.mean([s.shape[0] for s in streams])),
            "suspicious_fraction": float(np.mean([v.suspicious / v.queries_seen for v in verdicts])),
            "queries_total": int(sum(s.shape[0] for s in streams))}


def run_detection(model: nn.Module, ds: Dataset, cfg: DetectionConfig, split: str = "test") -> dict[str, Any]:
    """Attack-stream detection and benign false positives for one model and dataset (records + config)."""
    for name in cfg.attacks:
        DECISION_ATTACKS.get(name)
    if cfg.within > cfg.budget:
        raise MedShieldError(f"--within ({cfg.within}) must not exceed --budget ({cfg.budget})")
    detector = build_detector(ds.split("train").images(), cfg)
    part = ds.split(split)
    indices = select_images(model_label_fn(model, layout="contiguous"), part, cfg.n_images, cfg.seed)
    x, y = part.images(indices.tolist()), part.labels[indices]
    records = [attack_stream_record(detector, model, a, x, y, cfg) for a in cfg.attacks]
    records += [benign_record(detector, part.images(), kind, cfg) for kind in ("clean", "noisy", "shifted")]
    return {"records": records, "threshold": detector.threshold, "config": asdict(cfg),
            "image_indices": indices.tolist(), "split": split}


def detection_markdown(summary: dict[str, Any]) -> str:
    """One table: each stream kind, how many streams, flagged fraction and when they were flagged."""
    within = summary["config"]["within"]
    cfg = summary["config"]
    lines = [f"# Stream detection (k={cfg['k']}, feature_size={cfg['feature_size']}, flag_after={cfg['flag_after']}, "
             f"threshold={summary['threshold']:.4g} calibrated at per-query FPR {cfg['fpr']} on train images)", "",
             f"| stream | n streams | flagged | flagged within {within} | flagged at (median) | (min) | (max) | "
             "suspicious queries |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:g}"

    for r in summary["records"]:
        lines.append(f"| {r['kind']} | {r['n_streams']} | {r['flagged_fraction']:.1%} | {r[f'flagged_within_{within}']:.1%} | "
                     f"{fmt(r['flagged_at_median'])} | {fmt(r['flagged_at_min'])} | {fmt(r['flagged_at_max'])} | "
                     f"{r['suspicious_fraction']:.1%} |")
    return "\n".join(lines) + "\n"
