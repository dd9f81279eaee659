"""Every default has one home: the schema (normbench/config.py) holds what is the same whatever
option of a config group is chosen, each group option's file holds what that option changes,
and configs/config.yaml only chooses the options. These tests fail when a value is restated in
a second place, so the schema and the YAML can never again disagree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

import normbench
from normbench.checks import validate
from normbench.config import Config, as_config
from normbench.errors import UserError
from normbench.hydra_app import compose

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("model", "norm", "dataset", "logger")  # the groups that set values of the schema
OPTIONS = [f"{g}={p.stem}" for g in GROUPS for p in sorted((CONFIGS / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": leaf}; lists are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _file_values(path: Path, package: str) -> dict[str, Any]:
    """The values one config file sets (flat keys from the root), those of the files its
    defaults list extends first (``- base/x``: relative to its folder), as Hydra merges them."""
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    if "# @package _global_" in text:
        package = ""
    values: dict[str, Any] = {}
    for entry in data.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            values.update(_file_values(path.parent / f"{entry}.yaml", package))
    values.update(_flat({package: data} if package else data))
    return values


def _option_files() -> list[tuple[str, Path]]:
    """(group, file) of every option of the groups that set values, and of their base files."""
    return [(g, p) for g in GROUPS for p in sorted((CONFIGS / g).rglob("*.yaml"))]


def _schema() -> dict[str, Any]:
    return _flat(OmegaConf.to_container(OmegaConf.structured(Config)))


def _composed(cfg) -> dict[str, Any]:
    """The composed values (interpolations kept as written), Hydra's own node left out."""
    return _flat({k: OmegaConf.to_container(cfg, resolve=False)[k] for k in cfg if k != "hydra"})


def test_config_yaml_only_chooses_groups_and_places_the_output():
    primary = yaml.safe_load((CONFIGS / "config.yaml").read_text())
    assert set(primary) == {"defaults", "hydra"}, "a default belongs in normbench/config.py"


@pytest.mark.parametrize("choice", [None, *OPTIONS])
def test_a_composed_config_is_the_schema_and_the_chosen_group_files(choice):
    """Every value of the CLI's config (the default, or with one group option changed) is the
    schema's default unless a chosen group file sets it; nothing else adds a value."""
    cfg = compose([choice] if choice else [])
    choices = cfg.hydra.runtime.choices
    expected = _schema()
    for group in GROUPS:  # in the order of config.yaml's defaults list: later files win
        expected.update(_file_values(CONFIGS / group / f"{choices[group]}.yaml", group))
    assert _composed(cfg) == expected


@pytest.mark.parametrize(("group", "path"), _option_files(), ids=lambda v: getattr(v, "name", v))
def test_group_files_set_only_what_their_option_changes(group, path):
    """No group file restates a schema default (or sets a key the schema does not have)."""
    schema = _schema()
    for key, value in _file_values(path, group).items():
        assert key in schema, f"{path.name}: {key} is not a config key"
        assert value != schema[key], f"{path.name}: {key}={value!r} restates the schema's default"


def test_names_have_no_schema_default():
    """The model, norm, dataset and logger a config uses are named by the chosen group option
    only (config.yaml's defaults list), never by a second default in the schema."""
    names = ("model.name", "norm.name", "dataset.name", "logger.kind")
    assert {key: _schema()[key] for key in names} == dict.fromkeys(names, "???")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment, tmp_path):
    cfg = as_config(compose([f"experiment={experiment}"]))
    if cfg.dataset.name == "imagenet":  # no ImageNet here: everything but its files is checked
        cfg.dataset.name = "synthetic"
        cfg.dataset.color_jitter = cfg.dataset.lighting = 0.0
        cfg.dataset.image_size, cfg.dataset.train_size, cfg.dataset.val_size = 32, 256, 64
    if cfg.dataset.name == "coco":  # no COCO here: a tiny COCO-format folder stands in
        from normbench.data.scenes import write_scenes

        cfg.dataset.root = str(write_scenes(tmp_path / "coco", seed=0, train_images=2,
                                            val_images=2))  # fmt: skip
    cfg.model.pretrained = None  # no pretraining runs here: the detectors from scratch
    validate(cfg)


# The classification experiments (paper-detect is the COCO recipe: tests/test_detect_integration)
@pytest.mark.parametrize(
    "experiment", [e for e in EXPERIMENTS if e.startswith("paper-") and not e.endswith("-detect")]
)
def test_paper_experiments_run_the_papers_recipe(experiment):
    """The paper's protocol, whichever of its values are the schema's defaults."""
    cfg = as_config(compose([f"experiment={experiment}"]))
    assert (cfg.model.name, cfg.dataset.name, cfg.gpus, cfg.batch, cfg.epochs) == (
        "resnet50", "imagenet", 8, 32, 100,
    )  # fmt: skip
    optim = cfg.optim
    assert (optim.base_lr, optim.reference_batch, optim.schedule, optim.warmup_epochs) == (
        0.1, 256, "step", 0.0,
    )  # fmt: skip
    assert (optim.milestones, optim.decay, optim.weight_decay) == ([0.3, 0.6, 0.9], 0.1, 1e-4)
    assert optim.norm_weight_decay is None  # gamma and beta decayed like every weight
    assert (cfg.norm.eval_stats, cfg.model.zero_init_last_norm) == ("first", True)
    assert (cfg.dataset.color_jitter, cfg.dataset.lighting) == (0.4, 0.1)
    assert (cfg.dataset.train_size, cfg.dataset.val_size) == (None, None)  # all of ImageNet


@pytest.mark.parametrize("table", ["mini-group", "paper-group"])
def test_the_two_halves_of_table_3_differ_only_in_the_swept_key(table):
    groups, sizes = (compose([f"experiment={table}{half}"]) for half in ("s", "-size"))
    assert _composed(groups) == _composed(sizes)
    swept = [list(cfg.hydra.sweeper.params) for cfg in (groups, sizes)]
    assert swept == [["norm.groups"], ["norm.group_size"]]


def test_synthetic_sizes_left_out_are_refused_before_a_run():
    """Generated images have no sizes of their own: the config gives them (one line if not)."""
    cfg = as_config(compose(["dataset=synthetic", "dataset.val_size=null"]))
    with pytest.raises(UserError, match="dataset.val_size=null: synthetic images are generated"):
        validate(cfg)


# ---- the import graph: the schema is a leaf, and no module imports itself back ----------------

PACKAGE = Path(normbench.__file__).resolve().parent


def test_loading_the_config_loads_no_other_part_of_normbench():
    """Any module may import the schema: it imports nothing that could import it back (the
    checks that ask datasets, models, norms and the report live in normbench.checks)."""
    code = "import sys, normbench.config; print([m for m in sys.modules if m[:10] == 'normbench.'])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    assert set(ast.literal_eval(out)) <= {"normbench.config", "normbench.errors"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(path: Path, modules: dict[str, Path]) -> set[str]:
    """The normbench modules a file imports anywhere in it (a function's import runs as surely
    as one at the top); ``from package import name`` counts the submodule when name is one."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found & set(modules)


def _circle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A chain of imports from ``start`` back to itself, or None."""
    paths, todo = {name: [start, name] for name in graph[start]}, list(graph[start])
    while todo:
        name = todo.pop()
        if name == start:
            return paths[name]
        for nxt in graph[name] - paths.keys():
            paths[nxt] = [*paths[name], nxt]
            todo.append(nxt)
    return None


def test_no_module_of_normbench_imports_itself_back():
    modules = _modules()
    graph = {name: _imported(path, modules) - {name} for name, path in modules.items()}
    assert len(graph) > 40 and {"normbench.config", "normbench.data"} <= graph["normbench.cli"]
    circles = {}  # one chain per circle, whichever of its modules it starts from
    for name in graph:
        chain = _circle_through(name, graph)
        if chain:
            circles.setdefault(frozenset(chain), " -> ".join(chain))
    assert not circles, "import circles: " + "; ".join(circles.values())


# ---- layer defaults: the layer's constructor is their one home -------------------------------


def test_layers_built_through_the_python_api_evaluate_like_the_cli():
    """BN built without eval_stats (the Python API) combines the GPUs' running statistics as
    the CLI's config does, GPU 0's like the paper's code; so does every other norm with
    per-GPU statistics, and the trainer when the config leaves the mode unset."""
    from types import SimpleNamespace

    from normbench.norms import BatchNorm2d, build_norm, list_norms
    from normbench.train.loop import Trainer

    cli = as_config(compose(["norm=bn"]))
    assert BatchNorm2d(8).eval_stats == cli.norm.eval_stats == "first"
    for spec in list_norms():
        if "eval_stats" in spec.options:
            assert build_norm(spec.name, 64).eval_stats == "first", spec.name
    unset = as_config(compose(["norm=bn", "norm.eval_stats=null"]))
    assert Trainer.bn_eval_stats.fget(SimpleNamespace(cfg=unset)) == "first"


def test_the_schema_leaves_the_layers_and_models_defaults_to_them():
    """Every norm option, and the CIFAR width, is None in the schema: the constructor's default.
    eval_stats alone is stated, so each cell's config.yaml records it, and is the layers'."""
    from normbench.norms import DEFAULT_EVAL_STATS

    schema = _schema()
    stated = {k: v for k, v in schema.items() if k.startswith("norm.") and v is not None}
    assert stated == {"norm.name": "???", "norm.eval_stats": DEFAULT_EVAL_STATS}
    assert schema["model.width"] is None


def _option_defaults() -> dict[str, list[tuple[str, Any]]]:
    """config key -> (what states it, its default) for every default a norm layer states in its
    constructor. (model/base/cifar_resnet.yaml restates the CIFAR width on purpose: it says why.)"""
    from normbench.norms import list_norms
    from normbench.norms.registry import option_defaults

    defaults: dict[str, list[tuple[str, Any]]] = {}
    for spec in list_norms():
        for option, value in option_defaults(spec.builder, spec.options).items():
            defaults.setdefault(f"norm.{option}", []).append((spec.name, value))
    return defaults


@pytest.mark.parametrize(
    "path",
    sorted((CONFIGS / "norm").rglob("*.yaml")) + sorted((CONFIGS / "model").rglob("*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_group_files_restate_no_layer_default(path):
    """A norm or model file that sets a norm option sets it to something else than the default
    the layer states (the norm's own, or any norm's for a model file)."""
    values = _file_values(path, path.parent.name if path.parent.name != "base" else "model")
    norm = values.get("norm.name")
    for key, value in values.items():
        for owner, default in _option_defaults().get(key, []):
            if norm is None or owner == norm:
                assert value != default, f"{path.name}: {key}={value!r} restates {owner}'s default"


def test_norms_help_shows_the_defaults_a_layer_is_built_with(capsys, monkeypatch):
    """`normbench norms` states each default once, read from the constructor: what a layer
    built without the option has."""
    import re

    from normbench.cli import main
    from normbench.norms import build_norm, list_norms
    from normbench.track.environment import COMMAND_ENV

    for spec in list_norms():
        layer = build_norm(spec.name, 64)
        for option, text in spec.options.items():
            assert text.count("default") <= 1, f"{spec.name}.{option}: a default stated by hand"
            shown = re.search(r"\(default (.+)\)$", text)
            value = getattr(layer, option, None)  # where the layer keeps it as it was given
            if shown and isinstance(value, (bool, int, float, str)):
                expected = str(value).lower() if isinstance(value, bool) else str(value)
                assert shown[1] == expected, f"{spec.name}.{option}"
    monkeypatch.setenv(COMMAND_ENV, "")  # main() records its command there: restored after
    main(["norms"])
    shown = capsys.readouterr().out
    assert "norm.eval_stats: " in shown and "(default average)" not in shown


def test_launcher_files_state_each_setting_once():
    """What the submitit launchers share (the time limit) lives in launcher/base/, once."""
    stated: dict[tuple[str, Any], str] = {}
    for path in sorted((CONFIGS / "launcher").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        data.pop("defaults", None)
        for key, value in _flat(data).items():
            assert (key, value) not in stated, f"{path.name} and {stated[key, value]} set {key}"
            stated[key, value] = path.name
    local = compose(["launcher=local"]).hydra.launcher
    slurm = compose(["launcher=slurm", "hydra.launcher.partition=p"]).hydra.launcher
    assert local.timeout_min == slurm.timeout_min == 3 * 24 * 60
