"""The cell: what one run of a sweep is, computed once when the job composes it.

A cell is named by its experiment and the science overrides that set it apart
(``batch=4,norm=gn,norm.groups=8``: :func:`normbench.track.rundir.cell_overrides` decides which),
and described by what the report groups and labels it by: model, dataset, norm label, batch per
GPU, GPUs, total batch, seed and GN's groups. The job stores it in the run directory (job.json);
metrics.json and a failure record carry its fields, the W&B run is named and tagged from it, the
console labels lines with it and the report reads it back. Nothing parses a directory name to
learn what a cell is: a renamed directory holds the same cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normbench.config import Config, norm_label, total_batch
from normbench.track.rundir import cell_name, cell_overrides

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
        overrides = list(overrides)
        return cls(
            name=cell_name(overrides, cfg.norm.name, cfg.batch),
            overrides=cell_overrides(overrides, cfg.norm.name, cfg.batch),
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
