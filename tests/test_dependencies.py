"""The lower bounds of pyproject.toml match the code: each package's floor is at least the
release that introduced the newest API the code calls, that API is in the installed release,
and the pinned release `make setup` installs satisfies the floors."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import torchvision
from packaging.version import Version
from torch.nn.parallel import DistributedDataParallel

ROOT = Path(__file__).resolve().parents[1]
# torchvision 0.N is built for exactly one torch: 2.(N - 15), e.g. 0.29 for 2.14.
TORCHVISION_MINOR_OFFSET = 15


def _floor(package: str) -> Version:
    """The ">=" bound of a dependency in pyproject.toml."""
    found = re.search(rf'^\s*"{package}>=([\d.]+)', (ROOT / "pyproject.toml").read_text(), re.M)
    assert found, f"pyproject.toml gives {package} no lower bound"
    return Version(found.group(1))


def _release(version: str) -> Version:
    """2.14.1+cu130 -> 2.14.1."""
    return Version(Version(version).base_version)


def test_the_torch_floor_has_the_ddp_keyword_the_loop_uses():
    """normbench/train/loop.py wraps the model in DistributedDataParallel with
    forward_sync_buffers=False (each rank keeps its own BN statistics), a keyword torch 2.13
    introduced in place of broadcast_buffers."""
    loop = (ROOT / "normbench" / "train" / "loop.py").read_text()
    assert "forward_sync_buffers=False" in loop
    assert "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    assert _floor("torch") >= Version("2.13")


def test_the_torchvision_floor_is_the_release_built_for_the_torch_floor():
    torch_floor, vision_floor = _floor("torch"), _floor("torchvision")
    assert vision_floor.release[:2] == (0, torch_floor.minor + TORCHVISION_MINOR_OFFSET)
    installed = _release(torch.__version__), _release(torchvision.__version__)
    assert installed[1].minor == installed[0].minor + TORCHVISION_MINOR_OFFSET  # the rule holds


@pytest.mark.parametrize("package", ["torch", "torchvision"])
def test_the_installed_and_the_pinned_releases_meet_the_floor(package):
    installed = {"torch": torch.__version__, "torchvision": torchvision.__version__}[package]
    assert _release(installed) >= _floor(package)
    pinned = re.search(rf"\b{package}==([\d.]+)", (ROOT / "Makefile").read_text())
    assert pinned, f"the Makefile's TORCH pins no {package}"
    assert Version(pinned.group(1)) >= _floor(package)
