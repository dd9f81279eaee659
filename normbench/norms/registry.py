"""The norm registry: name -> NormSpec, and the one place option values are checked.

Every builder takes the channel count first, so a model swaps norms behind one call:
``build_norm("gn", 256, groups=32)``. Options are keyword arguments; ``None`` means "use the
default" (the config system passes every option key, the unused ones as ``None``), and an option
the norm does not take, given a value, is a :class:`~normbench.errors.UserError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from normbench.errors import UserError
from normbench.norms.batch import EVAL_STATS, BatchNorm2d, SyncBatchNorm2d
from normbench.norms.evonorm import EvoNormB0, EvoNormS0
from normbench.norms.frn import FilterResponseNorm2d, frn_activation
from normbench.norms.group import GroupNorm, InstanceNorm2d, LayerNorm2d
from normbench.norms.renorm import BatchRenorm2d
from normbench.norms.whitening import RUNNING_ESTIMATES, DecorrelatedBatchNorm2d, IterNorm2d


@dataclass(frozen=True)
class NormSpec:
    """What the registry knows about one norm."""

    name: str
    description: str
    options: dict[str, str]  # option -> help text (with its default)
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
    "eps": "added to the variance (default 1e-5)",
    "momentum": "running-statistics EMA factor, as in nn.BatchNorm2d (default 0.1)",
    "eval_stats": "running statistics for evaluation with several emulated GPUs: 'average' "
    "(mean over GPUs) or 'first' (GPU 0's, like DDP's buffer broadcast) (default average)",
}


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _groups_from(
    name: str, num_channels: int, groups: int | None, group_size: int | None, default: int
) -> int:
    """The number of groups from either ``groups`` or ``group_size`` (channels per group)."""
    if groups is not None and group_size is not None:
        raise UserError(
            f"{name}: groups={groups} and group_size={group_size} both set (allowed: one of them)"
        )
    if group_size is not None:
        if num_channels % group_size:
            raise UserError(
                f"{name}: group_size={group_size} does not divide {num_channels} channels "
                f"(allowed: {_divisors(num_channels)})"
            )
        return num_channels // group_size
    groups = default if groups is None else groups
    if num_channels % groups:
        raise UserError(
            f"{name}: groups={groups} does not divide {num_channels} channels "
            f"(allowed: {_divisors(num_channels)}; or set group_size)"
        )
    return groups


def _build_gn(
    num_channels: int, groups: int | None = None, group_size: int | None = None, eps: float = 1e-5
) -> nn.Module:
    """GN from either the number of groups or the channels per group (default 32 groups)."""
    groups = _groups_from("gn", num_channels, groups, group_size, default=32)
    return GroupNorm(num_channels, num_groups=groups, eps=eps)


def _build_evonorm_s0(
    num_channels: int,
    groups: int | None = None,
    group_size: int | None = None,
    eps: float = 1e-5,
    act: bool = True,
) -> nn.Module:
    """EvoNorm-S0 with GN's grouping options (default 32 groups)."""
    groups = _groups_from("evonorm_s0", num_channels, groups, group_size, default=32)
    return EvoNormS0(num_channels, groups=groups, eps=eps, act=act)


# 16 channels per whitening group divides every width of the CPU ResNets (16, 32, 64, ...) and
# keeps the per-group matrices small; the IterNorm paper used 64 on ImageNet.
WHITENING_GROUP_SIZE = 16


def _whitening_builder(name: str, cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """A builder that names the widths ``group_size`` may take when it does not divide C."""

    def build(
        num_channels: int, group_size: int = WHITENING_GROUP_SIZE, **options: Any
    ) -> nn.Module:
        if num_channels % group_size:
            raise UserError(
                f"{name}: group_size={group_size} does not divide {num_channels} channels "
                f"(allowed: {_divisors(num_channels)})"
            )
        return cls(num_channels, group_size=group_size, **options)

    return build


_GROUP_OPTIONS = {  # GN's and EvoNorm-S0's: statistics per group of C/G channels
    "groups": "number of groups G (default 32; exclusive with group_size)",
    "group_size": "channels per group, C/G (exclusive with groups)",
    "eps": "added to the variance (default 1e-5)",
}
_WHITENING_OPTIONS = {
    "group_size": f"channels per whitening group (default {WHITENING_GROUP_SIZE})",
    "eps": "added to the covariance's diagonal (default 1e-5)",
    "momentum": "running-statistics EMA factor (default 0.1)",
    "eval_stats": _BN_OPTIONS["eval_stats"],
    "running": "what evaluation's running statistics estimate: 'covariance' (averaged batch "
    "covariances, whitened at evaluation) or 'whitening' (averaged whitening matrices, as "
    "the DBN and IterNorm papers' code) (default covariance)",
}

_SPECS = {
    spec.name: spec
    for spec in [
        NormSpec(
            name="bn",
            description="Batch Norm: per channel over (N, H, W) of each GPU's batch "
            "(emulated GPUs: per chunk)",
            options=dict(_BN_OPTIONS),
            batch_dependent=True,
            replaces_activation=False,
            builder=BatchNorm2d,
        ),
        NormSpec(
            name="syncbn",
            description="synchronized Batch Norm: per channel over (N, H, W) of all GPUs' batches",
            options={k: v for k, v in _BN_OPTIONS.items() if k != "eval_stats"},
            batch_dependent=True,
            replaces_activation=False,
            builder=SyncBatchNorm2d,
        ),
        NormSpec(
            name="brn",
            description="Batch Renormalization (Ioffe 2017): BN pulled toward the moving "
            "statistics by clipped r, d; BN at inference",
            options={
                **_BN_OPTIONS,
                "r_max": "final clip of r = sigma_B / sigma to [1/r_max, r_max] (default 1.5)",
                "d_max": "final clip of d = (mu_B - mu) / sigma to [-d_max, d_max] (default 0.5)",
                "warmup_steps": "training steps of plain BN (r_max=1, d_max=0) (default 5000)",
                "relax_steps": "steps after warmup over which r_max, d_max grow linearly to "
                "their final values (default 20000)",
            },
            batch_dependent=True,
            replaces_activation=False,
            builder=BatchRenorm2d,
        ),
        NormSpec(
            name="gn",
            description="Group Norm (Wu & He 2018): per sample over (C/G, H, W) of each group",
            options=dict(_GROUP_OPTIONS),
            batch_dependent=False,
            replaces_activation=False,
            builder=_build_gn,
        ),
        NormSpec(
            name="ln",
            description="Layer Norm: per sample over (C, H, W), per-channel affine (GN, G=1)",
            options={"eps": "added to the variance (default 1e-5)"},
            batch_dependent=False,
            replaces_activation=False,
            builder=LayerNorm2d,
        ),
        NormSpec(
            name="in",
            description="Instance Norm: per sample and channel over (H, W) (GN, G=C)",
            options={"eps": "added to the variance (default 1e-5)"},
            batch_dependent=False,
            replaces_activation=False,
            builder=InstanceNorm2d,
        ),
        NormSpec(
            name="frn",
            description="Filter Response Norm + TLU (Singh & Krishnan 2020): "
            "x / sqrt(mean_HW x^2 + eps), affine, max(., tau); replaces the ReLU",
            options={
                "eps": "added to the mean square (default 1e-6)",
                "learned_eps": "eps = eps + |eps_l|, eps_l learned per channel, init 1e-4 "
                "(for 1x1 feature maps) (default false)",
                "tlu": "FRN's nonlinearity: the TLU max(y, tau) (true) or ReLU (false, the "
                "paper's 'FRN without TLU') (default true)",
            },
            batch_dependent=False,
            replaces_activation=True,
            builder=FilterResponseNorm2d,
            activation=frn_activation,
        ),
        NormSpec(
            name="evonorm_b0",
            description="EvoNorm-B0 (Liu et al. 2020): x / max(sqrt(batch var + eps), "
            "v x + instance std), affine; replaces the ReLU (per-GPU batch variance)",
            options={
                "eps": "added to the variances (default 1e-5)",
                "momentum": "running-variance EMA factor (default 0.1)",
                "eval_stats": _BN_OPTIONS["eval_stats"],
            },
            batch_dependent=True,
            replaces_activation=True,
            builder=EvoNormB0,
        ),
        NormSpec(
            name="evonorm_s0",
            description="EvoNorm-S0 (Liu et al. 2020): x sigmoid(v x) / group std, affine; "
            "replaces the ReLU (no batch statistics)",
            options=dict(_GROUP_OPTIONS),
            batch_dependent=False,
            replaces_activation=True,
            builder=_build_evonorm_s0,
        ),
        NormSpec(
            name="dbn",
            description="Decorrelated BN (Huang et al. 2018): ZCA whitening of channel groups "
            "over each GPU's batch (eigendecomposition, float64)",
            options=dict(_WHITENING_OPTIONS),
            batch_dependent=True,
            replaces_activation=False,
            builder=_whitening_builder("dbn", DecorrelatedBatchNorm2d),
        ),
        NormSpec(
            name="iternorm",
            description="Iterative Normalization (Huang et al. 2019): whitening of channel "
            "groups over each GPU's batch by Newton's iterations",
            options={
                **_WHITENING_OPTIONS,
                "iterations": "Newton iterations T (default 5)",
            },
            batch_dependent=True,
            replaces_activation=False,
            builder=_whitening_builder("iternorm", IterNorm2d),
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
    if spec.replaces_activation:
        given["act"] = act
    return spec.builder(num_channels, **given)
