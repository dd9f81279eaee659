"""Detection as a task of the CLI: a detector's name makes a detection cell, which trains through
the same job, run directory, loop and report as classification (normbench.train.detect)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_here

from normbench.cli import main
from normbench.config import as_config, pretraining_norm
from normbench.errors import UserError
from normbench.hydra_app import compose, expand_sweep
from normbench.metrics import DETECTION_NAMES
from normbench.track import rundir
from normbench.track.rundir import RunDir

# A detection cell that trains in seconds: 8 scenes of 64 px, 2 GPUs x 2 images (2 steps).
TINY_DETECT = [
    "logger=none",
    "model=maskrcnn_mini",
    "dataset=fashion_scenes",
    "dataset.train_size=8",
    "dataset.val_size=4",
    "gpus=2",
    "batch=2",
    "epochs=1",
    "progress=false",
]
# A classification cell whose checkpoint is a backbone for maskrcnn_mini: the grey 12-px
# ResNet-8 of width 16 (GN with 8 groups) of the converged protocol, trained for one epoch.
TINY_PRETRAIN = [
    "logger=none",
    "model=resnet8",
    "dataset=fashion_mnist",
    "dataset.image_size=12",
    "dataset.train_size=64",
    "dataset.val_size=32",
    "gpus=2",
    "batch=8",
    "epochs=1",
    "progress=false",
    "diagnostics.enabled=false",
]


def _fashion_mnist_here() -> bool:
    from normbench.data import dataset_dir
    from normbench.data.fashion_mnist import available

    return available(dataset_dir("fashion_mnist", None))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---- the registries ------------------------------------------------------------------------


def test_models_norms_and_datasets_list_the_detection_entries(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    detection = out[out.index("detection") :]
    assert "maskrcnn_mini" in detection and "maskrcnn_r50_fpn" in detection
    assert "resnet8" in out[: out.index("detection")]  # classifiers under their own heading
    assert main(["norms"]) == 0
    assert any(line.startswith("frozen_bn ") for line in capsys.readouterr().out.splitlines())
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "fashion_scenes" in out[out.index("detection") :] and "coco" in out


# ---- validation: one line, exit 2, nothing written -------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model=maskrcnn_mini", "dataset=fashion_mnist"],
            "model=maskrcnn_mini is a detection model and dataset=fashion_mnist a classification "
            "dataset (allowed datasets for detection: coco, fashion_scenes)",
        ),
        (
            ["model=resnet8", "dataset=fashion_scenes"],
            "model=resnet8 is a classification model and dataset=fashion_scenes a detection "
            "dataset (allowed datasets for classification: cifar10,",
        ),
        (
            ["model=maskrcnn_mini", "dataset=fashion_scenes", "metric=val_error_median5"],
            "metric='val_error_median5' is not allowed (allowed: box_ap, box_ap50,",
        ),
        (
            ["model=maskrcnn_mini", "dataset=fashion_scenes", "model.pretrained=/no/such/run"],
            "model.pretrained=/no/such/run does not exist (allowed: a classification run "
            "directory holding checkpoint.pt, a checkpoint file, or null to train from scratch)",
        ),
        (
            ["model=resnet8", "model.pretrained=/no/such/run"],
            "model.pretrained=/no/such/run is a detection option: set it to null here",
        ),
    ],
)
def test_a_wrong_task_combination_is_one_line_exit_2(tmp_path, capsys, overrides, expected):
    out = tmp_path / "out"
    assert main(["train", *overrides, f"out_dir={out}", "logger=none"]) == 2
    assert expected in _error_line(capsys)
    assert not out.exists()


def test_a_pretrained_run_that_has_not_finished_is_refused(tmp_path, capsys):
    run = tmp_path / "pretrain"
    run.mkdir()
    (run / rundir.CHECKPOINT).write_bytes(b"")  # a checkpoint, but no metrics.json
    code = main(["train", *TINY_DETECT, f"model.pretrained={run}", f"out_dir={tmp_path / 'o'}"])
    assert code == 2
    assert "its run has not finished (running, or stopped)" in _error_line(capsys)


# ---- the experiments compose, and chain pretraining into detection ---------------------------


def test_each_detector_norm_starts_from_the_paper_s_pretraining_norm():
    assert {n: pretraining_norm(n) for n in ("frozen_bn", "bn", "syncbn", "gn")} == {
        "frozen_bn": "bn", "bn": "bn", "syncbn": "bn", "gn": "gn",
    }  # fmt: skip
    pretrain = {tuple(cell[:2]) for cell in expand_sweep(["experiment=detect-pretrain"])}
    cells = expand_sweep(["experiment=mini-detect"])
    assert len(cells) == 12  # 4 norms x 3 seeds
    for cell in cells:
        cfg = as_config(compose(cell))
        norm = pretraining_norm(cfg.norm.name)
        assert cfg.model.pretrained == (
            f"runs/detect-pretrain/batch=32,norm={norm},seed={cfg.seed}"
        )
        assert (f"norm={norm}", f"seed={cfg.seed}") in pretrain  # a cell the chain trains
        assert (cfg.gpus, cfg.batch, cfg.metric) == (8, 2, "box_ap")
    scratch = as_config(compose(["experiment=mini-detect", "norm=gn", "model.pretrained=null"]))
    assert scratch.model.pretrained is None


def test_paper_detect_is_the_paper_s_recipe():
    from normbench.config import learning_rate, total_batch
    from normbench.train.schedule import lr_factor

    cfg = as_config(compose(["experiment=paper-detect", "norm=gn"]))
    assert (cfg.model.name, cfg.dataset.name, cfg.gpus, cfg.batch) == (
        "maskrcnn_r50_fpn", "coco", 8, 2,
    )  # fmt: skip
    assert total_batch(cfg) == 16 and learning_rate(cfg) == pytest.approx(0.02)
    assert cfg.model.pretrained == "runs/paper-batch/batch=32,norm=gn"
    steps = 7329  # COCO train2017's images with objects / 16
    factor = lambda step: lr_factor(step, steps_per_epoch=steps, epochs=cfg.epochs, optim=cfg.optim)  # noqa: E731
    assert factor(0) == pytest.approx(1 / 3, abs=0.01)  # Detectron's warmup from 1/3
    assert factor(600) == 1.0
    decays = [step for step in range(1, steps * cfg.epochs) if factor(step) < factor(step - 1)]
    assert decays == [8 * steps, 11 * steps]  # 1x: 60k and 80k of 90k iterations


# ---- the report of detection cells ---------------------------------------------------------


def _finished_cell(folder: Path, norm: str, seed: int, pretrained: str | None, ap: float) -> None:
    """A finished detection cell's record, as a worker writes it."""
    name = f"batch=2,norm={norm},seed={seed}" + ("" if pretrained else ",model.pretrained=null")
    cell = folder / name
    cell.mkdir(parents=True)
    config = {"metric": "box_ap", "epochs": 3, "model": {"pretrained": pretrained}}
    (cell / rundir.CONFIG).write_text(json.dumps(config))  # JSON is YAML
    record = {
        "cell": name, "overrides": {"norm": norm, "seed": str(seed)}, "experiment": "det",
        "model": "maskrcnn_mini", "dataset": "fashion_scenes", "norm": norm, "norm_label": norm,
        "batch": 2, "gpus": 8, "total_batch": 16, "seed": seed, "groups": None,
        "group_size": None, "status": "finished", "pretrained": pretrained,
        **{name: ap + i for i, name in enumerate(DETECTION_NAMES)},
    }  # fmt: skip
    (cell / rundir.METRICS).write_text(json.dumps(record))


def test_the_report_of_detection_cells_is_the_coco_table(tmp_path):
    """GN fine-tuned and GN from scratch are two rows (a cell without a backbone is from
    scratch); the classification layouts are not built; the paper's rows stand beside."""
    from normbench.report import build_report, format_report
    from normbench.report.collect import CELL_COLUMNS

    folder = tmp_path / "det"
    for seed in (0, 1):
        _finished_cell(folder, "gn", seed, f"runs/pre/batch=32,norm=gn,seed={seed}", 30.0 + seed)
        _finished_cell(folder, "gn", seed, None, 20.0 + seed)
        _finished_cell(folder, "frozen_bn", seed, "runs/pre/bn", 25.0)
    report = build_report(folder)
    assert report.metric == "box_ap" and report.tables == []
    table = report.detection
    assert list(table.mean.index) == ["BN*", "GN", "GN from scratch"]
    assert (
        table.mean.loc["GN", "box_ap"] == 30.5
        and table.mean.loc["GN from scratch", "box_ap"] == 20.5
    )
    assert table.mean.loc["GN", "mask_ap75"] == 35.5  # each metric its own column
    cells = report.cells
    assert list(cells.columns[: len(CELL_COLUMNS)]) == CELL_COLUMNS
    assert cells["pretrained"].isna().sum() == 2
    written = {path.name for path in report.paths}
    assert {"cells.csv", "detection_ours.csv", "detection_ap.png", "report.md"} <= written
    assert "Mask R-CNN box and mask AP" in format_report(report)
    with pytest.raises(UserError, match="metric=val_error_final is not a detection metric"):
        build_report(folder, metric="val_error_final")


# ---- cells that train (slow) -----------------------------------------------------------------


def _cell_dir(out: Path) -> Path:
    (cell,) = [p.parent for p in out.glob("*/*/config.yaml")]
    return cell


def _history(cell: Path) -> list[dict[str, str]]:
    with open(cell / rundir.HISTORY) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.skipif(not _fashion_mnist_here(), reason="needs Fashion-MNIST's files (grey 12 px)")
def test_a_detection_cell_from_a_classification_run_trains_and_is_reported(
    tmp_path, capsys, monkeypatch
):
    """The chain in small: a classification run, a detection cell whose backbone starts from
    its checkpoint, metrics.json with the six APs, history.csv, and the COCO table."""
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "data"))
    pretrain = run_here(["train", *TINY_PRETRAIN, "norm=gn", f"out_dir={tmp_path / 'pre'}"], capsys)
    assert pretrain.returncode == 0, pretrain.stdout + pretrain.stderr
    backbone = _cell_dir(tmp_path / "pre")
    out = tmp_path / "det"
    trained = run_here(
        ["train", *TINY_DETECT, "norm=gn", f"model.pretrained='{backbone}'", f"out_dir={out}"],
        capsys,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    cell = RunDir(next(p.parent for p in out.rglob("metrics.json")))
    metrics = cell.read_metrics()
    assert metrics["status"] == "finished" and metrics["pretrained"] == str(backbone)
    assert all(0.0 <= metrics[name] <= 100.0 for name in DETECTION_NAMES)
    (row,) = _history(cell.path)
    assert [float(row[name]) for name in DETECTION_NAMES] == [
        metrics[name] for name in DETECTION_NAMES
    ]
    assert "val_error" not in row and float(row["train_loss"]) > 0
    assert f"COCO AP of the final model: box {metrics['box_ap']:.2f}" in trained.stdout

    report = run_here(["report", str(out / "fashion_scenes-maskrcnn_mini")], capsys)
    assert report.returncode == 0, report.stdout + report.stderr
    written = out / "fashion_scenes-maskrcnn_mini" / "report"
    assert "## Detection: Mask R-CNN box and mask AP" in (written / "report.md").read_text()
    with open(written / "detection_ours.csv") as f:
        (ours,) = list(csv.DictReader(f))
    assert ours[""] == "GN" and ours["AP box"] == f"{metrics['box_ap']:.2f}"  # pretrained GN


class _StopAfter:
    """A PreemptionGuard stand-in: a signal arrives after `steps` optimizer steps."""

    class Stopped(Exception):
        pass

    def __init__(self, trainer, steps: int) -> None:
        self.trainer, self.steps = trainer, steps

    @property
    def requested(self) -> bool:
        return self.trainer.progress.step >= self.steps

    def exit(self) -> None:
        raise self.Stopped


class _NoGuard:
    requested = False


def _trainer(out: Path, scenes: Path, overrides: list[str]):
    """A DetectTrainer on a prepared run directory (what the job does before its workers)."""
    from normbench.job import run_cell
    from normbench.track.cell import Cell
    from normbench.train.detect import DetectTrainer
    from normbench.train.distributed import init_process
    from normbench.train.loop import load_config

    args = [*TINY_DETECT, *overrides, f"dataset.root={scenes}", f"out_dir={out}"]
    config = as_config(compose(args))
    cell = Cell.of(config, args)
    run_cell(config, cell, start=False)
    run = RunDir(cell.directory(out))
    cfg = load_config(run)
    return DetectTrainer(run, cfg, init_process(cfg)), run


@pytest.mark.slow
def test_a_preempted_detection_cell_resumes_to_the_uninterrupted_result(tmp_path):
    """Stopped mid-epoch (checkpoint written), then resumed by a new trainer: the same history
    (APs included) and the same weights as the run that was never stopped. Per-GPU BN, so the
    moving averages of the emulated GPUs must come back too."""
    from normbench.track.tracker import NullTracker

    torch.set_num_threads(1)
    cell = ["norm=bn", "epochs=2", "dataset.train_size=12"]  # 3 steps per epoch
    tracker = NullTracker()
    reference, ref_run = _trainer(tmp_path / "ref", tmp_path / "scenes", cell)
    reference.run(tracker, _NoGuard())

    stopped, run = _trainer(tmp_path / "stop", tmp_path / "scenes", cell)
    with pytest.raises(_StopAfter.Stopped):
        stopped.run(tracker, _StopAfter(stopped, steps=4))  # in epoch 2
    saved = torch.load(run.checkpoint, weights_only=False)["progress"]
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"]) == (1, 1, 4)
    resumed, _ = _trainer(tmp_path / "stop", tmp_path / "scenes", cell)
    assert resumed.progress.step == 4
    results = resumed.run(tracker, _NoGuard())

    assert results == reference.results()
    timeless = [{k: v for k, v in row.items() if k not in ("images_per_s", "time_s",
                 "peak_mem_mb")} for row in resumed.progress.history]  # fmt: skip
    expected = [{k: v for k, v in row.items() if k not in ("images_per_s", "time_s",
                 "peak_mem_mb")} for row in reference.progress.history]  # fmt: skip
    assert timeless == expected
    for (name, value), ref in zip(
        resumed.model.state_dict().items(), reference.model.state_dict().values(), strict=True
    ):
        assert torch.equal(value, ref), name


@pytest.mark.slow
def test_paper_detect_trains_one_step_on_coco_format_data(tmp_path, capsys):
    """The paper's recipe (R-50-FPN, its heads and schedule) runs on a COCO-format folder: the
    scenes' writer makes a tiny one; only the sizes are overridden down."""
    from normbench.data.scenes import write_scenes

    coco = write_scenes(tmp_path / "coco", seed=0, train_images=2, val_images=2)
    out = tmp_path / "out"
    trained = run_here(
        ["train", "experiment=paper-detect", "norm=gn", "model.pretrained=null",
         f"dataset.root={coco}", "dataset.image_size=64", "gpus=1", "epochs=1", "logger=none",
         "progress=false", f"out_dir={out}"], capsys,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    metrics = RunDir(_cell_dir(out)).read_metrics()
    assert metrics["status"] == "finished" and metrics["steps"] == 1
    assert metrics["model"] == "maskrcnn_r50_fpn" and metrics["total_batch"] == 2
    assert all(name in metrics for name in DETECTION_NAMES)
