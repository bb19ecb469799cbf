"""How several processes share the data: equal shards of every global batch, own random streams.

Training (``ShardedTrainLoader``): every rank draws the same global permutation (seed, epoch) and
cuts each global batch of ``batch_size`` images into ``world_size`` contiguous shards of equal
size, so that DDP's mean of the ranks' gradients weights every image alike, exactly as one
process would over the global batch. ``batch_size`` must therefore be a multiple of the world
size. The last global batch of an epoch is **truncated** to a multiple of the world size: at most
``world_size - 1`` images of the epoch are dropped (different ones each epoch, since the
permutation changes), and a tail smaller than the world size is dropped entirely. No rank ever
gets an empty shard. With one process nothing is dropped and nothing changes.

Each rank draws its own augmentation parameters: the generator of epoch ``e`` on rank ``r`` is
seeded from (seed, e, r); rank 0 uses the single-process stream, so a one-process run is
unchanged. Dropout masks come from torch's global generator, which ``rank_seed`` re-seeds per
(seed + ``DROPOUT_STREAM``, epoch, rank) at each epoch start under DDP (see ``cnnlab.train.trainer``).
A checkpoint written inside an epoch stores every rank's generator state (its ``ranks`` list,
see ``cnnlab.train.rundir``), so each rank resumes its own dropout stream where it stopped; the
augmentation stream needs no state: it is drawn again from the epoch's start and the batches
already trained are dropped.

Evaluation (``ShardedEvalLoader``): the set is cut into ``world_size`` contiguous blocks, one per
rank, batched by ``batch_size``; metrics are sums, so unequal blocks are fine.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from cnnlab import data as cdata
from cnnlab.errors import CnnlabError

_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads consecutive ranks far apart
DROPOUT_STREAM = 0x5EED  # salt: the dropout stream of a rank differs from its augmentation stream


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed for (seed, epoch, rank); distinct ranks and epochs give unrelated streams."""
    return (seed * 1_000_003 + epoch + 1 + rank * _GOLDEN) % (2**63)


def check_global_batch(batch_size: int, world_size: int) -> None:
    if world_size > 1 and batch_size % world_size:
        raise CnnlabError(f"a global batch of {batch_size} cannot be split into {world_size} equal shards; "
                          f"use a batch size that is a multiple of {world_size}")


class ShardedTrainLoader(cdata.BatchLoader):
    """A ``BatchLoader`` whose shards are equal and non-empty and whose augmentation is per rank."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_global_batch(self.batch_size, self.world_size)

    def _batches(self) -> list[tuple[int, int]]:
        """(start, length) of each global batch after the tail rule (see the module docstring)."""
        n, out = len(self.x), []
        for start in range(0, n, self.batch_size):
            length = min(self.batch_size, n - start)
            if self.drop_last and length < self.batch_size:
                break
            length -= length % self.world_size
            if length:
                out.append((start, length))
        return out

    def __len__(self) -> int:
        if self.world_size == 1:
            return super().__len__()
        return len(self._batches())

    @property
    def samples_per_epoch(self) -> int:
        """Images trained on per epoch, over all ranks (the dataset less the dropped tail)."""
        return sum(length for _, length in self._batches())

    def augment_generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(rank_seed(self.seed, self.epoch, self.rank))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.world_size == 1:
            yield from super().__iter__()  # the single-process stream, unchanged
            return
        idx = self.order()
        generator = self.augment_generator() if self.augment is not None else None
        for start, length in self._batches():
            shard = length // self.world_size
            batch = idx[start + self.rank * shard: start + (self.rank + 1) * shard]
            if generator is not None:
                yield self._augmented(self.x[batch], self.y[batch], generator)
            else:
                yield self.normalize(self.x[batch]), self.y[batch]


class ShardedEvalLoader(cdata.BatchLoader):
    """An unshuffled ``BatchLoader`` over this rank's contiguous block of the set."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, rank: int = 0, world_size: int = 1, **kwargs) -> None:
        n = len(x)
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        super().__init__(x[lo:hi], y[lo:hi], shuffle=False, **kwargs)
        self.total = n

    @property
    def num_samples(self) -> int:
        return self.total
