"""Shared fixtures: run the real CLI in a subprocess or in-process on tiny cells."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# A cell small enough to train in seconds on 2 CPU cores; every test states what it changes.
# A sweep of tiny cells runs them one after another in its own process (launcher=basic): each
# worker process of the default launcher would import torch again, seconds per process on a
# slow machine. Tests whose subject is the default launcher say launcher=parallel.
TINY = [
    "launcher=basic",
    "logger=none",
    "dataset=synthetic",
    "model=resnet8",
    "model.width=8",
    "norm.groups=4",
    "dataset.train_size=256",
    "dataset.val_size=64",
    "dataset.image_size=16",
    "gpus=2",
    "batch=8",
    "epochs=2",
    "progress=false",
]


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up there while it is defined
    spec.loader.exec_module(module)
    return module


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None):
    """`normbench <args>` in a fresh process; returns the CompletedProcess (text output)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", **(env or {})}
    # A session of its own, so that a timeout kills the command's whole process group (its DDP
    # ranks and loader workers too): killing the CLI alone left them running into later tests.
    with subprocess.Popen(
        [sys.executable, "-m", "normbench", *args], cwd=cwd, env=full_env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    ) as process:  # fmt: skip
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            raise subprocess.TimeoutExpired(process.args, timeout, out, err) from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_here(args: list[str], capsys: pytest.CaptureFixture) -> subprocess.CompletedProcess:
    """`normbench <args>` in this process, read like :func:`run_cli`'s result. For tests whose
    subject is what a command does rather than the process it runs in (a real exit, signals,
    tracebacks): a new interpreter spends seconds importing torch, which a slow machine feels."""
    from normbench.cli import main

    capsys.readouterr()  # what the test printed before is not the command's
    environ = dict(os.environ)  # a command notes things there for the processes it starts
    try:
        code = main(args)
    finally:
        os.environ.clear()
        os.environ.update(environ)
        # As when a process ends: its console handler holds this test's captured stdout.
        logger = logging.getLogger("normbench")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["normbench", *args], code, out, err)


@pytest.fixture(autouse=True, scope="session")
def no_internet() -> Iterator[None]:
    """No test reaches the internet, in this process or the CLI's: a download (Fashion-MNIST's,
    tried by default where its files are missing) goes through a proxy that is a bound port
    nobody listens on, so it is refused at once instead of hanging; 127.0.0.1 stays direct
    for tests/test_download.py's local mirror."""
    with socket.socket() as closed, pytest.MonkeyPatch.context() as patch:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            patch.setenv(name, proxy)
        for name in ("no_proxy", "NO_PROXY"):
            patch.setenv(name, "127.0.0.1,localhost")
        yield


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)
