"""Mask R-CNN detectors whose norms are chosen by name: the Group Normalization paper's COCO
models (section 6.1) and a CPU mini of them.

    from normbench.models.detection import build_detector, load_backbone
    model = build_detector("maskrcnn_mini", norm="gn", num_classes=11, in_channels=1,
                           norm_options={"groups": 8})
    load_backbone(model, torch.load(run / "checkpoint.pt", weights_only=False)["model"])

Both are assembled from torchvision's detection parts (a ResNet body under a
:class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN`, torchvision's RPN, a
conv + fc box head and a conv mask head) with one :class:`~normbench.models.resnet.NormFactory`
at every place the paper puts a norm: the backbone body, the FPN (after each lateral and output
conv), the box head's convs and the mask head's convs. The RPN head, the box head's fc layer and
the predictors have none, as in Detectron's GN models.

The exception is ``frozen_bn``, the paper's BN* baseline: the body's BN is frozen (its
pretrained statistics and affine parameters are a fixed per-channel affine, loaded with
:func:`load_backbone`) and the FPN and heads have no norm at all (their convs get biases). That
is Detectron's BN* model; a frozen BN from random initialisation in the FPN and heads would be
the identity.

Every conv trains, the body's stem and first stage included: frozen BN fixes statistics and
affine parameters, not weights. (Detectron's fine-tuning recipes also freeze the stem and first
stage, FREEZE_AT=2; its GN-from-scratch recipes freeze nothing. These models do not.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import Conv2dNormActivation, FrozenBatchNorm2d, MultiScaleRoIAlign

from normbench.data.fashion_mnist import MEAN, STD
from normbench.errors import UserError
from normbench.models.cifar_resnet import CIFAR_RESNETS, cifar_resnet
from normbench.models.resnet import NormFactory, init_weights, torchvision_resnet
from normbench.norms import load_alt_running_stats

__all__ = ["build_detector", "list_detectors", "load_backbone"]

FROZEN = "frozen_bn"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's detectors' defaults (RGB)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The mini's defaults, for 64-px scenes of 12-28 px items on one CPU thread (see maskrcnn_mini).
MINI_IMAGE_SIZE = 64
MINI_CHANNELS = 32
MINI_BOX_CONVS = 2
MINI_MASK_CONVS = 2
MINI_FC = 256
MINI_MASK_POOL = 7  # the mask head's RoI side: masks of 14 px after its 2x upsampling
# Fewer proposals and sampled RoIs per image than COCO's (2000/1000 proposals, 512 RoIs): a
# scene holds at most 4 items, and every RoI costs the heads' convs on a CPU (32 RoIs, a
# quarter of them positive, still sample up to 8 per image).
MINI_OPTIONS: dict[str, Any] = {
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 150,
    "rpn_post_nms_top_n_test": 50,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 50,
}


def _normalization(in_channels: int) -> dict[str, list[float]]:
    """The mean and std the detector's transform normalizes images with, by channel count:
    Fashion-MNIST's for grey scenes, ImageNet's (torchvision's default) for RGB. Other counts
    must give ``image_mean`` and ``image_std`` among the options (they override these)."""
    if in_channels == 1:
        return {"image_mean": list(MEAN), "image_std": list(STD)}
    if in_channels == 3:
        return {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    return {}


def _heads_factory(factory: NormFactory) -> NormFactory | None:
    """The norm of the FPN and heads: the body's, or none for frozen BN (BN*)."""
    return None if factory.norm == FROZEN else factory


def _with_norm_act(head: nn.Module, factory: NormFactory | None) -> nn.Module:
    """``head`` with each (norm, ReLU) of its conv blocks rebuilt as ``factory.norm_act``.

    torchvision's blocks put a ReLU after the norm; a norm that replaces the activation (FRN +
    TLU, EvoNorm) takes that place with its nonlinearity, as in the ResNet blocks. Other norms
    keep (norm, ReLU).
    """
    if factory is None or not factory.spec.replaces_activation:
        return head
    for block in head.modules():
        if isinstance(block, Conv2dNormActivation) and len(block) == 3:
            block[1], block[2] = factory.norm_act(block[0].out_channels)
    return head


def _body(resnet: nn.Module, factory: NormFactory) -> nn.Module:
    """The classifier ``resnet`` with the paper's initialisation; zero-init of each block's last
    norm only where that norm's gamma trains (a frozen BN's is a buffer: zero would stay)."""
    init_weights(resnet, zero_init_last_norm=factory.norm != FROZEN)
    return resnet


def _mask_rcnn(
    backbone: BackboneWithFPN,
    factory: NormFactory | None,
    num_classes: int,
    box_convs: int,
    mask_convs: int,
    fc: int,
    **options: Any,
) -> MaskRCNN:
    """Mask R-CNN on ``backbone`` with a ``box_convs`` conv + 1 fc box head and a ``mask_convs``
    conv mask head, every conv as wide as the FPN, normalized by ``factory`` (None: no norm)."""
    channels = backbone.out_channels
    box_pool, mask_pool = options.pop("box_roi_pool"), options.pop("mask_roi_pool")
    box_size = box_pool.output_size[0]
    box_head = FastRCNNConvFCHead(
        (channels, box_size, box_size), [channels] * box_convs, [fc], norm_layer=factory
    )
    mask_head = MaskRCNNHeads(channels, [channels] * mask_convs, 1, norm_layer=factory)
    return MaskRCNN(
        backbone,
        box_roi_pool=box_pool,
        box_head=_with_norm_act(box_head, factory),
        box_predictor=FastRCNNPredictor(fc, num_classes),
        mask_roi_pool=mask_pool,
        mask_head=_with_norm_act(mask_head, factory),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes),
        **options,
    )


def maskrcnn_mini(
    factory: NormFactory,
    num_classes: int,
    in_channels: int,
    *,
    backbone: str = "resnet8",
    width: int | None = None,
    image_size: int = MINI_IMAGE_SIZE,
    channels: int = MINI_CHANNELS,
    box_convs: int = MINI_BOX_CONVS,
    mask_convs: int = MINI_MASK_CONVS,
    **options: Any,
) -> MaskRCNN:
    """The CPU mini: Mask R-CNN with FPN on a CIFAR-style ResNet, for 64-px scenes.

    The body is :mod:`normbench.models.cifar_resnet`'s ``backbone`` (the classification
    tables' network, so their checkpoints are its pretrained weights). Its stages 2 and 3
    (strides 2 and 4) feed an FPN of ``channels`` channels, with a max-pooled level on top
    (stride 8); stage 1 (stride 1) is left out, as the paper's FPN leaves out the stem: a
    full-resolution level made a training step 1.4x slower. Anchors of 12 and 17 px on stride
    2, 24 and 34 on stride 4, 48 and 68 on stride 8 (aspect ratios 0.5, 1, 2; two sizes a
    sqrt(2) apart so that every square item of 12-28 px has an anchor of IoU > 0.7). RoIs under
    56 px (every item) are pooled from the stride-2 level, one bilinear sample per bin
    (sampling_ratio=1: RoIAlign's backward was a fifth of a step with 2x2 samples). The box
    head has ``box_convs`` convs + 1 fc of 256, the mask head ``mask_convs`` convs (the paper's:
    4 + 1 fc of 1024, and 4) on RoIs of 7 px, whose masks are 14 px after the predictor's 2x
    upsampling (about the items' own resolution: they are 12-28 px). Images are not resized
    (min_size = max_size = ``image_size``; they are padded to a multiple of 32) and are
    normalized with Fashion-MNIST's mean and std.
    Proposals and sampled RoIs per image are :data:`MINI_OPTIONS`; ``options`` override any of
    torchvision's MaskRCNN arguments.

    Cost, measured with the defaults (results/tuning.md, "The detection mini's cheaper step"):
    a training step of 8 emulated GPUs x 2 scenes (forwards, backward, SGD) takes about 0.30 s
    of CPU time on one thread with gn or bn, against 0.87 s with 64 channels, 64 RoIs per image
    and 14-px mask RoIs.
    """
    if backbone not in CIFAR_RESNETS:
        raise UserError(
            f"maskrcnn_mini: backbone={backbone!r} is unknown (allowed: {', '.join(CIFAR_RESNETS)})"
        )
    resnet = _body(cifar_resnet(backbone, factory, 1, in_channels, width), factory)
    fpn = BackboneWithFPN(
        resnet,
        return_layers={"layer2": "0", "layer3": "1"},
        in_channels_list=[resnet.layer2[-1].conv2.out_channels, resnet.fc.in_features],
        out_channels=channels,
        norm_layer=_heads_factory(factory),
    )
    levels = ["0", "1"]
    defaults = {
        **MINI_OPTIONS,
        "min_size": image_size,
        "max_size": image_size,
        **_normalization(in_channels),
        "rpn_anchor_generator": AnchorGenerator(
            sizes=((12, 17), (24, 34), (48, 68)), aspect_ratios=((0.5, 1.0, 2.0),) * 3
        ),
        "box_roi_pool": MultiScaleRoIAlign(
            levels, output_size=7, sampling_ratio=1, canonical_scale=56, canonical_level=2
        ),
        "mask_roi_pool": MultiScaleRoIAlign(
            levels,
            output_size=MINI_MASK_POOL,
            sampling_ratio=1,
            canonical_scale=56,
            canonical_level=2,
        ),
    }
    return _mask_rcnn(
        fpn,
        _heads_factory(factory),
        num_classes,
        box_convs,
        mask_convs,
        MINI_FC,
        **{**defaults, **options},
    )


def maskrcnn_r50_fpn(
    factory: NormFactory,
    num_classes: int,
    in_channels: int,
    *,
    width: int | None = None,
    image_size: int | None = None,
    **options: Any,
) -> MaskRCNN:
    """The paper's Mask R-CNN: ResNet-50 body, FPN of 256 channels on its four stages (and a
    max-pooled level), a 4conv1fc box head and a 4-conv mask head, every conv normalized.

    Everything else is torchvision's COCO default (images resized to 800-1333 px, anchors of
    32-512 px, 2000 proposals in training, 512 RoIs per image); ``image_size`` (when given)
    fixes the images' size instead, and ``options`` override any of torchvision's MaskRCNN
    arguments. ResNet-50's widths are fixed: ``width`` is refused.
    """
    if width is not None:
        raise UserError(
            f"maskrcnn_r50_fpn: width={width} is not supported (ResNet-50 has fixed widths; "
            "width applies to maskrcnn_mini)"
        )
    resnet = _body(torchvision_resnet("resnet50", factory, 1000, in_channels), factory)
    fpn = BackboneWithFPN(
        resnet,
        return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=[256, 512, 1024, 2048],
        out_channels=256,
        norm_layer=_heads_factory(factory),
    )
    levels = ["0", "1", "2", "3"]
    defaults = {
        **_normalization(in_channels),
        **({} if image_size is None else {"min_size": image_size, "max_size": image_size}),
        "box_roi_pool": MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        "mask_roi_pool": MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
    }
    return _mask_rcnn(
        fpn, _heads_factory(factory), num_classes, 4, 4, 1024, **{**defaults, **options}
    )


@dataclass(frozen=True)
class _DetectorEntry:
    description: str
    build: Callable[..., MaskRCNN]


_DETECTORS: dict[str, _DetectorEntry] = {
    "maskrcnn_mini": _DetectorEntry(
        "Mask R-CNN + FPN on a CIFAR-style ResNet (resnet8 by default), 32-channel FPN and "
        "heads: the CPU mini for 64-px scenes",
        maskrcnn_mini,
    ),
    "maskrcnn_r50_fpn": _DetectorEntry(
        "Mask R-CNN + FPN on ResNet-50, 4conv1fc box head, 4-conv mask head: the paper's COCO "
        "model",
        maskrcnn_r50_fpn,
    ),
}


def list_detectors() -> list[tuple[str, str]]:
    """(name, one-line description) of every detector, the CPU mini first."""
    return [(name, entry.description) for name, entry in _DETECTORS.items()]


def build_detector(
    name: str,
    norm: str = "bn",
    num_classes: int = 91,
    in_channels: int = 3,
    norm_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> MaskRCNN:
    """Build detector ``name`` with norm ``norm`` (options in ``norm_options``), random weights.

    ``num_classes`` counts the background (K + 1 for K categories). ``options`` go to the
    detector's builder: for ``maskrcnn_mini`` its backbone, width, image_size, channels,
    box_convs and mask_convs, and for both any argument of torchvision's ``MaskRCNN`` (e.g.
    ``rpn_batch_size_per_image``). Bad names and norm options raise :class:`UserError`.
    """
    entry = _DETECTORS.get(name)
    if entry is None:
        raise UserError(f"unknown detector {name!r} (allowed: {', '.join(_DETECTORS)})")
    return entry.build(NormFactory(name, norm, norm_options), num_classes, in_channels, **options)


def load_backbone(model: MaskRCNN, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a classification model's weights (the ``"model"`` entry of a classification run's
    checkpoint.pt) into ``model``'s backbone body, in place; its classifier is dropped.

    The checkpoint must come from the body's network with the same norm's parameters and
    buffers: a BN checkpoint fits a bn, syncbn or frozen_bn detector (frozen BN keeps its
    statistics and affine, without a batch counter), a GN one a gn detector. Anything else is a
    :class:`UserError` naming the first keys that differ. BN's second chain of moving averages
    (:func:`~normbench.norms.load_alt_running_stats`) restarts from the loaded ones.
    """
    body = model.backbone.body
    expected = body.state_dict()
    # A frozen BN has no batch counter: BN's is dropped, as FrozenBatchNorm2d's loading does.
    frozen = {name for name, m in body.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    given = {
        key: value
        for key, value in state_dict.items()
        if key.split(".", 1)[0] in body._modules  # the classifier's pooling and fc are not
        and not (key.endswith(".num_batches_tracked") and key.rpartition(".")[0] in frozen)
    }
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    reshaped = sorted(
        k for k in expected.keys() & given.keys() if expected[k].shape != given[k].shape
    )
    problems = [
        f"{what} {_first(keys)}"
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("other shape", reshaped),
        )
        if keys
    ]
    if problems:
        raise UserError(
            f"the checkpoint does not fit the backbone of this detector: {'; '.join(problems)} "
            "(allowed: a classification checkpoint of the same network and norm; a bn "
            "checkpoint also fits syncbn and frozen_bn)"
        )
    body.load_state_dict(given)
    load_alt_running_stats(body, None)


def _first(keys: list[str], shown: int = 3) -> str:
    more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
