"""ResNets whose every norm comes from one factory, and the pieces both ResNet families share.

Both families (torchvision's ImageNet ResNets here, the CIFAR-style ones in
:mod:`normbench.models.cifar_resnet`) are built from the same three things, which live only here:

* :class:`NormFactory` -- builds each norm layer by name and options through the norm zoo, and the
  activation that follows a norm;
* :class:`BasicBlock` / :class:`Bottleneck` -- torchvision's residual blocks with one activation
  module per position instead of one shared ``relu``;
* :func:`init_weights` -- the Group Normalization paper's initialisation.

Norms that replace the activation (FRN + TLU, EvoNorm) are placed by position, the same way for
every norm, rather than by rewriting forward functions:

* a norm followed by an activation (inside a block, the stem's) is built by
  ``factory.norm_act(channels)`` as a (norm, activation) pair: (norm, ReLU) normally, and
  (the norm with its nonlinearity fused in, Identity) for a norm that replaces the activation;
* a norm before a residual addition, and a shortcut's norm, is ``factory(channels)``: for a norm
  that replaces the activation, the layer without its nonlinearity (a bare FRN; EvoNorm's
  affine-only form, as in the EvoNorm authors' ResNet code);
* the activation after each residual addition is ``factory.activation(channels)``: ReLU, or the
  norm's own (a TLU for FRN; EvoNorm's authors keep ReLU there).

For BN, GN, ... the modules and the state-dict keys are exactly torchvision's (the activations
hold no parameters), so torchvision checkpoints still load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv

from normbench.errors import UserError
from normbench.norms import build_norm, get_norm_spec


class NormFactory:
    """Builds the norm and activation modules of one model.

    Call it with a channel count to get a norm layer with no activation after it (it is the
    ``norm_layer`` torchvision's ResNet takes; blocks rebuild their norm + activation pairs with
    :meth:`norm_act`); :meth:`activation` gives the module after a residual addition. A bad norm
    option becomes a :class:`UserError` prefixed with the model name (the norm zoo's message
    names the layer width where the width is the problem).
    """

    def __init__(self, model: str, norm: str, options: Mapping[str, Any] | None = None) -> None:
        self.spec = get_norm_spec(norm)
        self.model = model
        self.norm = norm
        self.norm_options = dict(options or {})

    def _build(self, num_channels: int, act: bool) -> nn.Module:
        try:
            return build_norm(self.norm, num_channels, act=act, **self.norm_options)
        except UserError as err:
            # The zoo's messages name the channel count where it matters ("groups=32 does not
            # divide 16 channels"); the model name says where that layer is.
            raise UserError(f"{self.model}: {err}") from err

    def __call__(self, num_channels: int) -> nn.Module:
        """A norm layer over ``num_channels`` channels that no activation follows."""
        return self._build(num_channels, act=False)

    def norm_act(self, num_channels: int) -> tuple[nn.Module, nn.Module]:
        """(norm, activation) for a norm + ReLU position of the network.

        A norm that replaces the activation comes with its nonlinearity fused in and an
        Identity in the activation slot: the layer :func:`~normbench.norms.build_norm` gives
        (and scripts/bench_norms.py times).
        """
        if self.spec.replaces_activation:
            return self._build(num_channels, act=True), nn.Identity()
        return self._build(num_channels, act=False), nn.ReLU(inplace=True)

    def activation(self, num_channels: int) -> nn.Module:
        """The module after a residual addition."""
        if self.spec.activation is None:
            return nn.ReLU(inplace=True)
        given = {k: v for k, v in self.norm_options.items() if v is not None}
        return self.spec.activation(num_channels, **given)


def _activation(norm_layer: Any, num_channels: int) -> nn.Module:
    """The activation after a residual addition: ReLU unless a factory says otherwise.

    Anything else torchvision passes (None, ``nn.BatchNorm2d``) gets its ReLU, so the blocks
    stay drop-in replacements for torchvision's.
    """
    if isinstance(norm_layer, NormFactory):
        return norm_layer.activation(num_channels)
    return nn.ReLU(inplace=True)


def _norm_act(norm_layer: Any, norm: nn.Module, num_channels: int) -> tuple[nn.Module, nn.Module]:
    """(norm, activation) for a norm + ReLU position; ``norm`` is what torchvision built there.

    torchvision builds every norm through ``norm_layer`` alone; a factory rebuilds those that an
    activation follows as a pair (FRN with its TLU, EvoNorm with its nonlinearity).
    """
    if isinstance(norm_layer, NormFactory):
        return norm_layer.norm_act(num_channels)
    return norm, nn.ReLU(inplace=True)


class BasicBlock(tv.BasicBlock):
    """torchvision's BasicBlock with its two activations as separate modules.

    ``act1`` follows ``bn1``; ``act_out`` follows the residual addition. ``bn2`` is the block's
    last norm (zero-initialised by :func:`init_weights`).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__(
            inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer
        )
        del self.relu  # replaced by one module per slot: they differ for FRN and EvoNorm
        self.bn1, self.act1 = _norm_act(norm_layer, self.bn1, planes)
        self.act_out = _activation(norm_layer, planes * self.expansion)

    @property
    def last_norm(self) -> nn.Module:
        """The norm just before the residual addition."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act_out(out + shortcut)


class Bottleneck(tv.Bottleneck):
    """torchvision's Bottleneck (ResNet v1.5, stride in the 3x3 conv) with separate activations.

    ``act1`` follows ``bn1``, ``act2`` follows ``bn2``, ``act_out`` follows the residual addition.
    ``bn3`` is the block's last norm.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__(
            inplanes, planes, stride, downsample, groups, base_width, dilation, norm_layer
        )
        del self.relu  # replaced by one module per slot: they differ for FRN and EvoNorm
        width = self.conv1.out_channels
        self.bn1, self.act1 = _norm_act(norm_layer, self.bn1, width)
        self.bn2, self.act2 = _norm_act(norm_layer, self.bn2, width)
        self.act_out = _activation(norm_layer, planes * self.expansion)

    @property
    def last_norm(self) -> nn.Module:
        """The norm just before the residual addition."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act_out(out + shortcut)


RESIDUAL_BLOCKS = (BasicBlock, Bottleneck)


def init_weights(model: nn.Module, zero_init_last_norm: bool = True) -> None:
    """The Group Normalization paper's initialisation, in place.

    Convolutions: He normal (fan_out). Linear layers (the classifier): normal, std 0.01, bias 0.
    Norms (every other module with a ``weight`` parameter): gamma 1, beta 0. With
    ``zero_init_last_norm`` the last norm of each residual block gets gamma 0, so every block
    starts as the identity (or as TLU/ReLU of its shortcut).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
        elif isinstance(getattr(module, "weight", None), nn.Parameter):
            nn.init.ones_(module.weight)
            if isinstance(getattr(module, "bias", None), nn.Parameter):
                nn.init.zeros_(module.bias)
    if zero_init_last_norm:
        for module in model.modules():
            if isinstance(module, RESIDUAL_BLOCKS):
                gamma = getattr(module.last_norm, "weight", None)
                # A learned gamma only: frozen BN's is a buffer, and a zero there would switch
                # the block's residual branch off for good.
                if isinstance(gamma, nn.Parameter):
                    nn.init.zeros_(gamma)


# name -> (block, blocks per stage, description)
TORCHVISION_RESNETS: dict[str, tuple[type[tv.BasicBlock | tv.Bottleneck], list[int], str]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], "ResNet-18 (torchvision, basic blocks) for ImageNet"),
    "resnet34": (BasicBlock, [3, 4, 6, 3], "ResNet-34 (torchvision, basic blocks) for ImageNet"),
    "resnet50": (Bottleneck, [3, 4, 6, 3], "ResNet-50 v1.5 (torchvision): the paper's model"),
    "resnet101": (Bottleneck, [3, 4, 23, 3], "ResNet-101 v1.5 (torchvision) for ImageNet"),
}


def torchvision_resnet(
    name: str, factory: NormFactory, num_classes: int, in_channels: int
) -> tv.ResNet:
    """torchvision's ResNet ``name`` (random weights) with the factory's norms and activations.

    This is what ``torchvision.models.resnet50(weights=None, norm_layer=factory)`` builds, with
    our blocks (separate activation slots) passed to torchvision's ``ResNet`` directly. The stem
    norm + activation pair keeps torchvision's names ``bn1`` and ``relu`` (Identity where the
    norm carries its nonlinearity), and a stem conv for ``in_channels`` replaces the RGB one
    when needed.
    """
    block, layers, _ = TORCHVISION_RESNETS[name]
    model = tv.ResNet(block, layers, num_classes=num_classes, norm_layer=factory)
    stem = model.conv1
    model.bn1, model.relu = factory.norm_act(stem.out_channels)
    if in_channels != stem.in_channels:
        model.conv1 = nn.Conv2d(
            in_channels,
            stem.out_channels,
            kernel_size=stem.kernel_size,
            stride=stem.stride,
            padding=stem.padding,
            bias=False,
        )
    return model
