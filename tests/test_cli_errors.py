"""Bad input is refused at the boundary: one line on stderr naming the bad value, exit code 2,
no traceback, and nothing written (no run directory, no sweep folder).

The table runs the real CLI entry point in-process (a traceback would surface here as an
exception); two cases run as real processes to check what a shell sees.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, run_cli

from normbench.cli import main
from normbench.config import cpu_cores


def _folders(root: Path, layout: dict[str, list[str]]) -> Path:
    """ImageFolder-style tree: {"train/a": ["x.png"], "val/a": []} (an empty list: a folder)."""
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            (root / folder / name).write_bytes(b"not read by the boundary check")
    return root


def _data_trees(tmp: Path) -> dict[str, Path]:
    """Broken dataset roots, each named by what is wrong with it."""
    tmp.mkdir()
    (tmp / "a_file").write_text("not a folder")
    return {
        "file": tmp / "a_file",
        "missing": tmp / "nonexistent",
        "no_classes": _folders(tmp / "no_classes", {"train": [], "val": []}),
        "empty_class": _folders(
            tmp / "empty_class",
            {"train/cat": ["1.png"], "train/dog": [], "val/cat": ["2.png"], "val/dog": ["3.png"]},
        ),  # fmt: skip
        "classes_differ": _folders(
            tmp / "classes_differ",
            {
                "train/cat": ["1.png"],
                "train/dog": ["2.png"],
                "val/cat": ["3.png"],
                "val/owl": ["4.png"],
            },
        ),  # fmt: skip
        "no_val": _folders(tmp / "no_val", {"train/cat": ["1.png"]}),
    }


# (id, command, overrides, fragments the message must contain). "{name}" is filled from the
# test's temporary paths: {missing}, {file}, {no_classes}, ... and {out} (the output folder).
CASES = [
    ("unknown norm", "train", ["norm=gnn"], ["'norm/gnn'", "allowed", "gn"]),
    ("unknown norm name", "train", ["norm.name=gnn"], ["'gnn'", "allowed", "syncbn"]),
    ("unknown model", "train", ["model=resnet9"], ["resnet9", "resnet20"]),
    ("unknown model name", "train", ["model.name=resnet9"], ["'resnet9'", "resnet20"]),
    ("unknown dataset", "train", ["dataset=mnist"], ["mnist", "fashion_mnist"]),
    ("unknown dataset name", "train", ["dataset.name=mnist"], ["'mnist'", "synthetic"]),
    ("unknown key", "train", ["foo=1"], ["unknown config key 'foo'"]),
    ("misspelt nested key", "train", ["norm.grups=4"], ["unknown config key 'norm.grups'"]),
    ("appended unknown key", "train", ["+optim.lr=0.1"], ["unknown config key 'optim.lr'"]),
    ("batch not an int", "train", ["batch=abc"], ["batch", "'abc'"]),
    ("epochs not an int", "train", ["epochs=1.5"], ["epochs", "'1.5'"]),
    ("bool not a bool", "train", ["model.ws=maybe"], ["model.ws", "'maybe'"]),
    ("float not a float", "train", ["optim.base_lr=fast"], ["optim.base_lr", "'fast'"]),
    ("batch zero", "train", ["batch=0"], ["batch=0", ">= 1"]),
    ("batch negative", "train", ["batch=-4"], ["batch=-4", ">= 1"]),
    ("epochs zero", "train", ["epochs=0"], ["epochs=0"]),
    ("eval interval zero", "train", ["eval_every=0"], ["eval_every=0", ">= 1"]),
    ("val batch zero", "train", ["val_batch=0"], ["val_batch=0", ">= 1"]),
    ("negative seed", "train", ["seed=-1"], ["seed=-1", ">= 0"]),
    ("log interval zero", "train", ["log_every_steps=0"], ["log_every_steps=0"]),
    (
        "negative checkpoint interval",
        "train",
        ["checkpoint_every_steps=-1"],
        ["checkpoint_every_steps=-1"],
    ),  # fmt: skip
    ("train_size zero", "train", ["dataset.train_size=0"], ["dataset.train_size=0"]),
    ("total batch over the data", "train", ["gpus=64"], ["total batch 512", "train_size=256"]),
    (
        "gpus not a multiple of devices",
        "train",
        ["gpus=3", "devices=2"],
        ["gpus=3", "devices=2", "allowed devices: 1, 3"],
    ),  # fmt: skip
    ("devices zero", "train", ["devices=0"], ["devices=0"]),
    (
        "more devices than cores",
        "train",
        ["accelerator=cpu", "gpus={many}", "devices={many}"],
        ["devices={many}", "CPU cores"],
    ),  # fmt: skip
    ("nccl on cpu", "train", ["accelerator=cpu", "backend=nccl"], ["backend=nccl", "gloo"]),
    ("amp on cpu", "train", ["accelerator=cpu", "amp=bf16"], ["amp=bf16", "amp=none"]),
    ("unknown amp", "train", ["amp=fp8"], ["amp='fp8'", "bf16"]),
    ("unknown accelerator", "train", ["accelerator=tpu"], ["'tpu'", "cuda"]),
    ("unknown schedule", "train", ["optim.schedule=linear"], ["'linear'", "cosine"]),
    ("unknown bad_images policy", "train", ["dataset.bad_images=ignore"], ["'ignore'", "skip"]),
    (
        "groups not dividing a layer",
        "train",
        ["norm=gn", "norm.groups=3"],
        ["groups=3", "does not divide 8 channels"],
    ),  # fmt: skip
    (
        "group size not dividing a layer",
        "train",
        ["norm=gn", "norm.group_size=3"],
        ["group_size=3", "does not divide"],
    ),  # fmt: skip
    (
        "bad norm option value",
        "train",
        ["norm=bn", "norm.eval_stats=median"],
        ["eval_stats='median'", "average"],
    ),  # fmt: skip
    (
        "sweep with one invalid cell",
        "sweep",
        ["norm=gn", "norm.groups=4,3"],
        ["cell ", "norm.groups=3", "groups=3 does not divide"],
    ),  # fmt: skip
    ("train given a sweep", "train", ["batch=8,4"], ["normbench sweep"]),
    (
        "missing dataset root",
        "train",
        ["dataset=fashion_mnist", "dataset.root={missing}"],
        ["dataset.root={missing}", "does not exist"],
    ),  # fmt: skip
    (
        "cifar root missing",
        "train",
        ["dataset=cifar10", "dataset.root={missing}"],
        ["dataset.root={missing}", "does not exist"],
    ),  # fmt: skip
    (
        "dataset root is a file",
        "train",
        ["dataset=imagenet", "dataset.root={file}"],
        ["{file}", "is not a folder"],
    ),  # fmt: skip
    (
        "empty image folder",
        "train",
        ["dataset=imagenet", "dataset.root={no_classes}"],
        ["{no_classes}/train", "no class folders"],
    ),  # fmt: skip
    (
        "empty class folder",
        "train",
        ["dataset=imagenet", "dataset.root={empty_class}"],
        ["{empty_class}/train/dog", "is empty"],
    ),  # fmt: skip
    (
        "train and val classes differ",
        "train",
        ["dataset=imagenet", "dataset.root={classes_differ}"],
        ["only in train: dog", "only in val: owl"],
    ),  # fmt: skip
    (
        "no val folder",
        "train",
        ["dataset=imagenet", "dataset.root={no_val}"],
        ["no folder {no_val}/val"],
    ),  # fmt: skip
    (
        "unwritable out_dir",
        "train",
        ["out_dir={file}/sub"],
        ["cannot write to output directory {file}/sub/", "Not a directory"],
    ),  # fmt: skip
    (
        "unwritable out_dir of a sweep",
        "sweep",
        ["norm=bn,gn", "out_dir={file}/sub"],
        ["cannot write to output directory {file}/sub/", "Not a directory"],
    ),  # fmt: skip
    ("report on a missing folder", "report", ["{missing}"], ["no sweep directory {missing}"]),
    (
        "report with an unknown metric",
        "report",
        ["{no_classes}", "metric=top5"],
        ["unknown metric 'top5'", "val_error_final"],
    ),  # fmt: skip
    (
        "report with another key after the folder",
        "report",
        ["{file}", "norm=gn"],
        ["only metric=... is accepted", "'norm=gn'"],
    ),  # fmt: skip
    (
        "unknown report metric in a sweep",
        "sweep",
        ["norm=bn,gn", "metric=top5"],
        ["metric", "top5", "val_error_median5"],
    ),  # fmt: skip
]


@pytest.mark.parametrize(("command", "overrides", "fragments"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, monkeypatch, capsys, command, overrides, fragments
):
    monkeypatch.chdir(tmp_path)  # a default out_dir ("runs") would land here
    out = tmp_path / "out"
    names = {k: str(v) for k, v in _data_trees(tmp_path / "data").items()}
    names.update(out=str(out), many=str(cpu_cores() + 1))
    overrides = [o.format(**names) for o in overrides]
    args = overrides if command == "report" else [*TINY, f"out_dir={out}", *overrides]

    code = main([command, *args])

    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("normbench: "), captured.err
    for fragment in fragments:
        assert fragment.format(**names) in lines[0]
    assert captured.out == ""
    assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_malformed_override_is_one_line_naming_it(command, capsys):
    """Not key=value (a Hydra flag such as --cfg): refused before composing, never a traceback."""
    assert main([command, "norm=gn", "--cfg", "job"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'--cfg'" in err and "key=value" in err


def test_unknown_command_is_refused(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [["norm=gnn"], ["norm=gn", "norm.groups=4,3"]],
    ids=["unknown norm", "sweep with an invalid cell"],
)
def test_a_real_process_exits_2_with_one_line_and_no_traceback(tmp_path, overrides):
    command = "sweep" if any("," in o for o in overrides) else "train"
    result = run_cli([command, *TINY, f"out_dir={tmp_path / 'out'}", *overrides], cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()
