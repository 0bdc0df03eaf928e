"""The per-sample store (noisybench.stores) and the soft-target losses (noisybench.losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from noisybench.losses import kl_from_log, kl_to_target, soft_cross_entropy
from noisybench.stores import SampleStore, label_rows


def test_label_rows_matches_one_hot_mix() -> None:
    labels = torch.tensor([2, 0, 1, 2])
    got = label_rows(labels, 3, 0.9, 0.05, torch.float16)
    want = (0.05 + 0.85 * F.one_hot(labels, 3).float()).half()
    assert got.dtype == torch.float16 and torch.equal(got, want)


def test_store_is_a_buffer_reads_renormalised_and_every_write_reaches_the_hook() -> None:
    owner = nn.Module()
    store = SampleStore(owner, "targets", torch.full((5, 4), 0.25).half(), renormalise=True)
    assert "targets" in owner.state_dict()
    seen: list[tuple[list[int], torch.Tensor]] = []
    store.sync_hook = lambda s, idx, rows: seen.append((idx.tolist(), rows.clone()))
    rows = torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0]])
    store.write(torch.tensor([4, 1]), rows)
    assert seen[0][0] == [4, 1] and seen[0][1].dtype == torch.float16
    # read divides by the row sum: [3, 1, 0, 0] / 4
    torch.testing.assert_close(store.read(torch.tensor([4]))[0], torch.tensor([0.75, 0.25, 0, 0]))
    # load_state_dict replaces the data; the store follows the owner's buffer
    owner.load_state_dict({"targets": torch.ones(5, 4).half()})
    torch.testing.assert_close(store.read(torch.tensor([4]))[0], torch.full((4,), 0.25))
    chunks = list(store.chunks(2))
    assert [s for s, _ in chunks] == [0, 2, 4] and chunks[-1][1].shape == (1, 4)


def test_losses_against_torch_kl_div() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen)
    target = torch.softmax(torch.randn(6, 5, generator=gen), dim=-1)
    log_q = F.log_softmax(logits, dim=-1)
    want = F.kl_div(log_q, target, reduction="batchmean")
    torch.testing.assert_close(kl_to_target(logits, target), want)
    torch.testing.assert_close(kl_from_log(target.log(), log_q).mean(), want)
    entropy = -(target * target.log()).sum(-1).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, target), want + entropy)
