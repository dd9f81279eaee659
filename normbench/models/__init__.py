"""Model builders: ResNets whose norm layers are chosen by name.

    from normbench.models import build_model, list_models
    model = build_model("resnet50", norm="gn", norm_options={"groups": 32})

Every model is built the same way: a :class:`~normbench.models.resnet.NormFactory` for the norm,
the family's builder, the Group Normalization paper's initialisation, then weight
standardization of every conv when ``ws`` is set.

A model's name also says its task (:func:`model_task`): the classifiers here, and the detectors
of :mod:`normbench.models.detection` (Mask R-CNN, built by its ``build_detector``), whose
backbones start from a classification run's checkpoint (:func:`pretrained_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from normbench.errors import UserError
from normbench.models.cifar_resnet import CIFAR_RESNETS, DEFAULT_WIDTH, cifar_resnet
from normbench.models.resnet import (
    TORCHVISION_RESNETS,
    NormFactory,
    init_weights,
    torchvision_resnet,
)
from normbench.norms.ws import convert_to_ws

__all__ = [
    "TASKS",
    "build_model",
    "list_detection_models",
    "list_models",
    "model_task",
    "pretrained_checkpoint",
]

TASKS = ("classification", "detection")

# builder(factory, num_classes, in_channels, width) -> model
Builder = Callable[[NormFactory, int, int, int | None], nn.Module]


@dataclass(frozen=True)
class _ModelEntry:
    description: str
    build: Builder


def _torchvision_builder(name: str) -> Builder:
    def build(
        factory: NormFactory, num_classes: int, in_channels: int, width: int | None
    ) -> nn.Module:
        if width is not None:
            raise UserError(
                f"{name}: width={width} is not supported (torchvision ResNets have fixed widths; "
                f"width applies to {', '.join(CIFAR_RESNETS)})"
            )
        return torchvision_resnet(name, factory, num_classes, in_channels)

    return build


def _cifar_description(blocks: int) -> str:
    return (
        f"ResNet-{6 * blocks + 2} for small images (He et al. 2016): 3 stages x {blocks} basic "
        f"blocks, widths w/2w/4w, w={DEFAULT_WIDTH} by default"
    )


_MODELS: dict[str, _ModelEntry] = {
    **{
        name: _ModelEntry(_cifar_description(blocks), partial(cifar_resnet, name))
        for name, blocks in CIFAR_RESNETS.items()
    },
    **{
        name: _ModelEntry(description, _torchvision_builder(name))
        for name, (_, _, description) in TORCHVISION_RESNETS.items()
    },
}


def list_models() -> list[tuple[str, str]]:
    """(name, one-line description) of every model, small CIFAR-style ones first."""
    return [(name, entry.description) for name, entry in _MODELS.items()]


def _check_positive(model: str, **values: int | None) -> None:
    for key, value in values.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"{model}: {key} must be a positive integer, got {value!r}")


def build_model(
    name: str,
    norm: str = "bn",
    num_classes: int = 1000,
    in_channels: int = 3,
    ws: bool = False,
    zero_init_last_norm: bool = True,
    width: int | None = None,
    norm_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build model ``name`` with norm ``norm`` (options in ``norm_options``) and random weights.

    ``width`` is the base width of the CIFAR-style ResNets (16 when None); ``ws`` standardizes
    every conv's weights (Qiao et al.); ``zero_init_last_norm`` sets gamma = 0 in the last norm
    of every residual block, as the paper does. Bad names and options raise :class:`UserError`.
    """
    entry = _MODELS.get(name)
    if entry is None:
        raise UserError(f"unknown model {name!r} (allowed: {', '.join(_MODELS)})")
    _check_positive(name, num_classes=num_classes, in_channels=in_channels, width=width)
    factory = NormFactory(name, norm, norm_options)
    model = entry.build(factory, num_classes, in_channels, width)
    init_weights(model, zero_init_last_norm=zero_init_last_norm)
    if ws:
        model = convert_to_ws(model)
    return model


# ---- detection ---------------------------------------------------------------------------


def list_detection_models() -> list[tuple[str, str]]:
    """(name, one-line description) of every detector (normbench.models.detection)."""
    from normbench.models.detection import list_detectors

    return list_detectors()


def model_task(name: str) -> str:
    """The task model ``name`` is for, one of :data:`TASKS`: a detector's name says detection,
    any other classification (an unknown name is refused where the config is validated)."""
    if name in _MODELS:  # without importing the detectors (torchvision's detection code)
        return "classification"
    detectors = {detector for detector, _ in list_detection_models()}
    return "detection" if name in detectors else "classification"


def pretrained_checkpoint(path: str) -> Path:
    """The checkpoint file that ``model.pretrained`` names: a classification run directory
    (its checkpoint.pt, once the run has finished) or a checkpoint file. Raises UserError."""
    from normbench.track.rundir import RunDir

    given = Path(path)
    allowed = (
        "allowed: a classification run directory holding checkpoint.pt, a checkpoint file, or "
        "null to train from scratch"
    )
    if given.is_file():
        return given
    if not given.is_dir():
        raise UserError(f"model.pretrained={path} does not exist ({allowed})")
    run = RunDir(given)
    if not run.checkpoint.is_file():
        raise UserError(f"model.pretrained={path} holds no {run.checkpoint.name} ({allowed})")
    status = (run.read_metrics() or {}).get("status") or "running, or stopped"
    if status != "finished":
        raise UserError(
            f"model.pretrained={path}: its run has not finished ({status}); finish it first "
            "(rerun its command), or name a checkpoint file"
        )
    return run.checkpoint
