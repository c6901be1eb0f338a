"""plastibench.augment: the class-incremental CIFAR-100 training augmentation, per image, seed-batched.

Each transform is checked against a direct per-image reference written here: the flip against
``Tensor.flip``, the crop against ``F.pad(mode="reflect")`` and slicing, the rotation against a
restatement of torchvision 0.16's tensor ``rotate`` (inverse affine matrix, ``_gen_affine_grid``,
``grid_sample`` with the mask-channel fill) and against plain float64 geometry; then the draws'
distributions, the reference's order, seed independence and determinism.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from plastibench import augment as A
from plastibench import rng

SEEDS = torch.tensor([5, 9, 13])


def images(s=3, b=16, c=3, h=32, w=32, key="x"):
    return rng.normal(torch.arange(s), 0, key, (b, c, h, w))


# ---- flip ----

def test_hflip_matches_per_image_flip():
    x = images()
    flip = rng.bits(SEEDS, 0, "f", (16,)).bool()
    out = A.hflip(x, flip)
    for s in range(3):
        for b in range(16):
            expected = x[s, b].flip(-1) if flip[s, b] else x[s, b]
            assert torch.equal(out[s, b], expected)


# ---- crop ----

def test_crop_reflect_matches_pad_and_slice():
    x = images()
    top, left = A.draw_crop(SEEDS, 3, "c", 16)
    out = A.crop_reflect(x, top, left)
    for s in range(3):
        for b in range(16):
            padded = F.pad(x[s, b][None], (4, 4, 4, 4), mode="reflect")[0]
            i, j = int(top[s, b]), int(left[s, b])
            assert torch.equal(out[s, b], padded[:, i:i + 32, j:j + 32])


def test_crop_reflect_mirrors_without_repeating_the_edge():
    x = torch.arange(64.0).view(1, 1, 1, 8, 8)
    zero = torch.zeros(1, 1, dtype=torch.int64)
    assert torch.equal(A.crop_reflect(x, zero + 4, zero + 4), x)              # centred window: identity
    corner = A.crop_reflect(x, zero, zero)                                    # window at the padded corner
    assert torch.equal(corner[0, 0, 0, 0, :5], torch.tensor([36.0, 35, 34, 33, 32]))  # row 4 mirrored
    assert torch.equal(corner[0, 0, 0, 4:, 4:], x[0, 0, 0, :4, :4])


# ---- rotation ----

def tv_rotate(img, angle, fill=0.0):
    """torchvision 0.16 ``F.rotate`` of a float tensor [C, H, W]: NEAREST, expand False, centre None."""
    # _get_inverse_affine_matrix(center=[0, 0], -angle, translate=[0, 0], scale=1, shear=[0, 0])
    rot, sx, sy = math.radians(-angle), 0.0, 0.0
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    matrix = [d, -b, 0.0, -c, a, 0.0]
    theta = torch.tensor(matrix, dtype=torch.float32).reshape(1, 2, 3)
    # _gen_affine_grid(theta, w, h, ow=w, oh=h)
    ch, h, w = img.shape
    base = torch.empty(1, h, w, 3)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 + 0.5 - 1, steps=w))
    base[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 + 0.5 - 1, steps=h).unsqueeze_(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h])
    grid = base.view(1, h * w, 3).bmm(rescaled).view(1, h, w, 2)
    # _apply_grid_transform(img, grid, "nearest", fill=[fill] * C)
    x = torch.cat((img[None], torch.ones(1, 1, h, w)), dim=1)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    mask, x = x[:, -1:].expand(1, ch, h, w) < 0.5, x[:, :-1]
    x[mask] = torch.full_like(x, fill)[mask]
    return x[0]


def geometric_rotate(img, angle, fill=0.0):
    """Float64 geometry: output pixel centre (x, y) about the image centre, y down, takes the source
    pixel nearest to (x cos a - y sin a, x sin a + y cos a); outside the image: fill."""
    ch, h, w = img.shape
    t = math.radians(angle)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64) - h / 2 + 0.5,
                          torch.arange(w, dtype=torch.float64) - w / 2 + 0.5, indexing="ij")
    col = torch.round(x * math.cos(t) - y * math.sin(t) + w / 2 - 0.5).long()
    row = torch.round(x * math.sin(t) + y * math.cos(t) + h / 2 - 0.5).long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = img[:, row.clamp(0, h - 1), col.clamp(0, w - 1)]
    return torch.where(inside, out, torch.full_like(out, fill))


def differing_pixels(a, b):
    return int((a != b).any(dim=-3).sum())


@pytest.mark.parametrize("fill", [0.0, -1.5])
def test_rotation_matches_torchvision_restated(fill):
    x = images(b=32)
    angle = A.draw_angle(SEEDS, 1, "r", 32)
    angle[0, :4] = torch.tensor([0.0, 90.0, 45.0, 180.0])
    out = A.rotate(x, angle, fill)
    # Bit-identical here (the CPU bmm of torch fuses the second multiply-add, which rotate() emulates);
    # a BLAS without FMA may move a pixel whose source lies within ~1e-6 of a rounding boundary.
    bad = sum(differing_pixels(out[s, b], tv_rotate(x[s, b], float(angle[s, b]), fill))
              for s in range(3) for b in range(32))
    assert bad <= 2
    bad = sum(differing_pixels(out[s, b], geometric_rotate(x[s, b], float(angle[s, b]), fill))
              for s in range(3) for b in range(32))
    assert bad <= 2


@pytest.mark.parametrize("size", [(32, 32), (7, 7), (5, 9)])
def test_rotation_special_angles(size):
    h, w = size
    x = images(s=1, b=2, h=h, w=w)
    turn = lambda deg: A.rotate(x, torch.full((1, 2), deg))  # noqa: E731
    assert torch.equal(turn(0.0), x)
    assert torch.equal(turn(180.0), x.flip(-1).flip(-2))
    if h == w:  # counter-clockwise: the right edge moves to the top
        assert torch.equal(turn(90.0), torch.rot90(x, 1, dims=(-2, -1)))
        assert torch.equal(turn(-90.0), torch.rot90(x, -1, dims=(-2, -1)))


def test_rotation_fills_the_corners():
    x = torch.ones(1, 1, 3, 32, 32)
    out = A.rotate(x, torch.full((1, 1), 15.0))
    assert out[0, 0, :, 0, 0].eq(0).all() and out[0, 0, :, -1, -1].eq(0).all()
    assert out[0, 0, :, 8:24, 8:24].eq(1).all()
    filled = A.rotate(x, torch.full((1, 1), 15.0), fill=-2.0)
    assert torch.equal(filled, torch.where(out == 0, -2.0, out))


# ---- draws, order, seeds ----

def test_draw_distributions():
    d = A.draw(torch.arange(2), 7, "augment/train", 4096)
    assert abs(d.flip.float().mean().item() - 0.5) < 0.03
    for offsets in (d.top, d.left):
        assert offsets.dtype == torch.int64 and offsets.min() == 0 and offsets.max() == 8
        freq = torch.bincount(offsets.flatten(), minlength=9).float() / offsets.numel()
        assert (freq - 1 / 9).abs().max() < 0.02
    assert abs(torch.corrcoef(torch.stack((d.top.flatten().float(), d.left.flatten().float())))[0, 1]) < 0.05
    assert d.angle.min() >= 0 and d.angle.max() < 15 and abs(d.angle.mean().item() - 7.5) < 0.2
    assert d.angle.max() > 14.9 and d.angle.min() < 0.1


def test_augment_is_flip_then_crop_then_rotation():
    x = images()
    d = A.draw(SEEDS, 11, "augment/train", 16)
    expected = A.rotate(A.crop_reflect(A.hflip(x, d.flip), d.top, d.left), d.angle)
    assert torch.equal(A.augment_cifar(x, SEEDS, 11, "augment/train"), expected)
    assert not torch.equal(A.augment_cifar(x, SEEDS, 11, "augment/train"), x)


def test_seed_alone_equals_seed_beside_others():
    x = images()
    together = A.augment_cifar(x, SEEDS, 4, "augment/train")
    for k in range(3):
        alone = A.augment_cifar(x[k:k + 1], SEEDS[k:k + 1], 4, "augment/train")
        assert torch.equal(alone[0], together[k])


def test_deterministic_and_keyed_by_step_and_purpose():
    x = images()
    out = A.augment_cifar(x, SEEDS, 4, "augment/train")
    assert torch.equal(out, A.augment_cifar(x.clone(), SEEDS, 4, "augment/train"))
    assert torch.equal(out, A.augment_cifar(x, SEEDS, torch.tensor(4), "augment/train"))
    assert not torch.equal(out, A.augment_cifar(x, SEEDS, 5, "augment/train"))
    assert not torch.equal(out, A.augment_cifar(x, SEEDS, 4, "augment/test"))


def test_normalize_cifar100():
    raw = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor(A.CIFAR100_MEAN).view(3, 1, 1)
    std = torch.tensor(A.CIFAR100_STD).view(3, 1, 1)
    assert torch.equal(A.normalize_cifar100(raw), (raw.float() / 255 - mean) / std)
