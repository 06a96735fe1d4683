"""Defenses calibrated to a clinical tolerance: the largest noise whose clean cost on the validation
split stays within what a hospital accepts (default: 1 point of accuracy and 1 point of sensitivity).

A noise defense's strength is a dial (RND's ``nu``, DND's ``m`` and ``n``, the sigma of noise
training); fixed constants cost one model 0.5 points and another 5. Calibration searches the dial:

- **cost** of a setting = the paired drop of the defended model against the undefended one on the
  same images: per image, undefended correctness minus the defended correctness averaged over
  ``repeats`` noisy passes; the accuracy drop is its mean over all images, the sensitivity drop its
  mean over the disease class (macro over classes when there are more than two). The standard error
  is the paired one, ``std(d) / sqrt(N)`` (image sampling and residual noise together).
- **common random numbers**: every setting is measured with the same seed, so the same Gaussian
  draws are scaled by each noise level; the cost curve is then smooth and (in practice) monotone,
  and bisection on it is stable. The final setting is re-measured on the test split with another
  seed (what a deployment would see), never used for choosing.
- **search**: from a start value, double until the cost exceeds the tolerance (or halve until it
  fits), then ``refine_steps`` geometric bisections between the last setting within tolerance and
  the first one above it. Values are rounded to 4 significant digits, so a chosen spec printed as
  ``rnd:nu=0.03711`` is exactly the setting measured. The chosen value is the largest measured one
  below the first crossing (conservative where the curve is not monotone).

DND has two dials: without parameters its ``m`` is searched with ``n`` tied to it at the thesis's
ratio (n = 50 m: m = 0.01, n = 0.5); with one of them given, the other is searched.

>>> cal = calibrate_inference(model, val_x, val_y, 1, "rnd", {}, CalibrationConfig())
>>> cal.params        # {"nu": 0.03711}
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medshield.data import Dataset
from medshield.defenses.inference import INFERENCE_DEFENSES, DefenseSpec
from medshield.errors import MedShieldError
from medshield.models.bounded import predict, predict_labels
from medshield.models.train import BatchHook, TrainConfig, train_model


@dataclass(frozen=True)
class Tolerance:
    """The clean cost a user accepts: drops in accuracy and in sensitivity (fractions: 0.01 = 1 point)."""

    accuracy: float = 0.01
    sensitivity: float = 0.01

    def __post_init__(self) -> None:
        for name in ("accuracy", "sensitivity"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise MedShieldError(f"the tolerated {name} drop must be a fraction in [0, 1) (0.01 = 1 point), got {value}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def of(cls, max_clean_drop: float = 0.01, max_sensitivity_drop: float | None = None) -> Tolerance:
        """``--max-clean-drop`` (accuracy; also sensitivity unless ``max_sensitivity_drop`` is given)."""
        return cls(max_clean_drop, max_clean_drop if max_sensitivity_drop is None else max_sensitivity_drop)


@dataclass(frozen=True)
class CalibrationConfig:
    """How a calibration measures and searches: tolerance, noisy passes per setting, bisection steps, seed."""

    tolerance: Tolerance = Tolerance()
    repeats: int = 5
    refine_steps: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.refine_steps < 0:
            raise MedShieldError(f"calibration needs repeats >= 1 and refine_steps >= 0, got {self.repeats}, {self.refine_steps}")

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance.to_dict(), "repeats": self.repeats, "refine_steps": self.refine_steps,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationConfig:
        return cls(tolerance=Tolerance(**d["tolerance"]), repeats=d["repeats"], refine_steps=d["refine_steps"], seed=d["seed"])


@dataclass(frozen=True)
class Cost:
    """Paired clean cost of a defended model (drops are undefended minus defended; negative = better)."""

    accuracy: float
    sensitivity: float
    accuracy_drop: float
    accuracy_drop_se: float
    sensitivity_drop: float
    sensitivity_drop_se: float
    n: int

    def within(self, tol: Tolerance) -> bool:
        return self.accuracy_drop <= tol.accuracy + 1e-12 and self.sensitivity_drop <= tol.sensitivity + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Axis:
    """The searched parameter of a defense; ``tied`` parameters follow it (``ratio * value``),
    ``fixed`` ones keep the value the user gave."""

    name: str
    start: float
    upper: float
    tied: dict[str, float] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=dict)

    def params(self, value: float) -> dict[str, float]:
        return {self.name: value, **{k: _round(r * value) for k, r in self.tied.items()}, **self.fixed}


CALIBRATED = {"rnd": ("nu",), "dnd": ("m", "n")}
"""Inference defenses that can be calibrated and their noise parameters."""


def search_axis(defense: str, given: dict[str, float]) -> Axis:
    """What to search for ``defense`` when the user gave ``given`` (a subset of its parameters)."""
    if defense == "rnd":
        return Axis("nu", 0.005, 1.0)
    if defense == "dnd":
        if "n" in given:
            return Axis("m", 0.0025, 1.0, fixed={"n": given["n"]})
        if "m" in given:
            return Axis("n", 0.125, 64.0, fixed={"m": given["m"]})
        return Axis("m", 0.0025, 1.0, tied={"n": 50.0})
    raise MedShieldError(f"defense {defense!r} cannot be calibrated (calibrated defenses: {', '.join(CALIBRATED)}); "
                         f"give its parameters explicitly")


def needs_calibration(defense: str, given: dict[str, float]) -> bool:
    """A calibrated defense whose noise parameters are not all given explicitly."""
    return defense in CALIBRATED and not set(CALIBRATED[defense]) <= set(given)


def _round(v: float) -> float:
    return float(f"{v:.4g}")


class CostMeter:
    """Paired clean cost of noisy versions of ``model`` on fixed images ``x`` with labels ``y``; every
    setting is measured with the same noise seed (common random numbers)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, positive_class: int | None,
                 repeats: int = 5, seed: int = 0, batch_size: int = 256) -> None:
        self.model, self.x, self.y = model, x, y.long()
        self.repeats, self.seed, self.batch_size = repeats, seed, batch_size
        self.base = (predict_labels(predict(model, x, batch_size)) == self.y).double()
        classes = int(self.y.max()) + 1 if self.y.numel() else 2
        k = max(getattr(model, "num_classes", 2) or 2, classes, 2)
        sens_classes = [1 if positive_class is None else positive_class] if k == 2 else list(range(k))
        self.groups = [torch.nonzero(self.y == c).squeeze(1) for c in sens_classes]
        self.groups = [g for g in self.groups if g.numel()]

    def cost(self, defense: str, params: dict[str, float]) -> Cost:
        """The cost of ``defense`` with ``params`` around the model (``repeats`` noisy passes, one seed)."""
        wrapped = INFERENCE_DEFENSES.create(defense, model=self.model, seed=self.seed, **params)
        return self.cost_of(wrapped, self.repeats)

    def cost_of(self, other: nn.Module, repeats: int = 1) -> Cost:
        """The cost of answering with ``other`` (a defended or retrained model) instead of the model."""
        correct = torch.zeros_like(self.base)
        for _ in range(repeats):
            correct += (predict_labels(predict(other, self.x, self.batch_size)) == self.y).double()
        correct /= repeats
        d = self.base - correct
        sens_drop = [float(d[g].mean()) for g in self.groups]
        sens_var = [_sem(d[g]) ** 2 for g in self.groups]
        n_groups = max(len(self.groups), 1)
        sens = [float(correct[g].mean()) for g in self.groups]
        return Cost(accuracy=float(correct.mean()), sensitivity=sum(sens) / n_groups,
                    accuracy_drop=float(d.mean()), accuracy_drop_se=_sem(d),
                    sensitivity_drop=sum(sens_drop) / n_groups, sensitivity_drop_se=math.sqrt(sum(sens_var)) / n_groups,
                    n=int(d.numel()))


def _sem(d: torch.Tensor) -> float:
    return float(d.std(unbiased=True) / math.sqrt(d.numel())) if d.numel() > 1 else 0.0


@dataclass(frozen=True)
class SearchResult:
    """The chosen value (0 when even the smallest tried setting exceeds the tolerance), the first
    measured value above it that exceeds the tolerance (None when the upper limit was reached), and
    every measured ``value -> cost``."""

    value: float
    next_value: float | None
    curve: dict[float, Cost]
    feasible: bool


def bracket_search(cost_of: Callable[[float], Cost], tol: Tolerance, start: float, upper: float,
                   refine_steps: int = 6, max_halvings: int = 6) -> SearchResult:
    """Largest value in (0, ``upper``] whose cost is within ``tol``: doubling (or halving) from ``start``
    to bracket the first crossing, then geometric bisection; every value rounded to 4 significant digits."""
    curve: dict[float, Cost] = {}

    def ok(v: float) -> bool:
        if v not in curve:
            curve[v] = cost_of(v)
        return curve[v].within(tol)

    lo, hi, v = 0.0, None, _round(start)
    if ok(v):
        lo = v
        while hi is None and _round(2 * v) <= upper:
            v = _round(2 * v)
            if ok(v):
                lo = v
            else:
                hi = v
    else:
        hi = v
        for _ in range(max_halvings):
            v = _round(v / 2)
            if ok(v):
                lo = v
                break
            hi = v
    if hi is None or lo == 0:
        return SearchResult(lo, hi, dict(sorted(curve.items())), lo > 0)
    for _ in range(refine_steps):
        mid = _round(math.sqrt(lo * hi))
        if mid in (lo, hi):
            break
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return SearchResult(lo, hi, dict(sorted(curve.items())), True)


def calibrate_inference(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, positive_class: int | None,
                        defense: str, given: dict[str, float], cfg: CalibrationConfig,
                        test: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """Calibrate an inference defense (``rnd``/``dnd``) on validation images; ``given`` are the
    parameters the user fixed. Returns the calibration record: chosen ``params``, ``tolerance``,
    ``validation`` and (with ``test`` images) ``test`` costs, and the searched ``curve``."""
    axis = search_axis(defense, given)
    meter = CostMeter(model, x_val, y_val, positive_class, cfg.repeats, cfg.seed)
    found = bracket_search(lambda v: meter.cost(defense, axis.params(v)), cfg.tolerance, axis.start, axis.upper,
                           cfg.refine_steps)
    params = axis.params(found.value)
    val_cost = found.curve[found.value] if found.value in found.curve else meter.cost(defense, params)
    record = {
        "defense": defense, "params": params, "searched": axis.name, "tied": axis.tied, "fixed": axis.fixed,
        "given": dict(given), "value": found.value, "next_value": found.next_value, "feasible": found.feasible,
        "tolerance": cfg.tolerance.to_dict(), **cfg.to_dict(),
        "validation": {"split": "val", **val_cost.to_dict()},
        "curve": [{"value": v, "params": axis.params(v), **c.to_dict(), "within": c.within(cfg.tolerance)}
                  for v, c in found.curve.items()],
    }
    if test is not None:
        test_meter = CostMeter(model, test[0], test[1], positive_class, cfg.repeats, cfg.seed + 1)
        record["test"] = {"split": "test", **test_meter.cost(defense, params).to_dict()}
    return record


def calibrate_training_sigma(base: nn.Module, ds: Dataset, make_hook: Callable[[float], BatchHook],
                             train_config: TrainConfig, cfg: CalibrationConfig, start: float = 0.025,
                             upper: float = 0.4, refine_steps: int = 2) -> dict[str, Any]:
    """The largest sigma of a noise-training hook (``noise``, ``ant``) whose cost on the validation split
    stays within the tolerance. Every candidate fine-tunes a copy of ``base`` for ``train_config.epochs``
    epochs with the same seed (same batches and augmentation; only sigma differs) in a temporary
    folder, and its cost is paired against the same fine-tuning at sigma = 0 (for ``noise`` a plain
    fine-tune, for ``ant`` ANT without noise): the clean accuracy and sensitivity the *noise* costs.
    :func:`bracket_search` with few refinements, as each step is a training."""
    val, test = ds.split("val"), ds.split("test")

    def fine_tune(sigma: float) -> nn.Module:
        net = copy.deepcopy(base)
        with tempfile.TemporaryDirectory(prefix="medshield-sigma-") as tmp:
            train_model(net, ds, Path(tmp), train_config, hook=make_hook(sigma))
        return net.eval()

    reference = fine_tune(0.0)
    meter = CostMeter(reference, val.images(), val.labels, ds.positive_class)
    trained: dict[float, nn.Module] = {}

    def cost_of(sigma: float) -> Cost:
        trained[sigma] = fine_tune(sigma)
        return meter.cost_of(trained[sigma])

    found = bracket_search(cost_of, cfg.tolerance, start, upper, refine_steps, max_halvings=2)
    record = {"defense": "training-noise", "params": {"sigma": found.value}, "searched": "sigma", "tied": {},
              "fixed": {}, "given": {}, "value": found.value, "next_value": found.next_value, "feasible": found.feasible,
              "tolerance": cfg.tolerance.to_dict(), **cfg.to_dict(), "repeats": 1, "refine_steps": refine_steps,
              "fine_tune_epochs": train_config.epochs, "reference": "the same fine-tuning at sigma = 0",
              "curve": [{"value": v, "params": {"sigma": v}, **c.to_dict(), "within": c.within(cfg.tolerance)}
                        for v, c in found.curve.items()]}
    chosen = trained.get(found.value, reference)
    record["validation"] = {"split": "val", **meter.cost_of(chosen).to_dict()}
    record["test"] = {"split": "test", **CostMeter(reference, test.images(), test.labels, ds.positive_class).cost_of(chosen).to_dict()}
    return record


def calibrate_dataset(model: nn.Module, ds: Dataset, defense: DefenseSpec, cfg: CalibrationConfig,
                      run: str | None = None) -> dict[str, Any]:
    """:func:`calibrate_inference` on ``ds``'s validation split, its cost measured on the test split;
    the record names the ``run``, the requested ``spec`` and the resolved ``spec_label``."""
    val, test = ds.split("val"), ds.split("test")
    rec = calibrate_inference(model, val.images(), val.labels, ds.positive_class, defense.name, defense.explicit, cfg,
                              test=(test.images(), test.labels))
    resolved = DefenseSpec.of(defense.name, **rec["params"])
    return {"run": run, "spec": str(defense), "resolved": str(resolved), "spec_label": resolved.label(), **rec}


def resolve_defense(model: nn.Module, ds: Dataset, defense: DefenseSpec, cfg: CalibrationConfig | None,
                    run: str | None = None) -> tuple[DefenseSpec, dict[str, Any] | None]:
    """The spec to evaluate and its calibration record: a calibrated defense whose noise parameters
    are not all given is calibrated (``cfg`` None turns calibration off: registry defaults); explicit
    parameters are used as they are (no record)."""
    if cfg is None or not needs_calibration(defense.name, defense.explicit):
        return defense, None
    rec = calibrate_dataset(model, ds, defense, cfg, run)
    return DefenseSpec.of(defense.name, **rec["params"]), rec


def calibration_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The compact fields a defended result carries: chosen params, tolerance, validation and test costs."""
    keep = ("accuracy_drop", "accuracy_drop_se", "sensitivity_drop", "sensitivity_drop_se", "n")
    out = {"params": record["params"], "searched": record["searched"], "tolerance": record["tolerance"],
           "feasible": record["feasible"], "validation": {k: record["validation"][k] for k in keep}}
    if "test" in record:
        out["test"] = {k: record["test"][k] for k in keep}
    return out
