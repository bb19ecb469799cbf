"""cnnlab.threads: the default thread count, the scoped setting, the probe and the collapse watch."""
from __future__ import annotations

import doctest
import itertools

import pytest
import torch

from cnnlab import threads
from cnnlab.errors import CnnlabError


def test_default_threads_uses_the_free_cores_and_never_fewer_than_one():
    assert threads.default_threads(cpus=2, load=0.3) == 2
    assert threads.default_threads(cpus=2, load=1.6) == 1
    assert threads.default_threads(cpus=2, load=11.0) == 1
    assert threads.default_threads(cpus=16, load=4.0) == 12
    # the part of the load that is this process's own does not count against it
    assert threads.default_threads(cpus=4, load=4.0, own_load=4.0) == 4


def test_default_threads_without_a_load_average_uses_every_available_core(monkeypatch):
    monkeypatch.setattr(threads, "machine_load", lambda: None)
    assert threads.default_threads(cpus=6) == 6
    assert 1 <= threads.default_threads() <= threads.available_cpus()


def test_torch_threads_sets_and_restores_the_count_even_after_an_error():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with pytest.raises(ValueError):
        with threads.torch_threads(other) as n:
            assert n == other == torch.get_num_threads()
            raise ValueError("boom")
    assert torch.get_num_threads() == before
    with threads.torch_threads(None) as n:
        assert n == before
    with pytest.raises(CnnlabError, match="received threads=0"):
        with threads.torch_threads(0):
            pass


def _fake_clock_and_step(seconds_per_thread_count):
    """A step whose duration depends on torch's current thread count, measured by a fake clock."""
    now = itertools.count()
    state = {"t": 0.0}

    def clock():
        next(now)
        return state["t"]

    def step():
        state["t"] += seconds_per_thread_count[torch.get_num_threads()]

    return clock, step


def test_probe_falls_back_to_one_thread_when_two_collapse_and_restores_torchs_setting():
    before = torch.get_num_threads()
    clock, step = _fake_clock_and_step({2: 0.030, 1: 0.010})
    probe = threads.probe_threads(step, [2, 1], clock=clock)
    assert probe.chosen == 1 and probe.first == 2
    assert probe.seconds == {2: pytest.approx(0.030), 1: pytest.approx(0.010)}
    assert probe.speedup == pytest.approx(3.0)
    assert "--threads 1" in probe.message()
    assert torch.get_num_threads() == before


def test_probe_keeps_the_first_count_unless_another_is_clearly_faster():
    clock, step = _fake_clock_and_step({2: 0.0105, 1: 0.0100})  # within the 15 % margin
    probe = threads.probe_threads(step, [2, 1], clock=clock)
    assert probe.chosen == 2 and "kept 2" in probe.message()


def test_throughput_watch_flags_a_collapse_and_says_what_to_do():
    t = {"now": 0.0}
    watch = threads.ThroughputWatch(window=5, factor=2.0, clock=lambda: t["now"])
    for dt in [0.01] * 11:
        t["now"] += dt
        assert not watch.tick()
    for dt in [0.05] * 5:
        t["now"] += dt
        watch.tick()
    assert watch.collapsed
    assert "5.0x slower" in watch.message(2) and "--threads 1" in watch.message(2)


def test_the_default_threads_docstring_example_holds():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(threads.default_threads):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0
