"""The normalization zoo: one module per family, one registry that names them.

``build_norm("gn", 256, groups=32)`` builds any norm (channel count first);
``set_emulated_gpus(model, 8)`` makes BN statistics per emulated GPU;
``sync_running_stats(model)`` makes running statistics agree across ranks.
"""

from normbench.norms.batch import (
    BatchNorm2d,
    SyncBatchNorm2d,
    set_emulated_gpus,
    sync_running_stats,
)
from normbench.norms.frn import TLU, FilterResponseNorm2d
from normbench.norms.group import GroupNorm, InstanceNorm2d, LayerNorm2d
from normbench.norms.registry import NormSpec, build_norm, get_norm_spec, list_norms
from normbench.norms.renorm import BatchRenorm2d
from normbench.norms.ws import WSConv2d, convert_to_ws

__all__ = [
    "TLU",
    "BatchNorm2d",
    "BatchRenorm2d",
    "FilterResponseNorm2d",
    "GroupNorm",
    "InstanceNorm2d",
    "LayerNorm2d",
    "NormSpec",
    "SyncBatchNorm2d",
    "WSConv2d",
    "build_norm",
    "convert_to_ws",
    "get_norm_spec",
    "list_norms",
    "set_emulated_gpus",
    "sync_running_stats",
]
