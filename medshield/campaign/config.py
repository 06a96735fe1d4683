"""The audit campaign's configuration: a YAML file validated by pydantic, every field with a default.

``medshield audit --print-config`` writes the defaults as YAML to start from. Unknown keys are errors
(a typo must not silently drop a part of the audit). This is the YAML edge: eps become floats
(written back as ``2/255``), budgets ints and defenses :class:`DefenseSpec` values here, once, with
the same parsers the CLI uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError,
                      field_validator, model_validator)

from medshield.defenses.inference import DefenseSpec
from medshield.errors import MedShieldError
from medshield.evaluation.blackbox import BlackboxConfig
from medshield.evaluation.calibration import CalibrationConfig, Tolerance
from medshield.evaluation.defense import EVAL_ATTACKS
from medshield.types import EPS, EPS_GRID, Norm, eps_label, parse_budgets, parse_eps_value, split_list


def eps_text(eps: float) -> str:
    """How an eps is written back (YAML dumps, ``audit.json``'s config): ``2/255`` or the exact decimal."""
    label = eps_label(eps)
    return label if label.endswith("/255") else repr(float(eps))


Eps = Annotated[float, BeforeValidator(lambda v: parse_eps_value(v, Norm.L2)), PlainSerializer(eps_text, return_type=str)]
"""An eps written as ``2/255`` or ``0.0078`` (> 0; L-inf sections check <= 1); a float inside, its label in dumps."""
LinfEps = Annotated[float, BeforeValidator(parse_eps_value), PlainSerializer(eps_text, return_type=str)]
"""An L-inf eps in (0, 1]."""
NormField = Annotated[Norm, BeforeValidator(Norm.parse), PlainSerializer(str, return_type=str)]
Defense = Annotated[DefenseSpec, PlainValidator(DefenseSpec.parse), PlainSerializer(str, return_type=str)]
"""An inference-defense spec such as ``rnd:nu=0.04``; a :class:`DefenseSpec` inside, its text in dumps."""
Budgets = Annotated[list[int], BeforeValidator(lambda v: list(parse_budgets(v)))]
"""Query budgets: positive ints, sorted and distinct."""
Names = Annotated[list[str], BeforeValidator(split_list)]
"""Names as a YAML list or a comma-separated string."""
NameList = Annotated[list[str], BeforeValidator(split_list), PlainSerializer(",".join, return_type=str)]
"""Names written (and dumped) as one comma-separated string."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


class CleanSpec(Section):
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the 95% CIs")


class WhiteboxSpec(Section):
    attacks: Names = ["fgsm", "bim", "pgd", "mifgsm", "cw", "fmn", "autoattack"]
    attack_options: dict[str, dict[str, Any]] = Field(
        {"autoattack": {"square_queries": 1000}},
        description="constructor options per attack (e.g. autoattack: steps, targets, square_queries)")
    eot_samples: int = Field(16, ge=1, description="draws averaged per gradient (EOT) when the model is randomised")
    eps: list[Eps] = list(EPS_GRID)
    norm: NormField = Norm.LINF
    n_images: int | None = Field(500, ge=1, description="test images (seeded choice); null = the whole split")
    batch_size: int = Field(128, ge=1)
    grid_images: int = Field(2, ge=1, description="images per class in the comparison grid")

    @model_validator(mode="after")
    def _linf_range(self) -> WhiteboxSpec:
        if self.norm is Norm.LINF:
            for e in self.eps:
                parse_eps_value(e)  # (0, 1] for L-inf
        return self


class TransferSpec(Section):
    attack: str = "mifgsm"
    eps: LinfEps = EPS
    n_images: int | None = Field(500, ge=1)
    models: list[str] = Field([], description="extra run folders used only as transfer targets/sources")


class BlackboxSpec(Section):
    attacks: Names = list(BlackboxConfig.attacks)
    budgets: Budgets = [1000, 5000, 10_000]
    defenses: list[Defense] = [DefenseSpec("none"), DefenseSpec("rnd"), DefenseSpec("dnd")]
    n_images: int = Field(10, ge=1)
    shard_size: int = Field(5, ge=1, description="images per job (the unit of resumption and parallelism)")
    per_image: bool = Field(False, description="attack and seed every image on its own: records independent of "
                                               "shard_size (shard_size 1 = one job per image, N workers in "
                                               "parallel), without cross-image batching")
    norm: NormField = Norm.L2
    adaptive_k: int = Field(5, ge=1, description="against a randomised defense (detected: the same input twice "
                                                 "gives different outputs) every query is repeated k times and "
                                                 "the majority label taken; budgets count all k; 1 = naive attacker")
    defended_attacks: list[str] | None = Field(None, description="attacks run against the defenses other than "
                                                                 "'none'; null = all of `attacks`")
    runs: list[str] | None = Field(None, description="run folder names this section covers; null = every model")


class DetectionSpec(Section):
    attacks: Names = list(BlackboxConfig.attacks)
    budget: int = Field(1000, ge=1, description="queries per attacked image")
    n_images: int = Field(5, ge=1)
    runs: list[str] | None = Field(None, description="run folder names this section covers; null = every model")


class TrainingDefenseSpec(Section):
    enabled: bool = False
    defenses: Names = ["at", "ant"]
    train_attack: str = "mifgsm"
    train_attacks: dict[str, str] = Field({}, description="per-defense train attack overriding train_attack, "
                                                           "e.g. {ant: fgsm_iter}")
    source: str = Field("online", pattern="^(online|fixed)$",
                        description="adversarials from the model being trained (online) or once from the "
                                    "pre-trained model (fixed, as the thesis)")
    train_eps: LinfEps = EPS
    train_steps: int = 5
    epochs: int = Field(3, ge=1)
    eval_attacks: NameList = list(EVAL_ATTACKS)
    eval_n: int | None = 500
    noise_sigma: float | None = Field(0.05, ge=0, description="noise std of ant/noise training; null = calibrated to "
                                                             "the calibration tolerance (short fine-tunes per candidate)")
    runs: list[str] | None = Field(None, description="run folder names this section covers; null = every model")


class MultilabelSpec(Section):
    """Multi-label targets (``output.task: multilabel``): per-finding clean metrics, white-box hide/add-one-
    finding attacks at ``whitebox.eps`` on ``whitebox.n_images``, and a label-only attack on one finding's
    decision at ``blackbox.budgets`` on ``blackbox.n_images`` (when those sections are enabled)."""

    findings: list[str] | None = Field(None, description="findings attacked white-box; null = the card's "
                                                          "positive (disease) findings, else all")
    modes: list[str] = Field(["hide", "add"], description="hide: the finding reads absent; add: present")
    steps: int = Field(20, ge=1, description="PGD steps of the white-box finding attack")
    label_only_findings: list[str] | None = Field(None, description="findings attacked label-only; null = the "
                                                                    "first finding attacked white-box")
    label_only_modes: list[str] = ["hide"]
    label_only_attack: str = "hsja"

    @field_validator("modes", "label_only_modes")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if m not in ("hide", "add")]
        if bad or not value:
            raise ValueError(f"modes must be hide and/or add, got {value}")
        return value
class CalibrationSpec(Section):
    """Noise defenses given without parameters (``rnd``, ``dnd``; ``noise``/``ant`` training sigma) are
    calibrated: the largest noise whose validation cost stays within these drops. ``enabled: false``
    gives them the registry's fixed defaults instead."""

    max_clean_drop: float = Field(0.01, ge=0, lt=1, description="tolerated drop in clean accuracy on the "
                                                                "validation split (0.01 = 1 point)")
    max_sensitivity_drop: float | None = Field(None, ge=0, lt=1, description="tolerated drop in sensitivity; "
                                                                             "null = max_clean_drop")
    repeats: int = Field(5, ge=1, description="noisy passes over the validation split per setting")
    refine_steps: int = Field(6, ge=0, description="bisection steps after bracketing the crossing")
    sigma_epochs: int = Field(1, ge=1, description="fine-tuning epochs per candidate sigma (training defenses)")

    def settings(self, seed: int) -> CalibrationConfig | None:
        """The typed calibration settings (None when disabled)."""
        if not self.enabled:
            return None
        return CalibrationConfig(tolerance=Tolerance.of(self.max_clean_drop, self.max_sensitivity_drop),
                                 repeats=self.repeats, refine_steps=self.refine_steps, seed=seed)


class CampaignConfig(BaseModel):
    """Everything an audit runs; defaults suit a 28x28 model on a 2-core CPU (minutes, not hours)."""

    model_config = ConfigDict(extra="forbid")
    title: str = "MedShield security audit"
    seed: int = 0
    split: str = "test"
    clean: CleanSpec = CleanSpec()
    whitebox: WhiteboxSpec = WhiteboxSpec()
    transfer: TransferSpec = TransferSpec()
    blackbox: BlackboxSpec = BlackboxSpec()
    detection: DetectionSpec = DetectionSpec()
    defenses: TrainingDefenseSpec = TrainingDefenseSpec()
    multilabel: MultilabelSpec = MultilabelSpec()
    calibration: CalibrationSpec = CalibrationSpec()
    executor: str = Field("local", pattern="^(local|ray)$")
    workers: int = Field(1, ge=1)
    address: str | None = None
    gpus_per_job: float = Field(0, ge=0, description="GPUs Ray reserves for each job (num_gpus; 0 = CPU jobs, "
                                                     "0.5 = two jobs share a GPU); ignored by the local executor")
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$",
                        description="where jobs run their models: cpu, cuda, cuda:N or auto (CUDA when available)")
    threads_per_job: int = Field(1, ge=1, description="torch threads in every job, whatever the executor "
                                                      "(fixed so results are bit-identical across executors)")


def load_config(path: str | Path | None = None, **overrides: Any) -> CampaignConfig:
    """The defaults, updated from a YAML file and then from ``overrides`` (None values ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MedShieldError(f"campaign config {p} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise MedShieldError(f"{p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise MedShieldError(f"{p} must hold a mapping of campaign settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MedShieldError(f"bad campaign config: {problems}") from exc


def default_yaml() -> str:
    """The default configuration as commented-free YAML (a starting point for users)."""
    return yaml.safe_dump(CampaignConfig().model_dump(), sort_keys=False)
