"""Fashion-MNIST from its IDX files (gzipped or not), parsed with numpy.

Looked for, in order (:func:`candidate_dirs`): the dataset's folder (dataset.root, else
<data root>/fashion_mnist: see :func:`normbench.data.data_root`), torchvision's layout inside it
(FashionMNIST/raw), and /usr/share/datasets/fashion-mnist (the Debian package
``dataset-fashion-mnist``, read only). Where none has them, :func:`prepare` downloads them into
the dataset's folder with torchvision's mirrors and md5 sums, unless ``dataset.download=false``.
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
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
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Seconds a download waits for a connection or for the next bytes: a firewall that drops
# packets would otherwise hold the command for minutes before the synthetic fallback.
DOWNLOAD_TIMEOUT_S = 30.0
_UBYTE = 0x08  # IDX type code of unsigned bytes
_MAX_PAD = 8  # sizes up to 28 + 8 are reached by zero padding, others by resizing

log = logging.getLogger(__name__)


def candidate_dirs(folder: Path) -> list[Path]:
    """Directories searched for the IDX files, in order: ``folder`` (the dataset's folder),
    torchvision's layout inside it, the Debian package's."""
    return [folder, folder / "FashionMNIST" / "raw", Path(SYSTEM_DIR)]


def available(folder: Path) -> bool:
    """Whether the four IDX files can be found (see :func:`find_files`)."""
    try:
        find_files(folder)
    except UserError:
        return False
    return True


def prepare(folder: Path, *, download: bool) -> None:
    """Make sure the IDX files can be read: found (:func:`candidate_dirs`), else, with
    ``download``, fetched into ``folder``. Otherwise one UserError line saying where it looked,
    what the download did, and how to fix it."""
    if available(folder):
        return
    looked = ", ".join(str(d) for d in candidate_dirs(folder))
    fix = (
        f"put the IDX files in {folder} (dataset.root=DIR or NORMBENCH_DATA=DIR choose another "
        "folder) or apt-get install dataset-fashion-mnist"
    )
    if not download:
        raise UserError(
            f"Fashion-MNIST not found in {looked}, and not downloaded (dataset.download=false): "
            f"{fix}, or drop dataset.download=false on a machine with internet"
        )
    try:
        fetch(folder)
    except OSError as err:
        raise UserError(
            f"Fashion-MNIST not found in {looked}, and its download into {folder} failed "
            f"({err}): {fix}, or retry on a machine with internet"
        ) from None
    # Said once it worked, so that a failure stays one line (the caller's).
    log.warning("Fashion-MNIST was not found here: downloaded it into %s", folder)


def fetch(folder: Path) -> None:
    """Download the four gzipped IDX files into ``folder`` with torchvision: its mirror list
    (``FashionMNIST.mirrors``, each tried in turn) and its md5 sums (``FashionMNIST.resources``).

    The files land in a temporary folder inside ``folder`` and are renamed into place only once
    all four passed their md5 check, so a failed or interrupted download leaves nothing that
    looks complete, and runs downloading at once cannot read each other's half files. Raises
    OSError naming each URL tried and why it failed (no network, HTTP error, timeout, wrong md5
    sum), or why the folder could not be written.
    """
    from torchvision.datasets import FashionMNIST

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            for filename, md5 in FashionMNIST.resources:
                _fetch_file(FashionMNIST.mirrors, filename, md5, Path(tmp))
        for filename, _ in FashionMNIST.resources:
            os.replace(Path(tmp) / filename, folder / filename)


def _fetch_file(mirrors: list[str], filename: str, md5: str, into: Path) -> None:
    """One file from the first mirror that serves it with the right md5 sum."""
    from torchvision.datasets.utils import download_url

    failures = []
    for mirror in mirrors:
        try:
            download_url(f"{mirror}{filename}", str(into), filename, md5)
            return
        except OSError as err:  # urllib's URLError and HTTPError, socket timeouts
            failures.append(f"{mirror}{filename}: {getattr(err, 'reason', None) or err}")
        except RuntimeError:  # torchvision: the downloaded file fails its md5 check
            failures.append(f"{mirror}{filename}: md5 sum is not {md5}")
    raise OSError("; ".join(failures))


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """urllib (and so torchvision's downloader) waits forever by default; bound each wait."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_files(folder: Path) -> dict[str, Path]:
    """Paths of the four IDX files, all from the first of :func:`candidate_dirs` that has them."""
    stems = [stem for pair in FILES.values() for stem in pair]
    dirs = candidate_dirs(folder)
    for directory in dirs:
        found = {stem: _find(directory, stem) for stem in stems}
        if all(found.values()):
            return found  # type: ignore[return-value]
    looked = ", ".join(str(d) for d in dirs)
    raise UserError(
        f"Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...) not found in: {looked} "
        f"(put them in {folder}, pass dataset.root=DIR, or apt-get install dataset-fashion-mnist)"
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


def load(folder: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """((train images, labels), (test images, labels)): uint8 (N, 1, 28, 28) and int64 (N,),
    from the IDX files :func:`find_files` finds for the dataset's ``folder``."""
    paths = find_files(folder)
    return tuple(_read_split(paths[img], paths[lab]) for img, lab in FILES.values())


def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bring 28 x 28 images to size x size: zero-pad when up to 8 pixels larger, else resize."""
    current = images.shape[-1]
    extra = size - current
    if 0 < extra <= _MAX_PAD:
        before = extra // 2
        return torch.nn.functional.pad(images, (before, extra - before, before, extra - before))
    return resize_uint8(images, size)
