"""Hand-made audit.json records for the report, severity, compare and --fail-on tests (no model needed)."""

from __future__ import annotations

import copy
import math
from typing import Any

SHAPE = [1, 28, 28]
DIM = math.prod(SHAPE)


def wb(run: str, attack: str, eps: float, flip: float, clean: float = 0.9, n: int = 200) -> dict[str, Any]:
    correct = round(clean * n)
    flipped = round(flip * correct)
    return {"run": run, "attack": attack, "eps": eps, "eps_label": f"{eps * 255:g}/255", "norm": "linf", "n": n,
            "clean_accuracy": clean, "robust_accuracy": (correct - flipped) / n, "success_rate": flipped / correct,
            "directions": {"disease_to_normal": {"n": n // 2, "clean_correct": correct // 2, "flipped": flipped // 2,
                                                 "flip_rate": (flipped // 2) / (correct // 2)},
                           "normal_to_disease": {"n": n // 2, "clean_correct": correct - correct // 2,
                                                 "flipped": flipped - flipped // 2,
                                                 "flip_rate": (flipped - flipped // 2) / (correct - correct // 2)}}}


def bb(run: str, attack: str, defense: str, budget: int, rms: list[float | None]) -> dict[str, Any]:
    """A label-only record whose images reach the given RMS change per pixel (in /255 units)."""
    l2 = [None if r is None else r / 255 * math.sqrt(DIM) for r in rms]
    ok = [v for v in l2 if v is not None]
    name = defense.split(":")[0]
    return {"run": run, "attack": attack, "defense": name, "defense_spec": defense, "defense_params": {},
            "adaptive_k": 1, "budget": budget, "n_images": len(rms), "norm": "l2",
            "mean_l2": sum(ok) / len(ok) if ok else None, "median_l2": sorted(ok)[len(ok) // 2] if ok else None,
            "success_rate": len(ok) / len(rms), "defended_success_rate": len(ok) / len(rms),
            "l2_per_image": l2, "verified_l2_per_image": l2, "defended_clean_accuracy": 0.9 if name == "none" else 0.85,
            "flip_rate": 0.0 if name == "none" else 0.04}


def audit(run: str = "model", *, wb_flip_2: float = 0.9, wb_flip_8: float = 1.0, clean: float = 0.92,
          auc: float = 0.97, rms_1k: float = 3.0, detected: float = 1.0, transfer: float = 0.6) -> dict[str, Any]:
    """One model's audit: white-box flip fractions at 2/255 and 8/255, label-only RMS at 1K queries
    (the same for every image), detection share, transfer flip fraction from a second model."""
    res: dict[str, Any] = {
        "schema_version": "1.0",
        "config": {"title": "test", "seed": 0, "split": "test", "whitebox": {"enabled": True, "attacks": ["fgsm", "pgd"],
                                                                            "eps": ["2/255", "8/255"], "norm": "linf",
                                                                            "n_images": 200},
                   "blackbox": {"enabled": True, "budgets": [500, 1000, 4000], "defenses": ["none", "rnd:nu=0.02"]},
                   "transfer": {"enabled": True}, "detection": {"enabled": True}, "defenses": {"enabled": False}},
        "clean": [{"run": run, "model": "smallcnn", "dataset": "demo", "split": "test", "n": 600, "accuracy": clean,
                   "sensitivity": clean, "specificity": clean, "auc": auc, "classes": ["normal", "pneumonia"],
                   "positive_class": 1, "ci": {"accuracy": [clean - 0.02, min(1.0, clean + 0.02)]}}],
        "whitebox": [wb(run, "fgsm", 2 / 255, wb_flip_2 / 2), wb(run, "pgd", 2 / 255, wb_flip_2),
                     wb(run, "fgsm", 8 / 255, wb_flip_8 / 2), wb(run, "pgd", 8 / 255, wb_flip_8)],
        "transfer": [{"source": "other", "target": run, "white_box": False, "attack": "mifgsm", "eps": 2 / 255,
                      "eps_label": "2/255", "n": 200, "clean_accuracy": 0.9, "robust_accuracy": 0.9 * (1 - transfer),
                      "success_rate": transfer},
                     {"source": run, "target": run, "white_box": True, "attack": "mifgsm", "eps": 2 / 255,
                      "eps_label": "2/255", "n": 200, "clean_accuracy": 0.9, "robust_accuracy": 0.0, "success_rate": 1.0}],
        "blackbox": [], "defended_clean": [{"run": run, "defense": "none", "accuracy": 0.9},
                                           {"run": run, "defense": "rnd:nu=0.02", "accuracy": 0.85, "flip_rate": 0.04}],
        "detection": [{"run": run, "config": {"within": 1000, "n_images": 4, "budget": 1000},
                       "records": [{"kind": "attack:hsja", "stream": "hsja", "n_streams": 4, "flagged_fraction": detected,
                                    "flagged_within_1000": detected, "flagged_at_median": 40.0},
                                   {"kind": "benign:clean", "stream": "clean", "n_streams": 50, "flagged_fraction": 0.0,
                                    "flagged_within_1000": 0.0, "flagged_at_median": None}]}],
        "defenses": [], "strips": {f"{run}|hsja|none": {"index": 0, "image_shape": SHAPE, "original": [],
                                                        "adversarial": {}}},
    }
    for b, scale in ((500, 2.0), (1000, 1.0), (4000, 0.5)):
        res["blackbox"].append(bb(run, "hsja", "none", b, [rms_1k * scale] * 8))
        res["blackbox"].append(bb(run, "hsja", "rnd:nu=0.02", b, [rms_1k * scale * 4] * 8))
    return res


def hardened(run: str = "model_at") -> dict[str, Any]:
    """The same model after adversarial training: fewer flips, a little less clean accuracy."""
    res = audit(run, wb_flip_2=0.15, wb_flip_8=0.45, clean=0.9, rms_1k=12.0, transfer=0.1)
    return copy.deepcopy(res)
