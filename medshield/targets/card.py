"""The target card: one YAML file that describes the system under test.

A TorchScript binary classifier needs no more than::

    model: {format: torchscript, path: model.pt}
    input: {size: 28, channels: 1, mean: [0.5], std: [0.5]}   # the model receives (pixel in [0,1] - mean) / std
    output: {kind: logits, task: binary, classes: [normal, pneumonia], positive: [pneumonia]}

Relative paths are relative to the card's folder. ``input.range: [0, 255]`` says the model reads pixels
on another scale first: it receives ``(lo + pixel * (hi - lo) - mean) / std``. Every field is
validated at load; a bad one gives one line naming the card file and the field
(``card.yaml: output.task: Input should be 'binary', 'multiclass' or 'multilabel'``).
(After MONAI bundles' ``metadata.json``, KServe's model spec and timm's ``pretrained_cfg``.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from medshield.errors import MedShieldError
from medshield.registry import unknown_name_message
from medshield.targets.source import SOURCE_OPTIONS, SOURCES

O = TypeVar("O", bound=BaseModel)


class CardError(MedShieldError):
    """A target card (or a file it names) is missing or invalid."""


class ModelSpec(BaseModel):
    """Where the model comes from. ``format`` picks the source (see :data:`SOURCES`); formats may take
    extra fields of their own (validated by the source's options model)."""

    model_config = ConfigDict(extra="allow")

    format: str
    path: str | None = Field(None, description="model file or folder (TorchScript .pt, .onnx, bundle folder, run folder)")
    factory: str | None = Field(None, description="python: 'module:function' building the network (runs your code)")
    weights: str | None = Field(None, description="python/monai_bundle: safetensors or weights_only state dict")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="python: keyword arguments of the factory")
    code: str | None = Field(None, description="python: folder put on sys.path to import the factory (default the card's)")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        key = value.strip().lower()
        if key not in SOURCES:
            raise ValueError(unknown_name_message("model format", value, SOURCES.names()))
        return key


class Window(BaseModel):
    """DICOM display window applied after the rescale slope/intercept (overrides the file's own)."""

    model_config = ConfigDict(extra="forbid")
    center: float
    width: float = Field(gt=0)


class InputSpec(BaseModel):
    """What the model receives: ``size``x``size`` images with ``channels`` channels, scaled to ``range``
    and normalised ``(x - mean) / std``; data of another size is resized (``resize: resize``) or refused."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=8, le=4096)
    channels: Literal[1, 3]
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])
    range: tuple[float, float] = (0.0, 1.0)
    resize: Literal["resize", "refuse"] = "resize"
    window: Window | None = None

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values (one per channel), got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.range[1] <= self.range[0]:
            raise ValueError(f"range must be [low, high] with high > low, got {list(self.range)}")
        return self

    def pixel_mean_std(self) -> tuple[list[float], list[float]]:
        """Mean and std to apply to [0, 1] pixels that give the same input as ``range`` then ``mean``/``std``."""
        lo, hi = self.range
        mean = self.mean * self.channels if len(self.mean) == 1 else self.mean
        std = self.std * self.channels if len(self.std) == 1 else self.std
        return [(m - lo) / (hi - lo) for m in mean], [s / (hi - lo) for s in std]


class OutputSpec(BaseModel):
    """What the model returns: ``kind`` logits or probabilities; ``task`` binary (1 or 2 outputs),
    multiclass (one per class, softmax) or multilabel (one sigmoid per finding); ``positive``: the
    disease classes / findings; ``thresholds``: multilabel decision thresholds (default 0.5)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["logits", "probabilities"]
    task: Literal["binary", "multiclass", "multilabel"]
    classes: list[str] = Field(min_length=1)
    positive: list[str] | None = None
    thresholds: float | dict[str, float] | None = None
    outputs: int | None = Field(None, ge=1, description="output width when it cannot be probed (binary: 1 or 2)")

    @model_validator(mode="after")
    def _check(self) -> OutputSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        if self.task == "binary" and len(self.classes) != 2:
            raise ValueError(f"a binary task names 2 classes, got {len(self.classes)}")
        if self.task == "multiclass" and len(self.classes) < 2:
            raise ValueError("a multiclass task names at least 2 classes")
        unknown = [p for p in self.positive or [] if p not in self.classes]
        if unknown:
            raise ValueError(f"positive names {unknown} that are not in classes {self.classes}")
        if self.task == "binary" and self.positive is not None and len(self.positive) != 1:
            raise ValueError(f"a binary task has exactly one positive (disease) class, got {self.positive}")
        if self.thresholds is not None:
            if self.task != "multilabel":
                raise ValueError("thresholds apply to multilabel tasks only")
            values = self.thresholds.values() if isinstance(self.thresholds, dict) else [self.thresholds]
            if any(not 0 < t < 1 for t in values):
                raise ValueError("thresholds must lie strictly between 0 and 1")
            if isinstance(self.thresholds, dict) and set(self.thresholds) - set(self.classes):
                raise ValueError(f"thresholds name unknown findings {sorted(set(self.thresholds) - set(self.classes))}")
        if self.outputs is not None:
            allowed = (1, 2) if self.task == "binary" else (len(self.classes),)
            if self.outputs not in allowed:
                raise ValueError(f"outputs must be {' or '.join(map(str, allowed))} for this task, got {self.outputs}")
        return self

    @property
    def positive_names(self) -> list[str]:
        """The disease classes/findings (binary default: the second class; multilabel default: all)."""
        if self.positive is not None:
            return list(self.positive)
        return [self.classes[1]] if self.task == "binary" else (list(self.classes) if self.task == "multilabel" else [])

    @property
    def positive_indices(self) -> list[int]:
        return [self.classes.index(p) for p in self.positive_names]

    def threshold_list(self) -> list[float]:
        """Per-finding decision thresholds (multilabel), 0.5 where the card gives none."""
        t = self.thresholds
        if isinstance(t, dict):
            return [float(t.get(c, 0.5)) for c in self.classes]
        return [float(t if t is not None else 0.5)] * len(self.classes)


class TargetCard(BaseModel):
    """A loaded card. ``folder`` is where relative paths start (the card's folder)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str = ""
    model: ModelSpec
    input: InputSpec
    output: OutputSpec
    device: str = "cpu"
    _folder: Path = PrivateAttr(default_factory=Path.cwd)
    _file: Path | None = PrivateAttr(default=None)

    @property
    def folder(self) -> Path:
        return self._folder

    @property
    def file(self) -> Path | None:
        return self._file

    @property
    def label(self) -> str:
        """The name used in records: ``name``, else the card file's stem, else the model path's name."""
        if self.name:
            return self.name
        if self._file is not None:
            return self._file.stem
        return Path(self.model.path or self.model.format).name

    def where(self) -> str:
        return str(self._file) if self._file else "target card"

    def resolve(self, path: str | None, field: str = "model.path") -> Path:
        """``path`` relative to the card's folder (absolute paths unchanged); a missing value is an error."""
        if not path:
            raise CardError(f"{self.where()}: {field}: required for format {self.model.format}")
        p = Path(path).expanduser()
        return p if p.is_absolute() else self._folder / p

    def existing(self, path: str | None, field: str = "model.path") -> Path:
        """Like :meth:`resolve`, and the file or folder must exist."""
        p = self.resolve(path, field)
        if not p.exists():
            raise CardError(f"{self.where()}: {field}: {p} not found")
        return p

    def source_options(self, cls: type[O]) -> O:
        """The format's extra ``model.*`` fields validated by ``cls`` (already checked at load)."""
        return cls.model_validate(self.model.model_extra or {})

    def digest(self) -> str:
        """SHA-256 of the card's content (not its file name): part of a target's record identity."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def at(self, folder: Path, file: Path | None = None) -> TargetCard:
        """Anchor relative paths at ``folder`` (and remember the card file); returns self."""
        self._folder = Path(folder).resolve()
        self._file = file
        return self


def _format_errors(where: str, exc: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (*prefix, *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{where}: " + "; ".join(parts)


def card_from_dict(data: Any, folder: Path | str = ".", where: str = "target card", file: Path | None = None) -> TargetCard:
    """Validate a card given as a mapping; errors name ``where`` and the field."""
    if not isinstance(data, dict):
        raise CardError(f"{where}: expected a mapping with model, input and output sections, got {type(data).__name__}")
    data = _with_run_sections(data, Path(folder), where)
    try:
        card = TargetCard.model_validate(data)
    except ValidationError as exc:
        raise CardError(_format_errors(where, exc)) from None
    options = SOURCE_OPTIONS.get(card.model.format)
    extra = card.model.model_extra or {}
    if options is not None:
        try:
            options.model_validate(extra)
        except ValidationError as exc:
            raise CardError(_format_errors(where, exc, ("model",))) from None
    elif extra:
        raise CardError(f"{where}: model.{sorted(extra)[0]}: unknown field for format {card.model.format}")
    return card.at(Path(folder), file)


def run_card_sections(run_dir: Path) -> dict[str, Any]:
    """The ``input`` and ``output`` sections of a MedShield run, from its ``config.json``."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        model = config["model"]
    except FileNotFoundError:
        raise CardError(f"{run_dir}: not a MedShield run (no config.json); train one with `medshield train`") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CardError(f"{run_dir / 'config.json'}: not a MedShield run config ({exc})") from None
    data = config.get("data", {})
    n = max(int(model.get("num_classes", 2)), 2)
    classes = [str(c) for c in data.get("classes") or [str(i) for i in range(n)]]
    pos = data.get("positive_class")
    output: dict[str, Any] = {"kind": "logits", "task": "binary" if n == 2 else "multiclass", "classes": classes,
                              "outputs": int(model.get("num_classes", 2)) if n == 2 else n}
    if n == 2:
        output["positive"] = [classes[pos if pos is not None else 1]]
    elif pos is not None:
        output["positive"] = [classes[pos]]
    channels = int(model.get("in_channels", 1))
    return {"input": {"size": int(model.get("image_size", 28)), "channels": channels,
                      "mean": model.get("mean") or [0.5], "std": model.get("std") or [0.5]},
            "output": output}


def _with_run_sections(data: dict[str, Any], folder: Path, where: str) -> dict[str, Any]:
    """A ``medshield_run`` card may leave out ``input``/``output``: they come from the run's config.json."""
    model = data.get("model")
    if not isinstance(model, dict) or str(model.get("format", "")).lower() != "medshield_run" or not model.get("path"):
        return data
    if "input" in data and "output" in data:
        return data
    run = Path(model["path"]).expanduser()
    run = run if run.is_absolute() else folder / run
    if not run.is_dir():
        raise CardError(f"{where}: model.path: run folder {run} not found")
    return {**run_card_sections(run), **data}


def card_from_run(run_dir: str | Path, name: str | None = None) -> TargetCard:
    """The card of a MedShield run folder (what ``--run RUN`` means)."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise CardError(f"run directory {run} not found (train one with `medshield train`)")
    data = {"name": name or run.name or run.resolve().name, "model": {"format": "medshield_run", "path": str(run.resolve())},
            **run_card_sections(run)}
    return card_from_dict(data, run.resolve().parent, str(run))


def load_card(path: str | Path) -> TargetCard:
    """Read and validate a YAML card; relative paths inside are relative to its folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CardError(f"{path} is a folder; give the card's YAML file (a MedShield run folder goes to --run)")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CardError(f"{path}: target card not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{path}: cannot read the card ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise CardError(f"{path}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})") from None
    return card_from_dict(data, path.resolve().parent, str(path), path.resolve())


def dump_card(card: TargetCard) -> str:
    """The card as YAML (unset fields left out)."""
    return yaml.safe_dump(card.model_dump(mode="json", exclude_none=True, exclude_defaults=True), sort_keys=False)
