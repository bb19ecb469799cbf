"""The trainer's speed wiring: thread count, throughput watch, fast kernels, data normalized once,
fused optimizers, no per-step host reads, and the per-iteration curves."""
import csv
import functools
import inspect

import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab import data as cdata
from cnnlab import threads as cthreads
from cnnlab.train import TrainConfig, fit, load_model
from cnnlab.train import build as build_mod
from cnnlab.train import distributed
from cnnlab.train import trainer as trainer_mod
from cnnlab.train.checkpoint import load_checkpoint
from cnnlab.train.guard import DivergenceGuard
from cnnlab.train.metrics import iteration_series, plot_curves, smooth
from cnnlab.train.optim import make_optimizer

SMALL = dict(epochs=1, batch_size=32, eval_batch_size=128, val_split=0)  # all the training images


# --- threads -----------------------------------------------------------------------------------

def test_default_threads_on_cpu_come_from_the_free_cores(monkeypatch):
    monkeypatch.setattr(trainer_mod, "default_threads", lambda: 3)
    cpu = torch.device("cpu")
    assert trainer_mod.threads_for(TrainConfig(), cpu) == 3
    assert trainer_mod.threads_for(TrainConfig(threads=2), cpu) == 2  # --threads wins
    assert trainer_mod.threads_for(TrainConfig(), torch.device("cuda")) is None  # torch's choice on a GPU
    two = distributed.Dist(rank=0, world_size=2, local_rank=0)
    assert trainer_mod.threads_for(TrainConfig(), cpu, two) == 1  # shared among the processes


def test_fit_applies_the_default_thread_count_and_restores_torch_s(tmp_path, tiny, monkeypatch):
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    monkeypatch.setattr(trainer_mod, "default_threads", lambda: wanted)
    seen, lines = [], []
    original = trainer_mod._train_epoch

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "_train_epoch", spy)
    fit(TrainConfig(**SMALL), tmp_path / "r", dataset=tiny, log=lines.append)
    assert seen == [wanted] and torch.get_num_threads() == before
    assert any(line.startswith(f"torch threads: {wanted} ") for line in lines)


def test_a_throughput_collapse_is_logged_with_the_fix(tmp_path, tiny, monkeypatch):
    ticks = {"n": 0, "t": 0.0}

    def clock():  # steps of 1 s, then of 5 s after the 12th step: a machine that got busy
        ticks["n"] += 1
        ticks["t"] += 1.0 if ticks["n"] <= 12 else 5.0
        return ticks["t"]

    monkeypatch.setattr(trainer_mod, "ThroughputWatch", lambda: cthreads.ThroughputWatch(window=5, clock=clock))
    lines = []
    fit(TrainConfig(**{**SMALL, "threads": 1}), tmp_path / "r", dataset=tiny, log=lines.append)
    slow = [line for line in lines if "slower" in line]
    assert len(slow) == 1 and "5.0x slower" in slow[0] and "machine is busy" in slow[0]
    ticks.update(n=0, t=0.0)
    watch = cthreads.ThroughputWatch(window=5, clock=clock)
    for _ in range(21):
        watch.tick()
    assert watch.collapsed and "--threads 1" in watch.message(2)  # the fix, with two threads


def test_a_steady_run_logs_no_collapse(tmp_path, tiny, monkeypatch):
    ticks = {"t": 0.0}

    def clock():
        ticks["t"] += 1.0
        return ticks["t"]

    monkeypatch.setattr(trainer_mod, "ThroughputWatch", lambda: cthreads.ThroughputWatch(window=5, clock=clock))
    lines = []
    fit(TrainConfig(**SMALL), tmp_path / "r", dataset=tiny, log=lines.append)
    assert not [line for line in lines if "slower" in line]


# --- fast kernels ------------------------------------------------------------------------------

def test_fast_kernels_change_neither_the_numbers_nor_the_checkpoint(tmp_path, tiny):
    lines = []
    fit(TrainConfig(**SMALL), tmp_path / "fast", dataset=tiny, log=lines.append)
    fit(TrainConfig(**SMALL, fast_kernels=False), tmp_path / "plain", dataset=tiny)
    assert any(line.startswith("fast kernels") and "pool-before-relu" in line for line in lines)
    a, b = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("fast", "plain"))
    assert list(a) == list(b)  # the same state_dict keys, in the same order
    for key in a:  # the kept kernels are bit-exact: the same weights after training
        assert torch.equal(a[key], b[key]), key
    for name in ("fast", "plain"):  # each checkpoint loads into the model the registry builds
        model, _ = load_model(tmp_path / name)
        assert model.state_dict().keys() == a.keys()


def test_fast_kernels_leave_batchnorm_statistics_and_the_random_stream_alone(tiny):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(4 * 13 * 13, 10))
    loader = cdata.BatchLoader(tiny.train_x, tiny.train_y, batch_size=32, mean=tiny.mean, std=tiny.std)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    report = build_mod.apply_fast_kernels(model, TrainConfig(batch_size=32), loader, distributed.SINGLE)
    assert report.reordered == ["2"] and isinstance(model[2], nn.MaxPool2d)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k


@pytest.mark.parametrize("cfg", [dict(fast_kernels=False), dict(backend="manual")])
def test_fast_kernels_are_not_tried_when_off_or_on_the_manual_backend(tiny, cfg):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    loader = cdata.BatchLoader(tiny.train_x, tiny.train_y, batch_size=32, mean=tiny.mean, std=tiny.std)
    assert build_mod.apply_fast_kernels(model, TrainConfig(**cfg), loader, distributed.SINGLE) is None
    assert isinstance(model[1], nn.ReLU)


# --- data normalized once, fused optimizers ----------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_cut_from_the_normalized_set_equal_per_batch_normalization(tiny, channels_last):
    x = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (300,))
    kw = dict(batch_size=64, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), seed=3, channels_last=channels_last)
    loader = cdata.BatchLoader(x, y, **kw)
    assert loader.normalized_all() is not None
    order = loader.order()
    for i, (xb, yb) in enumerate(loader):
        idx = order[i * 64:(i + 1) * 64]
        ref = (x[idx].float() / 255 - torch.tensor(kw["mean"]).view(1, 3, 1, 1)) / torch.tensor(kw["std"]).view(1, 3, 1, 1)
        torch.testing.assert_close(xb, ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(xb, loader.normalize(x[idx]))  # the same fused multiply-add, bit for bit
        assert torch.equal(yb, y[idx])
        assert xb.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_a_set_too_large_to_normalize_at_once_is_normalized_per_batch(tiny, monkeypatch):
    monkeypatch.setattr(cdata.loader, "PRENORMALIZE_BYTES", 10)
    loader = cdata.BatchLoader(tiny.train_x, tiny.train_y, batch_size=64, mean=tiny.mean, std=tiny.std, seed=1)
    assert loader.normalized_all() is None
    xb, _ = next(iter(loader))
    assert torch.equal(xb, loader.normalize(tiny.train_x[loader.order()[:64]]))


@pytest.mark.parametrize("name", ["adam", "adamw", "amsgrad", "sgd"])
def test_optimizers_are_fused_on_the_cpu_and_step_like_the_default_implementation(name):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    b = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    b.load_state_dict(a.state_dict())
    fused = make_optimizer(a, name, lr=0.01, weight_decay=0.01)
    assert fused.defaults.get("fused") is True
    plain_cls = type(fused)
    accepted = inspect.signature(plain_cls).parameters
    plain = plain_cls(b.parameters(), **{k: v for k, v in fused.defaults.items()
                                         if k in accepted and k not in ("fused", "foreach")})
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


# --- no per-step host reads --------------------------------------------------------------------

def test_the_training_loop_reads_from_the_device_only_every_n_steps(tmp_path, tiny, monkeypatch):
    """With the cadence of a GPU (the guard and the progress line read every 25 steps), an epoch of
    64 steps reads a handful of values, not one or more per step."""
    monkeypatch.setattr(trainer_mod, "DivergenceGuard", functools.partial(DivergenceGuard, sync_every=25))
    monkeypatch.setattr(trainer_mod, "host_read_every", lambda device, guard: guard.sync_every)
    reads = {"n": 0, "on": False}
    for attr in ("item", "tolist", "__int__", "__float__", "__bool__"):
        original = getattr(torch.Tensor, attr)

        def counted(self, *args, _original=original, **kwargs):
            if reads["on"]:
                reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, attr, counted)
    epoch = trainer_mod._train_epoch

    def counting_epoch(*args, **kwargs):
        reads["on"] = True
        try:
            return epoch(*args, **kwargs)
        finally:
            reads["on"] = False

    monkeypatch.setattr(trainer_mod, "_train_epoch", counting_epoch)
    summary = fit(TrainConfig(epochs=1, batch_size=8, eval_batch_size=128, optimizer="sgd", lr=0.01), tmp_path / "r",
                  dataset=tiny, progress=True)
    assert summary["test_top1"] > 0
    # 64 steps: progress reads (2 values) at steps 1, 26, 51 and 64, guard reads at 25, 50 and 64,
    # the epoch's totals (3 values) and the per-iteration curve (1 read).
    assert 0 < reads["n"] <= 2 * 4 + 3 * 3 + 3 + 1, reads["n"]


# --- curves a student can read -----------------------------------------------------------------

def test_a_one_epoch_run_records_the_loss_lr_and_momentum_per_iteration(tmp_path, tiny):
    fit(TrainConfig(**SMALL, lr=0.004, pct_start=0.25), tmp_path / "r", dataset=tiny)  # 16 steps, one-cycle
    row = load_checkpoint(tmp_path / "r" / "last.pt")["history"][0]
    it = row["iterations"]
    assert it["step"] == list(range(1, 17))
    assert sum(it["train_loss"]) / 16 == pytest.approx(row["train_loss"], rel=1e-6)  # equal windows of 32
    peak = max(range(16), key=it["lr"].__getitem__)
    assert it["lr"][peak] == pytest.approx(0.004, rel=0.05) and 2 <= peak <= 5  # one-cycle: up, then down
    assert it["lr"][-1] < 0.004 / 100
    assert it["momentum"][peak] == pytest.approx(min(it["momentum"]))  # beta1 cycles against the lr
    with open(tmp_path / "r" / "iterations.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [int(r["step"]) for r in lines] == it["step"] and {r["epoch"] for r in lines} == {"1"}
    assert Image.open(tmp_path / "r" / "curves.png").size == (1000, 800)  # with the per-iteration panels


def test_long_epochs_are_recorded_every_few_steps_and_resume_keeps_the_series(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(trainer_mod, "ITERATION_POINTS", 10)  # 64 steps an epoch: every 6th step, and the last
    cfg = TrainConfig(epochs=2, batch_size=8, eval_batch_size=128, optimizer="sgd", lr=0.01, val_split=0)
    fit(cfg, tmp_path / "r", dataset=tiny, stop_after_epoch=1)
    fit(cfg, tmp_path / "r", dataset=tiny, resume=True)
    series = iteration_series(load_checkpoint(tmp_path / "r" / "last.pt")["history"])
    assert series["step"][:3] == [6, 12, 18] and series["step"][9:12] == [60, 64, 70] and series["step"][-1] == 128
    assert len(series["step"]) == 22 and series["epoch"].count(1) == 11
    with open(tmp_path / "r" / "iterations.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 22


def test_curves_without_iterations_keep_the_per_epoch_figure(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / e, "train_top1": 0.5, "test_loss": 1 / e, "test_top1": 0.5} for e in (1, 2)]
    plot_curves(tmp_path / "c.png", rows)
    assert Image.open(tmp_path / "c.png").size == (1000, 400)


def test_smoothing_is_a_bias_corrected_moving_average():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([0.0, 1.0], beta=0.5) == pytest.approx([0.0, 0.5 / 0.75])


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, tiny, monkeypatch):
    before = torch.get_num_threads()
    cfg = TrainConfig(epochs=2, batch_size=32, eval_batch_size=128, val_split=0)
    monkeypatch.setattr(trainer_mod, "default_threads", lambda: 1)
    fit(cfg, tmp_path / "r", dataset=tiny, stop_after_epoch=1)
    seen = []
    original = trainer_mod._train_epoch

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "_train_epoch", spy)
    monkeypatch.setattr(trainer_mod, "default_threads", lambda: 2)  # the machine is idle now
    fit(cfg, tmp_path / "r", dataset=tiny, resume=True)
    assert seen == [1] and torch.get_num_threads() == before  # same summation order as before the stop
