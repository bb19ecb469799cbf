"""Learning-rate schedules: each follows its formula, warmup, epoch/iteration stepping, resume, momentum ramp."""
from __future__ import annotations

import bisect
import io
import itertools
import math

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train.schedules import SCHEDULES, make_schedule, sutskever_momentum

LR = 0.1


def sgd(lr: float = LR, momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=lr, momentum=momentum)


def run(sched, epochs: int, spe: int) -> tuple[list[float], list[float | None]]:
    """The lr and momentum used by every iteration of a run, calling the hooks as the trainer does."""
    lrs, moms = [], []
    for _ in range(epochs):
        for _ in range(spe):
            lrs.append(sched.lr)
            moms.append(sched.momentum)
            sched.optimizer.step()
            sched.after_iteration()
        sched.after_epoch()
    return lrs, moms


def lrs_of(name: str, *, epochs: int = 6, spe: int = 5, **kw) -> list[float]:
    return run(make_schedule(sgd(), name, epochs=epochs, steps_per_epoch=spe, **kw), epochs, spe)[0]


FORMULAS = {  # lr at iteration i (0-based) of a run with spe iterations per epoch, time t = i / spe epochs
    "constant": ({}, lambda i, spe, total: LR),
    "step": ({"step_size": 2, "gamma": 0.5}, lambda i, spe, total: LR * 0.5 ** ((i // spe) // 2)),
    "multistep": ({"milestones": (1, 4), "gamma": 0.3},
                  lambda i, spe, total: LR * 0.3 ** bisect.bisect_right([1, 4], i // spe)),
    "exponential": ({"gamma": 0.8}, lambda i, spe, total: LR * 0.8 ** (i / spe)),
    "inverse": ({}, lambda i, spe, total: LR / (1 + i / spe)),
    "inverse-sqrt": ({}, lambda i, spe, total: LR / math.sqrt(1 + i)),
    "cosine": ({"eta_min": 0.01}, lambda i, spe, total: 0.01 + (LR - 0.01) * (1 + math.cos(math.pi * i / total)) / 2),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_schedule_follows_its_formula_per_iteration(name):
    kw, formula = FORMULAS[name]
    lrs = lrs_of(name, **kw)
    assert lrs == pytest.approx([formula(i, 5, 30) for i in range(30)], rel=1e-9)


def test_inverse_is_the_lectures_c_over_epoch_counted_from_one():
    lrs = lrs_of("inverse", interval="epoch", epochs=4, spe=3)
    assert lrs == pytest.approx([LR / k for k in (1, 2, 3, 4) for _ in range(3)])


def test_inverse_sqrt_is_the_lectures_c_over_root_iteration_counted_from_one():
    lrs = lrs_of("inverse-sqrt", epochs=2, spe=50)
    assert lrs == pytest.approx([LR / math.sqrt(k) for k in range(1, 101)])


def test_onecycle_rises_to_lr_then_anneals_with_momentum_cycled_the_other_way():
    opt = sgd()
    lrs, moms = run(make_schedule(opt, "onecycle", epochs=4, steps_per_epoch=10, pct_start=0.25), 4, 10)
    peak = lrs.index(max(lrs))
    assert peak == 9  # OneCycleLR's rise ends at step pct * total - 1
    assert lrs[0] == pytest.approx(LR / 25) and lrs[peak] == pytest.approx(LR)
    assert lrs[-1] == pytest.approx(LR / 25 / 1e4)
    assert all(a < b for a, b in itertools.pairwise(lrs[:peak + 1]))
    assert all(a > b for a, b in itertools.pairwise(lrs[peak:]))
    assert moms[0] == pytest.approx(0.9) and moms[peak] == pytest.approx(0.8) and moms[-1] == pytest.approx(0.9)


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 7])
def test_onecycle_survives_very_short_runs(total):
    lrs = lrs_of("onecycle", epochs=total, spe=1, pct_start=0.25)
    assert len(lrs) == total and all(math.isfinite(v) and 0 < v <= LR + 1e-12 for v in lrs)


def test_onecycle_without_momentum_leaves_momentum_alone():
    opt = sgd(momentum=0.0)
    _, moms = run(make_schedule(opt, "onecycle", epochs=2, steps_per_epoch=8), 2, 8)
    assert set(moms) == {0.0}


def test_warmup_rises_from_near_zero_to_lr_then_follows_the_schedule():
    spe, epochs, warm = 10, 5, 15  # warmup=1.5 epochs = 15 iterations
    lrs = lrs_of("cosine", epochs=epochs, spe=spe, warmup=1.5)
    assert lrs[:warm + 1] == pytest.approx([LR * (s + 1) / (warm + 1) for s in range(warm + 1)])
    assert lrs[0] < LR / 10 and lrs[warm] == pytest.approx(LR)
    rest = epochs * spe - warm  # the cosine spans what is left of the run
    assert lrs[warm:] == pytest.approx([LR * (1 + math.cos(math.pi * j / rest)) / 2 for j in range(rest)])


def test_warmup_keeps_step_milestones_at_epochs_of_the_run():
    lrs = lrs_of("multistep", epochs=6, spe=4, warmup=1, milestones=(3, 5), gamma=0.1)
    per_epoch = [lrs[e * 4] for e in range(6)]
    assert per_epoch == pytest.approx([LR / 5, LR, LR, LR * 0.1, LR * 0.1, LR * 0.01])


def test_warmup_in_front_of_inverse_starts_the_decay_at_its_end():
    lrs = lrs_of("inverse", epochs=4, spe=1, interval="epoch", warmup=1)
    assert lrs == pytest.approx([LR / 2, LR, LR / 2, LR / 3])


@pytest.mark.parametrize("name", [n for n in SCHEDULES if n != "onecycle"])
def test_epoch_interval_holds_the_lr_for_an_epoch_at_the_iteration_schedules_boundary_value(name):
    kw = {**FORMULAS[name][0], "epochs": 6, "spe": 5} if name in FORMULAS else {"epochs": 6, "spe": 5}
    per_iter = lrs_of(name, **kw)
    per_epoch = lrs_of(name, interval="epoch", **kw)
    for e in range(6):
        assert per_epoch[e * 5:(e + 1) * 5] == pytest.approx([per_iter[e * 5]] * 5)


def test_lr_stays_at_the_last_steps_value_when_hooks_are_called_past_the_run():
    sched = make_schedule(sgd(), "onecycle", epochs=1, steps_per_epoch=6)
    lrs, _ = run(sched, 1, 6)
    for _ in range(5):
        sched.after_iteration()
        sched.after_epoch()
    assert sched.lr == lrs[-1]


RESUMABLE = [
    ("constant", {"warmup": 0.5}), ("step", {"step_size": 2}), ("multistep", {"milestones": (2, 3), "warmup": 1}),
    ("exponential", {"gamma": 0.7}), ("inverse", {}), ("inverse-sqrt", {"warmup": 0.4}),
    ("cosine", {"warmup": 1, "eta_min": 1e-3, "momentum_ramp": 0.95}), ("onecycle", {}),
]


@pytest.mark.parametrize("interval", ["iteration", "epoch"])
@pytest.mark.parametrize("name, kw", RESUMABLE)
def test_state_dict_round_trip_through_torch_save_continues_the_same_sequence(name, kw, interval):
    epochs, spe, cut = 4, 7, 13  # interrupt mid-epoch
    if interval == "epoch" and kw.get("warmup", 0) != int(kw.get("warmup", 0)):
        kw = {**kw, "warmup": 1}
    kw = {**kw, "epochs": epochs, "steps_per_epoch": spe, "interval": interval}
    opt = sgd()
    lrs, moms = run(make_schedule(opt, name, **kw), epochs, spe)

    opt = sgd()
    sched = make_schedule(opt, name, **kw)
    first, first_moms = [], []
    for i in range(cut):
        first.append(sched.lr)
        first_moms.append(sched.momentum)
        opt.step()
        sched.after_iteration()
        if (i + 1) % spe == 0:
            sched.after_epoch()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "schedule": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    opt2 = sgd()
    sched2 = make_schedule(opt2, name, **kw)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["schedule"])
    rest, rest_moms = [], []
    for i in range(cut, epochs * spe):
        rest.append(sched2.lr)
        rest_moms.append(sched2.momentum)
        opt2.step()
        sched2.after_iteration()
        if (i + 1) % spe == 0:
            sched2.after_epoch()
    assert first + rest == lrs  # bit-exact
    assert first_moms + rest_moms == moms


def test_schedule_state_alone_restores_the_lr():
    kw = {"epochs": 3, "steps_per_epoch": 4}
    sched = make_schedule(sgd(), "cosine", **kw)
    for _ in range(5):
        sched.optimizer.step()
        sched.after_iteration()
    fresh = make_schedule(sgd(), "cosine", **kw)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lr == sched.lr and fresh.lr < LR


def test_loading_another_schedules_state_is_refused():
    state = make_schedule(sgd(), "cosine", epochs=2, steps_per_epoch=3).state_dict()
    with pytest.raises(CnnlabError, match="saved schedule is 'cosine'"):
        make_schedule(sgd(), "step", epochs=2, steps_per_epoch=3).load_state_dict(state)


def test_sutskever_momentum_ramp_values():
    # mu_t = min(1 - 2^(-1 - log2(floor(t/250) + 1)), mu_max)
    assert [sutskever_momentum(t, 0.99) for t in (0, 249, 250, 500, 750, 1750)] == \
        pytest.approx([0.5, 0.5, 0.75, 1 - 1 / 6, 0.875, 0.9375])
    assert sutskever_momentum(1750, 0.9) == 0.9


def test_momentum_ramp_sets_sgd_momentum_per_iteration_whatever_the_interval():
    sched = make_schedule(sgd(), "constant", epochs=10, steps_per_epoch=200, interval="epoch", momentum_ramp=0.9)
    _, moms = run(sched, 10, 200)
    assert [moms[t] for t in (0, 250, 750, 1750)] == pytest.approx([0.5, 0.75, 0.875, 0.9])
    assert sched.optimizer.param_groups[0]["momentum"] == 0.9


def test_momentum_ramp_sets_adams_beta1():
    opt = torch.optim.Adam(nn.Linear(3, 2).parameters(), lr=1e-3, betas=(0.9, 0.999))
    sched = make_schedule(opt, "constant", epochs=2, steps_per_epoch=300, momentum_ramp=0.95)
    _, moms = run(sched, 2, 300)
    assert moms[0] == 0.5 and moms[250] == 0.75
    assert opt.param_groups[0]["betas"] == pytest.approx((1 - 1 / 6, 0.999))  # t = 600 after the run


@pytest.mark.parametrize("name, kw, fragment", [
    ("cosinus", {}, "unknown schedule 'cosinus'; did you mean 'cosine'"),
    ("cosine", {"interval": "batch"}, "unknown schedule interval 'batch'"),
    ("step", {"gamma": 0.0}, "received gamma=0.0"),
    ("exponential", {"gamma": 1.5}, "received gamma=1.5"),
    ("step", {"step_size": 0}, "received step_size=0"),
    ("step", {"step_size": 1, "warmup": 1}, "after the warmup .* received step_size=1"),
    ("multistep", {"milestones": (3, 2)}, r"received milestones=\(3, 2\)"),
    ("multistep", {"milestones": (2, 6)}, r"received milestones=\(2, 6\)"),
    ("multistep", {"milestones": ()}, r"received milestones=\(\)"),
    ("multistep", {"milestones": (1, 3), "warmup": 1}, r"received milestones=\(1, 3\)"),
    ("cosine", {"warmup": -1}, "received warmup=-1"),
    ("cosine", {"warmup": 6}, "received warmup=6"),
    ("cosine", {"warmup": 0.5, "interval": "epoch"}, "whole number of epochs; received warmup=0.5"),
    ("cosine", {"eta_min": -0.1}, "received eta_min=-0.1"),
    ("cosine", {"eta_min": LR}, f"received eta_min={LR}"),
    ("onecycle", {"pct_start": 0.0}, "received pct_start=0.0"),
    ("onecycle", {"pct_start": 1.0}, "received pct_start=1.0"),
    ("onecycle", {"warmup": 1}, "received warmup=1"),
    ("onecycle", {"momentum_ramp": 0.9}, "received momentum_ramp=0.9"),
    ("constant", {"momentum_ramp": 1.0}, "received momentum_ramp=1.0"),
    ("constant", {"momentum_ramp": 0.0}, "received momentum_ramp=0.0"),
    ("constant", {"epochs": 0}, "received epochs=0"),
    ("constant", {"steps_per_epoch": 0}, "received steps_per_epoch=0"),
])
def test_bad_schedule_settings_are_refused_with_the_received_value(name, kw, fragment):
    kw = {"epochs": 6, "steps_per_epoch": 4, **kw}
    with pytest.raises(CnnlabError, match=fragment):
        make_schedule(sgd(), name, **kw)


def test_momentum_ramp_needs_an_optimizer_with_momentum():
    opt = torch.optim.Adagrad(nn.Linear(3, 2).parameters(), lr=0.1)
    with pytest.raises(CnnlabError, match="received Adagrad"):
        make_schedule(opt, "constant", epochs=2, steps_per_epoch=3, momentum_ramp=0.9)


# --- milestones and step sizes as fractions of the run -------------------------------------------

@pytest.mark.parametrize("interval", ["iteration", "epoch"])
def test_fractional_milestones_are_the_same_epochs_of_any_run_length(interval):
    for epochs, whole in ((8, (4, 6)), (4, (2, 3)), (12, (6, 9))):
        assert lrs_of("multistep", epochs=epochs, interval=interval, milestones=(0.5, 0.75), gamma=0.1) == \
            lrs_of("multistep", epochs=epochs, interval=interval, milestones=whole, gamma=0.1)


def test_fractional_milestones_may_fall_inside_an_epoch_with_iteration_updates():
    lrs = lrs_of("multistep", epochs=2, spe=5, milestones=(0.3,), gamma=0.1)  # step 3 of 10
    assert lrs == pytest.approx([LR] * 3 + [LR * 0.1] * 7)


def test_a_fractional_step_size_is_a_period_of_the_run():
    assert lrs_of("step", epochs=8, step_size=0.25, gamma=0.5) == lrs_of("step", epochs=8, step_size=2, gamma=0.5)
    lrs = lrs_of("step", epochs=1, spe=10, step_size=0.3, gamma=0.5)  # drops at steps 3, 6 and 9
    assert lrs == pytest.approx([LR] * 3 + [LR / 2] * 3 + [LR / 4] * 3 + [LR / 8])


@pytest.mark.parametrize("name, kw, fragment", [
    ("multistep", {"milestones": (0.5, 3)}, "not a mix"),
    ("multistep", {"milestones": (0.75, 0.5)}, "fractions of the run must be increasing"),
    ("multistep", {"milestones": (0.5, 0.6), "interval": "epoch", "epochs": 2}, "distinct epochs"),
    ("multistep", {"milestones": (0.1,), "warmup": 1}, "after the warmup"),
    ("step", {"step_size": 1.5}, "received step_size=1.5"),
    ("step", {"step_size": 0.1, "warmup": 1}, "after the warmup"),
])
def test_bad_fractional_schedules_are_refused(name, kw, fragment):
    kw = {"epochs": 6, **kw}
    with pytest.raises(CnnlabError, match=fragment):
        make_schedule(sgd(), name, steps_per_epoch=5, **kw)


def test_config_takes_fractions_keeps_whole_epochs_and_refuses_a_mix():
    from cnnlab.train import TrainConfig

    cfg = TrainConfig().updated({"milestones": "0.5,0.75", "step_size": "0.3"}).validate()
    assert cfg.milestones == [0.5, 0.75] and cfg.step_size == 0.3
    cfg = TrainConfig().updated({"milestones": "30,60", "step_size": "20"}).validate()
    assert cfg.milestones == [30, 60] and all(type(m) is int for m in cfg.milestones) and type(cfg.step_size) is int
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # old configs (whole epochs) read back unchanged
    for values, fragment in (({"milestones": "0.5,30"}, "not a mix"), ({"step_size": "1.5"}, "step_size must be"),
                             ({"milestones": "0.75,0.5"}, "milestones must be increasing"),
                             ({"step_size": "0"}, "step_size must be")):
        with pytest.raises(CnnlabError, match=fragment):
            TrainConfig().updated(values).validate()


def test_a_run_with_fractional_milestones_cannot_be_extended(tmp_path):
    from cnnlab.train import TrainConfig
    from cnnlab.train.restore import check_resume_config

    saved = TrainConfig(epochs=4, schedule="multistep", milestones=[0.5])
    with pytest.raises(CnnlabError, match="fractions of the run"):
        check_resume_config(saved, TrainConfig(epochs=8, schedule="multistep", milestones=[0.5]), tmp_path)
    whole = TrainConfig(epochs=4, schedule="multistep", milestones=[2])
    check_resume_config(whole, TrainConfig(epochs=8, schedule="multistep", milestones=[2]), tmp_path)  # allowed
