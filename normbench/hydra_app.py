"""Hydra, in the parent process only: compose configs, expand sweeps, launch one job per cell.

`compose` turns command-line overrides into a validated config without running anything;
Hydra's errors (an unknown key, a wrong type, an unknown config group option) become one-line
UserErrors. `multirun` hands the overrides to Hydra's multirun machinery, whose launcher plugin
(basic, submitit local or SLURM) runs :func:`normbench.job.run_cell` for every cell.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from pathlib import Path

import hydra
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from hydra_plugins.normbench_slurm import SlurmLauncher
from normbench.config import as_config, parallel_cells, register_configs
from normbench.errors import UserError
from normbench.logs import SWEEP_ENV
from normbench.slurm import resource
from normbench.track.cell import Cell, cell_name

CONFIG_MODULE = "normbench.configs"
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


def _register() -> None:
    register_configs()
    # Hydra finds launchers by listing the hydra_plugins package, which misses ours in an
    # editable install (pip install -e, what make setup does); importing it always works.
    Plugins.instance().register(SlurmLauncher)
    if not OmegaConf.has_resolver("parallel_cells"):
        OmegaConf.register_new_resolver("parallel_cells", parallel_cells)
    if not OmegaConf.has_resolver("slurm"):
        OmegaConf.register_new_resolver("slurm", resource)
    if not OmegaConf.has_resolver("cell"):  # Hydra's job directory: the cell's run directory
        OmegaConf.register_new_resolver("cell", cell_name)


def _one_line(error: Exception) -> str:
    """Hydra's messages span lines and hide the cause; keep what was wrong and what is allowed."""
    options = getattr(error, "options", None)
    if options:  # an unknown config group option, e.g. norm=gnn
        first = str(error).strip().splitlines()[0].removeprefix("In 'config': ")
        return f"{first} (allowed: {', '.join(options)})"
    cause = error.__cause__ or error
    text = str(cause).strip()
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and "not in" in text:  # misspelt
        key = re.search(r"full_key: (\S+)", text)
        return f"unknown config key '{key.group(1) if key else text.splitlines()[0]}'"
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [
        ln
        for ln in lines
        if ln
        and not ln.startswith(("full_key", "reference_type", "object_type", "To append", "Set the"))
    ]
    key = re.search(r"full_key: (\S+)", text)
    message = " ".join(lines) or type(error).__name__
    return f"{key.group(1)}: {message}" if key and cause is not error else message


def compose(overrides: list[str]) -> DictConfig:
    """The composed config of one cell (with its `hydra` node), or a UserError."""
    _register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
        as_config(cfg)  # the typed schema: "+key=value" adds keys Hydra itself lets through
        return cfg
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UserError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def parse_overrides(overrides: list[str]) -> list[Override]:
    """Hydra's parse of command-line overrides; a malformed one is a UserError in one line."""
    parser = OverridesParser.create()
    try:
        return parser.parse_overrides(overrides)
    except HydraException as e:
        for override in overrides:  # name the one that fails, and the forms that parse
            try:
                parser.parse_overrides([override])
            except HydraException:
                raise UserError(
                    f"cannot read the override {override!r} (allowed: key=value, key=a,b,c to "
                    "sweep, +key=value to add, ~key to delete)"
                ) from None
        raise UserError(_one_line(e)) from None


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The cells of a sweep: command-line sweeps and the experiment's hydra.sweeper.params."""
    parser = OverridesParser.create()
    parsed = parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = compose(fixed)
    params = OmegaConf.select(base, "hydra.sweeper.params") or {}
    given = {o.get_key_element() for o in parsed}
    grid_lines = [f"{k}={v}" for k, v in params.items() if k not in given] + list(overrides)
    axes: list[list[str]] = []
    for override in parser.parse_overrides(grid_lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            values = override.sweep_string_iterator()
            axes.append([f"{key}={v}" for v in values])
        else:
            axes.append([override.input_line])
    return [list(cell) for cell in itertools.product(*axes)]


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def _hydra_job(cfg: DictConfig) -> str:
    from normbench.job import run_cell
    from normbench.logs import cell_label, setup_logging

    overrides = list(HydraConfig.get().overrides.task)
    config = as_config(cfg)
    cell = Cell.of(config, overrides)  # the job's one cell: its label, directory and record
    log = setup_logging(cell=cell_label(cell))  # cells share a console
    log.info("cell %d/%s", HydraConfig.get().job.num + 1, os.environ.get(SWEEP_ENV, "?"))
    return run_cell(config, cell)


def multirun(overrides: list[str], total: int) -> None:
    """Run every cell through Hydra's multirun and its configured launcher.

    A worker process of launcher=parallel that ends without returning (a cell preempted by
    SIGTERM, the kernel's out-of-memory killer) ends the launch in one line: loky kills the
    other workers, and the sweep names the cells left unfinished, which resume on the next run.
    """
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    _register()
    os.environ[SWEEP_ENV] = str(total)  # launchers pass it on: the cells' lines name them
    argv, full_error = sys.argv, os.environ.get(FULL_ERROR_ENV)
    sys.argv = [argv[0], "--multirun", *overrides]
    # Hydra prints an error raised by a launcher as a traceback and exits 1; with this set it
    # raises it instead, so a UserError (e.g. SLURM refusing the jobs) reaches the command line
    # as one line with exit 2.
    os.environ[FULL_ERROR_ENV] = "1"
    try:
        _hydra_job()
    except TerminatedWorkerError as e:
        codes = re.search(r"exit codes of the workers are (\{.*?\})", str(e))
        shown = codes.group(1) if codes else "unknown"
        print(f"normbench: a worker process ended before its cell did (exit codes {shown})",
              file=sys.stderr, flush=True)  # fmt: skip
    finally:
        sys.argv = argv
        if full_error is None:
            del os.environ[FULL_ERROR_ENV]
        else:
            os.environ[FULL_ERROR_ENV] = full_error


def sweep_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


def with_available_dataset(overrides: list[str]) -> list[str]:
    """The overrides, plus ``dataset=synthetic`` where the default real-image dataset can be
    neither read here nor downloaded and the command did not name a dataset; that switch is
    said in one line: what was tried, how to fix it.

    The mini reproduction's data are Fashion-MNIST (real images), downloaded on first use; a
    machine with neither the files nor internet still runs, on the embedded synthetic set, and
    says so, never silently (its report says so again: its numbers test the machinery only).
    """
    from normbench.data import check_dataset

    parsed = parse_overrides(overrides)
    if any(o.get_key_element().lstrip("+~") == "dataset" for o in parsed):
        return overrides
    cfg = compose([o.input_line for o in parsed if not o.is_sweep_override()])
    dataset = cfg.dataset
    if dataset.name != "fashion_mnist":
        return overrides
    try:
        check_dataset(dataset.name, dataset.root, download=dataset.download)
    except UserError as err:
        print(
            f"normbench: {err}; meanwhile using the embedded synthetic dataset, whose numbers "
            "test the machinery only",
            file=sys.stderr,
        )
        return [*overrides, "dataset=synthetic"]
    return overrides
