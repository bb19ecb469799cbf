"""Stopping ``cnnlab train --nproc N`` never leaves a process writing to the run.

The launcher passes SIGINT/SIGTERM on to torchrun (started in a session of its own), waits a
bounded grace period, then kills every process below it; the fast tests use a stand-in for
torchrun whose children, like torchrun's workers, run in sessions of their own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cnnlab.train import distributed

# A stand-in for torchrun: starts two children in sessions of their own, then waits. "polite" passes
# a signal on to its children and exits; "stubborn" and its children ignore SIGTERM and SIGINT;
# "deserter" exits at once on a signal and leaves its children (which ignore it) behind.
FAKE = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    mode, folder = sys.argv[1], sys.argv[2]
    child = ("import os, signal, sys, time\\n"
             "if sys.argv[1] != 'polite':\\n"
             "    signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGINT, signal.SIG_IGN)\\n"
             "open(sys.argv[2], 'w').write(str(os.getpid()))\\n"
             "time.sleep(120)\\n")
    kids = [subprocess.Popen([sys.executable, "-c", child, mode, os.path.join(folder, f"child{i}.pid")],
                             start_new_session=True) for i in range(2)]
    if mode == "polite":
        def stop(signum, frame):
            for k in kids:
                k.send_signal(signum)
            for k in kids:
                k.wait()
            sys.exit(1)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    elif mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    while not all(os.path.exists(os.path.join(folder, f"child{i}.pid")) for i in range(2)):
        time.sleep(0.01)
    time.sleep(120)
""")


def alive(pid: int) -> bool:
    """The process runs (a zombie waiting to be reaped does not count)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


def _send_when_ready(folder: Path, signals: list[int], gap: float = 0.3) -> threading.Thread:
    def send():
        deadline = time.monotonic() + 30
        while not all((folder / f"child{i}.pid").exists() for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # the pid files are written
        for sig in signals:
            os.kill(os.getpid(), sig)  # this process runs the launcher, as a user's Ctrl-C or kill would
            time.sleep(gap)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def _children(folder: Path) -> list[int]:
    return [int((folder / f"child{i}.pid").read_text()) for i in range(2)]


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists() or threading.current_thread()
                                is not threading.main_thread(), reason="needs /proc and the main thread")


@pytest.mark.parametrize("mode, signals, grace, status", [
    ("polite", [signal.SIGTERM], 30.0, 1),  # torchrun's way: it stops its workers and exits
    ("stubborn", [signal.SIGTERM], 1.0, -signal.SIGKILL),  # nothing stops: killed after the grace period
    ("stubborn", [signal.SIGINT, signal.SIGINT], 60.0, -signal.SIGKILL),  # a second Ctrl-C kills at once
    ("deserter", [signal.SIGTERM], 30.0, -signal.SIGTERM),  # the launcher's orphans are killed too
])
def test_a_stopped_launcher_leaves_no_process_alive_and_restores_the_handlers(tmp_path, mode, signals, grace,
                                                                              status):
    before = {sig: signal.getsignal(sig) for sig in distributed.FORWARDED}
    sender = _send_when_ready(tmp_path, signals)
    t0 = time.monotonic()
    result = distributed.supervise([sys.executable, "-c", FAKE, mode, str(tmp_path)], grace=grace)
    took = time.monotonic() - t0
    sender.join(5)
    assert result == (status, signals[0])
    assert took < 20  # never the 60 s grace of the double Ctrl-C, nor the children's 120 s
    assert not any(alive(pid) for pid in _children(tmp_path))
    assert {sig: signal.getsignal(sig) for sig in distributed.FORWARDED} == before


def test_a_launch_that_ends_by_itself_returns_its_status():
    before = signal.getsignal(signal.SIGTERM)
    assert distributed.supervise([sys.executable, "-c", "raise SystemExit(3)"]) == (3, None)
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_stopped_launch_says_how_to_continue_and_exits_with_128_plus_the_signal(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "supervise", lambda cmd, grace: (1, signal.SIGTERM))
    run = tmp_path / "run"
    with pytest.raises(distributed.LaunchStopped, match="holds no checkpoint yet, so the same command") as e:
        distributed.launch(2, ["--model", "mlp", "--out", str(run)])
    assert e.value.exit_code == 143 and "stopped by SIGTERM" in str(e.value) and "\n" not in str(e.value)
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(distributed.LaunchStopped, match=f"cnnlab train --resume {run}"):
        distributed.launch(2, ["--resume", str(run)])
    monkeypatch.setattr(distributed, "supervise", lambda cmd, grace: (0, signal.SIGINT))
    assert distributed.launch(2, ["--out", str(run)]) == 0  # it had finished when the signal came
    monkeypatch.setattr(distributed, "supervise", lambda cmd, grace: (130, signal.SIGINT))
    (run / "summary.json").write_text("{}")  # the signal came while torchrun was ending a finished run
    with pytest.raises(distributed.LaunchStopped, match="after the run had finished; its results are in"):
        distributed.launch(2, ["--out", str(run)])


def test_torchrun_ends_a_stop_signal_with_its_status_instead_of_a_traceback(monkeypatch):
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from cnnlab.train import torchrun

    def stopped(argv):
        raise SignalException("got signal: 15", sigval=signal.SIGTERM)

    monkeypatch.setattr(torch.distributed.run, "main", stopped)
    assert torchrun.main([]) == 143
    monkeypatch.setattr(torch.distributed.run, "main", lambda argv: None)
    assert torchrun.main([]) == 0


# --- the real thing: torchrun and two gloo workers ----------------------------------------------

def _processes_naming(text: str) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and alive(int(name)):
                out.append(int(name))
    return out


def _lock_is_free(run: Path) -> bool:
    import fcntl

    path = run / ".lock"
    if not path.exists():
        return True
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
    return True


def _steps(run: Path) -> list[int]:
    try:
        lines = (run / "steps.csv").read_text().splitlines()[1:]
    except OSError:
        return []
    return [int(line.split(",")[0]) for line in lines if line.count(",") == 3]


@pytest.mark.slow
def test_sigterm_to_the_launcher_mid_epoch_stops_every_worker_and_the_run_resumes(tmp_path, data_root):
    from cnnlab.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    # 460 training images (512 less the validation split), global batch 2: 230 steps per epoch
    argv = [sys.executable, "-m", "cnnlab", "train", "--nproc", "2", "--model", "mlp", "--model-arg", "hidden=[16]",
            "--data", "mnist", "--epochs", "2", "--batch-size", "2", "--checkpoint-every", "20", "--log-every", "1",
            "--threads", "1", "--no-progress", "--out", str(run)]
    import cnnlab

    source = str(Path(cnnlab.__file__).parents[1])  # the cnnlab under test, also in the launched processes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)}
    launcher = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(_steps(run)) < 25 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # past the first step checkpoint (step 20), inside epoch 1
        workers = distributed.descendants(launcher.pid)
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert len(workers) >= 3  # torchrun and its two workers were running
    last_line = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in last_line and f"--resume {run}" in last_line
    assert "Traceback" not in err  # torchrun's SignalException ends as a status, not a traceback
    assert not [pid for pid in workers if alive(pid)] and not _processes_naming(str(run))
    assert _lock_is_free(run) and not (run / "summary.json").exists()
    state = load_checkpoint(run / "last.pt", training=True)
    assert state["epoch"] == 0 and state["batch_in_epoch"] > 0 and len(state["ranks"]) == 2

    resumed = subprocess.run(argv + ["--resume", str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"batch {state['batch_in_epoch']} of epoch 1" in resumed.stderr
    assert _steps(run) == list(range(1, 461))  # every step once: the stopped stretch was dropped and redone
    assert (run / "summary.json").exists() and not _processes_naming(str(run))
