"""The paper's extra ImageNet augmentation (fb.resnet.torch's colour jitter and AlexNet's PCA
lighting) checked by its statistics; where the options apply (imagenet's train split only); and
the paper-* experiments that turn them on together with GPU 0's BN statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from normbench.checks import validate
from normbench.config import as_config
from normbench.data import build_datasets, imagenet
from normbench.errors import UserError
from normbench.hydra_app import compose, expand_sweep

DRAWS = 4000  # per statistic: ~1 % error on a standard deviation, ~2 % on a covariance entry


def _draws(transform, image, n: int) -> list:
    """``transform(image)`` n times from a seeded generator, leaving the global one alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return [transform(image) for _ in range(n)]


def _step(pipeline: transforms.Compose, kind: type):
    (step,) = [s for s in pipeline.transforms if isinstance(s, kind)]
    return step


# ---------------------------------------------------------------- PCA lighting


def test_lighting_shift_has_alexnets_pca_covariance():
    alphastd = 0.1
    grey = torch.full((3, 2, 2), 0.5)
    shifts = torch.stack(_draws(imagenet.Lighting(alphastd), grey, DRAWS)) - grey
    # one colour shift per image: every pixel of a flat image moves alike
    assert torch.equal(shifts, shifts[:, :, :1, :1].expand_as(shifts))
    rgb = shifts[:, :, 0, 0].double()  # (DRAWS, 3)

    eigval = torch.tensor(imagenet.PCA_EIGVAL, dtype=torch.float64)
    eigvec = torch.tensor(imagenet.PCA_EIGVEC, dtype=torch.float64)
    expected = eigvec @ torch.diag((alphastd * eigval) ** 2) @ eigvec.T
    assert rgb.mean(0).abs().max() < 4 * expected.diagonal().max().sqrt() / DRAWS**0.5
    torch.testing.assert_close(
        torch.cov(rgb.T), expected, rtol=0, atol=0.1 * expected.abs().max().item()
    )
    # Each principal component alone (the two small ones hardly show in the RGB covariance):
    # eigvec^-1 rgb = alpha * eigval, with std alphastd * eigval.
    components = torch.linalg.solve(eigvec, rgb.T).T
    torch.testing.assert_close(components.std(0), alphastd * eigval, rtol=0.06, atol=0)


def test_lighting_with_zero_alphastd_is_the_identity():
    image = torch.rand(3, 5, 4)
    assert all(torch.equal(out, image) for out in _draws(imagenet.Lighting(0.0), image, 10))


# ---------------------------------------------------------------- colour jitter


def test_color_jitter_scales_brightness_by_factors_spread_over_0_6_to_1_4():
    jitter = _step(imagenet.train_transform(8, color_jitter=0.4), transforms.ColorJitter)
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4)
    assert jitter.hue is None  # fb.resnet.torch jitters no hue
    # Contrast and saturation leave a flat grey as it is, so only brightness shows.
    grey = Image.new("RGB", (4, 4), (100, 100, 100))
    outputs = np.stack([np.asarray(out) for out in _draws(jitter, grey, 500)])
    assert (outputs == outputs[:, :1, :1, :1]).all()
    factors = outputs[:, 0, 0, 0] / 100
    assert 0.595 <= factors.min() < 0.65 and 1.35 < factors.max() <= 1.405
    assert abs(factors.mean() - 1) < 0.03  # uniform on [0.6, 1.4]: std of the mean ~0.01


# ---------------------------------------------------------------- where the options apply


def _image_folder(root: Path) -> str:
    for split in ("train", "val"):
        (root / split / "cls").mkdir(parents=True)
        Image.new("RGB", (12, 10), (90, 120, 150)).save(root / split / "cls" / "0.png")
    return str(root)


def _imagenet(root: str, **options):
    return build_datasets(
        "imagenet", root, seed=0, image_size=8, train_size=None, val_size=None, augment=True,
        download=False, bad_images="fail", **options,
    )  # fmt: skip


def _kinds(dataset) -> list[type]:
    return [type(step) for step in dataset.transform.transforms]


def test_imagenet_train_pipeline_has_jitter_and_lighting_when_asked_val_never(tmp_path):
    root = _image_folder(tmp_path)
    on = _imagenet(root, color_jitter=0.4, lighting=0.1)
    assert _kinds(on.train) == [
        transforms.RandomResizedCrop,
        transforms.RandomHorizontalFlip,
        transforms.ColorJitter,
        transforms.ToTensor,
        imagenet.Lighting,  # on [0, 1] values: the eigenvalues' scale
        transforms.Normalize,
    ]
    assert _step(on.train.transform, imagenet.Lighting).alphastd == 0.1
    off = _imagenet(root)
    for ds in (on.val, off.train, off.val):
        assert not {transforms.ColorJitter, imagenet.Lighting} & set(_kinds(ds))
    # Same seed, same crop and flip: the colour steps alone tell the two train images apart.
    assert not torch.allclose(on.train[0][0], off.train[0][0])
    assert torch.equal(on.val[0][0], off.val[0][0])


@pytest.mark.parametrize(
    ("dataset", "options", "message"),
    [
        ("imagenet", {"color_jitter": -0.1}, r"dataset.color_jitter=-0.1 must be >= 0"),
        ("imagenet", {"lighting": -1.0}, r"dataset.lighting=-1.0 must be >= 0"),
        ("synthetic", {"lighting": 0.1}, r"dataset.lighting=0.1 is an imagenet option"),
    ],
)
def test_bad_augment_options_are_one_line_user_errors(dataset, options, message):
    with pytest.raises(UserError, match=message):
        build_datasets(
            dataset, None, seed=0, image_size=None, train_size=10, val_size=10, augment=True,
            download=False, bad_images="fail", **options,
        )  # fmt: skip


def test_plain_imagenet_config_leaves_them_off():
    dataset = as_config(compose(["dataset=imagenet"])).dataset
    assert (dataset.color_jitter, dataset.lighting) == (0.0, 0.0)


# ---------------------------------------------------------------- the paper-* experiments

PAPER_EXPERIMENTS = ("paper-batch", "paper-norms", "paper-groups", "paper-group-size")


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_paper_experiments_use_gpu0_statistics_and_the_full_augmentation(experiment, tmp_path):
    cells = expand_sweep([f"experiment={experiment}"])
    by_norm = {next((o for o in c if o.startswith("norm=")), "default"): c for c in cells}
    root = _image_folder(tmp_path)
    for cell in by_norm.values():  # one cell per norm of the grid
        cfg = as_config(compose([*cell, f"dataset.root={root}"]))
        assert (cfg.dataset.name, cfg.dataset.color_jitter, cfg.dataset.lighting) == (
            "imagenet", 0.4, 0.1,
        )  # fmt: skip
        assert cfg.norm.eval_stats == "first"
        # Only norms with batch statistics take the option; GN, LN and IN leave it out.
        takes = cfg.norm.name == "bn"
        assert cfg.norm.options().get("eval_stats") == ("first" if takes else None)
        validate(cfg)
