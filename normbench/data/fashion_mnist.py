"""Fashion-MNIST from its IDX files (gzipped or not), parsed with numpy.

Looked for, in order: the ``root`` argument (and root/fashion-mnist, root/FashionMNIST/raw),
$NORMBENCH_DATA (and $NORMBENCH_DATA/fashion-mnist), /usr/share/datasets/fashion-mnist (the
Debian package ``dataset-fashion-mnist``), then the cache folder that :func:`download` fills
(``dataset.download=true``, torchvision's downloader, on a machine with internet).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from normbench.data.memory import resize_uint8
from normbench.errors import UserError

NUM_CLASSES = 10
IMAGE_SIZE = 28
MEAN = (0.2860,)
STD = (0.3530,)
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normbench"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08  # IDX type code of unsigned bytes
_MAX_PAD = 8  # sizes up to 28 + 8 are reached by zero padding, others by resizing


def candidate_dirs(root: str | None) -> list[Path]:
    """Directories searched for the IDX files, in order."""
    dirs: list[Path] = []
    if root:
        dirs += [Path(root), Path(root) / "fashion-mnist", Path(root) / "FashionMNIST" / "raw"]
    env = os.environ.get("NORMBENCH_DATA")
    if env:
        dirs += [Path(env), Path(env) / "fashion-mnist"]
    dirs += [Path(SYSTEM_DIR), CACHE_DIR / "FashionMNIST" / "raw"]
    return dirs


def available(root: str | None) -> bool:
    """Whether the four IDX files can be found (see :func:`find_files`)."""
    try:
        find_files(root)
    except UserError:
        return False
    return True


def download(root: str | None) -> None:
    """Fetch the IDX files with torchvision into ``root`` (default: the cache folder), where
    :func:`find_files` looks; one UserError line when that fails (e.g. no internet)."""
    from torchvision.datasets import FashionMNIST

    target = Path(root) if root else CACHE_DIR
    try:
        FashionMNIST(str(target), train=True, download=True)
    except (OSError, RuntimeError) as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise UserError(f"could not download Fashion-MNIST into {target}: {first}") from None


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_files(root: str | None) -> dict[str, Path]:
    """Paths of the four IDX files, all from the first directory that has them all."""
    stems = [stem for pair in FILES.values() for stem in pair]
    dirs = candidate_dirs(root)
    for directory in dirs:
        found = {stem: _find(directory, stem) for stem in stems}
        if all(found.values()):
            return found  # type: ignore[return-value]
    looked = ", ".join(str(d) for d in dirs)
    raise UserError(
        f"Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...) not found in: {looked} "
        "(install them with 'apt-get install dataset-fashion-mnist' or pass dataset.root=DIR)"
    )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions; UserError if malformed."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"corrupt IDX file {path}: {err}") from err
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"corrupt IDX file {path}: {len(raw)} bytes, shorter than its header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != (_UBYTE << 8 | ndim):
        raise UserError(
            f"corrupt IDX file {path}: magic number {magic:#010x}, expected "
            f"{_UBYTE << 8 | ndim:#010x} (unsigned bytes, {ndim} dimensions)"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise UserError(
            f"corrupt IDX file {path}: {len(raw)} bytes, expected {expected} for shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise UserError(
            f"IDX files disagree: {images_path} has {images.shape[0]} images, "
            f"{labels_path} has {labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise UserError(f"corrupt IDX file {labels_path}: label {labels.max()} >= {NUM_CLASSES}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def load(root: str | None) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """((train images, labels), (test images, labels)): uint8 (N, 1, 28, 28) and int64 (N,)."""
    paths = find_files(root)
    return tuple(_read_split(paths[img], paths[lab]) for img, lab in FILES.values())


def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bring 28 x 28 images to size x size: zero-pad when up to 8 pixels larger, else resize."""
    current = images.shape[-1]
    extra = size - current
    if 0 < extra <= _MAX_PAD:
        before = extra // 2
        return torch.nn.functional.pad(images, (before, extra - before, before, extra - before))
    return resize_uint8(images, size)
