"""A procedurally generated 10-class image dataset: no files, no downloads, deterministic.

Each image shows one object on a cluttered background. The class is the object's outline: a
closed curve r(theta) = r0 * (1 + a * cos(k * (theta - phi))) with k in {0, 2, 3, 4, 5} lobes
(disk, oval, trefoil, quatrefoil, pentafoil), drawn either filled or as an outline ring: 5 x 2
classes. Everything else is a nuisance drawn per image: position, size, rotation and lobe depth;
object and background colours, an oriented grating on the object, a brightness gradient and
colour blobs behind it; then a global contrast gain, per-channel colour gains, a brightness
shift and pixel noise.

Why this shape: the class needs a global, rotation-invariant cue (count the lobes, filled or
not), so a small ResNet has to learn for a while and does not reach zero error in a few epochs;
the strong per-image photometric nuisances make the statistics of a small batch swing from batch
to batch, which is exactly what hurts batch norm at 2 images per GPU and leaves group norm
(per-sample statistics) untouched.

Images are rendered in chunks of 1000 whose random stream depends only on (seed, split, chunk),
so a smaller ``train_size`` gives a prefix of a larger one and every chunk is exactly balanced.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from normbench.data.memory import sample_hash

NUM_CLASSES = 10
CLASS_NAMES = (
    "disk", "oval", "trefoil", "quatrefoil", "pentafoil",
    "disk-ring", "oval-ring", "trefoil-ring", "quatrefoil-ring", "pentafoil-ring",
)  # fmt: skip
_LOBES = (0, 2, 3, 4, 5)
_CHUNK = 1000  # images per independently seeded chunk (a multiple of NUM_CLASSES)
_PIXELS_PER_RENDER = 1 << 22  # bounds the float memory of one rendering step
_SPLIT_IDS = {"train": 1, "val": 2}

# Per-channel mean and std of the generated uint8 images / 255 (measured over 20000 images).
MEAN = (0.5000, 0.5000, 0.5000)
STD = (0.2500, 0.2500, 0.2500)


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


def _uniform(gen: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (high - low) + low


def _log_uniform(gen: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return _uniform(gen, math.log(low), math.log(high), *shape).exp()


# Ranges (low, high) of the per-image nuisances; the class never depends on them.
NUISANCE = {
    "center": (-0.3, 0.3),  # object centre, in image half-widths
    "r0": (0.3, 0.5),  # mean radius of the outline
    "depth": (0.2, 0.4),  # lobe depth a
    "ring_width": (0.1, 0.18),
    "bg": (0.15, 0.85),  # background colour
    "fg_contrast": (0.2, 0.45),  # |object - background| brightness
    "fg_tint": (-0.15, 0.15),  # per-channel object colour jitter
    "tex_amp": (0.0, 0.4),  # grating on the object
    "tex_freq": (2.0, 6.0),
    "grad_amp": (0.0, 0.3),  # background brightness gradient
    "blob_sigma": (0.1, 0.3),  # background blobs
    "blob_rgb": (-0.3, 0.3),
    "gain": (0.5, 1.6),  # contrast gain (log-uniform)
    "channel_gain": (0.75, 1.33),  # per-channel gain (log-uniform)
    "shift": (-0.2, 0.2),  # brightness shift
    "noise": (0.02, 0.1),  # pixel noise std
    "orient_jitter": (-0.09, 0.09),
    "gl_rot": (-0.3, 0.3),
    "class_tint": (0.0, 0.0),
    "rho_lo": (0.08, 0.13),
    "rho_hi": (0.2, 0.3),
    "sig_rho": (0.02, 0.04),
    "sig_theta": (0.15, 0.3),
    "ang_jit": (-0.12, 0.12),
    "mix": (0.0, 0.7),
    "aspect": (0.85, 1.18),
}
MODE = "shape"


def _draw_params(gen: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    """Every per-image random quantity of one chunk, drawn in a fixed order."""
    r = NUISANCE

    def u(key: str, *shape: int) -> torch.Tensor:
        return _uniform(gen, *r[key], n, *shape)

    def angle() -> torch.Tensor:
        return _uniform(gen, 0.0, 2 * math.pi, n)

    labels = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=gen)]
    bg = u("bg", 3)
    sign = torch.where(torch.rand(n, 1, generator=gen) < 0.5, -1.0, 1.0)
    fg = bg + sign * u("fg_contrast", 1) + u("fg_tint", 3)
    hue = labels.float() * (2 * math.pi / NUM_CLASSES)
    phases = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    class_tint = torch.cos(hue[:, None] - phases)  # zero-mean RGB direction of the class hue
    fg = fg + u("class_tint", 1) * class_tint
    shape_id = labels if MODE == "shape" else torch.randint(0, 10, (n,), generator=gen)
    tex_dir = angle()
    if MODE == "orient":
        tex_dir = labels * (math.pi / NUM_CLASSES) + u("orient_jitter")
    return {
        "labels": labels,
        "shape_id": shape_id,
        "lobes": torch.tensor(_LOBES, dtype=torch.float32)[shape_id % len(_LOBES)],
        "ring": (shape_id >= len(_LOBES)).float(),
        "cx": u("center"),
        "cy": u("center"),
        "r0": u("r0"),
        "depth": u("depth"),
        "rot": angle(),
        "ring_width": u("ring_width"),
        "bg": bg,
        "fg": fg,
        "tex_amp": u("tex_amp"),
        "tex_freq": u("tex_freq"),
        "tex_dir": tex_dir,
        "gl_rot": u("gl_rot"),
        "rho_lo": u("rho_lo"),
        "rho_hi": u("rho_hi"),
        "sig_rho": u("sig_rho"),
        "sig_theta": u("sig_theta"),
        "ang_jit": u("ang_jit"),
        "mix": u("mix"),
        "distractor": torch.randint(0, NUM_CLASSES, (n,), generator=gen),
        "tex_rgb": 0.6 + 0.4 * torch.rand(n, 3, generator=gen),
        "aspect": _log_uniform(gen, *r["aspect"], n),
        "tex_phase": angle(),
        "grad_amp": u("grad_amp"),
        "grad_dir": angle(),
        "blob_xy": _uniform(gen, -1.0, 1.0, n, 2, 2),
        "blob_sigma": u("blob_sigma", 2),
        "blob_rgb": u("blob_rgb", 2, 3),
        "gain": _log_uniform(gen, *r["gain"], n),
        "channel_gain": _log_uniform(gen, *r["channel_gain"], n, 3),
        "shift": u("shift"),
        "noise": u("noise"),
    }


def _render_chunk(gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    p = _draw_params(gen, _CHUNK)
    step = max(1, _PIXELS_PER_RENDER // (size * size))
    parts = [
        _render({k: v[i : i + step] for k, v in p.items()}, size, gen)
        for i in range(0, _CHUNK, step)
    ]
    return torch.cat(parts), p["labels"]


def _col(v: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, 1, 1) for broadcasting against (n, C, H, W)."""
    return v.view(-1, 1, 1, 1)


def _glyph_inside(labels, u, v):
    """Signed 'inside' distance of 10 upright glyphs in object coordinates (u right, v up)."""
    au, av = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    s3 = math.sqrt(3) / 2
    def tri(sign):
        w = sign * v
        return torch.minimum(torch.minimum(w + 0.5, -s3 * u - 0.5 * w + 0.5), s3 * u - 0.5 * w + 0.5) * 1.2
    bar = lambda a, b: torch.minimum(0.28 - b, 0.95 - a)
    plus = torch.maximum(bar(au, av), bar(av, au))
    d1, d2 = (u + v).abs() / math.sqrt(2), (u - v).abs() / math.sqrt(2)
    cross = torch.maximum(bar(d1, d2), bar(d2, d1))
    shapes = [
        0.85 - r,                               # disk
        0.75 - torch.maximum(au, av),           # square
        tri(1.0),                               # triangle up
        tri(-1.0),                              # triangle down
        plus,                                   # plus
        cross,                                  # x
        torch.minimum(r - 0.5, 0.9 - r),        # ring
        torch.minimum(0.3 - av, 0.95 - au),     # horizontal bar
        torch.minimum(0.3 - au, 0.95 - av),     # vertical bar
        (1.0 - (au + av)) / math.sqrt(2),       # diamond
    ]
    out = shapes[0]
    lab = _col(labels)
    for c in range(1, 10):
        out = torch.where(lab == c, shapes[c], out)
    return out


def _texture(fam_all, p, xs, ys, radius, theta):
    fam = _col(fam_all % 5)
    band = _col((fam_all // 5).float())
    k = math.pi * _col(p["tex_freq"]) * (1 + band)
    th, ph = _col(p["tex_dir"]), _col(p["tex_phase"])
    def grat(a):
        return torch.cos(k * (xs * torch.cos(th + a) + ys * torch.sin(th + a)) + ph)
    stripes = grat(0.0)
    plaid = (grat(0.0) + grat(math.pi / 2)) / 2
    hexa = (grat(0.0) + grat(math.pi / 3) + grat(2 * math.pi / 3)) / 1.5
    rings = torch.cos(k * radius + ph)
    spokes = torch.cos(torch.round(k * _col(p["r0"])) * (theta - th))
    out = torch.where(fam == 0, stripes, plaid)
    out = torch.where(fam == 2, hexa, out)
    out = torch.where(fam == 3, rings, out)
    return torch.where(fam == 4, spokes, out).clamp(-1, 1)


_ANGLES = (0.0, math.pi / 6, math.pi / 3, math.pi / 2, None)


def _envelope(cls, p, rho, phi, key):
    """Spectral envelope (n, 1, S, S) of classes cls: a ring at radius rho0, narrowed in angle."""
    band = (cls // 5).float()
    rho0 = _col(torch.where(band == 0, p[key + "lo"], p[key + "hi"]))
    radial = torch.exp(-((rho - rho0) ** 2) / (2 * _col(p["sig_rho"]) ** 2))
    fam = cls % 5
    ang = torch.ones_like(radial)
    for f, theta in enumerate(_ANGLES):
        if theta is None:
            continue
        out = 0
        for t in (theta, -theta):
            d = torch.remainder(phi - t - _col(p["ang_jit"]) + math.pi / 2, math.pi) - math.pi / 2
            out = out + torch.exp(-(d**2) / (2 * _col(p["sig_theta"]) ** 2))
        ang = torch.where(_col(fam) == f, out.clamp(max=1), ang)
    return radial * ang


def _spectral(p, size, gen):
    n = p["labels"].shape[0]
    f = torch.fft.fftfreq(size)
    fy, fx = f.view(1, 1, size, 1), f.view(1, 1, 1, size)
    rho = torch.sqrt(fx * fx + fy * fy)
    phi = torch.atan2(fy, fx)
    env = _envelope(p["labels"], p, rho, phi, "rho_") + _col(p["mix"]) * _envelope(
        p["distractor"], p, rho, phi, "rho_")
    noise = torch.randn(n, 1, size, size, generator=gen)
    tex = torch.fft.ifft2(torch.fft.fft2(noise) * env).real
    tex = tex / tex.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    colour = p["tex_rgb"].view(n, 3, 1, 1)
    return tex * colour


def _render(p: dict[str, torch.Tensor], size: int, gen: torch.Generator) -> torch.Tensor:
    """Images (n, 3, size, size) uint8 from the parameters of n images; pixel noise from gen."""
    n = p["labels"].shape[0]
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    ys, xs = t.view(1, 1, size, 1), t.view(1, 1, 1, size)

    # Object mask: signed radial distance to the outline, softened over about one pixel.
    dx, dy = xs - _col(p["cx"]), ys - _col(p["cy"])
    radius = torch.sqrt(dx * dx + dy * dy)
    theta = torch.atan2(dy, dx)
    sharp = size  # signed distance (image half-widths) -> about 2 sigmoid units per pixel
    if MODE in ("glyph", "glyphtex", "tex"):
        c, s_ = _col(torch.cos(p["gl_rot"])), _col(torch.sin(p["gl_rot"]))
        u = (dx * c + dy * s_) / (_col(p["r0"]) * _col(p["aspect"]))
        v = -(-dx * s_ + dy * c) / (_col(p["r0"]) / _col(p["aspect"]))
        gl = p["shape_id"] if MODE == "tex" else p["labels"]
        inside = _glyph_inside(gl, u, v) * _col(p["r0"])
    else:
        outline = _col(p["r0"]) * (
            1 + _col(p["depth"]) * torch.cos(_col(p["lobes"]) * (theta - _col(p["rot"])))
        )
        inside = outline - radius
    mask = torch.sigmoid(inside * sharp)
    ring = torch.sigmoid((_col(p["ring_width"]) - inside) * sharp)
    if MODE not in ("glyph", "glyphtex", "tex"):
        mask = mask * (1 - _col(p["ring"]) * (1 - ring))

    # Object: flat colour times an oriented grating.
    if MODE in ("tex", "glyphtex"):
        fam = p["labels"] % 5 if MODE == "glyphtex" else p["labels"]
        fg = p["fg"].view(n, 3, 1, 1) + _col(p["tex_amp"]) * _texture(fam, p, xs, ys, radius, theta)
    else:
        along = xs * _col(torch.cos(p["tex_dir"])) + ys * _col(torch.sin(p["tex_dir"]))
        grating = 1 + _col(p["tex_amp"]) * torch.sin(
            math.pi * _col(p["tex_freq"]) * along + _col(p["tex_phase"])
        )
        fg = p["fg"].view(n, 3, 1, 1) * grating

    # Background: flat colour, a linear brightness gradient and two coloured Gaussian blobs.
    slope = xs * _col(torch.cos(p["grad_dir"])) + ys * _col(torch.sin(p["grad_dir"]))
    bg = p["bg"].view(n, 3, 1, 1) + _col(p["grad_amp"]) * slope
    for b in range(p["blob_xy"].shape[1]):
        bx, by = p["blob_xy"][:, b, 0], p["blob_xy"][:, b, 1]
        d2 = (xs - _col(bx)) ** 2 + (ys - _col(by)) ** 2
        bump = torch.exp(-d2 / (2 * _col(p["blob_sigma"][:, b]) ** 2))
        bg = bg + p["blob_rgb"][:, b].view(n, 3, 1, 1) * bump

    if MODE == "spectral":
        img = p["bg"].view(n, 3, 1, 1) + _col(p["tex_amp"]) * _spectral(p, size, gen)
        img = img + 0 * mask
    else:
        img = bg * (1 - mask) + fg * mask
    # Photometric nuisances: these make batch statistics of a few images swing widely.
    gain = _col(p["gain"]) * p["channel_gain"].view(n, 3, 1, 1)
    img = (img - 0.5) * gain + 0.5 + _col(p["shift"])
    img = img + _col(p["noise"]) * torch.randn(img.shape, generator=gen)
    return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
