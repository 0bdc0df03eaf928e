"""Augmentation views and the device loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noisybench.data.loader import DeviceLoader
from noisybench.data.views import VIEW_KINDS, RandomErasing, StrongView, build_views
from noisybench.errors import UserError
from noisybench.method import Batch

UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean/std that leave x / 255 unchanged


def _images(b: int, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Undo the UNIT normalisation exactly."""
    return torch.round(x * 255).to(torch.uint8)


# --------------------------------------------------------------------------- views


def test_plain_view_normalises_by_hand():
    x = _images(2, 3, 4, 5)
    mean, std = (0.25, 0.5, 0.75), (0.2, 0.4, 0.1)
    out = build_views(["plain"], {}, mean, std, (4, 5))["plain"](x)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5)
    arr = x.numpy().astype(np.float64)
    for b, c, y, xx in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 3)]:
        hand = (arr[b, c, y, xx] / 255.0 - mean[c]) / std[c]
        assert float(out[b, c, y, xx]) == pytest.approx(hand, abs=1e-5)
    full = (arr / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert np.allclose(out.numpy(), full, atol=1e-5)


def test_weak_crop_is_a_window_of_the_zero_padded_image():
    p, n = 2, 200
    x = _images(n, 3, 6, 7)
    view = build_views(["weak"], {"crop_padding": p, "hflip": False}, *UNIT, (6, 7))["weak"]
    torch.manual_seed(0)
    out = _to_uint8(view(x))
    assert out.shape == (n, 3, 6, 7)
    padded = F.pad(x, (p, p, p, p))  # zeros, i.e. black in pixel space
    offsets = set()
    for i in range(n):
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])
        ]
        assert len(hits) == 1, f"image {i} is not a window of its padded input"
        offsets.add(hits[0])
    assert len(offsets) == (2 * p + 1) ** 2  # every shift occurs among 200 draws


def test_flip_only_when_enabled():
    x = _images(64, 3, 5, 5)
    torch.manual_seed(1)
    out = _to_uint8(build_views(["weak"], {"crop_padding": 0, "hflip": True}, *UNIT, 5)["weak"](x))
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 16 <= sum(mirrored) <= 48  # about half flipped
    off = build_views(["weak"], {"crop_padding": 0, "hflip": False}, *UNIT, 5)["weak"]
    assert torch.equal(_to_uint8(off(x)), x)


@pytest.mark.parametrize("key", ["weak", "strong"])
def test_views_are_deterministic_under_manual_seed(key):
    x = _images(8, 3, 8, 8)
    view = build_views([key], {"crop_padding": 2, "hflip": True}, *UNIT, 8)[key]
    torch.manual_seed(5)
    a = view(x)
    torch.manual_seed(5)
    b = view(x)
    torch.manual_seed(6)
    c = view(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_each_key_is_an_independent_draw():
    x = _images(16, 3, 8, 8)
    views = build_views(["weak", "strong_1", "strong_2"], {}, *UNIT, 8)
    assert list(views) == ["weak", "strong_1", "strong_2"]
    assert isinstance(views["strong_1"], StrongView) and views["strong_1"] is not views["strong_2"]
    torch.manual_seed(0)
    s1, s2 = views["strong_1"](x), views["strong_2"](x)
    assert s1.shape == s2.shape == (16, 3, 8, 8) and s1.dtype == torch.float32
    assert not s1.requires_grad
    assert not torch.equal(s1, s2)


def test_strong_view_autoaugment_is_drawn_per_image():
    """Every image draws its own sub-policy: 64 draws from 25 give about
    25 * (1 - (24/25)^64) = 23.1 distinct ones (kornia's one draw per call gave 1)."""
    x = _images(1, 3, 16, 16).repeat(64, 1, 1, 1)
    only_aa = {"crop_padding": 0, "hflip": False, "erasing_p": 0.0}
    view = build_views(["strong"], only_aa, *UNIT, 16)["strong"]
    torch.manual_seed(0)
    out = view(x)
    policies = view.autoaugment.last_policy
    assert policies.shape == (64,)
    assert len(torch.unique(policies)) >= 18
    distinct = {tuple(torch.round(r * 1e4).flatten().tolist()) for r in out}
    assert len(distinct) >= 10


def test_strong_view_with_single_deterministic_ops_per_image():
    """With a policy of deterministic operations (p = 1), identical images show which
    operation each image got, each a known function of the input."""
    policy = (
        (("Invert", 1.0, None), ("Invert", 0.0, None)),
        (("AutoContrast", 1.0, None), ("Invert", 0.0, None)),
        (("Equalize", 1.0, None), ("Invert", 0.0, None)),
    )
    x = _images(1, 3, 8, 8, seed=3).repeat(48, 1, 1, 1)
    unit = x.float() / 255
    view = StrongView(*UNIT, (8, 8), crop_padding=0, hflip=False, erasing_p=0.0, policy=policy)
    torch.manual_seed(0)
    many = view(x)
    distinct = {tuple(torch.round(r * 1e4).flatten().tolist()) for r in many}
    assert len(distinct) == 3
    inverted = [torch.allclose(many[i], 1 - unit[i], atol=1e-6) for i in range(48)]
    assert 5 <= sum(inverted) <= 30  # about a third got "invert"
    assert sum(inverted) == int((view.autoaugment.last_policy == 0).sum())


def test_strong_view_on_one_channel_images():
    x = _images(32, 1, 8, 8)
    view = build_views(["strong"], {"crop_padding": 1, "hflip": False},
                       (0.3,), (0.4,), 8)["strong"]  # fmt: skip
    torch.manual_seed(0)
    out = view(x)
    assert out.shape == (32, 1, 8, 8) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    pix = out * 0.4 + 0.3  # back to [0, 1]
    assert pix.min() >= -1e-6 and pix.max() <= 1 + 1e-6


def test_random_erasing_fills_a_box_with_the_mean():
    x = torch.full((16, 3, 16, 16), 200, dtype=torch.uint8)
    view = StrongView((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (16, 16), crop_padding=0, hflip=False,
                      erasing_p=1.0, policy=((("Invert", 0.0, None),) * 2,))  # fmt: skip
    torch.manual_seed(0)
    out = view(x)
    other = (200 / 255 - 0.5) / 0.25
    for i in range(16):
        erased = (out[i] == 0).all(0)
        assert erased.sum() >= 4  # at least ~2% of 256 pixels
        ys, xs = torch.nonzero(erased, as_tuple=True)
        box = out[i, :, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert (box == 0).all()  # a filled rectangle
        assert torch.allclose(out[i][:, ~erased], torch.tensor(other))


@pytest.mark.parametrize(
    ("shape", "p"),
    [((64, 3, 32, 32), 0.5), ((301, 1, 8, 8), 0.3), ((50, 3, 24, 40), 1.0), ((9, 3, 8, 8), 0.0)],
)
def test_random_erasing_equals_kornia_bit_for_bit(shape: tuple[int, ...], p: float):
    """Kornia 0.9.0's RandomErasing (the second implementation) with the same seed."""
    import kornia.augmentation as K

    x = torch.randn(*shape)
    theirs = K.RandomErasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0, p=p)
    torch.manual_seed(3)
    expected = theirs(x)
    state_after = torch.get_rng_state()
    torch.manual_seed(3)
    ours = RandomErasing(p=p)(x)
    assert torch.equal(ours, expected)
    assert torch.equal(torch.get_rng_state(), state_after)  # as many random numbers drawn
    erased = float((ours != x).any(1).flatten(1).any(1).float().mean())
    sd = (p * (1 - p) / shape[0]) ** 0.5
    assert erased == p if p in (0.0, 1.0) else abs(erased - p) < 4 * sd


def test_random_erasing_box_sizes_follow_the_distribution():
    """Area and aspect ratio of the erased boxes against the sampling formulas, computed with
    NumPy from 4,000 boxes on 64 x 64 images (p = 1)."""
    torch.manual_seed(0)
    x = torch.ones(4000, 1, 64, 64)
    mask = RandomErasing(p=1.0)(x)[:, 0] == 0
    rows, cols = mask.any(2), mask.any(1)
    h = rows.sum(1).numpy().astype(float)
    w = cols.sum(1).numpy().astype(float)
    assert (mask.sum((1, 2)).numpy() == h * w).all()  # every erased region is one rectangle
    rng = np.random.default_rng(0)
    area = rng.uniform(0.02, 0.33, 200_000) * 64 * 64
    aspect = np.where(rng.random(200_000) < 0.5, rng.uniform(0.3, 1, 200_000),
                      rng.uniform(1, 3.3, 200_000))  # fmt: skip
    ref_h = np.clip(np.round(np.sqrt(area * aspect)), 1, 64)
    ref_w = np.clip(np.round(np.sqrt(area / aspect)), 1, 64)
    for ours, ref in ((h, ref_h), (w, ref_w), (h * w, ref_h * ref_w)):
        assert abs(ours.mean() - ref.mean()) < 4 * ref.std() / np.sqrt(len(ours))
    assert abs(np.mean(h > w) - np.mean(ref_h > ref_w)) < 0.03


def test_view_errors():
    kinds = r"\['plain', 'strong', 'weak'\]"
    with pytest.raises(UserError, match=r"unknown view kind 'fancy'.*" + kinds):
        build_views(["weak", "fancy_1"], {}, *UNIT, 8)
    with pytest.raises(UserError, match="repeat a key"):
        build_views(["weak", "weak"], {}, *UNIT, 8)
    with pytest.raises(UserError, match=r"unknown dataset\.augment key"):
        build_views(["weak"], {"crop_pading": 4}, *UNIT, 8)
    with pytest.raises(UserError, match="strong_chunk was removed"):
        build_views(["strong"], {"strong_chunk": 16}, *UNIT, 8)
    with pytest.raises(UserError, match="autoaugment_ranges='tf'"):
        build_views(["strong"], {"autoaugment_ranges": "tf"}, *UNIT, 8)
    assert {"plain", "weak", "strong"} <= set(VIEW_KINDS)


# --------------------------------------------------------------------------- loader


def _loader_data(n: int = 23):
    # Image i is filled with the byte i * 10, so a batch's pixels reveal its indices.
    images = (torch.arange(n, dtype=torch.uint8) * 10).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    labels = (torch.arange(n) * 7) % 5
    return images.contiguous(), labels


def _ident(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0].long()


def _noisy(x: torch.Tensor) -> torch.Tensor:  # a view with its own randomness
    return x.float() + torch.rand(x.shape)


def test_loader_covers_each_index_once_and_labels_follow():
    images, labels = _loader_data()
    loader = DeviceLoader(images, labels, 5, {"id": _ident}, seed=3)
    assert len(loader) == 5
    batches = list(loader.epoch(0))
    assert [b.size for b in batches] == [5, 5, 5, 5, 3]
    idx = torch.cat([b.idx for b in batches])
    assert sorted(idx.tolist()) == list(range(23))
    assert idx.tolist() != list(range(23))  # shuffled
    for b in batches:
        assert isinstance(b, Batch) and b.carried == 0
        assert torch.equal(b.views["id"], b.idx * 10)  # the images of these indices
        assert torch.equal(b.target, (b.idx * 7) % 5)  # their labels
    dropped = DeviceLoader(images, labels, 5, {"id": _ident}, seed=3, drop_last=True)
    assert len(dropped) == 4
    kept = torch.cat([b.idx for b in dropped.epoch(0)])
    assert len(set(kept.tolist())) == 20


def test_loader_order_depends_only_on_seed_and_epoch():
    images, labels = _loader_data()

    def order(seed, epoch, global_seed):
        torch.manual_seed(global_seed)  # the global RNG must not matter
        loader = DeviceLoader(images, labels, 4, {"id": _ident}, seed=seed)
        return torch.cat([b.idx for b in loader.epoch(epoch)]).tolist()

    assert order(0, 2, 0) == order(0, 2, 99)
    assert order(0, 2, 0) != order(0, 3, 0)
    assert order(0, 2, 0) != order(1, 2, 0)
    assert order(0, 1, 0) != order(1, 0, 0)


def test_start_step_resumes_the_same_sequence():
    images, labels = _loader_data()
    loader = DeviceLoader(images, labels, 4, {"id": _ident}, seed=7, carry_previous=0.5)
    full = [(b.idx.tolist(), b.carried) for b in loader.epoch(4)]
    resumed = [(b.idx.tolist(), b.carried) for b in loader.epoch(4, start_step=3)]
    assert resumed == full[3:]
    assert list(loader.epoch(4, start_step=len(loader))) == []
    with pytest.raises(UserError, match="start_step=7"):
        list(loader.epoch(0, start_step=7))


def test_carry_previous_repeats_the_end_of_the_previous_batch():
    images, labels = _loader_data()
    loader = DeviceLoader(images, labels, 4, {"id": _ident, "noisy": _noisy}, seed=1,
                          carry_previous=0.5)  # fmt: skip
    assert len(loader) == 6
    torch.manual_seed(0)
    batches = list(loader.epoch(0))
    assert [b.carried for b in batches] == [0, 2, 2, 2, 2, 2]
    assert [b.size for b in batches] == [4, 6, 6, 6, 6, 5]
    fresh = [b.idx[b.carried :] for b in batches]
    assert sorted(torch.cat(fresh).tolist()) == list(range(23))  # each fresh exactly once
    for prev, cur, prev_fresh in zip(batches, batches[1:], fresh, strict=False):
        assert cur.idx[:2].tolist() == prev_fresh[-2:].tolist()
        # re-augmented: the same samples get a new random draw of the view
        assert not torch.equal(cur.views["noisy"][:2], prev.views["noisy"][-2:])
        assert torch.equal(cur.views["id"], cur.idx * 10)
        assert torch.equal(cur.target, (cur.idx * 7) % 5)
    # Without carrying, the fresh parts are the same batches as in an ordinary epoch.
    plain = DeviceLoader(images, labels, 4, {"id": _ident}, seed=1)
    assert [f.tolist() for f in fresh] == [b.idx.tolist() for b in plain.epoch(0)]
    # Across the epoch boundary (DLB's reference code): epoch 1 starts with the last two
    # fresh samples of epoch 0's last batch, then its own first four.
    first = next(iter(loader.epoch(1)))
    assert first.carried == 2
    assert first.idx[:2].tolist() == fresh[-1][-2:].tolist()
    assert first.idx[2:].tolist() == next(iter(plain.epoch(1))).idx.tolist()
    # round(f * batch_size): 0.3 * 5 = 1.5 -> 2
    five = DeviceLoader(images, labels, 5, {"id": _ident}, seed=1, carry_previous=0.3)
    assert five.num_carried == 2


def test_loader_with_real_views_and_errors():
    images = _images(10, 3, 8, 8)
    labels = torch.arange(10) % 3
    views = build_views(["weak", "strong_a"], {}, *UNIT, 8)
    batch = next(iter(DeviceLoader(images, labels, 4, views, seed=0).epoch(0)))
    assert list(batch.views) == ["weak", "strong_a"]
    assert batch.views["strong_a"].shape == (4, 3, 8, 8)
    for bad in (0, 11):
        with pytest.raises(UserError, match=f"batch_size={bad} must be between 1 and .* 10"):
            DeviceLoader(images, labels, bad, views, seed=0)
    with pytest.raises(UserError, match=r"carry_previous=1\.5"):
        DeviceLoader(images, labels, 4, views, seed=0, carry_previous=1.5)
    with pytest.raises(UserError, match="do not match 10 images"):
        DeviceLoader(images, labels[:5], 4, views, seed=0)


@pytest.mark.parametrize(
    ("keys", "channels", "augment", "wrap"),
    [
        (["weak", "strong_1", "strong_2"], 3, {}, None),
        (["weak", "strong_1", "strong_2", "strong_3"], 1, {"erasing_p": 1.0}, None),
        (["weak", "weak_1", "weak_2"], 3, {"crop_padding": 2}, None),
        (["weak", "strong_1", "strong_2"], 3, {"resize": 12}, None),
        (["weak", "strong_1", "strong_2"], 3, {}, "channels_last"),
    ],
)
def test_loader_applies_equal_views_jointly_with_the_numbers_of_one_by_one(
    keys: list[str], channels: int, augment: dict, wrap: str | None
):
    """The loader computes consecutive views of one kind in one pass (BSD+'s strong views,
    the ensemble's weak views); each view's output must equal calling the views one after
    the other from the same generator state, bit for bit."""
    from noisybench.build import ChannelsLast
    from noisybench.data.views import joint_groups

    images = _images(12, channels, 8, 8, seed=1)
    labels = torch.arange(12) % 3
    stats = ((0.4,) * channels, (0.3,) * channels)
    views = build_views(keys, augment, *stats, 8)
    if wrap == "channels_last":
        views = {k: ChannelsLast(v) for k, v in views.items()}
    loader = DeviceLoader(images, labels, 5, views, seed=0)
    weak_only = all(k.startswith("weak") for k in keys)
    assert [len(g) for g in loader.groups] == ([len(keys)] if weak_only else [1, len(keys) - 1])
    torch.manual_seed(7)
    batches = list(loader.epoch(0))
    torch.manual_seed(7)
    perms = loader.permutation(0)
    for step, batch in enumerate(batches):
        x = images.index_select(0, perms[step * 5 : step * 5 + 5])
        for key in keys:  # one by one, in key order, continuing the same generator
            expected = views[key](x)
            assert torch.equal(batch.views[key], expected), (step, key)
            assert batch.views[key].is_contiguous(
                memory_format=torch.channels_last if wrap else torch.contiguous_format
            )
    # only consecutive views of equal settings are grouped
    mixed = build_views(["strong_1", "weak", "strong_2"], {}, *UNIT, 8)
    assert joint_groups(mixed) == [["strong_1"], ["weak"], ["strong_2"]]
    assert joint_groups({"a": _noisy, "b": _noisy}) == [["a"], ["b"]]
