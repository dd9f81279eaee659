"""Data loading: does the loader deliver images faster than the model trains on them?

For every dataset normbench knows (synthetic, fashion_mnist, cifar10 when its files are here,
and an ImageFolder of JPEGs generated in a temporary folder), the training loader that
``normbench.train.loader.build_loaders`` builds (augmentation on, batch 32) is timed with 0, 1
and 2 worker processes, alternating with a training step of the model that consumes that
dataset (resnet20 for the small images, resnet50 at 224x224 for ImageFolder), in the same
rounds. One loader call is one whole epoch of a training set cut to a few batches, so every
batch timed was produced while timed (no batch prefetched during another contender's turn).
Rates are images per second of wall-clock time (workers are separate processes). One torch
thread by default: on a shared 2-core machine two intra-op threads run several times slower
than one (each parallel region waits for a descheduled thread).

    .venv/bin/python scripts/bench_data.py [--quick] [--repeats N] [--workers 0 1 2]
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import Report, Timings, bench_parser, interleave, markdown_table, parse
from torch.utils.data import Dataset
from torchvision.io import decode_jpeg, encode_jpeg, read_file, write_file
from torchvision.transforms import v2

from normbench.data import DatasetBundle, build_datasets
from normbench.errors import UserError
from normbench.models import build_model
from normbench.train.loader import build_loaders

BATCH = 32
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGEFOLDER_CLASSES, IMAGEFOLDER_PER_CLASS = 4, 2 * BATCH  # 8 batches per epoch
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SYNTHETIC_SIZE = 32  # generated images have no size of their own: CIFAR's (results/bench/data.md)


@dataclass
class Source:
    """A dataset to time: its training set, how it is loaded, and the model that consumes it."""

    name: str
    pipeline: str
    data: DatasetBundle
    model: str
    model_batch: int


def make_imagefolder(root: Path, seed: int = 0) -> None:
    """JPEGs of ImageNet-like size and content in root/{train,val}/<class>/.

    Sizes vary around ImageNet's typical 500x375; content is smooth colour fields with fine
    noise, so files compress like photographs (tens of kB) rather than like flat colour.
    """
    gen = torch.Generator().manual_seed(seed)
    for split, per_class in (("train", IMAGEFOLDER_PER_CLASS), ("val", 4)):
        for c in range(IMAGEFOLDER_CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = (int(v) for v in torch.randint(300, 501, (2,), generator=gen))
                coarse = torch.rand(1, 3, 6, 8, generator=gen)
                smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
                image = smooth[0] + 0.08 * torch.randn(3, h, w, generator=gen)
                pixels = image.clamp(0, 1).mul(255).to(torch.uint8)
                write_file(str(folder / f"{i}.jpg"), encode_jpeg(pixels, quality=90))


class JpegFolder(Dataset):
    """Reference decode + augment of an ImageFolder (torchvision.io + transforms.v2).

    Used only while normbench has no ImageFolder builder: random-resized crop to 224, flip,
    normalize, the standard ImageNet training pipeline.
    """

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.glob("*/*.jpg"))
        classes = sorted({f.parent.name for f in self.files})
        self.labels = [classes.index(f.parent.name) for f in self.files]
        self.transform = v2.Compose([
            v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])  # fmt: skip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode_jpeg(read_file(str(self.files[index])))
        return self.transform(image), self.labels[index]


def build(
    name: str,
    root: str | None,
    train_size: int | None,
    image_size: int | None = None,
    val_size: int | None = None,
) -> DatasetBundle:
    """The dataset cut to ``train_size`` images; None keeps the dataset's own sizes."""
    return build_datasets(
        name, root, seed=0, image_size=image_size, train_size=train_size, val_size=val_size,
        augment=True, download=False, bad_images="fail",
    )  # fmt: skip


def sources(folder: Path, small_batches: int, notes: list[str]) -> list[Source]:
    """The datasets that can be timed here; ``notes`` says why any other was skipped.

    In-memory training sets are cut to ``small_batches`` batches (one timed epoch).
    """
    size = small_batches * BATCH
    synthetic = build("synthetic", None, size, image_size=SYNTHETIC_SIZE, val_size=BATCH)
    found = [Source("synthetic", "normbench", synthetic, "resnet20", BATCH)]
    for name, root in (("fashion_mnist", FASHION_ROOT), ("cifar10", None)):
        try:
            found.append(Source(name, "normbench", build(name, root, size), "resnet20", BATCH))
        except (UserError, ImportError) as e:
            notes.append(f"{name}: skipped, not available here ({e}).")
    make_imagefolder(folder)
    try:
        data = build("imagenet", str(folder), None)
        pipeline = "normbench"
    except (UserError, ImportError) as e:
        notes.append(
            "imagenet (ImageFolder): normbench's builder could not load the generated folder "
            f"({e}); timed with the reference pipeline instead: torchvision.io decode_jpeg + "
            "transforms.v2 RandomResizedCrop(224), flip, normalize."
        )
        train = JpegFolder(folder / "train")
        data = DatasetBundle(train, train, IMAGEFOLDER_CLASSES, 3, 224, None)
        pipeline = "reference"
    found.append(Source("imagenet (generated JPEGs)", pipeline, data, "resnet50", 8))
    return found


def loader_contender(data: DatasetBundle, workers: int) -> Callable[[], None]:
    """One call = one epoch of the training loader (its workers persist between epochs)."""
    loader, _, sampler = build_loaders(
        data, batch_per_rank=BATCH, val_batch_per_rank=BATCH, world_size=1, rank=0, seed=0,
        workers=workers, pin_memory=False,
    )  # fmt: skip
    epochs = itertools.count()

    def run() -> None:
        epoch = next(epochs)
        sampler.set_position(epoch, 0)
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        for _ in loader:
            pass

    return run


def model_contender(source: Source) -> Callable[[], None]:
    """One training step (forward, backward, SGD) on a batch shaped like the dataset's."""
    data, b = source.data, source.model_batch
    model = build_model(source.model, norm="bn", num_classes=data.num_classes,
                        in_channels=data.in_channels).train()  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(b, data.in_channels, data.image_size, data.image_size)
    y = torch.randint(0, data.num_classes, (b,))

    def run() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def rate(t: Timings, name: str, images: int, best: bool = False) -> float:
    """Images per second of wall-clock time: median, or of the fastest round with ``best``."""
    seconds = min(t.wall[name]) if best else t.median_ms("wall", name) / 1e3
    return images / seconds


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parse(parser)
    report = Report("data", "Data loading vs model consumption, per dataset")
    notes: list[str] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-imagefolder-") as tmp:
        for source in sources(Path(tmp), 10 if args.quick else 40, notes):
            contenders = {f"loader, {w} workers": loader_contender(source.data, w)
                          for w in args.workers}  # fmt: skip
            contenders["model"] = model_contender(source)
            t = interleave(contenders, args.repeats)
            model_rate = rate(t, "model", source.model_batch)
            model_best = rate(t, "model", source.model_batch, best=True)
            shape = f"{source.data.in_channels}x{source.data.image_size}x{source.data.image_size}"
            for w in args.workers:
                loader_rate = rate(t, f"loader, {w} workers", len(source.data.train))
                rows.append([
                    source.name, source.pipeline, shape, w, f"{loader_rate:.0f}",
                    f"{loader_rate / max(w, 1):.0f}",
                    f"{source.model} b={source.model_batch}", f"{model_rate:.1f}",
                    f"{model_best:.1f}", f"{loader_rate / model_best:.1f}x",
                ])  # fmt: skip
    report.add(
        f"Loader: batch {BATCH}, augmentation on, one epoch per call, {args.repeats} rounds "
        "alternating every worker count and the model step; torch threads in the main "
        f"process: {args.threads} (each worker uses 1). Loader rates are medians; 'per worker' "
        "= rate / workers (the main process for 0 workers). 'loader / model' divides by the "
        "model's best round (the least disturbed, so the comparison is conservative). The "
        "model is timed alone: in training the loader's workers and the model share the same "
        "cores, so a loader only slightly faster than the model still slows training."
    )
    report.add(markdown_table(
        ["dataset", "pipeline", "image", "workers", "loader img/s", "per worker img/s",
         "model", "model img/s (median)", "model img/s (best)", "loader / model"], rows,
    ))  # fmt: skip
    if notes:
        report.add("\n".join(f"- {note}" for note in notes))
    report.write(args.out)


if __name__ == "__main__":
    main()
