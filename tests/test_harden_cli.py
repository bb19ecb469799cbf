"""No traceback for anything reachable from the CLI; run directories locked; temp files cleaned."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import tiny_dataset

from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.fileio import DirLock, atomic_write_text, clean_stale_temps
from cnnlab.train import TrainConfig, fit
from cnnlab.train import checkpoint as ckpt

MLP = dict(model="mlp", model_args={"hidden": [16]}, batch_size=32, eval_batch_size=64, optimizer="sgd", lr=0.05,
           schedule="constant")
FLAGS = ["--model", "mlp", "--model-arg", "hidden=[16]", "--batch-size", "64", "--no-progress"]


def one_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cnnlab")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--seed", str(2**64)], "seed must be in [0, 2**63)"),
    (["--seed", "-1"], "seed must be in"),
    (["--threads", "10000000000"], "threads must be in"),
    (["--device", "meta"], "unsupported device 'meta'"),
    (["--device", "mps"], "unsupported device 'mps'"),
    (["--lr", "1e-320"], "learning rate must be at least"),
    (["--gamma", "nan"], "gamma must be in (0, 1]"),
    (["--step-size", "0"], "step_size must be"),
    (["--milestones", "-1"], "milestones must be"),
    (["--pct-start", "1.5"], "pct_start"),
    (["--diverge-factor", "0.5"], "diverge_factor"),
    (["--epochs", "1" * 5000], "needs an integer"),
    (["--batch-size", str(10**12)], "batch size must be at least 1"),
    (["--batch-size", "100000", "--val-split", "0"], "larger than the 512 training images"),
    (["--model-arg", "hidden=[a"], "is not valid YAML"),
    (["--model-arg", "hidden=notalist"], "hidden"),
])
def test_bad_train_input_is_one_sentence_and_exit_2(tmp_path, data_root, capsys, argv, message):
    assert main(["train", *argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    line = one_line(capsys)
    assert message in line and len(line) < 700
    assert not (tmp_path / "r").exists()


def test_data_root_pointing_at_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", "--data-root", str(f), "--out", str(tmp_path / "r")]) == 2
    assert "--data-root must be a directory" in one_line(capsys)


@pytest.mark.parametrize("content, message", [
    (b"epochs: 1\nmodel: \xff\xfe\n", "not UTF-8"),
    (b"a: &a [*a]\n", "recursive"),
    (textwrap.dedent("""\
        a: &a ["x","x","x","x","x","x","x","x","x"]
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
        model_args: {g: [*f,*f,*f,*f,*f,*f,*f,*f,*f]}
        """).encode(), "expands to more than"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b"seed: 1.0e+30\n", "seed must be in"),
    (b"epochs: .nan\n", "needs an integer"),
    (b"1: 2\n", "config keys are names"),
    (b"model_args: {when: 2001-12-14}\n", "model_args"),
    (b"x" * (2 << 20), "larger than"),
])
def test_hostile_yaml_is_one_sentence(tmp_path, data_root, capsys, content, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "r")]) == 2
    assert message in one_line(capsys)


def test_disk_full_names_the_file_and_the_free_space(tmp_path, data_root, capsys, monkeypatch):
    from cnnlab import fileio

    real = os.fdopen

    def full(fd, mode="r", *args, **kwargs):  # every checkpoint write lands on /dev/full (ENOSPC)
        if ".pt." in os.readlink(f"/proc/self/fd/{fd}"):
            os.close(fd)
            return open("/dev/full", mode)
        return real(fd, mode, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "fdopen", full)
    assert main(["train", "--epochs", "1", *FLAGS, "--out", str(tmp_path / "r")]) == 1
    line = one_line(capsys)
    assert "the disk is full: could not write" in line and ".pt" in line and "free there" in line
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_an_internal_error_is_one_sentence_with_the_path_of_its_traceback(tmp_path, data_root, capsys, monkeypatch):
    from cnnlab.train import trainer

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(trainer, "_loop", broken)
    monkeypatch.setenv("CNNLAB_LOG_DIR", str(tmp_path / "logs"))
    assert main(["train", "--epochs", "1", *FLAGS, "--out", str(tmp_path / "r")]) == 1
    line = one_line(capsys)
    assert "internal error (ZeroDivisionError: boom)" in line
    (log,) = (tmp_path / "logs").iterdir()
    assert "Traceback" in log.read_text() and str(log) in line


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path):
    small = tiny_dataset(n_train=128, n_test=64)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.abspath("src")!r})
        from cnnlab.fileio import DirLock
        with DirLock({str(tmp_path / "r")!r}):
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CnnlabError, match=rf"in use by another cnnlab process \(PID {holder.pid}"):
            fit(TrainConfig(epochs=1, **MLP), tmp_path / "r", dataset=small)
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock file is still there, with its PID, and is taken over
    assert str(holder.pid) in (tmp_path / "r" / ".lock").read_text()
    fit(TrainConfig(epochs=1, **MLP), tmp_path / "r", dataset=small)
    assert (tmp_path / "r" / "summary.json").is_file()


def test_the_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    with DirLock(tmp_path / "d"):
        with pytest.raises(CnnlabError, match="in use"):
            DirLock(tmp_path / "d").acquire()
    with DirLock(tmp_path / "d"):  # released: free again
        pass


def test_a_lock_that_could_not_start_leaves_no_directory(tmp_path):
    with pytest.raises(CnnlabError):
        fit(TrainConfig(epochs=1, **{**MLP, "model_args": {"hidden": [0]}}), tmp_path / "r",
            dataset=tiny_dataset(n_train=64, n_test=32))
    assert not (tmp_path / "r").exists()


def test_stale_temporary_files_of_dead_writers_are_removed_on_resume(tmp_path):
    small = tiny_dataset(n_train=128, n_test=64)
    cfg = TrainConfig(epochs=2, **MLP)
    fit(cfg, tmp_path / "r", dataset=small, stop_after_epoch=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "r" / f".last.pt.{int(dead.stdout)}.abcd1234.tmp"
    legacy = tmp_path / "r" / ".best.pt.k3j4h5g6.tmp"
    live = tmp_path / "r" / f".metrics.csv.{os.getppid()}.zzzz.tmp"  # a running process's file stays
    for f in (stale, legacy, live):
        f.write_bytes(b"half")
    fit(cfg, tmp_path / "r", dataset=small, resume=True)
    assert not stale.exists() and not legacy.exists() and live.exists()
    assert clean_stale_temps(tmp_path / "r") == []


def test_a_foreign_checkpoint_is_refused_on_resume(tmp_path):
    small = tiny_dataset(n_train=128, n_test=64)
    fit(TrainConfig(epochs=2, **MLP), tmp_path / "r", dataset=small, stop_after_epoch=1)
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())
    atomic_write_text(tmp_path / "r" / "config.json", json.dumps({**recorded, "model": "lenet5"}))
    with pytest.raises(CnnlabError, match="is a checkpoint of model 'mlp' but the run .* trains 'lenet5'"):
        fit(TrainConfig(epochs=2, **MLP), tmp_path / "r", dataset=small, resume=True)


def test_a_dataset_that_changed_size_before_a_resume_is_one_sentence(tmp_path):
    cfg = TrainConfig(epochs=2, **MLP)
    fit(cfg, tmp_path / "r", dataset=tiny_dataset(n_train=128, n_test=64), stop_after_epoch=1)
    with pytest.raises(CnnlabError, match=r"training set of mnist changed since the run started \(128 images then, "
                                          r"160 now\)"):
        fit(cfg, tmp_path / "r", dataset=tiny_dataset(n_train=160, n_test=64), resume=True)


def test_fit_restores_torch_threads_and_the_global_rng(tmp_path):
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(TrainConfig(epochs=1, threads=1, deterministic=True, **MLP), tmp_path / "r",
        dataset=tiny_dataset(n_train=64, n_test=32))
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.rand(3), expected)


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from cnnlab.train.metrics import plot_curves

    before = matplotlib.get_backend()
    plot_curves(tmp_path / "c.png", [{"epoch": 1, "train_loss": 1.0, "train_top1": 0.5, "test_loss": 1.0,
                                      "test_top1": 0.5}])
    assert matplotlib.get_backend() == before and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_json_into_a_closed_pipe_is_quiet(tmp_path, data_root):
    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", *FLAGS, "--out", str(run)]) == 0
    proc = subprocess.run(f"{sys.executable} -m cnnlab eval {run} --json | head -c 10", shell=True,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.path.abspath("src")})
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_summary_refuses_zero_classes_and_takes_model_args(capsys):
    assert main(["summary", "lenet5", "--num-classes", "0"]) == 2
    assert "--num-classes must be in" in one_line(capsys)
    assert main(["summary", "mlp", "--model-arg", "hidden=[7]", "--input", "1x28x28"]) == 0
    assert "7" in capsys.readouterr().out


def test_lr_find_help_explains_its_flags_and_lists_no_training_only_ones(capsys):
    with pytest.raises(SystemExit):
        main(["lr-find", "--help"])
    out = capsys.readouterr().out
    assert "the learning rate of the first step" in out and "optimizer steps" in out
    for flag in ("--early-stopping", "--epochs", "--val-split", "--precise-bn", "--schedule"):
        assert flag not in out


def test_augment_writes_under_runs_by_default_and_warns_about_flipped_digits(tmp_path, data_root, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["augment", "--augment", "flip", "--n", "2", "--rows", "2"]) == 0
    assert (tmp_path / "runs" / "augment-mnist.png").is_file() and not (tmp_path / "augment.png").exists()
    assert "not mirror-symmetric" in capsys.readouterr().err


def test_tta_flip_on_mnist_warns(tmp_path, data_root, capsys):
    run = tmp_path / "r"
    assert main(["train", "--epochs", "1", *FLAGS, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--tta", "flip"]) == 0
    assert "not mirror-symmetric" in capsys.readouterr().err


def test_a_diverging_run_exits_3_naming_the_cause(tmp_path, data_root, capsys):
    assert main(["train", "--epochs", "1", *FLAGS, "--optimizer", "adam", "--lr", "1e6",
                 "--out", str(tmp_path / "r")]) == 3
    line = one_line(capsys)
    assert "step" in line and "learning rate" in line
    assert not (tmp_path / "r" / ckpt.BEST).exists()
