"""The W&B tracker, checked by decoding the offline ``.wandb`` files it writes (no network).

A few real offline runs are shared by several tests (module-scoped fixtures) because each
``wandb.init`` starts W&B's service; the module ends by stopping that service and checking that
no W&B process is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import wandb
from PIL import Image
from wandb.proto.wandb_internal_pb2 import Record
from wandb_records import (
    BLOCK_SIZE,
    WandbFileError,
    config,
    exit_code,
    history_rows,
    of_type,
    read_payloads,
    read_records,
    run_files,
    run_info,
    summary,
)

from normbench.config import Config, DatasetConfig, ModelConfig, NormConfig
from normbench.errors import UserError
from normbench.track.cell import Cell
from normbench.track.tracker import NullTracker, open_tracker
from normbench.track.wandb_tracker import (
    ID_FILE,
    WandbTracker,
    flat_table,
    log_report,
    resolve_mode,
    run_name,
)

EXPERIMENT = "gn_vs_bn"
CONFIG = {
    "name": EXPERIMENT,
    "batch": 4,
    "gpus": 8,
    "model": {"name": "resnet20", "ws": False},
    "norm": {"name": "gn", "groups": 32},
    "dataset": {"name": "synthetic"},
    "logger": {"kind": "wandb", "project": "normbench-test", "entity": None, "mode": "offline"},
}
# The cell of CONFIG, as the job computes it.
CELL = Cell.of(
    Config(name=EXPERIMENT, batch=4, gpus=8, model=ModelConfig("resnet20"),
           norm=NormConfig("gn", groups=32), dataset=DatasetConfig("synthetic")),
    ["norm=gn", "batch=4"],
)  # fmt: skip
FINAL = {"val_error_final": 30.0, "val_error_best": 29.0, "val_error_median5": 31.5}


def _wandb_children() -> list[int]:
    """Live W&B processes (wandb-core, ...) started by this process."""
    me, found = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            name = (stat.parent / "comm").read_text().strip()
        except OSError:  # the process ended while we looked
            continue
        if fields[1] == me and fields[0] != "Z" and name.startswith("wandb"):
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module", autouse=True)
def offline_wandb(tmp_path_factory):
    """Keep W&B off the network and out of the home directory; stop its service at the end."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR"):
            mp.delenv(name, raising=False)
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("NETRC", str(home / "no-netrc"))
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(name, str(home / name.lower()))
        yield
        wandb.teardown()
    if Path("/proc").is_dir():
        assert _wandb_children() == []


def _open(run_dir: Path, **overrides):
    args = {"cell": CELL, "rank": 0, **overrides}
    return open_tracker("wandb", run_dir, CONFIG, **args)


def _finished(directory: Path, runs: int = 1, timeout: float = 10.0) -> tuple[Path, list]:
    """The newest run file under `directory`/wandb and its records, once it is complete.

    wandb-core closes the file a few milliseconds after ``run.finish()`` returns (and always
    before the process exits), so wait for the exit record instead of reading at once.
    """
    files = run_files(directory / "wandb")
    assert len(files) == runs, files
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = read_records(files[-1])
            if exit_code(records) is not None:
                return files[-1], records
            problem = "no exit record"
        except WandbFileError as e:  # a half-written file reads as torn until closed
            problem = str(e)
        assert time.monotonic() < deadline, f"{files[-1]} never completed: {problem}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One finished offline cell run: two epochs of two logged steps each, then the summary."""
    run_dir = CELL.directory(tmp_path_factory.mktemp("runs"))
    tracker = _open(run_dir)
    assert isinstance(tracker, WandbTracker)
    for step in (1, 2, 3, 4):
        tracker.log({"train/loss": 4.0 / step, "lr": 0.1, "epoch": step / 2}, step=step)
        if step % 2 == 0:
            tracker.log({"epoch/epoch": step // 2, "epoch/val_error": 50.0 - step}, step=step)
    tracker.summary(FINAL)
    tracker.finish(0)
    return run_dir, tracker.run_id, _finished(run_dir)[1]


def test_logged_metrics_are_recorded_per_step(session):
    _, _, records = session
    rows = {row["_step"]: row for row in history_rows(records)}
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[3]["train/loss"] == pytest.approx(4.0 / 3)
    # The epoch row is logged at the step ending the epoch and merges with that step's row.
    assert rows[2]["epoch/val_error"] == 48.0 and rows[2]["train/loss"] == 2.0
    assert rows[4]["epoch/epoch"] == 2 and "epoch/val_error" not in rows[3]


def test_run_identity_config_and_summary(session):
    run_dir, run_id, records = session
    info = run_info(records)
    assert info["id"] == run_id == (run_dir / ID_FILE).read_text().strip()
    assert info["project"] == "normbench-test"
    assert (info["group"], info["job_type"], info["name"]) == (EXPERIMENT, "train", "gn-b4")
    assert {"norm:gn", "batch:4", "model:resnet20", "dataset:synthetic", "gpus:8"} == set(
        info["tags"]
    )
    logged = config(records)
    assert logged["norm"] == {"name": "gn", "groups": 32}
    assert (logged["batch"], logged["cell"]) == (4, "batch=4,norm=gn")
    final = summary(records)
    assert {key: final[key] for key in FINAL} == FINAL
    assert exit_code(records) == 0


def test_epoch_metrics_are_plotted_against_epoch(session):
    metrics = {m.name or m.glob_name: m for m in of_type(session[2], "metric")}
    assert metrics["epoch/*"].step_metric == "epoch"
    for key in FINAL:
        assert metrics[key].summary.min


def test_resumed_cell_continues_the_same_run(session, tmp_path):
    run_dir, run_id, _ = session
    tracker = _open(run_dir)
    tracker.log({"train/loss": 0.5}, step=5)
    tracker.finish(0)
    assert tracker.run_id == run_id
    assert (run_dir / ID_FILE).read_text().strip() == run_id
    # Two runs in the same second share a directory name, so W&B may reuse the first one.
    _, latest = _finished(run_dir, runs=len(run_files(run_dir / "wandb")))
    assert run_info(latest)["id"] == run_id
    assert [row["train/loss"] for row in history_rows(latest)] == [0.5]


def test_finish_after_an_exception_leaves_a_complete_file(tmp_path):
    tracker = _open(tmp_path)
    # A record far larger than a 32 KiB block: it must be split into first/middle/last chunks.
    trace = "Traceback: " + "x" * (3 * BLOCK_SIZE)
    with pytest.raises(RuntimeError):
        try:
            tracker.log({"train/loss": 1.0}, step=1)
            raise RuntimeError("loss exploded")
        except RuntimeError:
            tracker.summary({"error": trace})
            tracker.finish(1)
            raise
    path, records = _finished(tmp_path)  # read_records raises on a torn chunk or record
    assert path.stat().st_size > 3 * BLOCK_SIZE
    assert exit_code(records) == 1
    assert summary(records)["error"] == trace
    assert history_rows(records)[0]["train/loss"] == 1.0


def test_reader_rejects_damaged_files(session):
    path = run_files(session[0] / "wandb")[0]  # complete: the session fixture waited for it
    data = path.read_bytes()
    first = Record.FromString(read_payloads(data)[0])
    assert first.header.version_info.producer.startswith(wandb.__version__)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    with pytest.raises(WandbFileError):
        read_payloads(bytes(flipped))
    with pytest.raises(WandbFileError):
        read_payloads(data[:-3])  # torn last chunk
    with pytest.raises(WandbFileError, match="header"):
        read_payloads(b":W&X" + data[4:])


def test_finish_turns_wandb_failures_into_one_warning(caplog):
    class BrokenRun:
        id = "broken"
        calls = 0

        def finish(self, exit_code: int = 0) -> None:
            BrokenRun.calls += 1
            raise ConnectionError("server gone")

    tracker = WandbTracker(BrokenRun())
    with caplog.at_level(logging.WARNING):
        tracker.finish(1)
        tracker.finish(1)  # a second call does nothing
    assert BrokenRun.calls == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "server gone" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("kind", "rank", "mode"),
    [("none", 0, "offline"), ("wandb", 1, "offline"), ("wandb", 0, "disabled")],
)
def test_null_tracker_writes_nothing(tmp_path, kind, rank, mode):
    cfg = {**CONFIG, "logger": {**CONFIG["logger"], "mode": mode}}
    tracker = open_tracker(kind, tmp_path, cfg, cell=CELL, rank=rank)
    assert isinstance(tracker, NullTracker)
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.summary(FINAL)
    tracker.finish(0)
    assert list(tmp_path.iterdir()) == []


def test_missing_wandb_package_gives_a_null_tracker(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with caplog.at_level(logging.WARNING):
        tracker = _open(tmp_path)
    assert isinstance(tracker, NullTracker)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert list(tmp_path.iterdir()) == []


@dataclasses.dataclass
class LoggerSection:
    mode: str = "disabled"


@pytest.mark.parametrize("section", [{"mode": "disabled"}, LoggerSection()])
def test_logger_config_overrides_the_config_section(tmp_path, section):
    assert isinstance(_open(tmp_path, logger_config=section), NullTracker)
    assert list(tmp_path.iterdir()) == []


def test_failing_wandb_init_gives_a_null_tracker(tmp_path, monkeypatch, caplog):
    def refuse(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", refuse)
    with caplog.at_level(logging.WARNING):
        assert isinstance(_open(tmp_path), NullTracker)
    (warning,) = caplog.records
    assert "unreachable" in warning.getMessage()


def test_unknown_kind_and_mode_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown logger 'tensorboard'"):
        open_tracker("tensorboard", tmp_path, CONFIG, cell=CELL, rank=0)
    with pytest.raises(UserError, match="allowed: offline, online, auto, disabled"):
        resolve_mode("dryrun")


def test_auto_mode_goes_online_only_with_credentials(tmp_path, monkeypatch):
    assert resolve_mode("offline") == "offline" and resolve_mode("online") == "online"
    assert resolve_mode("auto") == "offline"  # no key, no .netrc (fixture)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # key is for another host
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"


@pytest.mark.parametrize(
    ("overrides", "ws", "expected"),
    [
        (["batch=4", "norm=gn"], False, "gn-b4"),
        (["norm=gn", "batch=2", "model.ws=true"], True, "gn+ws-b2"),  # the label says ws
        (["seed=1", "norm.groups=8", "batch=32", "norm=gn"], False, "gn-b32-groups=8-seed=1"),
        (["norm.group_size=16", "logger=none"], False, "gn-b4-group_size=16"),
    ],
)
def test_run_name_from_the_cell(overrides, ws, expected):
    # The config as those overrides compose it (norm and batch from the config when not given).
    values = dict(item.split("=", 1) for item in overrides)
    cfg = Config(batch=int(values.get("batch", 4)), model=ModelConfig(ws=ws),
                 norm=NormConfig("gn"))  # fmt: skip
    assert run_name(Cell.of(cfg, overrides)) == expected


def test_flat_table_keeps_index_and_stringifies_columns():
    pivot = pd.DataFrame({4: [27.3, 24.2], 32: [23.6, math.nan]}, index=pd.Index(["bn", "gn"]))
    pivot.index.name = "norm"
    flat = flat_table(pivot)
    assert list(flat.columns) == ["norm", "4", "32"]
    assert flat["norm"].tolist() == ["bn", "gn"]
    plain = pd.DataFrame({"a": [1]})
    assert list(flat_table(plain).columns) == ["a"]


def test_log_report_records_table_and_images(tmp_path):
    png = tmp_path / "error_vs_batch.png"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(png)
    table = pd.DataFrame(
        {"norm": ["bn", "gn"], "batch": [4, 4], "val_error": [27.3, 24.2],
         "paper": [27.3, math.nan], "status": ["finished", None]}
    )  # fmt: skip
    log_report(tmp_path, EXPERIMENT, table, {"plots/error_vs_batch": png}, CONFIG)

    path, records = _finished(tmp_path / "report")
    info = run_info(records)
    assert (info["group"], info["job_type"]) == (EXPERIMENT, "report")
    assert exit_code(records) == 0
    (row,) = history_rows(records)
    files = path.parent / "files"
    results = row["results"]
    assert (results["_type"], results["ncols"], results["nrows"]) == ("table-file", 5, 2)
    logged = json.loads((files / results["path"]).read_text())
    assert logged["columns"] == list(table.columns)
    assert [r[:3] for r in logged["data"]] == [["bn", 4, 27.3], ["gn", 4, 24.2]]
    image = row["plots/error_vs_batch"]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (8, 6)
    assert (files / image["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
