"""Weights & Biases: one W&B run per cell, plus one "report" run per sweep.

Layout in W&B: project = ``logger.project``, group = the experiment, job_type ``train`` for cells
and ``report`` for the sweep's table and plots; a cell's run name (``gn-b4``) and tags
``key:value`` (``norm:gn``, ``batch:4``, ...) come from its record
(:class:`~normbench.track.cell.Cell`). The run id lives in ``<run_dir>/wandb_id.txt`` so a
resumed cell continues the same W&B run. Files go to ``<run_dir>/wandb`` (offline runs can be
uploaded later with ``wandb sync <run_dir>/wandb/offline-run-*``).

W&B only mirrors the run directory, so it is never allowed to cost a training run: a missing
wandb package or a failing ``wandb.init``/``finish`` becomes one warning line. wandb is imported
lazily because the import takes about a second and the package is optional.
"""

from __future__ import annotations

import dataclasses
import logging
import netrc
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from normbench.config import WANDB_MODES
from normbench.errors import UserError
from normbench.metrics import VAL_ERRORS
from normbench.track import rundir
from normbench.track.cell import Cell

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ID_FILE = "wandb_id.txt"
REPORT_DIR = "report"
RESULTS_KEY = "results"
# The hosts an API key in ~/.netrc may be stored for when WANDB_BASE_URL is unset: W&B's cloud
# and CoreWeave Forge, the default base URL of recent wandb releases, which serves the same API.
DEFAULT_API_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")
# The loop logs per-epoch rows as "epoch/<history column>" and a fractional "epoch" at each
# logged step: plot the former against the latter.
EPOCH_METRICS = "epoch/*"
# Overrides a run's name already shows through the norm label and the batch.
NAMED_KEYS = frozenset({"norm", "batch", "model.ws"})


class WandbTracker:
    """A :class:`~normbench.track.tracker.Tracker` writing to one W&B run (structurally: this
    module does not import that one, which imports it when asked for W&B)."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self._finished = False

    @property
    def run_id(self) -> str:
        return self._run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def summary(self, values: dict[str, object]) -> None:
        self._run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        if not self._finished:
            self._finished = True
            finish_run(self._run, exit_code)


def open_wandb_tracker(
    run_dir: Path,
    config: dict[str, Any],
    *,
    cell: Cell,
    logger_config: Mapping[str, Any] | object | None = None,
) -> WandbTracker | None:
    """Start (or resume) the W&B run of `cell`; None when W&B is off or unavailable."""
    settings = logger_settings(config, logger_config)
    mode = resolve_mode(settings["mode"])
    if mode == "disabled":
        return None
    wandb = import_wandb()
    if wandb is None:
        return None
    run = start_run(
        wandb, run_dir, mode, settings,
        id=cell_run_id(run_dir), resume="allow", group=cell.experiment, job_type="train",
        name=run_name(cell), tags=run_tags(cell), config={"cell": cell.name, **config},
    )  # fmt: skip
    if run is None:
        return None
    run.define_metric("epoch")
    run.define_metric(EPOCH_METRICS, step_metric="epoch")
    for metric in VAL_ERRORS:  # the summary keeps each metric's best value
        run.define_metric(metric.name, summary="min" if metric.lower_is_better else "max")
    return WandbTracker(run)


def log_report(
    sweep_dir: Path,
    experiment: str,
    table: pd.DataFrame,
    images: dict[str, Path],
    config: dict[str, Any],
) -> None:
    """Log a sweep's results table and plots as one ``report`` run in the experiment's group.

    Files go to ``<sweep_dir>/report/wandb``. `images` maps W&B keys to PNG files.
    """
    settings = logger_settings(config, None)
    mode = resolve_mode(settings["mode"])
    if mode == "disabled":
        return
    wandb = import_wandb()
    if wandb is None:
        return
    run = start_run(
        wandb, Path(sweep_dir) / REPORT_DIR, mode, settings,
        group=experiment, job_type="report", name=f"{experiment}-report", config=config,
    )  # fmt: skip
    if run is None:
        return
    exit_code = 1
    try:
        media = {key: wandb.Image(str(path)) for key, path in images.items()}
        run.log({RESULTS_KEY: wandb.Table(dataframe=flat_table(table)), **media})
        exit_code = 0
    finally:
        finish_run(run, exit_code)


# ---- pieces --------------------------------------------------------------------------------


def import_wandb() -> Any | None:
    """The wandb module, or None (with one warning) when it cannot be imported."""
    try:
        import wandb
    except ImportError as e:
        log.warning("logger=wandb but wandb cannot be imported (%s): not logging to W&B", e)
        return None
    return wandb


def start_run(wandb: Any, directory: Path, mode: str, settings: Mapping[str, Any], **init: Any):
    """``wandb.init`` writing under `directory`/wandb, quiet; None (one warning) if it fails."""
    directory.mkdir(parents=True, exist_ok=True)
    quiet = wandb.Settings(
        console="off",  # train.log holds the output; W&B's capture would garble progress bars
        quiet=True,
        silent=True,
        # A report run may start while a cell's run is open in the same process: keep both.
        reinit="create_new",
    )
    try:
        return wandb.init(
            project=settings["project"],
            entity=settings.get("entity") or None,
            dir=str(directory),
            mode=mode,
            settings=quiet,
            **init,
        )
    except Exception as e:  # network, credentials, server: W&B must not cost the training run
        log.warning("W&B run not started (%s: %s): not logging to W&B", type(e).__name__, e)
        return None


def finish_run(run: Any, exit_code: int) -> None:
    """``run.finish``, turning any failure of W&B itself into one warning."""
    try:
        run.finish(exit_code=exit_code)
    except Exception as e:  # finish runs in `finally` blocks: never mask the real error
        log.warning("W&B run %s did not finish cleanly (%s: %s)", run.id, type(e).__name__, e)


def logger_settings(
    config: Mapping[str, Any], logger_config: Mapping[str, Any] | object | None
) -> dict[str, Any]:
    """The logger section (project, entity, mode): `logger_config` if given, else config's."""
    if logger_config is None:
        return dict(config.get("logger") or {})
    if dataclasses.is_dataclass(logger_config) and not isinstance(logger_config, type):
        return dataclasses.asdict(logger_config)
    return dict(logger_config)  # type: ignore[call-overload]


def resolve_mode(mode: str) -> str:
    """The W&B mode to run in: `mode` itself, or for "auto" what the machine is set up for.

    "auto" follows WANDB_MODE when it names a mode, else goes online only when an API key is
    configured (WANDB_API_KEY, or a .netrc entry for the W&B host) and offline otherwise, so
    a machine without credentials or network never waits on a login prompt or a timeout.
    """
    if mode not in WANDB_MODES:
        raise UserError(f"unknown W&B mode {mode!r} (allowed: {', '.join(WANDB_MODES)})")
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE", "")
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    return "online" if api_key_configured() else "offline"


def api_key_configured() -> bool:
    """Whether W&B credentials exist: WANDB_API_KEY or a .netrc password for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL")
    hosts = [urlsplit(base_url).netloc] if base_url else list(DEFAULT_API_HOSTS)
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entries = netrc.netrc(str(path))
    except (OSError, netrc.NetrcParseError):
        return False
    for host in hosts:
        found = entries.authenticators(host)
        if found and found[2]:
            return True
    return False


def cell_run_id(run_dir: Path) -> str:
    """The cell's W&B run id: read from wandb_id.txt, or created there on the first start."""
    path = run_dir / ID_FILE
    if path.exists() and (existing := path.read_text().strip()):
        return existing
    new_id = secrets.token_hex(6)  # W&B ids allow [a-z0-9_-]; 48 random bits never collide
    rundir.atomic_write_text(path, new_id + "\n")
    return new_id


def run_name(cell: Cell) -> str:
    """A short display name: norm label, ``b<batch>``, then the cell's other overrides.

    ``batch=4,norm=gn`` -> ``gn-b4``; ``batch=32,norm=gn,norm.groups=8`` -> ``gn-b32-groups=8``;
    with weight standardization ``gn+ws-b4``.
    """
    others = [
        f"{key.rsplit('.', 1)[-1]}={value}"
        for key, value in cell.overrides.items()
        if key not in NAMED_KEYS
    ]
    return "-".join([cell.norm_label, f"b{cell.batch}", *others])


def run_tags(cell: Cell) -> list[str]:
    """``key:value`` tags to filter the cells of a project by."""
    tags = {"norm": cell.norm_label, "batch": cell.batch, "model": cell.model,
            "dataset": cell.dataset, "gpus": cell.gpus}  # fmt: skip
    return [f"{key}:{value}" for key, value in tags.items()]


def flat_table(table: pd.DataFrame) -> pd.DataFrame:
    """A DataFrame W&B can show whole: a meaningful index becomes columns, names become text,
    missing values None.

    The report's tables are pivots (norms x batch sizes), whose index and integer column names
    a wandb.Table would drop or reject.
    """
    import pandas as pd

    if not isinstance(table.index, pd.RangeIndex):
        table = table.reset_index()
    flat = table.copy()
    flat.columns = [
        "/".join(str(part) for part in col) if isinstance(col, tuple) else str(col)
        for col in table.columns
    ]
    # Missing values (pandas' NA, NaN) become None: W&B serialises tables as JSON.
    return flat.astype(object).where(flat.notna(), None)
