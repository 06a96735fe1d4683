"""Network builders behind the model factory; MONAI's constructor vocabulary stays in here."""

from __future__ import annotations

from torch import nn
from monai.networks import nets

SMALL_INPUT = 64  # below this, ResNet/DenseNet use a 3x3 stride-1 stem without max-pool (as MedMNIST)


class SmallCNN(nn.Module):
    """A fast CNN for CPU work: 3 conv blocks (32-64-128), global average pooling, dropout, linear head."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.25) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(in_channels, 32), block(32, 64), block(64, 128))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(128, num_classes))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.features(x))


def build_resnet(depth: int, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """MONAI ResNet-18/50, 2D; a small-input stem below 64 px."""
    small = image_size < SMALL_INPUT
    builder = {18: nets.resnet18, 34: nets.resnet34, 50: nets.resnet50}[depth]
    return builder(
        spatial_dims=2, n_input_channels=in_channels, num_classes=num_classes,
        conv1_t_size=3 if small else 7, conv1_t_stride=1 if small else 2, no_max_pool=small,
    )


def build_densenet121(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """MONAI DenseNet-121, 2D; a 3x3 stride-1 stem without pooling below 64 px."""
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
