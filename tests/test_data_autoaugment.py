"""Batched AutoAugment (CIFAR-10 policy) against torchvision's per-image reference."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode

from noisybench.data.autoaugment import CIFAR10_POLICY, OPS, BatchedAutoAugment, magnitude_table


def _images(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images with structure so geometric ops move content
    base = torch.randint(0, 256, (n, 3, size // 4, size // 4), generator=g).float()
    img = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear")
    noise = torch.randint(-20, 21, img.shape, generator=g)
    return (img + noise).clamp(0, 255).to(torch.uint8)


def _tv_op(img: torch.Tensor, name: str, m: float) -> torch.Tensor:
    """torchvision.transforms.AutoAugment's own _apply_op (nearest, fill None)."""
    from torchvision.transforms.autoaugment import _apply_op

    return _apply_op(img, name, m, interpolation=InterpolationMode.NEAREST, fill=None)


def test_policy_table_is_torchvisions() -> None:
    ref = AutoAugment(AutoAugmentPolicy.CIFAR10).policies
    assert [tuple(s) for s in ref] == [tuple(s) for s in CIFAR10_POLICY]


def test_magnitude_ranges_are_torchvisions() -> None:
    ref = AutoAugment(AutoAugmentPolicy.CIFAR10)._augmentation_space(10, (32, 40))
    values, signed = magnitude_table("torchvision", 32, 40)
    for i, name in enumerate(OPS):
        mags, sgn = ref[name]
        assert signed[i] == sgn, name
        if mags.ndim:
            assert values[i] == pytest.approx(mags.float().tolist(), abs=1e-5), name


@pytest.mark.parametrize("name", OPS)
def test_each_op_equals_torchvision_with_the_same_magnitude(name: str) -> None:
    values, signed = magnitude_table("torchvision", 32, 32)
    aa = BatchedAutoAugment()
    imgs = _images()
    op_id = OPS.index(name)
    mags = []
    for i in range(imgs.shape[0]):
        m = values[op_id][(i * 7) % 10]
        if signed[op_id] and i % 2:
            m = -m
        mags.append(m)
    out = aa.apply_op(imgs.float(), torch.full((len(mags),), op_id), torch.tensor(mags))
    ref = torch.stack([_tv_op(imgs[i], name, mags[i]) for i in range(len(mags))]).float()
    diff = (out - ref).abs()
    if name in OPS[:5]:
        # geometric: identical up to rare nearest-neighbour ties of the sampling grid
        assert (diff == 0).float().mean() > 0.98, (name, diff.max())
    else:
        assert diff.max() == 0, (name, diff.max())


ENHANCE = {
    "Brightness": "adjust_brightness",
    "Color": "adjust_saturation",
    "Contrast": "adjust_contrast",
    "Sharpness": "adjust_sharpness",
}


@pytest.mark.parametrize("name", sorted(ENHANCE))
def test_enhance_ops_are_bit_exact_to_torchvision_functional_at_every_bin(name: str) -> None:
    """Every bin (the policy uses Color 0/3/7/8/9, Brightness 3/6/7/9, Contrast 6/7,
    Sharpness 1/3/5/6/9) with both signs: the batched blend equals torchvision's
    ``transforms.functional.adjust_*(uint8 image, 1.0 + m)`` (what its per-image
    ``transforms.AutoAugment`` calls) on every pixel, no tolerance."""
    import torchvision.transforms.functional as TF

    values, _ = magnitude_table("torchvision", 32, 32)
    op = OPS.index(name)
    used = {b for sub in CIFAR10_POLICY for n, _, b in sub if n == name}
    assert used  # the policy uses this op
    aa = BatchedAutoAugment()
    for size in (32, 28):
        imgs = torch.cat([_images(32, size, seed) for seed in range(2)])
        for b in range(10):
            for sign in (1.0, -1.0):
                m = sign * values[op][b]
                mags = torch.full((len(imgs),), m)
                out = aa.apply_op(imgs.float(), torch.full((len(imgs),), op), mags)
                ref = torch.stack([getattr(TF, ENHANCE[name])(im, 1.0 + m) for im in imgs])
                assert torch.equal(out, ref.float()), (name, size, b, sign)


def test_sharpen_kernel_is_built_without_a_host_scalar() -> None:
    """``kernel[1, 1] = 5.0`` dispatches ``scalar_tensor`` + ``copy_`` (on CUDA: a CPU scalar
    copied to the device at every strong view); the kernel must be built on the device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from noisybench.data.autoaugment import _sharpen_degenerate

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record() as rec:
        _sharpen_degenerate(torch.zeros(2, 3, 8, 8, device="meta"))
    assert not [op for op in rec.ops if "scalar_tensor" in op or "index_put" in op], rec.ops
    assert sum("copy_" in op for op in rec.ops) == 1  # only the interior write-back


def _draw_stats(aa_draw, n_batches: int = 200):
    """(op, signed magnitude) pairs of the applied ops of n_batches batches of 128."""
    ops, mags = [], []
    for _ in range(n_batches):
        op, mag, apply = aa_draw()
        ops.append(op[apply])
        mags.append(mag[apply])
    return torch.cat(ops), torch.cat(mags)


def _reference_draws(n: int, seed: int):
    """torchvision's own per-image sampling logic (AutoAugment.forward), recorded op by op."""
    tv = AutoAugment(AutoAugmentPolicy.CIFAR10)
    space = tv._augmentation_space(10, (32, 32))
    torch.manual_seed(seed)
    ops, mags, policies = [], [], []
    for _ in range(n):
        pid, probs, signs = tv.get_params(len(tv.policies))
        policies.append(pid)
        for i, (name, p, b) in enumerate(tv.policies[pid]):
            if probs[i] <= p:
                vals, sgn = space[name]
                m = float(vals[b].item()) if b is not None else 0.0
                if sgn and signs[i] == 0:
                    m *= -1.0
                ops.append(OPS.index(name))
                mags.append(m)
    return torch.tensor(ops), torch.tensor(mags), torch.tensor(policies)


def test_draws_match_torchvision_distribution() -> None:
    torch.manual_seed(1)
    aa = BatchedAutoAugment()

    def draw():
        _, op, mag, apply = aa.sample(128, 32, 32, torch.device("cpu"))
        return op, mag, apply

    ops, mags = _draw_stats(draw, 200)
    r_ops, r_mags, _ = _reference_draws(128 * 200, seed=2)
    n = 128 * 200
    # probability of application per op: rates per image agree within 5 binomial sds
    for i, name in enumerate(OPS):
        a = (ops == i).sum().item() / n
        b = (r_ops == i).sum().item() / n
        sd = math.sqrt(max(a, b, 1e-4) * (1 - max(a, b)) / n) * math.sqrt(2)
        assert abs(a - b) <= 5 * sd + 1e-4, (name, a, b)
        if name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
            m = mags[ops == i]
            rm = r_mags[r_ops == i]
            if len(m) == 0:
                assert len(rm) == 0
                continue
            # sign balance ~ 1/2 and the same set of absolute magnitudes
            assert abs((m > 0).float().mean().item() - 0.5) < 0.05, name
            assert abs((rm > 0).float().mean().item() - 0.5) < 0.05, name
            assert sorted(set(m.abs().round(decimals=4).tolist())) == pytest.approx(
                sorted(set(rm.abs().round(decimals=4).tolist())), abs=1e-3
            ), name


def test_about_25_distinct_subpolicies_per_batch() -> None:
    torch.manual_seed(3)
    aa = BatchedAutoAugment()
    ours = []
    for _ in range(50):
        aa(torch.zeros(128, 3, 8, 8))
        ours.append(len(torch.unique(aa.last_policy)))
    _, _, pol = _reference_draws(128 * 50, seed=4)
    ref = [len(torch.unique(p)) for p in pol.view(50, 128)]
    expected = 25 * (1 - (24 / 25) ** 128)  # 24.93
    assert sum(ours) / 50 == pytest.approx(expected, abs=0.3)
    assert sum(ref) / 50 == pytest.approx(expected, abs=0.3)


def test_whole_call_equals_torchvision_applied_per_image_with_the_same_draws() -> None:
    torch.manual_seed(5)
    aa = BatchedAutoAugment()
    imgs = _images(64, seed=6)
    state = torch.get_rng_state()
    out = aa(imgs.float())
    torch.set_rng_state(state)
    policy, op, mag, apply = aa.sample(64, 32, 32, torch.device("cpu"))
    ref = []
    for i in range(64):
        img = imgs[i]
        for s in range(2):
            if apply[i, s]:
                img = _tv_op(img, OPS[int(op[i, s])], float(mag[i, s]))
        ref.append(img)
    ref = torch.stack(ref).float()
    assert torch.equal(policy, aa.last_policy)
    assert ((out - ref).abs() == 0).float().mean() > 0.99
