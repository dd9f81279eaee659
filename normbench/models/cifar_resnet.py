"""Small CIFAR-style ResNets (He et al. 2016, section 4.2) for CPU-scale sweeps.

A 3x3 stem conv (stride 1), three stages of ``n`` basic blocks with widths w, 2w, 4w (stages 2
and 3 halve the resolution), global average pooling and a linear classifier: depth 6n + 2.
Shortcuts are identities, or a 1x1 conv + norm where the shape changes (option B). The blocks,
norms, activations and initialisation are the ones of :mod:`normbench.models.resnet`, so norm
placement (FRN + TLU and EvoNorm included) is the same in both families. Any input of 8 px or
more works.
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.models.resnet import BasicBlock, NormFactory

# name -> blocks per stage (depth = 6n + 2)
CIFAR_RESNETS: dict[str, int] = {
    "resnet8": 1,
    "resnet14": 2,
    "resnet20": 3,
    "resnet32": 5,
    "resnet56": 9,
}

DEFAULT_WIDTH = 16


def make_stage(
    inplanes: int, planes: int, blocks: int, stride: int, factory: NormFactory
) -> nn.Sequential:
    """``blocks`` basic blocks; the first one changes width/resolution through a projection."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
            factory(planes),
        )
    layers = [BasicBlock(inplanes, planes, stride, downsample, norm_layer=factory)]
    layers += [BasicBlock(planes, planes, norm_layer=factory) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; attribute names follow torchvision's ResNet.

    ``relu`` is the stem's activation slot (Identity where the norm carries its own
    nonlinearity), as in torchvision.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        factory: NormFactory,
        num_classes: int,
        in_channels: int,
        width: int = DEFAULT_WIDTH,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.bn1, self.relu = factory.norm_act(width)
        self.layer1 = make_stage(width, width, blocks_per_stage, 1, factory)
        self.layer2 = make_stage(width, 2 * width, blocks_per_stage, 2, factory)
        self.layer3 = make_stage(2 * width, 4 * width, blocks_per_stage, 2, factory)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(
    name: str, factory: NormFactory, num_classes: int, in_channels: int, width: int | None
) -> CifarResNet:
    """The CIFAR-style ResNet ``name`` with base width ``width`` (16 when None)."""
    return CifarResNet(
        CIFAR_RESNETS[name],
        factory,
        num_classes=num_classes,
        in_channels=in_channels,
        width=DEFAULT_WIDTH if width is None else width,
    )
