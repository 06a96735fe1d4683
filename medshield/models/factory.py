"""The model factory: ``create_model(name, ...)`` -> :class:`BoundedModel` for any size and channels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from medshield.models import nets
from medshield.models.bounded import BoundedModel
from medshield.models.pretrained import PretrainedSource, load_pretrained, resolve_source
from medshield.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")
MIN_SIZE = 28


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in a run's ``config.json``."""

    name: str = "smallcnn"
    in_channels: int = 1
    num_classes: int = 2
    image_size: int = 28
    pretrained: str | None = None
    freeze_backbone: bool = False
    dropout: float = 0.5
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    stem: int | None = None  # smallcnn's stem stride; None: chosen from image_size (runs before it had none: 1)
    backbone: dict[str, object] | None = None  # where pretrained weights came from (kind, path, sha256, ...)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


MODELS.register("smallcnn")(lambda c: nets.SmallCNN(c.in_channels, c.num_classes, stem=c.stem or 1))
MODELS.register("resnet18")(lambda c: nets.build_resnet(18, c.in_channels, c.num_classes, c.image_size))
MODELS.register("resnet50")(lambda c: nets.build_resnet(50, c.in_channels, c.num_classes, c.image_size))
MODELS.register("densenet121")(lambda c: nets.build_densenet121(c.in_channels, c.num_classes, c.image_size))


def model_names() -> list[str]:
    return MODELS.names()


def create_model(config: ModelConfig | None = None, **overrides: object) -> BoundedModel:
    """Build a model from a :class:`ModelConfig` (or keyword fields), normalisation inside.

    With ``pretrained`` ("imagenet", a local file or a MedShield run folder), pre-trained weights are
    loaded into the backbone, the head is replaced (pooling, dropout, linear) and, with
    ``freeze_backbone``, only the head trains (transfer learning, thesis ch. 3). ``backbone`` then
    records the source and the SHA-256 of its weights; the input normalisation is the source's.

    >>> model = create_model(name="resnet18", in_channels=1, num_classes=2, image_size=28)
    """
    cfg = config or ModelConfig()
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    _validate(cfg)
    if cfg.name == "smallcnn" and cfg.stem is None:
        cfg.stem = nets.smallcnn_stem(cfg.image_size)
    build: Callable[[ModelConfig], nn.Module] = MODELS.get(cfg.name)
    net = build(cfg)
    source: PretrainedSource | None = None
    if cfg.pretrained:
        source = resolve_source(cfg.name, cfg.pretrained)
        load_pretrained(net, cfg.name, source)
        cfg.backbone = source.describe()
    if cfg.pretrained or cfg.freeze_backbone:
        replace_head(cfg.name, net, cfg.num_classes, cfg.dropout)
    if cfg.freeze_backbone:
        freeze(cfg.name, net)
    if not cfg.mean:
        mean, std = source.normalisation(cfg.in_channels) if source else ([0.5] * cfg.in_channels,) * 2
        cfg.mean, cfg.std = list(mean), list(std)
    model = BoundedModel(net, cfg.num_classes, cfg.mean, cfg.std)
    model.config = cfg  # type: ignore[assignment]
    return model


def _validate(cfg: ModelConfig) -> None:
    cfg.name = cfg.name.lower()
    MODELS.get(cfg.name)  # unknown names fail with a suggestion
    if cfg.in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {cfg.in_channels}")
    if cfg.image_size < MIN_SIZE:
        raise ValueError(f"image_size must be at least {MIN_SIZE}, got {cfg.image_size}")
    if cfg.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (1 = single sigmoid logit), got {cfg.num_classes}")


def replace_head(name: str, net: nn.Module, num_classes: int, dropout: float) -> None:
    """New classification head: global average pooling, dropout, linear (thesis transfer learning)."""
    if name.startswith("resnet"):
        in_features = net.fc.in_features
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    elif name.startswith("densenet"):
        in_features = net.class_layers.out.in_features
        net.class_layers = nn.Sequential(nn.ReLU(), nets.new_head(in_features, num_classes, dropout))
    else:
        net.head = nets.new_head(net.head[-1].in_features, num_classes, dropout)


def freeze(name: str, net: nn.Module) -> None:
    """Freeze everything but the head (its parameters keep ``requires_grad``)."""
    backbone, head = nets.backbone_and_head(name, net)
    for module in backbone:
        for p in module.parameters():
            p.requires_grad_(False)
    for p in getattr(net, head).parameters():
        p.requires_grad_(True)
