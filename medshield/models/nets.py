"""Network builders behind the model factory; MONAI's constructor vocabulary stays in here."""

from __future__ import annotations

import torch
from torch import nn

SMALL_INPUT = 64  # below this, ResNet/DenseNet use a 3x3 stride-1 stem without max-pool (as MedMNIST)


def smallcnn_stem(image_size: int) -> int:
    """The stem stride that keeps SmallCNN cheap at every size: a power of two bringing the input
    down to 32-63 px (28-63 px: 1, no stem; 64: 2; 128 and 224: 4)."""
    stride = 1
    while image_size // (stride * 2) >= 32:
        stride *= 2
    return stride


class SmallCNN(nn.Module):
    """A fast CNN for CPU work: an optional stride-``stem`` convolution (so large inputs cost about
    what 32-63 px inputs cost), 3 conv blocks (32-64-128), global average pooling, dropout, linear."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.25, stem: int = 1) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        if stem < 1 or stem & (stem - 1):
            raise ValueError(f"the smallcnn stem stride must be a power of two, got {stem}")
        layers: list[nn.Module] = []
        if stem > 1:  # kernel 2s-1 covers every input pixel; one strided conv, BN, ReLU
            layers += [nn.Conv2d(in_channels, 32, 2 * stem - 1, stride=stem, padding=stem - 1, bias=False),
                       nn.BatchNorm2d(32), nn.ReLU()]
        self.features = nn.Sequential(*layers, block(32 if stem > 1 else in_channels, 32), block(32, 64),
                                      block(64, 128))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(128, num_classes))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.features(x))


def build_resnet(depth: int, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """MONAI ResNet-18/50, 2D; a small-input stem below 64 px."""
    from monai.networks import nets  # MONAI takes seconds to import: only when a MONAI net is built

    small = image_size < SMALL_INPUT
    builder = {18: nets.resnet18, 34: nets.resnet34, 50: nets.resnet50}[depth]
    return builder(
        spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes,
        conv1_t_size=3 if small else 7, conv1_t_stride=1 if small else 2, no_max_pool=small,
    )


def build_densenet121(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """MONAI DenseNet-121, 2D; a 3x3 stride-1 stem without pooling below 64 px."""
    from monai.networks import nets

    net = nets.DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes)
    if image_size < SMALL_INPUT:
        net.features.conv0 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.features.pool0 = nn.Identity()
    return net


def backbone_and_head(name: str, net: nn.Module) -> tuple[list[nn.Module], str]:
    """The modules forming the backbone, and the attribute name of the classification head."""
    if name.startswith("resnet"):
        return [m for n, m in net.named_children() if n != "fc"], "fc"
    if name.startswith("densenet"):
        return [net.features], "class_layers"
    return [net.features], "head"


def new_head(in_features: int, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """Transfer-learning head (thesis): global average pooling, dropout 0.5, linear."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def conv_macs(model: nn.Module, size: int, channels: int = 1) -> int:
    """Multiply-accumulates of every convolution of ``model`` for one ``channels``x``size``x``size`` image."""
    total = 0

    def hook(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, size, size))
    finally:
        for h in hooks:
            h.remove()
    return total
