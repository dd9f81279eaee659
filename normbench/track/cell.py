"""The cell: what one run of a sweep is, computed once when the job composes it.

A cell is named by its experiment and the science overrides that set it apart
(``batch=4,norm=gn,norm.groups=8``: the naming policy below decides which), and described by what
the report groups and labels it by: model, dataset, norm label, batch per GPU, GPUs, total batch,
seed and GN's groups. The job stores it in the run directory (job.json); metrics.json and a
failure record carry its fields, the W&B run is named and tagged from it, the console labels lines
with it and the report reads it back. Nothing parses a directory name to learn what a cell is: a
renamed directory holds the same cell.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench.config import Config, norm_label, total_batch

# ---- the naming policy: which overrides name a cell, spelt how -------------------------------

# Keys that never change the science of a cell, so they stay out of its name (and a change of
# them does not make a run directory hold "another config").
NON_SCIENCE_KEYS = frozenset({
    "name", "out_dir", "rerun", "devices", "progress", "experiment", "launcher", "logger",
    "accelerator", "backend", "log_every_steps", "checkpoint_every_steps", "cpu_threads",
    "metric", "val_batch", "report",
})  # fmt: skip
NON_SCIENCE_PREFIXES = (
    "logger.", "hydra.", "dataset.root", "dataset.workers", "dataset.download", "diagnostics.",
)  # fmt: skip


def is_science_key(key: str) -> bool:
    """Whether a config key (``norm.groups``, or an override's ``+key``) can change results."""
    key = key.lstrip("+~")
    return key not in NON_SCIENCE_KEYS and not key.startswith(NON_SCIENCE_PREFIXES)


def cell_overrides(overrides: Iterable[str], norm: str, batch: int) -> dict[str, str]:
    """The overrides that name a cell, always with its norm and batch, sorted by key."""
    pairs: dict[str, str] = {}
    for item in overrides:
        if not item or "=" not in item:
            continue
        key, value = item.split("=", 1)
        if is_science_key(key):
            pairs[key.lstrip("+~")] = _canonical(value)
    pairs.setdefault("norm", norm)
    pairs.setdefault("batch", str(batch))
    return dict(sorted(pairs.items()))


def _canonical(value: str) -> str:
    """One spelling per number: Hydra rewrites swept floats (1e30 -> 1e+30, 1e-3 -> 0.001), so
    `train` and `sweep` name the same cell alike only if both go through float(). A path (a
    value with a slash, such as model.pretrained's) is named by a digest of it: a directory's
    name holds no slash and may be shorter than a path (config.yaml holds the path itself)."""
    try:
        int(value)
        return value
    except ValueError:
        pass
    try:
        return str(float(value))
    except ValueError:
        if "/" not in value:
            return value
    return "path-" + hashlib.sha1(value.strip("'\"").encode()).hexdigest()[:10]


def cell_name(overrides: Iterable[str], norm: str, batch: int) -> str:
    """Directory name of a cell, e.g. ``batch=4,norm=gn``: stable whatever the override order.
    Also Hydra's ``${cell:...}`` resolver, which names the job's directory alike."""
    return _joined(cell_overrides(overrides, norm, batch))


def _joined(named: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in named.items())


# ---- the cell ------------------------------------------------------------------------------

# The key of the cell's name in its JSON record: "name" would read as the experiment's name
# (the config's `name`), and metrics.json has always said "cell".
NAME_KEY = "cell"


@dataclass(frozen=True)
class Cell:
    name: str  # the run directory's name, e.g. "batch=4,norm=gn"
    overrides: dict[str, str] = field(hash=False)  # the science overrides that name it, by key
    experiment: str
    model: str
    dataset: str
    norm: str
    norm_label: str  # the norm as tables and W&B name it ("gn+ws")
    batch: int  # images per GPU
    gpus: int
    total_batch: int
    seed: int
    groups: int | None
    group_size: int | None

    @classmethod
    def of(cls, cfg: Config, overrides: Iterable[str]) -> Cell:
        """The cell `overrides` (a job's command-line overrides) compose to `cfg`."""
        named = cell_overrides(overrides, cfg.norm.name, cfg.batch)
        return cls(
            name=_joined(named), overrides=named,
            experiment=cfg.name, model=cfg.model.name, dataset=cfg.dataset.name,
            norm=cfg.norm.name, norm_label=norm_label(cfg), batch=cfg.batch, gpus=cfg.gpus,
            total_batch=total_batch(cfg), seed=cfg.seed,
            groups=cfg.norm.groups, group_size=cfg.norm.group_size,
        )  # fmt: skip

    def directory(self, out_dir: str | Path) -> Path:
        """The cell's run directory under `out_dir`: <out_dir>/<experiment>/<name>."""
        return Path(out_dir) / self.experiment / self.name

    def as_dict(self) -> dict[str, Any]:
        """The cell as the flat JSON fields that job.json, metrics.json and the report share."""
        fields = dataclasses.asdict(self)
        return {NAME_KEY: fields.pop("name"), **fields}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Cell:
        """The cell of an :meth:`as_dict` record; other keys (a metrics.json's) are ignored."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
        return cls(name=record[NAME_KEY], **{key: record[key] for key in names})
