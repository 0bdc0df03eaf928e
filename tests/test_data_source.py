"""The in-memory data source (noisybench/data/source.py): its training batches are the
DeviceLoader's, its evaluation batches are the plain view of the requested images (a range of
positions, or the positions listed, in that order), cut into batches of the given size, and
the validation split's images are the held-out training images. Expected values are computed
here by indexing the uint8 tensors directly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from noisybench.data.loader import DeviceLoader
from noisybench.data.source import DataSource, EvalLabels, InMemorySource, LoaderSpec


def _source(holdout=(None, None)) -> tuple[InMemorySource, SimpleNamespace]:
    gen = torch.Generator().manual_seed(0)
    data = SimpleNamespace(
        train_images=torch.randint(0, 256, (20, 1, 3, 3), generator=gen, dtype=torch.uint8),
        test_images=torch.randint(0, 256, (7, 1, 3, 3), generator=gen, dtype=torch.uint8),
    )
    train_idx, val_idx = holdout
    n = 20 if train_idx is None else len(train_idx)
    given = torch.arange(n) % 3
    labels = EvalLabels(
        test=torch.zeros(7, dtype=torch.long),
        train_clean=given,
        train_given=given,
        val=None if val_idx is None else torch.zeros(len(val_idx), dtype=torch.long),
    )
    views = {"weak": lambda x: x.float() + 1.0}
    spec = LoaderSpec(batch_size=6, seed=5, views=views, device=torch.device("cpu"))
    return InMemorySource(data, labels, spec, lambda x: x.float() / 255.0, holdout), data


def test_in_memory_eval_batches_are_the_view_of_the_samples_asked_for() -> None:
    source, data = _source()
    assert isinstance(source, DataSource)
    assert source.images("val") is None and source.labels.size("val") == 0
    got = list(source.eval_batches("test", range(2, 7), 2))
    assert [b.shape[0] for b in got] == [2, 2, 1]
    torch.testing.assert_close(torch.cat(got), data.test_images[2:7].float() / 255.0)
    picks = torch.tensor([9, 0, 17, 4])
    got = list(source.eval_batches("train", picks, 3))
    assert [b.shape[0] for b in got] == [3, 1]
    torch.testing.assert_close(torch.cat(got), data.train_images[[9, 0, 17, 4]].float() / 255.0)


def test_in_memory_training_batches_are_the_device_loaders() -> None:
    train_idx, val_idx = np.arange(4, 20), np.arange(4)
    source, data = _source((train_idx, val_idx))
    assert torch.equal(source.images("val"), data.train_images[:4])
    assert torch.equal(source.images("train"), data.train_images[4:])
    loader = DeviceLoader(
        data.train_images[4:], torch.arange(16) % 3, 6, {"weak": lambda x: x.float() + 1.0}, 5
    )
    assert len(source) == len(loader) == 3
    for a, b in zip(source.epoch(1, start_step=1), loader.epoch(1, start_step=1), strict=True):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.target, b.target)
        assert torch.equal(a.views["weak"], b.views["weak"])
