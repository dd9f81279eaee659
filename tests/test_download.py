"""Fashion-MNIST's download, the default where its files cannot be read here, against a local
mirror: an HTTP server on 127.0.0.1 serving gzipped IDX files the test writes (64 images), so
nothing leaves the machine. torchvision's mirror list points at it; its md5 sums are those of
the served files, so torchvision's checks run as in production (and one test serves files
that fail them). When the download fails too, the command falls back to synthetic data in one
line, and that sweep's report says in its first line that its numbers test the machinery only.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fixtures_report import write_cell
from test_data import _write_fashion
from torchvision.datasets import FashionMNIST

from normbench.data import check_dataset, fashion_mnist
from normbench.errors import UserError
from normbench.hydra_app import with_available_dataset
from normbench.report import build_report, format_report

N_TRAIN, N_VAL = 64, 16
ARGS = ["norm=bn,gn", "batch=4"]  # a sweep on the default dataset


class _Mirror(SimpleHTTPRequestHandler):
    requests: list[str]  # set per server: the paths asked for

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:  # no access log on stderr
        pass


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """An empty data root, no Debian files, and short network waits."""
    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "no-debian-package"))
    monkeypatch.setattr(fashion_mnist, "DOWNLOAD_TIMEOUT_S", 2.0)
    return tmp_path / "data"


@pytest.fixture
def mirror(tmp_path, monkeypatch, data_root) -> Iterator[list[str]]:
    """torchvision's Fashion-MNIST mirror list pointed at a local server of tiny IDX files,
    with their md5 sums; yields the list of paths the server was asked for."""
    served = tmp_path / "served"
    _write_fashion(served, gz=True, n_train=N_TRAIN, n_val=N_VAL)
    resources = [
        (name, hashlib.md5((served / name).read_bytes()).hexdigest())
        for name, _ in FashionMNIST.resources
    ]
    requests: list[str] = []
    handler = partial(type("Handler", (_Mirror,), {"requests": requests}), directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    monkeypatch.setattr(FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    try:
        yield requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _fallback_line(capsys) -> str:
    """The one line said on stderr (besides a download's progress, e.g. "65.2%")."""
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    said = [line for line in lines if line.strip() and not line.strip().endswith("%")]
    assert len(said) == 1, said
    return said[0]


def test_the_default_downloads_fashion_mnist_where_it_is_missing(mirror, data_root, caplog):
    assert with_available_dataset(ARGS) == ARGS  # no fallback: the real images
    folder = data_root / "fashion_mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n, _ in FashionMNIST.resources)
    (train_x, _), (val_x, _) = fashion_mnist.load(folder)
    assert (len(train_x), len(val_x)) == (N_TRAIN, N_VAL)
    assert f"downloaded it into {folder}" in caplog.text
    caplog.clear()
    # Found there from now on: never downloaded twice.
    asked = len(mirror)
    check_dataset("fashion_mnist", None, download=True)
    assert with_available_dataset(ARGS) == ARGS
    assert len(mirror) == asked and caplog.text == ""


def test_dataset_download_false_never_asks_the_network(mirror, data_root, capsys):
    args = [*ARGS, "dataset.download=false"]
    assert with_available_dataset(args) == [*args, "dataset=synthetic"]
    assert mirror == []
    line = _fallback_line(capsys)
    assert "dataset.download=false" in line and "machinery only" in line


def test_files_failing_their_md5_sums_are_not_kept(mirror, data_root, monkeypatch, capsys):
    """torchvision's own md5 sums (the real files') against the served tiny files."""
    real = [(name, "0" * 32) for name, _ in FashionMNIST.resources]
    monkeypatch.setattr(FashionMNIST, "resources", real)
    assert with_available_dataset(ARGS) == [*ARGS, "dataset=synthetic"]
    line = _fallback_line(capsys)
    assert "md5 sum is not " + "0" * 32 in line and "train-images-idx3-ubyte.gz" in line
    assert mirror, "the mirror was asked"
    assert list((data_root / "fashion_mnist").iterdir()) == []  # no half or wrong file left


def _listening_socket() -> socket.socket:
    """A port that takes connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _closed_socket() -> socket.socket:
    """A port that refuses connections: bound, not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize(
    ("server", "reason"),
    [(_closed_socket, "refused"), (_listening_socket, "timed out")],
    ids=["no-server", "silent-server"],
)
def test_no_download_falls_back_in_one_line(data_root, monkeypatch, capsys, server, reason):
    """What was tried (the folders, the URL and why it failed) and how to fix it, in one line;
    a mirror that never answers costs a bounded wait, not a hung command."""
    with server() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        monkeypatch.setattr(FashionMNIST, "mirrors", [url])
        start = time.monotonic()
        assert with_available_dataset(ARGS) == [*ARGS, "dataset=synthetic"]
        assert time.monotonic() - start < 30
    line = _fallback_line(capsys)
    folder = data_root / "fashion_mnist"
    for part in (f"Fashion-MNIST not found in {folder}", f"download into {folder} failed",
                 url, reason, "apt-get install dataset-fashion-mnist", "NORMBENCH_DATA=DIR",
                 "synthetic", "machinery only"):  # fmt: skip
        assert part in line, part


def test_a_named_dataset_that_cannot_be_had_is_an_error_not_a_fallback(data_root, monkeypatch):
    with _closed_socket() as sock:
        monkeypatch.setattr(FashionMNIST, "mirrors", [f"http://127.0.0.1:{sock.getsockname()[1]}/"])
        with pytest.raises(UserError, match="its download into .* failed"):
            check_dataset("fashion_mnist", None, download=True)
        assert with_available_dataset(["dataset=fashion_mnist"]) == ["dataset=fashion_mnist"]


def _set_dataset(cell: Path, name: str) -> None:
    """Rewrite a fake cell's dataset in every file the report may read it from."""
    config = yaml.safe_load((cell / "config.yaml").read_text())
    config["dataset"]["name"] = name
    (cell / "config.yaml").write_text(yaml.safe_dump(config))
    metrics, job = (json.loads((cell / f).read_text()) for f in ("metrics.json", "job.json"))
    metrics["dataset"] = job["cell"]["dataset"] = name
    (cell / "metrics.json").write_text(json.dumps(metrics))
    (cell / "job.json").write_text(json.dumps(job))


@pytest.mark.parametrize("dataset", ["synthetic", "fashion_mnist"])
def test_a_report_on_synthetic_data_says_so_in_its_first_line(tmp_path, dataset):
    sweep = tmp_path / "sweep"
    for norm, target in (("bn", 60.0), ("gn", 58.0)):
        _set_dataset(write_cell(sweep, {"norm": norm, "batch": 32}, target), dataset)
    report = build_report(sweep, out_dir=tmp_path / "report")
    first_lines = [
        format_report(report).splitlines()[0],
        (tmp_path / "report" / "report.md").read_text().splitlines()[0],
    ]
    says = ["machinery only" in line for line in first_lines]
    assert says == [dataset == "synthetic"] * 2, first_lines
