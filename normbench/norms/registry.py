"""The norm registry: name -> NormSpec, and the one place option values are checked.

Every builder takes the channel count first, so a model swaps norms behind one call:
``build_norm("gn", 256, groups=32)``. Options are keyword arguments; ``None`` means "use the
default" (the config system passes every option key, the unused ones as ``None``), and an option
the norm does not take, given a value, is a :class:`~normbench.errors.UserError`. An option's
default is stated once, by the layer's constructor; the help of ``normbench norms`` reads it
from there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normbench.errors import UserError
from normbench.norms.batch import EVAL_STATS, BatchNorm2d, SyncBatchNorm2d
from normbench.norms.evonorm import EvoNormB0, EvoNormS0
from normbench.norms.frn import LEARNED_EPS_INIT, FilterResponseNorm2d, frn_activation
from normbench.norms.frozen import frozen_batch_norm
from normbench.norms.group import GroupNorm, InstanceNorm2d, LayerNorm2d
from normbench.norms.renorm import BatchRenorm2d
from normbench.norms.whitening import RUNNING_ESTIMATES, DecorrelatedBatchNorm2d, IterNorm2d


@dataclass(frozen=True)
class NormSpec:
    """What the registry knows about one norm."""

    name: str
    description: str
    options: dict[str, str]  # option -> help text, ending with the constructor's default
    batch_dependent: bool  # statistics mix samples: behaviour depends on the per-GPU batch
    replaces_activation: bool  # includes its own nonlinearity: the model adds no ReLU after it
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    # For a norm that replaces the activation: the activation after a residual addition, from
    # (channels, **options); None = ReLU.
    activation: Callable[..., nn.Module] | None = field(default=None, repr=False, compare=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# option -> (what is allowed, check). Options mean the same thing in every norm that takes them.
_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "eps": ("a number > 0", lambda v: _is_number(v) and v > 0),
    "momentum": ("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1),
    "eval_stats": (" or ".join(EVAL_STATS), lambda v: v in EVAL_STATS),
    "groups": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "group_size": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "r_max": ("a number >= 1", lambda v: _is_number(v) and v >= 1),
    "d_max": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "warmup_steps": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "relax_steps": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "learned_eps": ("true or false", lambda v: isinstance(v, bool)),
    "tlu": ("true or false", lambda v: isinstance(v, bool)),
    "iterations": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "running": (" or ".join(RUNNING_ESTIMATES), lambda v: v in RUNNING_ESTIMATES),
}

_BN_OPTIONS = {
    "eps": "added to the variance",
    "momentum": "running-statistics EMA factor, as in nn.BatchNorm2d",
    "eval_stats": "running statistics for evaluation with several emulated GPUs: 'average' "
    "(mean over GPUs) or 'first' (GPU 0's, like DDP's buffer broadcast)",
}


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def option_defaults(builder: Callable[..., nn.Module], options: Iterable[str]) -> dict[str, Any]:
    """The default of each of ``options`` that ``builder`` (a layer class) states."""
    parameters = inspect.signature(builder).parameters
    return {
        name: parameters[name].default
        for name in options
        if name in parameters and parameters[name].default is not inspect.Parameter.empty
    }


def _with_defaults(builder: Callable[..., nn.Module], options: dict[str, str]) -> dict[str, str]:
    """Each option's help text followed by its default as ``builder`` states it (as the command
    line writes it: true/false, 1e-05, first)."""
    defaults = option_defaults(builder, options)
    shown = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in defaults.items()}
    return {
        k: f"{text} (default {shown[k]})" if k in shown else text for k, text in options.items()
    }


def _grouping(spec: NormSpec, num_channels: int, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` with its grouping checked against the channel count: ``groups`` (G) or
    ``group_size`` (C/G channels per group), the two axes of the paper's group ablation, never
    both. A layer that takes G gets a group_size as G = C / group_size."""
    if "groups" in given and "group_size" in given:
        raise UserError(
            f"{spec.name}: groups={given['groups']} and group_size={given['group_size']} both set "
            "(allowed: one of them)"
        )
    defaults = option_defaults(spec.builder, ("groups", "group_size"))
    group_size = given.get("group_size", defaults.get("group_size"))
    if group_size is not None:
        if num_channels % group_size:
            raise UserError(
                f"{spec.name}: group_size={group_size} does not divide {num_channels} channels "
                f"(allowed: {_divisors(num_channels)})"
            )
        if "groups" in defaults:  # the layer takes G
            given = {k: v for k, v in given.items() if k != "group_size"}
            given["groups"] = num_channels // group_size
        return given
    groups = given.get("groups", defaults.get("groups"))
    if groups is not None and num_channels % groups:
        raise UserError(
            f"{spec.name}: groups={groups} does not divide {num_channels} channels "
            f"(allowed: {_divisors(num_channels)}; or set group_size)"
        )
    return given


_GROUP_OPTIONS = {  # GN's and EvoNorm-S0's: statistics per group of C/G channels
    "groups": "number of groups G, exclusive with group_size",
    "group_size": "channels per group, C/G, exclusive with groups",
    "eps": "added to the variance",
}
_WHITENING_OPTIONS = {
    "group_size": "channels per whitening group",
    "eps": "added to the covariance's diagonal",
    "momentum": "running-statistics EMA factor",
    "eval_stats": _BN_OPTIONS["eval_stats"],
    "running": "what evaluation's running statistics estimate: 'covariance' (averaged batch "
    "covariances, whitened at evaluation) or 'whitening' (averaged whitening matrices, as "
    "the DBN and IterNorm papers' code)",
}


def _spec(
    name: str, builder: Callable[..., nn.Module], options: dict[str, str], **fields: Any
) -> NormSpec:
    """A NormSpec whose option help ends with the defaults of ``builder``'s constructor."""
    return NormSpec(name=name, builder=builder, options=_with_defaults(builder, options), **fields)


_SPECS = {
    spec.name: spec
    for spec in [
        _spec(
            "bn",
            BatchNorm2d,
            dict(_BN_OPTIONS),
            description="Batch Norm: per channel over (N, H, W) of each GPU's batch "
            "(emulated GPUs: per chunk)",
            batch_dependent=True,
            replaces_activation=False,
        ),
        _spec(
            "syncbn",
            SyncBatchNorm2d,
            {k: v for k, v in _BN_OPTIONS.items() if k != "eval_stats"},
            description="synchronized Batch Norm: per channel over (N, H, W) of all GPUs' batches",
            batch_dependent=True,
            replaces_activation=False,
        ),
        _spec(
            "brn",
            BatchRenorm2d,
            {
                **_BN_OPTIONS,
                "r_max": "final clip of r = sigma_B / sigma to [1/r_max, r_max]",
                "d_max": "final clip of d = (mu_B - mu) / sigma to [-d_max, d_max]",
                "warmup_steps": "training steps of plain BN (r_max=1, d_max=0)",
                "relax_steps": "steps after warmup over which r_max, d_max grow linearly to "
                "their final values",
            },
            description="Batch Renormalization (Ioffe 2017): BN pulled toward the moving "
            "statistics by clipped r, d; BN at inference",
            batch_dependent=True,
            replaces_activation=False,
        ),
        _spec(
            "frozen_bn",
            frozen_batch_norm,
            {"eps": "added to the running variance"},
            description="frozen Batch Norm (the paper's BN*): a BN checkpoint's statistics and "
            "affine as a fixed per-channel affine, nothing trained (from random init: identity)",
            batch_dependent=False,
            replaces_activation=False,
        ),
        _spec(
            "gn",
            GroupNorm,
            dict(_GROUP_OPTIONS),
            description="Group Norm (Wu & He 2018): per sample over (C/G, H, W) of each group",
            batch_dependent=False,
            replaces_activation=False,
        ),
        _spec(
            "ln",
            LayerNorm2d,
            {"eps": "added to the variance"},
            description="Layer Norm: per sample over (C, H, W), per-channel affine (GN, G=1)",
            batch_dependent=False,
            replaces_activation=False,
        ),
        _spec(
            "in",
            InstanceNorm2d,
            {"eps": "added to the variance"},
            description="Instance Norm: per sample and channel over (H, W) (GN, G=C)",
            batch_dependent=False,
            replaces_activation=False,
        ),
        _spec(
            "frn",
            FilterResponseNorm2d,
            {
                "eps": "added to the mean square",
                "learned_eps": f"eps = eps + |eps_l|, eps_l learned per channel, init "
                f"{LEARNED_EPS_INIT} (for 1x1 feature maps)",
                "tlu": "FRN's nonlinearity: the TLU max(y, tau) (true) or ReLU (false, the "
                "paper's 'FRN without TLU')",
            },
            description="Filter Response Norm + TLU (Singh & Krishnan 2020): "
            "x / sqrt(mean_HW x^2 + eps), affine, max(., tau); replaces the ReLU",
            batch_dependent=False,
            replaces_activation=True,
            activation=frn_activation,
        ),
        _spec(
            "evonorm_b0",
            EvoNormB0,
            {
                "eps": "added to the variances",
                "momentum": "running-variance EMA factor",
                "eval_stats": _BN_OPTIONS["eval_stats"],
            },
            description="EvoNorm-B0 (Liu et al. 2020): x / max(sqrt(batch var + eps), "
            "v x + instance std), affine; replaces the ReLU (per-GPU batch variance)",
            batch_dependent=True,
            replaces_activation=True,
        ),
        _spec(
            "evonorm_s0",
            EvoNormS0,
            dict(_GROUP_OPTIONS),
            description="EvoNorm-S0 (Liu et al. 2020): x sigmoid(v x) / group std, affine; "
            "replaces the ReLU (no batch statistics)",
            batch_dependent=False,
            replaces_activation=True,
        ),
        _spec(
            "dbn",
            DecorrelatedBatchNorm2d,
            dict(_WHITENING_OPTIONS),
            description="Decorrelated BN (Huang et al. 2018): ZCA whitening of channel groups "
            "over each GPU's batch (eigendecomposition, float64)",
            batch_dependent=True,
            replaces_activation=False,
        ),
        _spec(
            "iternorm",
            IterNorm2d,
            {**_WHITENING_OPTIONS, "iterations": "Newton iterations T"},
            description="Iterative Normalization (Huang et al. 2019): whitening of channel "
            "groups over each GPU's batch by Newton's iterations",
            batch_dependent=True,
            replaces_activation=False,
        ),
    ]
}


def list_norms() -> list[NormSpec]:
    """Every registered norm, sorted by name."""
    return [_SPECS[name] for name in sorted(_SPECS)]


def get_norm_spec(name: str) -> NormSpec:
    """The spec of norm ``name``; UserError naming the allowed names if there is none."""
    spec = _SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UserError(f"unknown norm {name!r} (allowed: {', '.join(sorted(_SPECS))})")
    return spec


def build_norm(name: str, num_channels: int, *, act: bool = True, **options: Any) -> nn.Module:
    """Build norm ``name`` for ``num_channels`` channels; options set to None take defaults.

    ``act`` concerns only norms that replace the activation: True builds the layer with its
    nonlinearity (where a norm + ReLU pair stood), False without it (before a residual
    addition). Other norms never include an activation and ignore it.
    """
    spec = get_norm_spec(name)
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"num_channels must be a positive integer, got {num_channels!r}")
    given = {key: value for key, value in options.items() if value is not None}
    for key, value in given.items():
        if key not in spec.options:
            raise UserError(
                f"norm '{name}' has no option '{key}' (allowed: {', '.join(sorted(spec.options))})"
            )
        allowed, check = _CHECKS[key]
        if not check(value):
            raise UserError(f"{name}: {key}={value!r} is invalid (allowed: {allowed})")
    given = _grouping(spec, num_channels, given)
    if spec.replaces_activation:
        given["act"] = act
    return spec.builder(num_channels, **given)
