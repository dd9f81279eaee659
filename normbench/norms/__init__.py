"""The normalization zoo: one module per family, one registry that names them.

``build_norm("gn", 256, groups=32)`` builds any norm (channel count first);
``set_emulated_gpus(model, 8)`` makes batch statistics (BN, BRN, EvoNorm-B0, DBN, IterNorm)
per emulated GPU;
``sync_running_stats(model)`` makes running statistics agree across ranks.
"""

from normbench.norms.batch import (
    DEFAULT_EVAL_STATS,
    BatchNorm2d,
    PerGPUStatistics,
    SyncBatchNorm2d,
    alt_running_stats,
    load_alt_running_stats,
    running_stats_of,
    set_emulated_gpus,
    sync_running_stats,
)
from normbench.norms.evonorm import EvoNormB0, EvoNormS0
from normbench.norms.frn import TLU, FilterResponseNorm2d
from normbench.norms.group import GroupNorm, InstanceNorm2d, LayerNorm2d
from normbench.norms.registry import NormSpec, build_norm, get_norm_spec, list_norms
from normbench.norms.renorm import BatchRenorm2d
from normbench.norms.whitening import DecorrelatedBatchNorm2d, IterNorm2d
from normbench.norms.ws import WSConv2d, convert_to_ws

__all__ = [
    "DEFAULT_EVAL_STATS",
    "TLU",
    "BatchNorm2d",
    "BatchRenorm2d",
    "DecorrelatedBatchNorm2d",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNorm2d",
    "GroupNorm",
    "InstanceNorm2d",
    "IterNorm2d",
    "LayerNorm2d",
    "NormSpec",
    "PerGPUStatistics",
    "SyncBatchNorm2d",
    "WSConv2d",
    "alt_running_stats",
    "build_norm",
    "convert_to_ws",
    "get_norm_spec",
    "list_norms",
    "load_alt_running_stats",
    "running_stats_of",
    "set_emulated_gpus",
    "sync_running_stats",
]
