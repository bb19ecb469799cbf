"""Several processes resumed inside an epoch: every rank's RNG, guard and partial sums come back.

Each rank draws its own dropout masks; a checkpoint written inside an epoch holds every rank's
generator state (``ranks``), so a two-process run stopped after such a checkpoint and resumed ends
with exactly the weights of the uninterrupted run.
"""
from __future__ import annotations

import os
import socket
import types
from pathlib import Path

import pytest
import torch

from conftest import tiny_dataset

from cnnlab.errors import CnnlabError
from cnnlab.train import checkpoint as ckpt
from cnnlab.train.distributed import Dist
from cnnlab.train.metrics import read_metrics_csv
from cnnlab.train.restore import own_rank_state

# 180 training images after the 10% validation split: 5 global batches of 32 and a tail of 20,
# so 6 steps per epoch; dropout and augmentation on, so every rank's random streams matter
CONFIG = dict(model="mlp", model_args={"hidden": [24], "dropout": 0.5}, epochs=2, batch_size=32,
              eval_batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9, schedule="constant",
              augment="flip,crop:2", channels_last=False, threads=1, checkpoint_every="2")
STOP_AT = 9  # killed at step 9 (epoch 2, batch 3): the last checkpoint is step 8, batch 2 of epoch 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from cnnlab.train import TrainConfig, fit

    dist.init_process_group("gloo")  # one group for the three runs below (fit leaves a group it did not start)
    try:
        data = tiny_dataset(n_train=200, n_test=40)
        cfg = TrainConfig(**CONFIG)
        fit(cfg, os.path.join(root, "whole"), dataset=data)
        stopped = fit(cfg, os.path.join(root, "cut"), dataset=data, stop_after_step=STOP_AT)
        assert stopped == {"interrupted_after_step": STOP_AT}
        lines: list[str] = []
        fit(cfg, os.path.join(root, "cut"), dataset=data, resume=True, log=lines.append)
        if rank == 0:
            Path(root, "resume.log").write_text("\n".join(lines))
        # a checkpoint every N minutes: the ranks agree on rank 0's clock (every AGREE_EVERY = 10 steps)
        fit(cfg.updated({"checkpoint_every": "0.000001m"}), os.path.join(root, "clock"), dataset=data,
            stop_after_step=11)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_resumed_mid_epoch_end_with_the_uninterrupted_weights_bit_for_bit(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    cut = ckpt.load_checkpoint(tmp_path / "cut" / "last.pt", training=True)
    whole = ckpt.load_checkpoint(tmp_path / "whole" / "last.pt", training=True)
    assert "batch 2 of epoch 2" in (tmp_path / "resume.log").read_text()
    assert len(cut["ranks"]) == 2
    assert not torch.equal(cut["ranks"][0]["rng"]["torch"], cut["ranks"][1]["rng"]["torch"])
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])
    a, b = (read_metrics_csv(tmp_path / r / "metrics.csv") for r in ("whole", "cut"))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]  # every rank's partial sums came back
    clock = ckpt.load_checkpoint(tmp_path / "clock" / "last.pt", training=True)
    assert (clock["step"], clock["batch_in_epoch"], len(clock["ranks"])) == (10, 4, 2)


# --- fast: the per-rank state without processes -------------------------------------------------

def _state(ranks: int | None, *, batch: int = 2) -> dict:
    def own(r):
        g = torch.Generator().manual_seed(100 + r)
        return {"rng": {"torch": g.get_state()}, "guard": {"avg": float(r)},
                "partial": {"loss_sum": 1.5 * (r + 1), "total_sum": 1.5 * (r + 1), "correct": 3 * (r + 1),
                            "seen": 16, "has_aux": False, "seconds": 1.0, "lr": 0.1, "momentum": 0.9}}

    state = {"rng": own(0)["rng"], "guard": own(0)["guard"], "partial": own(0)["partial"],
             "batch_in_epoch": batch, "step": 8, "epoch": 1}
    if ranks is not None:
        state["ranks"] = [own(r) for r in range(ranks)]
    return state


def _run(rank: int, world: int):
    return types.SimpleNamespace(info=Dist(rank, world, rank), cfg=types.SimpleNamespace(seed=0),
                                 out=Path("run"))


def test_each_rank_takes_its_own_state_when_the_world_is_the_same():
    state = _state(2)
    for rank in range(2):
        own = own_rank_state(state, _run(rank, 2))
        assert own["rng"] is state["ranks"][rank]["rng"] and own["guard"] == {"avg": float(rank)}
        assert own["partial"]["correct"] == 3 * (rank + 1)


def test_another_world_size_resumes_with_the_sums_on_rank_0_and_says_it_is_not_bit_exact():
    lines: list[str] = []
    state = _state(2)
    three = [own_rank_state(state, _run(r, 3), lines.append) for r in range(3)]
    assert "holds the state of 2 processes and the run resumes in 3" in lines[0] and "not bit-identically" in lines[0]
    assert [o["partial"]["seen"] for o in three] == [32, 0, 0]  # every image of the epoch counted once
    assert three[0]["partial"]["correct"] == 9 and three[0]["partial"]["lr"] == 0.1
    assert isinstance(three[2]["rng"], int)  # a rank without a saved state draws a fresh stream
    assert three[2]["rng"] != own_rank_state(_state(2), _run(3, 4))["rng"]
    one = own_rank_state(state, _run(0, 1), lines.append)  # one process resumes a run of two
    assert one["partial"]["seen"] == 32 and one["rng"] is state["ranks"][0]["rng"]


def test_a_checkpoint_without_ranks_still_resumes():
    state = _state(None)
    single = own_rank_state(state, _run(0, 1))  # one process: exactly as before
    assert single == {"rng": state["rng"], "guard": state["guard"], "partial": state["partial"]}
    lines: list[str] = []
    rank1 = own_rank_state(state, _run(1, 2), lines.append)  # an older two-process checkpoint
    assert isinstance(rank1["rng"], int) and rank1["partial"]["seen"] == 0 and lines


def _saved(tmp_path, ranks) -> Path:
    from cnnlab.train import TrainConfig

    state = {"model": {"w": torch.ones(2)}, "config": TrainConfig().to_dict(),
             "dataset": {"name": "mnist", "num_classes": 10, "input_size": [1, 28, 28]}, "epoch": 0,
             "optimizer": {}, "scheduler": {}, "rng": ckpt.rng_state(), "step": 3, "history": [],
             "best_metric": float("-inf"), "best_epoch": 0}
    if ranks is not None:
        state["ranks"] = ranks
    ckpt.save_checkpoint(tmp_path / "last.pt", state)
    return tmp_path / "last.pt"


def test_checkpoint_validation_accepts_ranks_and_refuses_malformed_ones(tmp_path):
    assert "ranks" not in ckpt.load_checkpoint(_saved(tmp_path, None), training=True)  # older checkpoints load
    good = [{"rng": ckpt.rng_state(), "guard": {"avg": 0.0}, "partial": None} for _ in range(2)]
    loaded = ckpt.load_checkpoint(_saved(tmp_path, good), training=True)
    assert torch.equal(loaded["ranks"][1]["rng"]["torch"], good[1]["rng"]["torch"])
    for bad, message in (([], "'ranks' is not a list"), ([{"guard": {}}], "RNG state of process 0"),
                         ([good[0], {"rng": good[0]["rng"], "partial": 3}], "partial state of process 1")):
        with pytest.raises(CnnlabError, match=message):
            ckpt.load_checkpoint(_saved(tmp_path, bad), training=True)
