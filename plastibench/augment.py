"""The training augmentation of class-incremental CIFAR-100, on the device, for a seed-batched batch.

``augment_cifar(x, seeds, step, purpose)`` takes images ``x[S, B, C, H, W]`` (float, **already
normalised**) and gives every image its own random horizontal flip, reflect-padded random crop and
random rotation, drawn from :mod:`plastibench.rng` keyed by ``(seed, step, purpose)``: seed k's
images are augmented identically whether it runs alone or beside other seeds, and a resumed run
draws the same augmentations. Everything is tensor arithmetic (no Python loop over images or seeds,
no host synchronisation); the arithmetic is elementwise, so the result does not depend on the batch
size or, bit for bit, on the device.

What the reference does (Dohare et al. 2024, ``lop/incremental_cifar/incremental_cifar_experiment.py``,
``IncrementalCIFARExperiment.get_data``; requirements.txt pins torch 2.1.0, torchvision 0.16.0,
mlproj-manager 0.0.29)::

    CifarDataSet(..., image_normalization="max", use_torch=True)   # whole set: float32(uint8) / 255, HWC
    transforms.Compose([
        ToTensor(swap_color_axis=True),        # HWC -> CHW (a permute; no scaling)
        Normalize(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
        RandomHorizontalFlip(p=0.5),           # only when validation=False (train AND test loaders)
        RandomCrop(size=32, padding=4, padding_mode="reflect"),
        RandomRotator(degrees=(0, 15)),
    ])                                         # applied per image in CifarDataSet.__getitem__

The five classes come from ``mlproj_manager.util.data_preprocessing_and_transformations``
(``image_transformations.py``); each is a thin wrapper that applies the torchvision transform of the
same name to ``sample["image"]`` (``RandomRotator`` wraps ``transforms.RandomRotation(degrees)`` with
all other arguments at their defaults; ``Normalize`` wraps ``transforms.Normalize``). So the order is
**normalise first, then flip, crop, rotate**, and the rotation's fill value 0 is a 0 of the
*normalised* image, i.e. the per-channel dataset mean colour, not black. Apply this module to
normalised images (``normalize_cifar100`` below restates the reference's normalisation).

torchvision 0.16.0 semantics on a float CHW tensor, restated here (read from the 0.16.0 wheel:
``transforms/transforms.py``, ``transforms/functional.py``, ``transforms/_functional_tensor.py``):

* ``RandomHorizontalFlip(p)``: ``if torch.rand(1) < p: img.flip(-1)`` (the width axis).
  Here: ``uniform(seeds, step, purpose + "/flip", (B,)) < p``.
* ``RandomCrop(32, padding=4, padding_mode="reflect")``: ``torch.nn.functional.pad(img, [4, 4, 4, 4],
  mode="reflect")`` (mirror without repeating the edge pixel) to 40x40, then ``top = torch.randint(0,
  9)``, ``left = torch.randint(0, 9)`` (independent, uniform on {0..8}) and ``img[..., top:top+32,
  left:left+32]``. Here: ``top, left = (hash32(seeds, step, purpose + "/crop", (B, 2)) * 9) >> 32``
  (uniform on {0..8} up to a bias of 2^-32).
* ``RandomRotation((0, 15))``: ``angle = float(torch.empty(1).uniform_(0, 15))`` degrees
  (counter-clockwise for positive angles), interpolation NEAREST, ``expand=False``, centre = image
  centre, ``fill=0`` (passed as ``[0.0] * C``). ``F.rotate`` builds the inverse affine matrix
  ``_get_inverse_affine_matrix(center=[0, 0], -angle, [0, 0], 1.0, [0, 0])``, which with r =
  radians(-angle) is ``[cos r, sin r, 0, -sin r, cos r, 0]`` (float32 theta), and
  ``_functional_tensor.rotate`` samples the image at::

      base(i, j)  = (j - W/2 + 0.5,  i - H/2 + 0.5,  1)            # pixel centres about the image centre
      grid        = base @ (theta^T / [W/2, H/2])                  # bmm, float32, normalised coordinates
      out         = grid_sample(img, grid, mode="nearest", padding_mode="zeros", align_corners=False)

  with out-of-image pixels set to ``fill`` through a sampled all-ones mask channel (``mask < 0.5``).
  A source point is ``(x cos a - y sin a, x sin a + y cos a)`` for output point (x, y), a = angle,
  y pointing down: ``rotate(img, 90) == torch.rot90(img, 1, dims=(-2, -1))``.
  Here: ``uniform(seeds, step, purpose + "/rotation", (B,), 0, 15)`` and the same grid and
  ``grid_sample``. The only rewrite: torchvision's 3-term float32 ``bmm`` is computed elementwise as
  ``fl32(fl32(x * g0) + y * g1)`` (the second rounding a fused multiply-add, emulated exactly in
  float64), which is what the CPU ``bmm`` of torch computes on an FMA machine (checked: 0 of 41 M
  pixels differ from torchvision 0.16.0's own code over 40 000 random angles; an unfused product
  differs in 9 of them, near-ties of the nearest rounding). It keeps cuBLAS kernel choice and TF32
  out of the pixel positions.

Random numbers differ from the reference's global torch generator by construction; what is matched is
each draw's distribution and each transform's arithmetic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from plastibench import rng

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

FLIP_P = 0.5
CROP_PADDING = 4
ROTATION_DEGREES = (0.0, 15.0)


def normalize_cifar100(x: torch.Tensor) -> torch.Tensor:
    """The reference's normalisation of raw pixels ``x[..., 3, H, W]`` (uint8 or float in 0..255).

    ``float32(x) / 255`` (mlproj_manager ``normalize(norm_type="max", max_val=255)``), then
    ``(x - mean) / std`` per channel (torchvision ``Normalize``: ``sub_(mean).div_(std)``).
    """
    x = x.to(torch.float32) / 255
    mean = torch.tensor(CIFAR100_MEAN, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.tensor(CIFAR100_STD, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


class Draws(NamedTuple):
    """One step's augmentation parameters, each ``[S, B]``."""

    flip: torch.Tensor   # bool: flip horizontally
    top: torch.Tensor    # int64 in 0..2*padding: first row of the crop in the padded image
    left: torch.Tensor   # int64 in 0..2*padding: first column
    angle: torch.Tensor  # float32 degrees in [low, high), counter-clockwise


def draw_flip(seeds: torch.Tensor, step, purpose: str, batch: int, p: float = FLIP_P) -> torch.Tensor:
    return rng.uniform(seeds, step, purpose + "/flip", (batch,)) < p


def draw_crop(seeds: torch.Tensor, step, purpose: str, batch: int,
              padding: int = CROP_PADDING) -> tuple[torch.Tensor, torch.Tensor]:
    h = rng.hash32(seeds, step, purpose + "/crop", (batch, 2))
    offsets = (h * (2 * padding + 1)) >> 32  # uniform on {0..2*padding}; h < 2^32 so no int64 overflow
    return offsets[..., 0], offsets[..., 1]


def draw_angle(seeds: torch.Tensor, step, purpose: str, batch: int,
               degrees: tuple[float, float] = ROTATION_DEGREES) -> torch.Tensor:
    return rng.uniform(seeds, step, purpose + "/rotation", (batch,), degrees[0], degrees[1])


def draw(seeds: torch.Tensor, step, purpose: str, batch: int) -> Draws:
    """The draws ``augment_cifar(x, seeds, step, purpose)`` uses for a batch of ``batch`` images per seed."""
    top, left = draw_crop(seeds, step, purpose, batch)
    return Draws(draw_flip(seeds, step, purpose, batch), top, left, draw_angle(seeds, step, purpose, batch))


# ---- deterministic transforms of x[..., C, H, W] with one parameter per image (shape x.shape[:-3]) ----

def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Images whose ``flip`` is true mirrored left-right (torchvision ``hflip``: ``flip(-1)``)."""
    return torch.where(flip[..., None, None, None], x.flip(-1), x)


def crop_reflect(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                 padding: int = CROP_PADDING) -> torch.Tensor:
    """Reflect-pad each image by ``padding`` on every side, then cut an ``H x W`` window at (top, left)."""
    *lead, c, h, w = x.shape
    n = math.prod(lead)
    padded = F.pad(x.reshape(n, c, h, w), (padding, padding, padding, padding), mode="reflect")
    rows = top.reshape(n, 1) + torch.arange(h, device=x.device)    # [n, h]
    cols = left.reshape(n, 1) + torch.arange(w, device=x.device)   # [n, w]
    padded = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    out = padded.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    return out.reshape(x.shape)


def _rotation_grid(angle: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """torchvision 0.16's sampling grid ``[n, h, w, 2]`` for a rotation by ``angle`` degrees ``[n]``."""
    rot = -angle.to(torch.float64) * (math.pi / 180.0)   # math.radians(-angle)
    cos, sin = torch.cos(rot), torch.sin(rot)
    # theta = [[cos, sin, 0], [-sin, cos, 0]] in float32; rescaled_theta = theta^T / [w/2, h/2]
    half_w = torch.tensor(0.5 * w, dtype=torch.float32, device=angle.device)
    half_h = torch.tensor(0.5 * h, dtype=torch.float32, device=angle.device)
    gx_x = (cos.to(torch.float32) / half_w).double().view(-1, 1, 1)    # grid_x gains per unit of x
    gx_y = (sin.to(torch.float32) / half_w).double().view(-1, 1, 1)    # ... and per unit of y
    gy_x = ((-sin).to(torch.float32) / half_h).double().view(-1, 1, 1)
    gy_y = (cos.to(torch.float32) / half_h).double().view(-1, 1, 1)
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 + 0.5 - 1, steps=w, device=angle.device).double().view(1, 1, w)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 + 0.5 - 1, steps=h, device=angle.device).double().view(1, h, 1)
    # bmm's dot product x*g0 + y*g1 + 1*0: the first product rounded, then a fused multiply-add
    # (exact in float64, rounded once to float32); the third term (0, centre at the image centre) is a no-op.
    grid_x = ((xs * gx_x).to(torch.float32).double() + ys * gx_y).to(torch.float32)
    grid_y = ((xs * gy_x).to(torch.float32).double() + ys * gy_y).to(torch.float32)
    return torch.stack((grid_x, grid_y), dim=-1)


def rotate(x: torch.Tensor, angle: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Rotate each image counter-clockwise by ``angle`` degrees about its centre, nearest neighbour,
    same size, pixels from outside the image set to ``fill`` (torchvision ``F.rotate``, tensor path)."""
    *lead, c, h, w = x.shape
    n = math.prod(lead)
    img = x.reshape(n, c, h, w).to(torch.float32)
    grid = _rotation_grid(angle.reshape(n), h, w)
    if fill != 0.0:  # torchvision's mask channel; with fill 0 the zero padding already gives it
        img = torch.cat((img, torch.ones_like(img[:, :1])), dim=1)
    out = F.grid_sample(img, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if fill != 0.0:
        out = torch.where(out[:, -1:] < 0.5, torch.full_like(out[:, :-1], fill), out[:, :-1])
    return out.to(x.dtype).reshape(x.shape)


# ---- random transforms of x[S, B, C, H, W], draws keyed by (seed, step, purpose) ----

def random_flip(x: torch.Tensor, seeds: torch.Tensor, step, purpose: str, p: float = FLIP_P) -> torch.Tensor:
    return hflip(x, draw_flip(seeds, step, purpose, x.shape[1], p))


def random_crop_reflect(x: torch.Tensor, seeds: torch.Tensor, step, purpose: str,
                        padding: int = CROP_PADDING) -> torch.Tensor:
    top, left = draw_crop(seeds, step, purpose, x.shape[1], padding)
    return crop_reflect(x, top, left, padding)


def random_rotation(x: torch.Tensor, seeds: torch.Tensor, step, purpose: str,
                    degrees: tuple[float, float] = ROTATION_DEGREES, fill: float = 0.0) -> torch.Tensor:
    return rotate(x, draw_angle(seeds, step, purpose, x.shape[1], degrees), fill)


def augment_cifar(x: torch.Tensor, seeds: torch.Tensor, step, purpose: str) -> torch.Tensor:
    """The reference's training augmentation of normalised images ``x[S, B, C, H, W]``, in its order:
    RandomHorizontalFlip(0.5), RandomCrop(32, padding=4, reflect), RandomRotation((0, 15)), fill 0.

    ``step`` is an int (or a 0-d tensor); ``purpose`` names the stream (e.g. ``"augment/train"``),
    so that different data streams of one run draw independently.
    """
    x = random_flip(x, seeds, step, purpose)
    x = random_crop_reflect(x, seeds, step, purpose)
    return random_rotation(x, seeds, step, purpose)
