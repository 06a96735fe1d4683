"""``medshield reproduce thesis``: the thesis's experiment grid (chapters 3–6) on whichever of its
datasets are present, with its published numbers beside ours.

The work is an ordinary audit campaign per dataset (:func:`medshield.campaign.audit.audit`: same jobs,
same executors, same resumable ``jobs.json``) on models trained here (``OUT/models/<dataset>_<model>``,
kept once trained). :data:`THESIS_FIGURES` holds every row of the thesis's Tables 3-3..6-3 on its three
datasets, with the published value where :data:`THESIS_NUMBERS` has it (None: not transcribed here);
:func:`ours` reads the matching figure from the campaign's records. Chapter 3: clean accuracy (Table 3-3),
white-box robust accuracy (3-4), transfer (3-5/3-6); chapter 4: AT/ANT robust accuracy (4-1 CT, 4-2 breast,
4-3 chest) and noise-only training (4-4/4-5); chapter 5: decision-based attacks' mean L2 per budget (5-2..5-4);
chapter 6: GBBA's mean L2 against RND/DND (6-1..6-3). The thesis's "FGSM" is its Algorithm 1, iterative FGSM
stopping at the first flip: ours is ``fgsm_iter``. AT/ANT attack the pre-trained model once
(``source="fixed"``), as the thesis.

Absolute L2 distances are not comparable: the thesis measures them on 224x224x3 images in its own pixel
scale, ours on the images we attack in [0, 1]; ratios (GBBA/HSJA, RND/none) cancel the pixel scale but
still depend on the input dimension, so they compare only roughly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from medshield.campaign.audit import audit
from medshield.campaign.config import CampaignConfig, load_config
from medshield.errors import MedShieldError
from medshield.evaluation.store import describe_difference
from medshield.evaluation.services import train
from medshield.models.checkpoint import read_json, resolve_device, write_json
from medshield.models.pretrained import RUN_WEIGHTS, sha256_file
from medshield.models.train import TrainConfig
from medshield.report.thesis import CHAPTERS, write_thesis_report  # noqa: F401  (CHAPTERS re-exported)
from medshield.types import eps_label

THESIS_DATASETS = {"chest": "chest X-ray (Kermany, 224x224)", "breast": "breast cancer images",
                   "ct": "COVID-CT (Yang et al. 2020, 224x224)"}
# The thesis's attack names -> ours: its "FGSM" columns come from its Algorithm 1 (iterative FGSM).
OUR_ATTACK = {"fgsm": "fgsm_iter"}


@dataclass(frozen=True)
class ThesisFigure:
    """One figure of a thesis table and what of ours it maps to.

    ``role`` names our model: ``resnet`` / ``densenet`` (the plan's stand-in for that architecture),
    ``hardened`` (the model the plan fine-tunes with AT/ANT/noise) or ``blackbox`` (the model attacked
    label-only); ``target`` the model a transfer attack from ``role`` is evaluated on. ``model`` is the
    thesis's architecture as published. ``value`` is the published figure, or None where the thesis
    reports one but it is not transcribed here (only the figures in :data:`THESIS_NUMBERS` are).
    """

    chapter: int
    table: str | None
    dataset: str  # thesis dataset role: "chest" | "breast" | "ct"
    model: str | None
    quantity: str  # clean_accuracy | robust_accuracy | transfer_accuracy | mean_l2
    value: float | None
    unit: str  # "%" or "L2"
    role: str
    attack: str | None = None
    defense: str | None = None
    budget: int | None = None
    target: str | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """What the figure is, without its value (a published figure replaces the slot with its key)."""
        return (self.table, self.dataset, self.quantity, self.role, self.attack, self.defense, self.budget, self.target)

    @property
    def maps_to(self) -> str:
        what = {"clean_accuracy": "clean test accuracy", "robust_accuracy": "white-box robust accuracy",
                "transfer_accuracy": "robust accuracy under a transfer attack",
                "mean_l2": "mean L2 of the verified label-only adversarials"}[self.quantity]
        parts = [what, f"of our {self.target} model on adversarials made on our {self.role} model"
                 if self.target else f"of our {self.role} model"]
        if self.attack:
            parts.append(f"under {OUR_ATTACK.get(self.attack, self.attack)}")
        if self.defense:
            parts.append(f"with defense {self.defense}")
        if self.budget:
            parts.append(f"at {self.budget:,} queries")
        return " ".join(parts)


def _acc(ch: int, table: str, ds: str, model: str, value: float, role: str,
         attack: str | None = None, defense: str | None = None) -> ThesisFigure:
    quantity = "clean_accuracy" if attack is None else "robust_accuracy"
    return ThesisFigure(ch, table, ds, model, quantity, value, "%", role, attack, defense)


def _l2(ch: int, table: str, attack: str, defense: str, budget: int, value: float) -> ThesisFigure:
    return ThesisFigure(ch, table, "chest", "DenseNet-121", "mean_l2", value, "L2", "blackbox", attack, defense, budget)


THESIS_NUMBERS: tuple[ThesisFigure, ...] = (
    _acc(3, "3-3", "chest", "ResNet-50", 95.86, "resnet"),
    _acc(3, "3-3", "chest", "DenseNet-121", 96.03, "densenet"),
    _acc(3, "3-3", "breast", "ResNet-50", 95.51, "resnet"),
    _acc(3, "3-3", "ct", "ResNet-50", 76.27, "resnet"),
    _acc(3, "3-3", "ct", "DenseNet-121", 84.00, "densenet"),
    _acc(3, "3-4", "chest", "DenseNet-121", 0.0, "densenet", attack="mifgsm"),
    _acc(3, "3-4", "breast", "ResNet-50", 7.69, "resnet", attack="fgsm"),
    *(_acc(4, "4-3", "chest", "DenseNet-121", v, "hardened", attack=a, defense=d)
      for d, a, v in (("none", "fgsm", 83.28), ("none", "mifgsm", 0.0), ("at", "fgsm", 91.21),
                      ("at", "mifgsm", 75.69), ("ant", "fgsm", 92.24), ("ant", "mifgsm", 85.34))),
    _l2(5, "5-4", "opt", "none", 10_000, 32.53),
    _l2(5, "5-4", "hsja", "none", 10_000, 7.47),
    _l2(5, "5-4", "gbba", "none", 10_000, 4.74),
    _l2(6, "6-3", "gbba", "none", 20_000, 2.23),
    _l2(6, "6-3", "gbba", "rnd", 20_000, 29.27),
    _l2(6, "6-3", "gbba", "dnd", 20_000, 38.98),
)

BUDGETS = [1000, 5000, 10_000, 15_000, 20_000]  # the thesis's query budgets
ARCHITECTURES = {"resnet": "ResNet-50", "densenet": "DenseNet-121"}
# Each chapter-4..6 table covers one dataset: AT/ANT (4-1..4-3), label-only attacks (5-2..5-4), RND/DND (6-1..6-3).
CH4_TABLE = {"ct": "4-1", "breast": "4-2", "chest": "4-3"}
CH5_TABLE = {"ct": "5-2", "breast": "5-3", "chest": "5-4"}
CH6_TABLE = {"ct": "6-1", "breast": "6-2", "chest": "6-3"}
# Transfer (Tables 3-5/3-6) and noise-only training (Tables 4-4/4-5): which of each pair holds which of our rows is
# not transcribed here, so the rows carry both numbers.
TRANSFER_TABLE, TRANSFER_SETS = "3-5/3-6", ("chest", "ct")
NOISE_TABLE, NOISE_SETS = "4-4/4-5", ("chest", "breast")


def _slots(ds: str) -> list[ThesisFigure]:
    """Every figure the thesis's Tables 3-3..6-3 hold for dataset ``ds``, without published values."""
    acc, l2, dn = "%", "L2", "DenseNet-121"
    out = [ThesisFigure(3, "3-3", ds, m, "clean_accuracy", None, acc, r) for r, m in ARCHITECTURES.items()]
    out += [ThesisFigure(3, "3-4", ds, m, "robust_accuracy", None, acc, r, a)
            for r, m in ARCHITECTURES.items() for a in ("fgsm", "mifgsm")]
    if ds in TRANSFER_SETS:
        out += [ThesisFigure(3, TRANSFER_TABLE, ds, f"{ARCHITECTURES[s]} -> {ARCHITECTURES[t]}", "transfer_accuracy",
                             None, acc, s, "mifgsm", target=t) for s, t in (("resnet", "densenet"), ("densenet", "resnet"))]
    out += [ThesisFigure(4, CH4_TABLE[ds], ds, dn, "robust_accuracy", None, acc, "hardened", a, d)
            for d in ("none", "at", "ant") for a in ("fgsm", "mifgsm")]
    if ds in NOISE_SETS:
        out.append(ThesisFigure(4, NOISE_TABLE, ds, dn, "clean_accuracy", None, acc, "hardened", None, "noise"))
        out += [ThesisFigure(4, NOISE_TABLE, ds, dn, "robust_accuracy", None, acc, "hardened", a, "noise")
                for a in ("fgsm", "mifgsm")]
    out += [ThesisFigure(5, CH5_TABLE[ds], ds, dn, "mean_l2", None, l2, "blackbox", a, "none", b)
            for a in ("opt", "hsja", "gbba") for b in BUDGETS]
    out += [ThesisFigure(6, CH6_TABLE[ds], ds, dn, "mean_l2", None, l2, "blackbox", "gbba", d, b)
            for d in ("none", "rnd", "dnd") for b in BUDGETS]
    return out


def _figures() -> tuple[ThesisFigure, ...]:
    """Every thesis table x dataset slot, the published value filled in where :data:`THESIS_NUMBERS` has it."""
    published = {f.key: f for f in THESIS_NUMBERS}
    slots = [published.get(f.key, f) for ds in THESIS_DATASETS for f in _slots(ds)]
    missing = [f for f in THESIS_NUMBERS if f not in slots]
    if missing:  # a published figure without a slot would silently drop out of the tables
        raise AssertionError(f"published thesis figures without a table slot: {missing}")
    order = list(THESIS_DATASETS)
    return tuple(sorted(slots, key=lambda f: (f.chapter, order.index(f.dataset))))


THESIS_FIGURES: tuple[ThesisFigure, ...] = _figures()
"""Every row of the thesis's Tables 3-3..6-3 on its three datasets (value None: not transcribed here)."""

# Ratios of L2 figures on one dataset's table: (chapter, numerator, denominator), each side an
# (attack, defense, budget) key. They cancel the pixel scale, not the input dimension.
RATIOS: tuple[tuple[int, tuple[str, str, int], tuple[str, str, int]], ...] = (
    (5, ("gbba", "none", 10_000), ("hsja", "none", 10_000)),
    (5, ("opt", "none", 10_000), ("hsja", "none", 10_000)),
    (6, ("gbba", "rnd", 20_000), ("gbba", "none", 20_000)),
    (6, ("gbba", "dnd", 20_000), ("gbba", "none", 20_000)),
)


@dataclass(frozen=True)
class DatasetPlan:
    """One thesis dataset (``role``) as we run it: which file, which of our architectures stand in for
    the thesis's (``models``: role -> architecture), how long each trains, and the attack AT/ANT train on
    where the thesis used another than the campaign's (``train_attacks``: defense -> attack).

    ``backbone_from`` names another plan's role (e.g. ``chest``) whose trained model of the same role gives
    this plan's models their backbone: our substitute for the thesis's ImageNet backbone (no ImageNet weights
    can be fetched here), frozen while the head trains as the thesis's (``freeze_backbone``), or fine-tuned
    with every layer. Without it every layer trains from scratch."""

    role: str
    dataset: str
    path: str  # what must exist under the data folder
    description: str
    models: dict[str, str]
    epochs: dict[str, int]
    hardened: str = "densenet"
    blackbox: str = "densenet"
    size: int | None = None
    rgb: bool = False
    resize: int | None = None
    thesis_data: bool = False  # the thesis's own data set (not a stand-in)
    train_attacks: dict[str, str] = field(default_factory=dict)
    backbone_from: str | None = None
    freeze_backbone: bool = True
    blackbox_images: int | None = None  # label-only images (one shard) where the campaign's count is too few


    def run_name(self, role: str) -> str:
        arch = self.models[role]
        shared = sum(a == arch for a in self.models.values()) > 1
        return f"{self.dataset}_{arch}" + (f"-{role}" if shared else "")

    @property
    def pixels(self) -> int:
        """The side of the images our models see (folders default to 224, ``.npz`` files to 28)."""
        return self.resize or self.size or (28 if self.path.endswith(".npz") else 224)

    @property
    def input_text(self) -> str:
        return f"{self.pixels}x{self.pixels}x{3 if self.rgb else 1}"


@dataclass(frozen=True)
class ThesisPreset:
    """A campaign configuration plus the datasets and training settings it runs."""

    name: str
    description: str
    datasets: tuple[DatasetPlan, ...]
    campaign: CampaignConfig
    batch_size: int = 32
    device: str = "cpu"  # "auto": CUDA when available
    skip: dict[str, str] = field(default_factory=dict)  # paths this preset leaves out, with the reason


STANDIN = {"resnet": "resnet18", "densenet": "smallcnn"}
PNEUMONIA = "PneumoniaMNIST (28x28 grey) stands in for the thesis's 224x224 chest X-ray set"
BREAST = "BreastMNIST (28x28 grey, BUSI ultrasound) stands in for the thesis's breast cancer set"
FULL_ONLY = {"chest_xray": "the Kermany folder set is the mid (64x64, CPU) and full (224x224, GPU) presets' "
                           "(--preset mid, --preset full)",
             "COVID-CT": "the CT folder set is the mid (64x64, CPU) and full (224x224, GPU) presets' "
                         "(--preset mid, --preset full)"}
MID_MODELS = {"resnet": "resnet18", "densenet": "smallcnn"}
# AT/ANT attack the pre-trained model once (a fixed adversarial set), as the thesis.
FIXED = {"source": "fixed"}


def _campaign(**sections: Any) -> CampaignConfig:
    """The thesis attacked its noise defenses with a naive (non-adaptive) attacker: ``adaptive_k = 1``."""
    if "blackbox" in sections:
        sections["blackbox"] = {"adaptive_k": 1, **sections["blackbox"]}
    return CampaignConfig.model_validate({"title": "Thesis reproduction", "detection": {"enabled": False}, **sections})


PRESETS: dict[str, ThesisPreset] = {
    "quick": ThesisPreset(
        "quick", "CPU minutes: small stand-ins (smallcnn for DenseNet-121, resnet18 for ResNet-50) on the 28x28 "
                 "sets, few epochs and images; black-box budgets 1K-20K on 4 images (RND/DND against GBBA only, "
                 "as in chapter 6)",
        (DatasetPlan("chest", "pneumoniamnist", "pneumoniamnist.npz", PNEUMONIA, STANDIN, {"resnet": 2, "densenet": 10}),
         DatasetPlan("breast", "breastmnist", "breastmnist.npz", BREAST, STANDIN, {"resnet": 6, "densenet": 10})),
        _campaign(clean={"bootstrap": 200},
                  whitebox={"attacks": ["fgsm", "mifgsm"], "eps": ["2/255", "4/255"], "n_images": 150,
                            "batch_size": 150},
                  transfer={"n_images": 100},
                  blackbox={"budgets": BUDGETS, "n_images": 4, "shard_size": 4, "defended_attacks": ["gbba"]},
                  defenses={"enabled": True, "epochs": 1, "eval_attacks": "fgsm_iter,mifgsm,pgd", "eval_n": 150,
                            **FIXED}),
        skip=FULL_ONLY),
    "mid": ThesisPreset(
        "mid", "this 2-core CPU in under an hour (49 min measured): the thesis's own chest X-ray and CT sets and BreastMNIST, all at "
               "64x64 grey; resnet18 for ResNet-50 and smallcnn (strided stem) for DenseNet-121; the chest models "
               "train first and initialise the CT and breast models (every layer fine-tuned); white-box on 150 images, "
               "AT/ANT/noise 1 epoch; black-box budgets 1K-20K on 4 images (one job per attack and defense: the "
               "images start from each other where noise never fools the model)",
        (DatasetPlan("chest", "chest_xray", "chest_xray", "the thesis's own chest X-ray set (Kermany) at 64x64 grey, "
                     "10% of train split off for validation", MID_MODELS, {"resnet": 2, "densenet": 6}, size=64,
                     thesis_data=True),  # its first 4 picks are all pneumonia: they start from the start pool
         # Frozen, the chest backbones gave constant classifiers here (BreastMNIST 73.08% = all benign; COVID-CT
         # 55% in t17b's runs): the CT and breast models start from them and fine-tune every layer.
         DatasetPlan("breast", "breastmnist", "breastmnist.npz", "BreastMNIST (BUSI ultrasound) upscaled to 64x64 "
                     "grey stands in for the thesis's breast cancer set", MID_MODELS, {"resnet": 8, "densenet": 10},
                     resize=64, backbone_from="chest", freeze_backbone=False),
         DatasetPlan("ct", "covid_ct", "COVID-CT", "the thesis's own CT set (COVID-CT, official split) at 64x64 grey",
                     MID_MODELS, {"resnet": 8, "densenet": 10}, size=64, thesis_data=True,
                     train_attacks={"at": "mifgsm", "ant": "fgsm_iter"}, backbone_from="chest", freeze_backbone=False)),
        _campaign(clean={"bootstrap": 200},
                  whitebox={"attacks": ["mifgsm"], "eps": ["2/255", "8/255"], "n_images": 150, "batch_size": 50},
                  transfer={"n_images": 100},
                  blackbox={"budgets": BUDGETS, "n_images": 4, "shard_size": 4, "defended_attacks": ["gbba"]},
                  defenses={"enabled": True, "epochs": 1, "eval_attacks": "fgsm_iter,mifgsm", "eval_n": 150, **FIXED},
                  workers=2)),
    "full": ThesisPreset(
        "full", "the thesis's scale: ResNet-50 and DenseNet-121 at 224x224 on the Kermany chest X-rays (their backbones, "
                "frozen, start the CT and breast models), COVID-CT (and "
                "BreastMNIST upscaled), budgets 1K-20K on 50 images; hours of GPU training",
        (DatasetPlan("chest", "chest_xray", "chest_xray", "the thesis's own chest X-ray set (Kermany, 224x224 RGB)",
                     {"resnet": "resnet50", "densenet": "densenet121"}, {"resnet": 10, "densenet": 10}, rgb=True,
                     thesis_data=True),
         DatasetPlan("breast", "breastmnist", "breastmnist.npz", "BreastMNIST upscaled to 224x224 RGB stands in for "
                     "the thesis's breast cancer set", {"resnet": "resnet50", "densenet": "densenet121"},
                     {"resnet": 10, "densenet": 10}, rgb=True, resize=224, backbone_from="chest"),
         DatasetPlan("ct", "covid_ct", "COVID-CT", "the thesis's own CT set (COVID-CT, official split, 224x224 RGB)",
                     {"resnet": "resnet50", "densenet": "densenet121"}, {"resnet": 10, "densenet": 10}, rgb=True,
                     thesis_data=True, train_attacks={"at": "mifgsm", "ant": "fgsm_iter"}, backbone_from="chest")),
        _campaign(whitebox={"attacks": ["fgsm", "bim", "pgd", "mifgsm"], "eps": ["1/255", "2/255", "4/255", "8/255"],
                            "n_images": 500, "batch_size": 32},
                  blackbox={"budgets": BUDGETS, "n_images": 50, "shard_size": 5, "defended_attacks": ["gbba"]},
                  defenses={"enabled": True, "epochs": 5, **FIXED}, device="auto"),
        device="auto"),
    "tiny": ThesisPreset(
        "tiny", "a smoke test (seconds per step): two smallcnns, 1 epoch, a few images, budgets 200/500",
        (DatasetPlan("chest", "pneumoniamnist", "pneumoniamnist.npz", PNEUMONIA,
                     {"resnet": "smallcnn", "densenet": "smallcnn"}, {"resnet": 1, "densenet": 1}),
         DatasetPlan("breast", "breastmnist", "breastmnist.npz", BREAST,
                     {"resnet": "smallcnn", "densenet": "smallcnn"}, {"resnet": 1, "densenet": 1})),
        _campaign(clean={"bootstrap": 50},
                  whitebox={"attacks": ["mifgsm"], "eps": ["2/255"], "n_images": 40, "grid_images": 1},
                  transfer={"n_images": 40},
                  blackbox={"budgets": [200, 500], "n_images": 4, "shard_size": 4, "defended_attacks": ["gbba"]},
                  defenses={"enabled": True, "epochs": 1, "train_steps": 2, "eval_attacks": "fgsm_iter,mifgsm",
                            "eval_n": 40, **FIXED}),
        skip=FULL_ONLY),
}


def get_preset(name: str) -> ThesisPreset:
    if name not in PRESETS:
        raise MedShieldError(f"unknown thesis preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_config(preset: ThesisPreset, config: str | Path | None = None, **overrides: Any) -> CampaignConfig:
    """The preset's campaign, updated section by section from a YAML file (as ``medshield audit --config``
    takes), then from ``overrides`` (None values ignored)."""
    data = preset.campaign.model_dump()
    if config is not None:
        load_config(config)  # checks the file: unknown keys and bad values get the audit's messages
        data = _merge(data, yaml.safe_load(Path(config).read_text()) or {})
    return load_config(None, **{**data, **{k: v for k, v in overrides.items() if v is not None}})


def dataset_config(cfg: CampaignConfig, plan: DatasetPlan) -> CampaignConfig:
    """The campaign for one dataset: the chapters the thesis reports on it, on the models they concern
    (noise-only training where the thesis has Tables 4-4/4-5 for it)."""
    figures = [f for f in THESIS_FIGURES if f.dataset == plan.role]
    chapters = {f.chapter for f in figures}
    wb, d = cfg.whitebox, cfg.defenses
    thesis_attacks = [OUR_ATTACK.get(a, a) for a in ("fgsm", "mifgsm")]
    attacks = list(dict.fromkeys([*wb.attacks, *thesis_attacks]))
    eval_attacks = list(dict.fromkeys([*d.eval_attacks, *thesis_attacks]))
    training = list(dict.fromkeys([*d.defenses, *(f.defense for f in figures if f.chapter == 4 and f.defense
                                                   and f.defense != "none")]))
    eps = wb.eps if any(math.isclose(e, cfg.transfer.eps) for e in wb.eps) else [*wb.eps, cfg.transfer.eps]
    return cfg.model_copy(update={
        "title": f"{cfg.title} — {plan.dataset}",
        "whitebox": wb.model_copy(update={"enabled": True, "attacks": attacks, "eps": eps}),
        "blackbox": cfg.blackbox.model_copy(update={"enabled": cfg.blackbox.enabled and bool(chapters & {5, 6}),
                                                    "runs": [plan.run_name(plan.blackbox)],
                                                    **({"n_images": plan.blackbox_images,
                                                        "shard_size": plan.blackbox_images}
                                                       if plan.blackbox_images else {})}),
        "detection": cfg.detection.model_copy(update={"runs": [plan.run_name(plan.blackbox)]}),
        "defenses": d.model_copy(update={"enabled": d.enabled and 4 in chapters, "runs": [plan.run_name(plan.hardened)],
                                         "defenses": training, "eval_attacks": eval_attacks,
                                         "train_attacks": {**d.train_attacks, **plan.train_attacks}}),
    })


def _device(preset: ThesisPreset) -> str:
    return str(resolve_device(preset.device))


def _planned(plan: DatasetPlan, preset: ThesisPreset, role: str, seed: int, source: str | None) -> dict[str, Any]:
    """What a role's run must have been trained with to be reused (flattened config keys -> values);
    the backbone by the SHA-256 of its source's weights, so a retrained source makes this run stale."""
    return {"model.name": plan.models[role], "train.epochs": plan.epochs[role], "train.seed": seed,
            "train.batch_size": preset.batch_size, "data.dataset": plan.dataset, "data.size": plan.size,
            "data.rgb": plan.rgb, "data.resize": plan.resize,
            "model.freeze_backbone": source is not None and plan.freeze_backbone,
            "model.backbone.sha256": sha256_file(Path(source) / RUN_WEIGHTS) if source else None}


def _trained_otherwise(run: Path, planned: dict[str, Any]) -> str:
    """How the finished run in ``run`` differs from ``planned``, trained -> planned ("" when it is the
    planned model), in the job store's words (:func:`describe_difference`)."""
    config = read_json(run / "config.json")
    trained: dict[str, Any] = {}
    for key in planned:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        trained[key] = value
    return "" if trained == planned else describe_difference(trained, planned, limit=len(planned))


def train_models(plan: DatasetPlan, preset: ThesisPreset, data_dir: Path, out: Path, seed: int,
                 backbones: dict[str, str] | None = None, overwrite: bool = False) -> dict[str, str]:
    """Train (or reuse, or resume) each role's model into ``OUT/models/<run name>``; role -> run folder.
    ``backbones`` (role -> run folder): start each role's model from that run's backbone. A finished run
    is reused only when trained as planned (architecture, data, epochs, seed, backbone weights); otherwise
    it is refused with the difference named, or retrained with ``overwrite``."""
    runs = {}
    for k, (role, arch) in enumerate(plan.models.items()):
        run = out / "models" / plan.run_name(role)
        source = (backbones or {}).get(role)
        planned = _planned(plan, preset, role, seed + k, source)
        finished = (run / "metrics.json").is_file()
        differs = _trained_otherwise(run, planned) if finished else ""
        if differs and not overwrite:
            raise MedShieldError(f"{run} was trained otherwise than the {preset.name} preset plans: {differs}; "
                                 "pass --overwrite to retrain it, or choose another --out")
        if not finished or differs:
            resume = not differs and (run / "state").exists()
            tc = TrainConfig(epochs=plan.epochs[role], batch_size=preset.batch_size, seed=seed + k, device=_device(preset))
            train(plan.dataset, run, model=arch, data_dir=data_dir, size=plan.size, rgb=plan.rgb, resize=plan.resize,
                  train_config=tc, resume=resume, overwrite=not resume, pretrained=source,
                  freeze_backbone=source is not None and plan.freeze_backbone,
                  extra_config={"thesis": {"preset": preset.name, "role": role, "backbone_from": source}})
        runs[role] = str(run)
    return runs


def backbone_runs(plan: DatasetPlan, trained: dict[str, tuple[DatasetPlan, dict[str, str]]]
                  ) -> tuple[DatasetPlan, dict[str, str] | None]:
    """The runs ``plan.backbone_from`` names (role -> run folder), or None with the plan marked as trained
    from scratch where that dataset's models were not trained."""
    if plan.backbone_from is None:
        return plan, None
    if plan.backbone_from not in trained:
        return replace(plan, backbone_from=None), None
    source, runs = trained[plan.backbone_from]
    differ = {r: (a, source.models.get(r)) for r, a in plan.models.items() if source.models.get(r) != a}
    if differ:
        raise MedShieldError(f"{plan.dataset} takes its backbones from {source.dataset}, but the architectures differ: "
                             f"{differ}")
    return plan, {r: runs[r] for r in plan.models}


def present(preset: ThesisPreset, data_dir: Path) -> tuple[list[DatasetPlan], list[dict[str, str]]]:
    """The preset's datasets found under ``data_dir``, and the skipped ones with the reason."""
    found, skipped = [], []
    for plan in preset.datasets:
        if (data_dir / plan.path).exists():
            found.append(plan)
        else:
            skipped.append({"dataset": plan.dataset, "role": plan.role, "reason": f"{data_dir / plan.path} not found"})
    for path, reason in preset.skip.items():
        if (data_dir / path).exists():
            skipped.append({"dataset": path, "role": "", "reason": f"not in the {preset.name} preset: {reason}"})
    if not found:
        looked = ", ".join(str(data_dir / p.path) for p in preset.datasets)
        extra = "".join(f"; {data_dir / p} is present but {r}" for p, r in preset.skip.items() if (data_dir / p).exists())
        raise MedShieldError(f"no thesis dataset for the {preset.name} preset in {data_dir}: looked for {looked}{extra}")
    return found, skipped


# ---- ours beside the thesis ----

THESIS_INPUT = "224x224x3"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _pick_budget(recs: list[dict[str, Any]], budget: int, fallback: bool) -> int | None:
    """``budget`` if it ran; with ``fallback`` (a published figure) else the largest smaller budget that ran."""
    budgets = sorted({r["budget"] for r in recs})
    if budget in budgets or not fallback:
        return budget if budget in budgets else None
    return max([b for b in budgets if b <= budget], default=None)


def _model_role(plan: DatasetPlan, role: str) -> str:
    return {"hardened": plan.hardened, "blackbox": plan.blackbox}.get(role, role)


def ours(fig: ThesisFigure, res: dict[str, Any], run: str, eps: float,
         target: str | None = None) -> tuple[float | None, dict[str, Any]]:
    """Our figure for ``fig`` from one dataset's campaign results (``run`` = our model's folder name,
    ``target`` the transfer target's), in the thesis's unit, plus what exactly it is (budget, eps, success).
    L2 distances are those of the verified adversarials (they fool the undefended classifier), never the
    attacker's claims, which against a randomised defense include images the noise alone misclassified."""
    if fig.quantity == "clean_accuracy":
        if fig.defense not in (None, "none"):
            rec = next((r for r in res["defenses"] if r["base_run"] == run and r["defense"] == fig.defense), None)
            return (None if rec is None else 100 * rec["clean_accuracy"]), {}
        rec = next((r for r in res["clean"] if r["run"] == run), None)
        return (None if rec is None else 100 * rec["accuracy"]), {}
    attack = OUR_ATTACK.get(fig.attack or "", fig.attack)
    if fig.quantity == "transfer_accuracy":
        rec = next((r for r in res["transfer"] if r["source"] == run and r["target"] == target
                    and _close(r["eps"], eps)), None)
        return (None if rec is None else 100 * rec["robust_accuracy"]), {"eps": eps}
    if fig.quantity == "robust_accuracy":
        if fig.defense in (None, "none"):
            rec = next((r for r in res["whitebox"] if r["run"] == run and r["attack"] == attack
                        and _close(r["eps"], eps)), None)
        else:
            rec = next((r for r in res["defenses"] if r["base_run"] == run and r["defense"] == fig.defense
                        and r["eval_attack"] == attack and _close(r["eps"], eps)), None)
        return (None if rec is None else 100 * rec["robust_accuracy"]), {"eps": eps}
    recs = [r for r in res["blackbox"] if r["run"] == run and r["attack"] == fig.attack and r["defense"] == fig.defense]
    budget = _pick_budget(recs, fig.budget or 0, fig.value is not None)
    rec = next((r for r in recs if r["budget"] == budget), None)
    if rec is None:
        return None, {}
    return rec["verified_mean_l2"], {"our_budget": budget, "success_rate": rec["success_rate"],
                                     "claim_rate": rec.get("claim_rate", rec["success_rate"]),
                                     "n_images": rec["n_images"]}


def _pretraining(plan: DatasetPlan) -> str:
    if plan.backbone_from and plan.freeze_backbone:
        return f"backbone from our {plan.backbone_from} model, frozen (thesis: ImageNet backbone, frozen)"
    if plan.backbone_from:
        return (f"initialised from our {plan.backbone_from} model, every layer fine-tuned "
                f"(thesis: ImageNet backbone, frozen)")
    return "trained from scratch, every layer (thesis: ImageNet-pretrained, backbone frozen)"


def comparability(fig: ThesisFigure, plan: DatasetPlan | None, epochs: int | None = None) -> str:
    """Whether our figure can be set against the published one, and exactly what differs: data, input
    size, architecture, pre-training, training length (the thesis's own data never makes the model the same)."""
    if plan is None:
        return "–"
    size = f"input {plan.input_text} (thesis {THESIS_INPUT})"
    if fig.unit == "L2":
        return f"no: pixel scale and {size} differ; see the ratio rows"
    roles = [_model_role(plan, fig.role)] + ([fig.target] if fig.target else [])
    arch = ", ".join(f"{plan.models[r]} for {ARCHITECTURES.get(r, r)}" for r in roles)
    train_len = ", ".join(f"{plan.models[r]} {plan.epochs[r]} epochs" for r in roles)
    data = "the thesis's own data" if plan.thesis_data else f"stand-in data ({plan.dataset})"
    parts = [data, size, arch, _pretraining(plan), f"trained {train_len}"]
    if fig.quantity != "clean_accuracy" or fig.defense:
        parts.append("the thesis's eps not transcribed here")
    return "roughly: " + "; ".join(parts)


def figure_record(fig: ThesisFigure, plan: DatasetPlan | None, runs: dict[str, str] | None, res: dict[str, Any] | None,
                  eps: float, skipped: str | None) -> dict[str, Any]:
    """One row of ``thesis.json``: the published figure (None: not transcribed here) beside ours."""
    rec: dict[str, Any] = {"chapter": fig.chapter, "table": fig.table, "dataset": THESIS_DATASETS[fig.dataset],
                           "role": fig.dataset, "model": fig.model, "quantity": fig.quantity, "attack": fig.attack,
                           "defense": fig.defense, "budget": fig.budget, "thesis": fig.value, "ours": None,
                           "unit": fig.unit, "maps_to": fig.maps_to, "comparable": comparability(fig, plan)}
    if plan is None or runs is None or res is None:
        return {**rec, "note": skipped or "dataset not run"}
    role = _model_role(plan, fig.role)
    run = Path(runs[role]).name
    target = Path(runs[fig.target]).name if fig.target else None
    value, extra = ours(fig, res, run, eps, target)
    note = f"ours: {plan.models[role]} on {plan.dataset}" + (f" -> {plan.models[fig.target]}" if fig.target else "")
    if fig.attack in OUR_ATTACK:
        note += f", {OUR_ATTACK[fig.attack]} (the thesis's Algorithm 1)"
    if "eps" in extra:
        note += f", eps {eps_label(eps)}"
    if extra.get("our_budget") not in (None, fig.budget):
        note += f", at {extra['our_budget']:,} queries (largest run)"
    if "success_rate" in extra:
        n = extra["n_images"]
        note += f", {round(n * extra['success_rate'])} of {n} images verified adversarial"
        if not _close(extra["claim_rate"], extra["success_rate"]):
            note += f" ({round(n * extra['claim_rate'])} claimed)"
    if value is None:
        note += " (no verified adversarial)" if "success_rate" in extra else \
            " (not measured: the campaign config left it out)"
    return {**rec, **extra, "ours": value, "our_dataset": plan.dataset, "our_model": plan.models[role], "our_run": run,
            **({"our_target": target} if target else {}), "note": note}


def ratio_records(records: list[dict[str, Any]], plans: dict[str, DatasetPlan] | None = None) -> list[dict[str, Any]]:
    """Ratios of one dataset's L2 rows (thesis's where both are published, and ours), e.g. RND/none at 20K
    queries: the pixel scale cancels, the input dimension does not (a distance grows with it differently
    for each attack and defense)."""
    out = []
    for ds in THESIS_DATASETS:
        def find(chapter: int, key: tuple[str, str, int], ds: str = ds) -> dict[str, Any] | None:
            return next((r for r in records if r["role"] == ds and r["chapter"] == chapter
                         and r["quantity"] == "mean_l2" and (r["attack"], r["defense"], r["budget"]) == key), None)

        plan = (plans or {}).get(ds)
        size = f" (ours {plan.input_text}, thesis {THESIS_INPUT})" if plan else ""
        for chapter, num, den in RATIOS:
            a, b = find(chapter, num), find(chapter, den)
            if a is None or b is None or (plan is None and (a["thesis"] is None or b["thesis"] is None)):
                continue  # neither side has the ratio: a dataset not run without published figures
            label = f"{num[0].upper()}/{den[0].upper()}" if num[1] == den[1] else f"{num[1].upper()}/{den[1]}"
            ours_ratio = a["ours"] / b["ours"] if a["ours"] is not None and b["ours"] else None
            published = a["thesis"] is not None and b["thesis"] is not None
            out.append({"chapter": chapter, "table": a["table"], "dataset": a["dataset"], "role": ds, "model": None,
                        "quantity": "l2_ratio", "attack": f"{num[0]}/{den[0]}", "defense": f"{num[1]}/{den[1]}",
                        "budget": num[2], "label": label,
                        "thesis": a["thesis"] / b["thesis"] if published else None, "ours": ours_ratio,
                        "unit": "ratio", "maps_to": f"mean L2 ratio {label} at {num[2]:,} queries",
                        "comparable": f"roughly: the pixel scale cancels, the input dimension does not{size}",
                        "note": (f"thesis ratio from its published {a['thesis']} / {b['thesis']}" if published
                                 else "thesis values not transcribed here")
                                + (f"; {a['note']}" if a.get("our_run") else "")})
    return out


def reproduce_thesis(data_dir: str | Path, out: str | Path, preset: str = "quick", workers: int | None = None,
                     executor: str | None = None, address: str | None = None,
                     config: str | Path | None = None, roles: list[str] | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """Train, run the campaign per present dataset (``roles``: only these thesis datasets, and the backbone
    sources they need trained), and write ``OUT/thesis.json``, ``thesis.md`` and ``thesis.html`` (the thesis's
    figures beside ours, one table per chapter). Resumable: trained models
    and finished campaign jobs are kept. A plan with ``backbone_from`` trains after that dataset, from
    its models' backbones (frozen); where that dataset did not run, from scratch (and its rows say so).
    Models and jobs from other settings are refused with the difference named, or redone with ``overwrite``."""
    start = time.perf_counter()
    spec = get_preset(preset)
    data_dir, out = Path(data_dir), Path(out)
    cfg = preset_config(spec, config, workers=workers, executor=executor, address=address)
    plans, skipped = present(spec, data_dir)
    eps = cfg.transfer.eps
    trained: dict[str, tuple[DatasetPlan, dict[str, str]]] = {}
    done: dict[str, tuple[DatasetPlan, dict[str, str], dict[str, Any]]] = {}
    sources = {p.backbone_from for p in plans if roles is None or p.role in roles}
    for plan in plans:
        if plan.role in trained or (roles is not None and plan.role not in roles and plan.role not in sources):
            continue
        plan, backbones = backbone_runs(plan, trained)
        trained[plan.role] = (plan, train_models(plan, spec, data_dir, out, cfg.seed, backbones, overwrite))
        if roles is None or plan.role in roles:  # a backbone source outside ``roles`` is trained, not audited
            runs = trained[plan.role][1]
            res = audit(list(runs.values()), out / plan.dataset, dataset=plan.dataset, data_dir=data_dir,
                        config=dataset_config(cfg, plan), overwrite=overwrite)
            done[plan.role] = (plan, runs, res)
    reasons = {s["role"]: s["reason"] for s in skipped if s["role"]}
    records = [figure_record(f, *done.get(f.dataset, (None, None, None)), eps, reasons.get(f.dataset))
               for f in THESIS_FIGURES]
    records += ratio_records(records, {role: p for role, (p, _, _) in done.items()})
    result = {"preset": spec.name, "description": spec.description, "data_dir": str(data_dir),
              "datasets": [{"role": p.role, "dataset": p.dataset, "description": p.description,
                            "input": p.input_text, "pretraining": _pretraining(p),
                            "models": {r: {"architecture": a, "run": runs[r], "epochs": p.epochs[r]}
                                       for r, a in p.models.items()},
                            "report": str(out / p.dataset / "report.html")} for p, runs, _ in done.values()],
              "skipped": skipped, "eps": eps, "records": records}
    write_json(out / "thesis.json", result)
    write_thesis_report(result, out)
    write_json(out / "thesis_timings.json", {"wall_seconds": time.perf_counter() - start})
    return result
