"""``autoaugment_ranges: lnl``: the batched policy against the noisy-label codebases' per-image
PIL ``CIFAR10Policy`` (CSOT / UNICON / DivideMix-derived ``autoaugment.py``).

The reference below is this test's own transcription of that policy's definition, run per
image with Pillow on uint8 images: its ``SubPolicy.ranges`` (numpy ``linspace`` over 10 bins),
its operation table (``Image.transform`` AFFINE with grey fill 128, BICUBIC for shear and
the default NEAREST for translate; ``rotate`` through an RGBA composite onto grey, no sign;
``ImageEnhance`` factor ``1 + m * random.choice([-1, 1])``; ``ImageOps`` for the rest) and
its 25 sub-policies with ``random.random() < p``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from noisybench.data.autoaugment import CIFAR10_POLICY, OPS, BatchedAutoAugment, magnitude_table

# the policy's ranges, as the port writes them
RANGES = {
    "ShearX": np.linspace(0, 0.3, 10),
    "ShearY": np.linspace(0, 0.3, 10),
    "TranslateX": np.linspace(0, 150 / 331, 10),
    "TranslateY": np.linspace(0, 150 / 331, 10),
    "Rotate": np.linspace(0, 30, 10),
    "Color": np.linspace(0.0, 0.9, 10),
    "Posterize": np.round(np.linspace(8, 4, 10), 0).astype(int),
    "Solarize": np.linspace(256, 0, 10),
    "Contrast": np.linspace(0.0, 0.9, 10),
    "Sharpness": np.linspace(0.0, 0.9, 10),
    "Brightness": np.linspace(0.0, 0.9, 10),
}
FILL = (128, 128, 128)

# the port's 25 sub-policies (p1, op1, bin1, p2, op2, bin2); the bins of magnitude-free ops
# are the port's own (unused) numbers
PORT_POLICY = [
    (0.1, "Invert", 7, 0.2, "Contrast", 6),
    (0.7, "Rotate", 2, 0.3, "TranslateX", 9),
    (0.8, "Sharpness", 1, 0.9, "Sharpness", 3),
    (0.5, "ShearY", 8, 0.7, "TranslateY", 9),
    (0.5, "AutoContrast", 8, 0.9, "Equalize", 2),
    (0.2, "ShearY", 7, 0.3, "Posterize", 7),
    (0.4, "Color", 3, 0.6, "Brightness", 7),
    (0.3, "Sharpness", 9, 0.7, "Brightness", 9),
    (0.6, "Equalize", 5, 0.5, "Equalize", 1),
    (0.6, "Contrast", 7, 0.6, "Sharpness", 5),
    (0.7, "Color", 7, 0.5, "TranslateX", 8),
    (0.3, "Equalize", 7, 0.4, "AutoContrast", 8),
    (0.4, "TranslateY", 3, 0.2, "Sharpness", 6),
    (0.9, "Brightness", 6, 0.2, "Color", 8),
    (0.5, "Solarize", 2, 0.0, "Invert", 3),
    (0.2, "Equalize", 0, 0.6, "AutoContrast", 0),
    (0.2, "Equalize", 8, 0.6, "Equalize", 4),
    (0.9, "Color", 9, 0.6, "Equalize", 6),
    (0.8, "AutoContrast", 4, 0.2, "Solarize", 8),
    (0.1, "Brightness", 3, 0.7, "Color", 0),
    (0.4, "Solarize", 5, 0.9, "AutoContrast", 3),
    (0.9, "TranslateY", 9, 0.7, "TranslateY", 9),
    (0.9, "AutoContrast", 2, 0.8, "Solarize", 3),
    (0.8, "Equalize", 8, 0.1, "Invert", 3),
    (0.7, "TranslateY", 9, 0.9, "AutoContrast", 1),
]
FREE = {"AutoContrast", "Equalize", "Invert"}


def pil_op(img: Image.Image, name: str, magnitude: float, sign: int) -> Image.Image:
    """One operation of the port, with its random sign given (``sign`` = +1 / -1)."""
    if name == "ShearX":
        return img.transform(
            img.size, Image.AFFINE, (1, magnitude * sign, 0, 0, 1, 0), Image.BICUBIC, fillcolor=FILL
        )
    if name == "ShearY":
        return img.transform(
            img.size, Image.AFFINE, (1, 0, 0, magnitude * sign, 1, 0), Image.BICUBIC, fillcolor=FILL
        )
    if name == "TranslateX":
        t = magnitude * img.size[0] * sign
        return img.transform(img.size, Image.AFFINE, (1, 0, t, 0, 1, 0), fillcolor=FILL)
    if name == "TranslateY":
        t = magnitude * img.size[1] * sign
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, t), fillcolor=FILL)
    if name == "Rotate":  # no sign in the port
        rot = img.convert("RGBA").rotate(magnitude)
        grey = Image.new("RGBA", rot.size, (128,) * 4)
        return Image.composite(rot, grey, rot).convert(img.mode)
    if name in ("Color", "Contrast", "Sharpness", "Brightness"):
        return getattr(ImageEnhance, name)(img).enhance(1 + magnitude * sign)
    if name == "Posterize":
        return ImageOps.posterize(img, int(magnitude))
    if name == "Solarize":
        return ImageOps.solarize(img, magnitude)
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    raise AssertionError(name)


def _images(n: int = 24, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth structure plus noise, and a few low-contrast images (autocontrast / equalize)
    base = torch.randint(0, 256, (n, 3, size // 4, size // 4), generator=g).float()
    img = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear")
    img = img + torch.randint(-20, 21, img.shape, generator=g)
    img[: n // 4] = img[: n // 4] * 0.3 + 60
    return img.clamp(0, 255).to(torch.uint8)


def _to_pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def _from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def _compare(name: str, bin_: int, sign: int, size: int = 32) -> tuple[float, float]:
    """(max |difference|, fraction of values differing by more than 1) over a batch."""
    imgs = _images(size=size, seed=bin_ + 10 * (sign > 0))
    aa = BatchedAutoAugment("lnl")
    values, _ = magnitude_table("lnl", size, size)
    signed = name not in ("Rotate", "Posterize", "Solarize") and name not in FREE
    m = values[OPS.index(name)][bin_] * (sign if signed else 1)
    n = imgs.shape[0]
    op = torch.full((n,), OPS.index(name))
    out = aa.apply_op(imgs.float(), op, torch.full((n,), float(m)))
    mag = 0 if name in FREE else RANGES[name][bin_]
    ref = torch.stack([_from_pil(pil_op(_to_pil(im), name, mag, sign)) for im in imgs]).float()
    diff = (out - ref).abs()
    return float(diff.max()), float((diff > 1).float().mean())


# every bin of every operation the policy uses, both signs where the port draws one
USED: dict[str, set[int]] = {}
for _p1, _o1, _b1, _p2, _o2, _b2 in PORT_POLICY:
    for _o, _b in ((_o1, _b1), (_o2, _b2)):
        USED.setdefault(_o, set()).add(0 if _o in FREE else _b)
CASES = [
    (name, b, s)
    for name, bins in sorted(USED.items())
    for b in sorted(bins)
    for s in ((1, -1) if name not in FREE | {"Rotate", "Posterize", "Solarize"} else (1,))
]


def test_policy_is_the_ports() -> None:
    ours = [(p1, o1, b1, p2, o2, b2) for ((o1, p1, b1), (o2, p2, b2)) in CIFAR10_POLICY]
    port = [
        (p1, o1, None if o1 in FREE else b1, p2, o2, None if o2 in FREE else b2)
        for p1, o1, b1, p2, o2, b2 in PORT_POLICY
    ]
    assert ours == port


def test_ranges_are_the_ports() -> None:
    values, signed = magnitude_table("lnl", 32, 32)
    for name, r in RANGES.items():
        want = r * 32 if name.startswith("Translate") else r
        assert values[OPS.index(name)] == pytest.approx(list(map(float, want)), abs=1e-12), name
    assert not signed[OPS.index("Rotate")]
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Color", "Contrast"):
        assert signed[OPS.index(name)], name
    for name in ("Sharpness", "Brightness"):
        assert signed[OPS.index(name)], name


@pytest.mark.parametrize(("name", "bin_", "sign"), CASES)
def test_each_op_equals_pil_at_every_bin_the_policy_uses(name: str, bin_: int, sign: int) -> None:
    """Bit-exact on the CPU, every op, the geometric ones included: the integer ops are
    lookups; PIL's blend and SMOOTH filter are float32 sums reproduced in PIL's order; its
    nearest rotate is 16.16 fixed-point integer arithmetic, reproduced in integers; its
    nearest translate an integer shift ``floor(t + 0.5)``; its bicubic shear is computed in
    double, as PIL does (an earlier float32 version differed by 1 level on 0.2-1.5 % of the
    values, which is the tolerance to expect on a device without float64)."""
    biggest, frac = _compare(name, bin_, sign)
    assert biggest == 0.0, (name, bin_, sign, biggest, frac)


@pytest.mark.parametrize("bin_", [1, 5, 9])
@pytest.mark.parametrize("sign", [1, -1])
def test_shear_x_equals_pil(bin_: int, sign: int) -> None:
    """ShearX is not in the CIFAR-10 policy but is an operation of the port's table."""
    assert _compare("ShearX", bin_, sign) == (0.0, 0.0)


@pytest.mark.parametrize("size", [28, 33])
def test_geometric_ops_at_other_sizes(size: int) -> None:
    for name, b in (("Rotate", 2), ("TranslateX", 9), ("TranslateY", 3), ("ShearY", 8)):
        for s in (1, -1):
            assert _compare(name, b, s, size=size)[0] == 0.0, (name, b, s, size)


def test_whole_call_equals_the_port_per_image_with_the_same_draws() -> None:
    """Both stages, every sub-policy, against the reference run per image with the draws
    (sub-policy, apply, sign) the batched call made."""
    aa = BatchedAutoAugment("lnl")
    imgs = _images(400, seed=3)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    out = aa(imgs.float())
    torch.set_rng_state(state)
    policy, op, mag, apply = aa.sample(400, 32, 32, torch.device("cpu"))
    assert torch.equal(policy, aa.last_policy)
    assert len(set(policy.tolist())) == 25
    ref = []
    for i in range(400):
        img = _to_pil(imgs[i])
        _p1, o1, b1, _p2, o2, b2 = PORT_POLICY[int(policy[i])]
        for stage, (name, b) in enumerate(((o1, b1), (o2, b2))):
            assert OPS[int(op[i, stage])] == name
            if apply[i, stage]:
                sign = -1 if float(mag[i, stage]) < 0 else 1
                img = pil_op(img, name, 0 if name in FREE else RANGES[name][b], sign)
        ref.append(_from_pil(img))
    assert torch.equal(out, torch.stack(ref).float())


def test_draws_follow_the_port() -> None:
    """``random.random() < p`` per operation (so p = 0 never applies), a random sign for
    shear / translate / enhance, none for rotate."""
    aa = BatchedAutoAugment("lnl")
    torch.manual_seed(0)
    policy, op, mag, apply = aa.sample(200_000, 32, 32, torch.device("cpu"))
    probs = torch.tensor([[p1, p2] for p1, _, _, p2, _, _ in PORT_POLICY])[policy]
    assert not apply[probs == 0.0].any()
    # applied fraction per (sub-policy, stage) within 5 standard errors of p
    for k in range(25):
        for s in range(2):
            sel = policy == k
            p = float(probs[sel][0, s])
            se = (p * (1 - p) / int(sel.sum())) ** 0.5
            assert abs(float(apply[sel, s].float().mean()) - p) <= 5 * se + 1e-9, (k, s)
    rot = op == OPS.index("Rotate")
    assert (mag[rot] > 0).all()
    for name in ("ShearY", "TranslateX", "TranslateY", "Color", "Brightness", "Sharpness"):
        sel = (op == OPS.index(name)) & (mag != 0)  # Color's bin 0 has no visible sign
        neg = float((mag[sel] < 0).float().mean())
        assert 0.45 < neg < 0.55, name


def test_no_host_sync_with_lnl_ranges() -> None:
    """BSD+'s strong view with ``autoaugment_ranges=lnl``: no host read on the step path
    or in batch drawing (the counter of tests/test_engine_host_sync.py)."""
    from test_engine_host_sync import count_syncs

    step_counts, load_counts = count_syncs("bsdplus", ["dataset.augment.autoaugment_ranges=lnl"])
    assert sum(step_counts.values()) == 0, dict(step_counts)
    assert sum(load_counts.values()) == 0, dict(load_counts)


def test_unknown_ranges_name_lnl_in_the_message() -> None:
    from noisybench.errors import UserError

    with pytest.raises(UserError, match="lnl"):
        BatchedAutoAugment("pil")


def test_table4_bsdplus_preset_runs_the_port_and_others_keep_torchvision() -> None:
    """Table 4 (lower) compares BSD+ with methods whose code runs the PIL port; the preset
    runs it too (docs/methods/bsdplus.md); the global default stays torchvision's."""
    from noisybench.config import compose

    assert compose(["experiment=table4_bsdplus"]).dataset.augment.autoaugment_ranges == "lnl"
    assert compose(["method=bsdplus"]).dataset.augment.autoaugment_ranges == "torchvision"
    override = ["experiment=table4_bsdplus", "dataset.augment.autoaugment_ranges=torchvision"]
    assert compose(override).dataset.augment.autoaugment_ranges == "torchvision"
