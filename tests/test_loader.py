"""The in-memory loader: seeded order, full coverage, normalization, validation split."""
import pytest
import torch

from cnnlab.data import BatchLoader, split_validation
from cnnlab.errors import CnnlabError


def loader(n=100, bs=32, seed=0, **kw):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.arange(n)
    return BatchLoader(x, y, batch_size=bs, mean=(0.5,), std=(0.25,), seed=seed, **kw)


def labels(ld):
    return torch.cat([y for _, y in ld])


def test_each_epoch_visits_every_sample_once():
    ld = loader()
    assert sorted(labels(ld).tolist()) == list(range(100)) and len(ld) == 4


def test_same_seed_and_epoch_give_the_same_order_and_epochs_differ():
    a, b = loader(seed=3), loader(seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(labels(a), labels(b))
    b.set_epoch(3)
    assert not torch.equal(labels(a), labels(b))
    assert not torch.equal(labels(loader(seed=4)), labels(loader(seed=3)))


def test_batches_are_normalized_with_mean_and_std():
    x, y = next(iter(loader(shuffle=False)))
    expected = (y.float() / 255 - 0.5) / 0.25
    assert torch.allclose(x[:, 0, 0, 0], expected, atol=1e-6)


def test_drop_last_drops_the_partial_batch():
    assert len(loader(drop_last=True)) == 3 and len(labels(loader(drop_last=True))) == 96


def test_invalid_batch_size_is_refused():
    with pytest.raises(CnnlabError, match="batch_size=0"):
        loader(bs=0)


def test_validation_split_is_disjoint_seeded_and_sized():
    x, y = torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.arange(100)
    (tx, ty), (vx, vy) = split_validation(x, y, 0.2, seed=1)
    assert len(vy) == 20 and len(ty) == 80 and not set(ty.tolist()) & set(vy.tolist())
    assert torch.equal(split_validation(x, y, 0.2, seed=1)[1][1], vy)
    with pytest.raises(CnnlabError, match="fraction"):
        split_validation(x, y, 1.5, seed=1)
