"""experiment=mini-zoo: its grid (every norm x 32, 8, 2 images per GPU) and a tiny end-to-end run
of its new members, gn_ws included, down to the zoo figures of the report."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from omegaconf import OmegaConf

from normbench.hydra_app import compose, expand_sweep
from normbench.norms import list_norms
from normbench.report.zoo import HEATMAP, LINES

# Every norm but frozen BN, which fine-tunes a pretrained network (detection's BN*): trained from
# scratch it is a network without normalization, not a norm to compare.
ZOO_NORMS = {spec.name for spec in list_norms()} - {"frozen_bn"} | {"gn_ws"}


def test_the_zoo_grid_is_every_norm_and_gn_ws_at_32_8_and_2() -> None:
    cells = expand_sweep(["experiment=mini-zoo"])
    assert len(cells) == len(ZOO_NORMS) * 3
    values = {o.split("=", 1)[0]: set() for cell in cells for o in cell}
    for cell in cells:
        for override in cell:
            key, value = override.split("=", 1)
            values[key].add(value)
    assert values["norm"] == ZOO_NORMS and values["batch"] == {"32", "8", "2"}


def test_gn_ws_is_gn_with_weight_standardization_and_the_rest_is_the_mini_default() -> None:
    default = compose([])
    zoo = compose(["experiment=mini-zoo", "norm=gn_ws", "batch=8"])
    assert (zoo.norm.name, zoo.model.ws) == ("gn", True)
    assert zoo.name == f"{default.dataset.name}-zoo"
    # inherited, not restated
    for key in ("dataset", "optim", "gpus", "epochs", "model.name", "norm.eval_stats"):
        assert OmegaConf.select(zoo, key) == OmegaConf.select(default, key), key


@pytest.mark.slow
def test_a_tiny_zoo_sweep_runs_and_reports_its_figures(tmp_path) -> None:
    args = [
        "sweep", "experiment=mini-zoo", "norm=gn_ws,evonorm_b0,evonorm_s0,iternorm,dbn",
        "batch=8,2", "logger=none", "dataset=synthetic", "dataset.train_size=128",
        "dataset.val_size=32", "dataset.image_size=8", "epochs=1", "model=resnet8",
        "model.width=8", "norm.group_size=4", "progress=false", "launcher=basic",
        f"out_dir={tmp_path}",
    ]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = tmp_path / "synthetic-zoo"
    metrics = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(metrics) == 10 and all(m["status"] == "finished" for m in metrics)
    assert {m["norm_label"] for m in metrics} == {
        "gn+ws", "evonorm_b0", "evonorm_s0", "iternorm", "dbn",
    }  # fmt: skip
    assert (sweep / "report" / HEATMAP).stat().st_size > 0
    assert f"]({LINES})" in (sweep / "report" / "report.md").read_text()
