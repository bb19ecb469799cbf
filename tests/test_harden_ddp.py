"""Several processes: equal, non-empty shards of every global batch; own augmentation streams."""
import os
import socket

import pytest
import torch

from conftest import tiny_dataset

from cnnlab.data.augment import parse_augment
from cnnlab.errors import CnnlabError
from cnnlab.train.sharding import ShardedEvalLoader, ShardedTrainLoader

NORM = dict(mean=(0.5,), std=(0.25,))


def loaders(n, batch_size, world, **kw):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).repeat(1, 1, 4, 4)
    y = torch.arange(n) % 10
    return [ShardedTrainLoader(x, y, batch_size=batch_size, rank=r, world_size=world, seed=3, **NORM, **kw)
            for r in range(world)]


def test_every_rank_gets_an_equal_non_empty_shard_and_the_tail_is_truncated():
    # 23 images, global batch 8, 3 ranks... refused: 8 is not a multiple of 3
    with pytest.raises(CnnlabError, match="multiple of 3"):
        loaders(23, 8, 3)
    ranks = loaders(23, 6, 3)  # batches of 6, 6, 6, then a tail of 5 -> 3 (two images dropped)
    for lo in ranks:
        lo.set_epoch(1)
    batches = [list(lo) for lo in ranks]
    assert all(len(b) == 4 == len(lo) for b, lo in zip(batches, ranks))
    for step in range(4):
        sizes = {len(b[step][1]) for b in batches}
        assert sizes == ({2} if step < 3 else {1})  # equal shards, never empty
    seen = torch.cat([b[step][1] for step in range(4) for b in batches])
    assert len(seen) == ranks[0].samples_per_epoch == 21
    # the union of the shards is the first 21 images of the epoch's permutation, each once
    pixels = torch.cat([b[step][0][:, 0, 0, 0] for step in range(4) for b in batches])
    assert len(set(pixels.tolist())) == 21


def test_a_tail_smaller_than_the_world_is_dropped_not_given_as_empty_shards():
    ranks = loaders(9, 4, 4)  # batches of 4, 4, then 1 image for 4 ranks: dropped
    assert [len(lo) for lo in ranks] == [2, 2, 2, 2]
    assert all(len(y) == 1 for lo in ranks for _, y in lo)


def test_one_process_is_unchanged():
    (single,) = loaders(23, 8, 1)
    assert len(single) == 3 and sum(len(y) for _, y in single) == 23


def test_ranks_draw_different_augmentations_and_rank_0_the_single_process_ones():
    aug = dict(augment=parse_augment("crop:2,cutout:2"), num_classes=10)
    x = torch.randint(0, 255, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 10
    same_images = [ShardedTrainLoader(x[:8].repeat(2, 1, 1, 1), y[:8].repeat(2), batch_size=16, shuffle=False,
                                      rank=r, world_size=2, **NORM, **aug) for r in range(2)]
    a, b = (next(iter(lo))[0] for lo in same_images)  # both ranks hold the same 8 images
    assert not torch.equal(a, b)
    # rank 0's stream is the one a single process draws (BatchLoader seeds it with seed * 1000003 + epoch + 1)
    rank0 = ShardedTrainLoader(x, y, batch_size=16, rank=0, world_size=2, seed=5, **NORM, **aug)
    rank0.set_epoch(4)
    single = torch.Generator().manual_seed(5 * 1_000_003 + 4 + 1)
    assert torch.equal(rank0.augment_generator().get_state(), single.get_state())


def test_evaluation_blocks_cover_the_set_once():
    x = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    y = torch.arange(10)
    parts = [ShardedEvalLoader(x, y, batch_size=3, rank=r, world_size=3, **NORM) for r in range(3)]
    assert sorted(torch.cat([yy for p in parts for _, yy in p]).tolist()) == list(range(10))
    assert all(p.num_samples == 10 for p in parts)


def _worker(rank, world, port, out, result_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from cnnlab.train import TrainConfig, fit

    data = tiny_dataset(n_train=151, n_test=50)  # 4 batches of 32 and a tail of 23: 22 kept, 11 per rank
    cfg = TrainConfig(model="mlp", model_args={"hidden": [16], "dropout": 0.3}, epochs=2, batch_size=32,
                      eval_batch_size=64, optimizer="sgd", lr=0.05, schedule="constant", augment="crop:2",
                      channels_last=False)
    summary = fit(cfg, out, dataset=data)
    torch.save(summary["test_top1"], os.path.join(result_dir, f"{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_train_with_augmentation_dropout_and_an_uneven_tail(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert a == b and a > 0.2  # the ranks agree on the summed metrics, and the model learned
    assert (tmp_path / "run" / "summary.json").is_file()
