"""The embedded default dataset: 10 classes of random textures, generated from a seed.

Each image is Gaussian noise filtered in the Fourier domain by its class's spectral envelope: a
ring of radial frequency (a low or a high band) narrowed to one orientation family (horizontal,
+-30 degrees, +-60 degrees, vertical, or every orientation): 5 families x 2 bands = 10 classes.
The families are symmetric under a horizontal flip, so flip augmentation keeps labels right.

Everything else is a per-image nuisance: the band's exact radius and width, the orientation
jitter, a second (distractor) class's texture mixed in at up to 70 %, the texture's colour and
amplitude, the background colour, then a global contrast gain, per-channel gains, a brightness
shift and pixel noise.

Why this design: a small ResNet learns oriented frequency bands quickly but the distractor and
the noise keep it well above 0 % error for many epochs; the strong per-image photometric
nuisances make the statistics of a few images swing from batch to batch, which is what hurts
batch norm at 2 images per GPU and leaves per-sample norms (GN, LN) untouched.

Images are rendered in chunks of 1000 whose random stream depends only on (seed, split, chunk),
so a smaller ``train_size`` gives a prefix of a larger one and every chunk is exactly balanced.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from normbench.data.memory import sample_hash

NUM_CLASSES = 10
_FAMILIES = ("horizontal", "30deg", "60deg", "vertical", "isotropic")
_FAMILY_ANGLES = (0.0, math.pi / 6, math.pi / 3, math.pi / 2, None)  # +-angle; None: all
_CHUNK = 1000  # images per independently seeded chunk (a multiple of NUM_CLASSES)
_SPLIT_IDS = {"train": 1, "val": 2}

# Per-channel mean and std of the generated images / 255 (measured on 3000 images at 32 and
# 16 px: 0.499/0.500/0.494 and 0.262/0.259/0.261), rounded.
MEAN = (0.5, 0.5, 0.5)
STD = (0.26, 0.26, 0.26)

# Ranges (low, high) of the per-image nuisances; the class never depends on them.
NUISANCE = {
    "low_band": (0.08, 0.13),  # radial frequency of the low band (cycles per pixel)
    "high_band": (0.2, 0.3),
    "band_width": (0.02, 0.04),
    "angle_width": (0.15, 0.3),  # radians
    "angle_jitter": (-0.12, 0.12),
    "mix": (0.0, 0.7),  # amplitude of the distractor class's texture
    "amplitude": (0.1, 0.25),
    "colour": (0.6, 1.0),  # per-channel texture colour
    "background": (0.15, 0.85),
    "gain": (0.5, 1.6),  # global contrast gain (log-uniform)
    "channel_gain": (0.75, 1.33),  # per-channel gain (log-uniform)
    "shift": (-0.2, 0.2),
    "noise": (0.02, 0.1),
}


def generate(
    num_images: int, image_size: int, seed: int, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``num_images`` images of ``split`` ("train" or "val").

    Returns uint8 images (N, 3, image_size, image_size) and int64 labels (N,).
    """
    images = torch.empty(num_images, 3, image_size, image_size, dtype=torch.uint8)
    labels = torch.empty(num_images, dtype=torch.int64)
    for chunk, start in enumerate(range(0, num_images, _CHUNK)):
        chunk_seed = int(sample_hash(seed, _SPLIT_IDS[split], np.array([chunk]))[0] >> 1)
        gen = torch.Generator().manual_seed(chunk_seed)
        chunk_images, chunk_labels = _render_chunk(gen, image_size)
        stop = min(start + _CHUNK, num_images)
        images[start:stop] = chunk_images[: stop - start]
        labels[start:stop] = chunk_labels[: stop - start]
    return images, labels


def _uniform(gen: torch.Generator, key: str, *shape: int, log: bool = False) -> torch.Tensor:
    low, high = NUISANCE[key]
    if log:
        low, high = math.log(low), math.log(high)
    value = torch.rand(shape, generator=gen) * (high - low) + low
    return value.exp() if log else value


def _col(v: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, 1, 1) for broadcasting against (n, C, H, W)."""
    return v.view(-1, 1, 1, 1)


def _envelope(classes: torch.Tensor, p: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Spectral envelopes (n, 1, size, size) of `classes`: a band ring times an angle mask."""
    freq = torch.fft.fftfreq(size)
    fy, fx = freq.view(1, 1, size, 1), freq.view(1, 1, 1, size)
    rho, phi = torch.sqrt(fx * fx + fy * fy), torch.atan2(fy, fx)
    high = _col(classes // len(_FAMILIES) == 1)
    centre = torch.where(high, _col(p["high_band"]), _col(p["low_band"]))
    envelope = torch.exp(-((rho - centre) ** 2) / (2 * _col(p["band_width"]) ** 2))
    family = _col(classes % len(_FAMILIES))
    for index, angle in enumerate(_FAMILY_ANGLES):
        if angle is None:
            continue
        mask = 0
        for a in (angle, -angle):  # both signs: the family is symmetric under a flip
            d = torch.remainder(phi - a - _col(p["angle_jitter"]) + math.pi / 2, math.pi)
            mask = mask + torch.exp(-((d - math.pi / 2) ** 2) / (2 * _col(p["angle_width"]) ** 2))
        envelope = torch.where(family == index, envelope * mask.clamp(max=1), envelope)
    return envelope


def _render_chunk(gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = _CHUNK
    labels = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=gen)]
    p = {key: _uniform(gen, key, n) for key in ("low_band", "high_band", "band_width",
                                                "angle_width", "angle_jitter", "mix",
                                                "amplitude", "shift", "noise")}  # fmt: skip
    distractor = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    colour = _uniform(gen, "colour", n, 3).view(n, 3, 1, 1)
    background = _uniform(gen, "background", n, 3).view(n, 3, 1, 1)
    gain = _col(_uniform(gen, "gain", n, log=True))
    channel_gain = _uniform(gen, "channel_gain", n, 3, log=True).view(n, 3, 1, 1)

    envelope = _envelope(labels, p, size) + _col(p["mix"]) * _envelope(distractor, p, size)
    noise = torch.randn(n, 1, size, size, generator=gen)
    texture = torch.fft.ifft2(torch.fft.fft2(noise) * envelope).real
    texture = texture / texture.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)

    image = background + _col(p["amplitude"]) * texture * colour
    # Photometric nuisances: these make batch statistics of a few images swing widely.
    image = (image - 0.5) * gain * channel_gain + 0.5 + _col(p["shift"])
    image = image + _col(p["noise"]) * torch.randn(image.shape, generator=gen)
    return image.clamp_(0, 1).mul_(255).round_().to(torch.uint8), labels
