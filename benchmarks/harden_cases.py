"""Re-try the failing cases of the hardening review (trainer, checkpoints, CLI) and count how many
now behave as promised.

    PYTHONPATH=src python benchmarks/harden_cases.py

Runs on a synthetic MNIST-shaped dataset in a temporary CNNLAB_DATA (never the network), each
case through ``cnnlab.cli.main`` (or a subprocess where a pipe or a second process is the
point), and prints one line per case and the totals. A case passes when the exit status is the
promised one, stderr holds no traceback, and the case's own check holds.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnlab.cli import main  # noqa: E402
from cnnlab.train import checkpoint as ckpt  # noqa: E402

MLP = ["--model", "mlp", "--model-arg", "hidden=[16]", "--batch-size", "64", "--no-progress"]
RESULTS: list[tuple[str, bool, str]] = []
# nine aliases per level, eight levels: 9**8 = 43 million strings once expanded, in about 400 bytes
BILLION_LAUGHS = ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
    + "model_args: {z: [*h,*h,*h]}\n").encode()


def make_data(root: Path) -> None:
    rng = np.random.default_rng(0)

    def images(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 2 + (k * 22) // 9: 5 + (k * 22) // 9, 4:24] = 250
        return x, y.astype(np.int64)

    (root / "mnist").mkdir(parents=True)
    xt, yt = images(512)
    xs, ys = images(128)
    np.savez(root / "mnist" / "cnnlab-uint8.npz", train_x=xt, train_y=yt, test_x=xs, test_y=ys)


def cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def case(name: str, argv: list[str], code: int, must: str = "", check=None) -> None:
    got, err = cli(argv)
    ok = got == code and "Traceback" not in err and must in err and (check is None or check())
    RESULTS.append((name, ok, f"exit {got}: {err.strip().splitlines()[-1][:150] if err.strip() else ''}"))


def main_cases(tmp: Path) -> None:
    base = tmp / "base"
    assert cli(["train", "--epochs", "2", *MLP, "--out", str(base)])[0] == 0

    # 1. checkpoints that know they are whole
    blob = bytearray((base / "last.pt").read_bytes())
    reference = ckpt.content_digest({k: v for k, v in torch.load(base / "last.pt", weights_only=True).items()
                                     if k != "sha256"})
    rnd, altered = random.Random(0), 0
    for i in range(100):
        flipped = bytearray(blob)
        pos = rnd.randrange(len(flipped))
        flipped[pos] ^= 1 << rnd.randrange(8)
        path = tmp / "flip.pt"
        path.write_bytes(bytes(flipped))
        code, err = cli(["eval", str(path)])
        if code == 0:
            state = torch.load(path, weights_only=True)
            state.pop("sha256", None)
            altered += ckpt.content_digest(state) != reference
        elif code != 2 or "Traceback" in err:
            altered += 1
    RESULTS.append(("100 single-bit flips of last.pt: none evaluates with altered content", altered == 0,
                    f"{altered} altered"))
    state = ckpt.load_checkpoint(base / "best.pt")
    name = next(iter(state["model"]))
    nan_state = {**state, "model": {**state["model"], name: state["model"][name] * float("nan")}}
    torch.save({"format": ckpt.FORMAT, **nan_state}, tmp / "nan.pt")
    case("checkpoint with NaN weights is refused by eval", ["eval", str(tmp / "nan.pt")], 2, "non-finite")
    for key in ("config", "dataset", "model", "epoch"):
        torch.save({"format": ckpt.FORMAT, **{k: v for k, v in state.items() if k != key}}, tmp / f"no-{key}.pt")
        case(f"checkpoint without {key!r}: one sentence", ["eval", str(tmp / f"no-{key}.pt")], 2, "missing")

    # 2. last.pt and best.pt consistent under a kill between the two writes (SIGKILL in a subprocess)
    kill = tmp / "kill"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT / 'src')!r})
        from cnnlab.train import checkpoint as ckpt
        from cnnlab.train import trainer
        from cnnlab.cli import main
        real_evaluate, calls = trainer.evaluate, []
        def evaluate(model, loader, **kw):  # a test accuracy that improves every epoch: each epoch is best
            calls.append(1)
            return {{**real_evaluate(model, loader, **kw), "top1": 0.1 * len(calls)}}
        trainer.evaluate = evaluate
        real = ckpt.save_checkpoint
        def save(path, state):
            if path.name == "last.pt" and state["epoch"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, state)
        ckpt.save_checkpoint = save
        main(["train", "--epochs", "3", {", ".join(map(repr, MLP))}, "--out", {str(kill)!r}])
        """)
    subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=600)
    best_before = ckpt.load_checkpoint(kill / "best.pt")["epoch"] if (kill / "best.pt").exists() else None
    case("SIGKILL between best.pt and last.pt: resume repairs best.pt", ["train", "--resume", str(kill), "--no-progress"],
         0, "repaired", lambda: best_before == 2 and ckpt.load_checkpoint(kill / "best.pt")["epoch"] ==
         ckpt.load_checkpoint(kill / "last.pt")["best_epoch"])
    RESULTS[-1] = (RESULTS[-1][0], RESULTS[-1][1], RESULTS[-1][2] + f" (best.pt held epoch {best_before} "
                   f"while last.pt held epoch 1)")

    # 3. divergence guard
    case("--lr 1e6 with Adam exits non-zero naming divergence",
         ["train", "--epochs", "2", *MLP, "--optimizer", "adam", "--lr", "1e6", "--out", str(tmp / "d1")], 3,
         "learning rate", lambda: not (tmp / "d1" / "best.pt").exists())
    case("divergence from weight decay is blamed on weight decay",
         ["train", "--epochs", "2", *MLP, "--optimizer", "sgd", "--lr", "0.5", "--weight-decay", "10",
          "--schedule", "constant", "--out", str(tmp / "d2")], 3, "weight decay")

    # 4. no traceback
    for label, text in [("non-UTF-8 YAML", b"model: \xff\xfe\n"), ("recursive YAML", b"a: &a [*a]\n"),
                        ("seed: 1.0e+30", b"seed: 1.0e+30\n"),
                        ("billion laughs in model_args", BILLION_LAUGHS),
                        ("deeply nested YAML", b"[" * 3000 + b"]" * 3000)]:
        path = tmp / f"{label[:8].replace(' ', '_')}.yaml"
        path.write_bytes(text)
        t0 = time.perf_counter()
        case(f"{label}: one sentence", ["train", "--config", str(path), "--out", str(tmp / "y")], 2)
        RESULTS[-1] = (RESULTS[-1][0], RESULTS[-1][1] and time.perf_counter() - t0 < 30, RESULTS[-1][2])
    file = tmp / "a-file"
    file.write_text("x")
    for label, argv in [("--seed 2**64", ["--seed", str(2**64)]), ("--threads 10000000000", ["--threads", "10000000000"]),
                        ("--device meta", ["--device", "meta"]), ("--device mps", ["--device", "mps"]),
                        ("--data-root pointing at a file", ["--data-root", str(file)]),
                        ("--gamma nan (schedule onecycle)", ["--gamma", "nan"]),
                        ("--step-size 0", ["--step-size", "0"]), ("--milestones -1", ["--milestones", "-1"]),
                        ("--lr 1e-320", ["--lr", "1e-320"]), ("--batch-size 10**12", ["--batch-size", str(10**12)])]:
        case(f"{label}: refused in one sentence", ["train", *argv, "--out", str(tmp / "z")], 2, "",
             lambda: not (tmp / "z").exists())
    case("summary --num-classes 0 refused", ["summary", "lenet5", "--num-classes", "0"], 2)
    case("summary --model-arg accepted", ["summary", "mlp", "--model-arg", "hidden=[7]"], 0)

    # disk full during a checkpoint write
    from cnnlab import fileio

    real = os.fdopen

    def full(fd, mode="r", *args, **kwargs):
        if ".pt." in os.readlink(f"/proc/self/fd/{fd}"):
            os.close(fd)
            return open("/dev/full", mode)
        return real(fd, mode, *args, **kwargs)

    fileio.os.fdopen = full
    try:
        case("disk full: one sentence naming the file and free space",
             ["train", "--epochs", "1", *MLP, "--out", str(tmp / "full")], 1, "free there")
    finally:
        fileio.os.fdopen = real

    # a foreign last.pt (an mlp checkpoint in a lenet5 run)
    foreign = tmp / "foreign"
    assert cli(["train", "--epochs", "2", *MLP, "--out", str(foreign)])[0] == 0
    cfg = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**cfg, "model": "lenet5", "model_args": {}}))
    case("foreign last.pt refused on resume", ["train", "--resume", str(foreign), "--epochs", "3"], 2, "not this run")

    # a dataset that changed size before a resume (OneCycle "Tried to step")
    shrink = tmp / "shrink"
    assert cli(["train", "--epochs", "2", *MLP, "--out", str(shrink)])[0] == 0
    state = ckpt.load_checkpoint(shrink / "last.pt", training=True)
    state["epoch"], state["history"] = 1, state["history"][:1]
    ckpt.save_checkpoint(shrink / "last.pt", state)
    data = np.load(Path(os.environ["CNNLAB_DATA"]) / "mnist" / "cnnlab-uint8.npz")
    other = tmp / "data2"
    (other / "mnist").mkdir(parents=True)
    np.savez(other / "mnist" / "cnnlab-uint8.npz", train_x=data["train_x"][:300], train_y=data["train_y"][:300],
             test_x=data["test_x"], test_y=data["test_y"])
    os.environ["CNNLAB_DATA"], saved_root = str(other), os.environ["CNNLAB_DATA"]
    try:
        case("dataset changed size before a resume: one sentence", ["train", "--resume", str(shrink)], 2, "changed")
    finally:
        os.environ["CNNLAB_DATA"] = saved_root

    # 5. temp files and locks
    tmpfile_run = tmp / "tmpfile"
    assert cli(["train", "--epochs", "2", *MLP, "--out", str(tmpfile_run)])[0] == 0
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmpfile_run / f".last.pt.{dead}.abcd1234.tmp"
    stale.write_bytes(b"x" * 1000)
    state = ckpt.load_checkpoint(tmpfile_run / "last.pt", training=True)
    state["epoch"], state["history"] = 1, state["history"][:1]
    ckpt.save_checkpoint(tmpfile_run / "last.pt", state)
    case("no temp file survives a resume", ["train", "--resume", str(tmpfile_run)], 0, "", lambda: not stale.exists())
    two = tmp / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "cnnlab", "train", "--epochs", "3", *MLP, "--out", str(two)]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (two / ".lock").exists() and time.time() < deadline:
        time.sleep(0.2)
    second = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, env=env, timeout=600)
    first.wait(timeout=600)
    RESULTS.append(("two writers to one run directory: the second is refused",
                    second.returncode == 2 and "in use" in second.stderr and first.returncode == 0,
                    f"exits {first.returncode}, {second.returncode}"))

    # smaller defects
    proc = subprocess.run(f"{sys.executable} -m cnnlab eval {base} --json | head -c 20", shell=True,
                          capture_output=True, text=True, env=env, timeout=600)
    RESULTS.append(("eval --json | head: no BrokenPipeError", "Traceback" not in proc.stderr, proc.stderr[-100:]))
    case("--tta flip on MNIST warns", ["eval", str(base), "--tta", "flip"], 0, "not mirror-symmetric")
    case("--augment flip on MNIST warns", ["train", "--epochs", "1", *MLP, "--augment", "flip", "--out",
                                           str(tmp / "flip")], 0, "not mirror-symmetric")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        case("augment does not write into the cwd by default", ["augment", "--augment", "crop:2", "--n", "2",
                                                                "--rows", "2"], 0, "",
             lambda: not (tmp / "augment.png").exists() and (tmp / "runs" / "augment-mnist.png").exists())
    finally:
        os.chdir(cwd)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["lr-find", "--help"])
    text = out.getvalue()
    RESULTS.append(("lr-find help: texts for --start-lr/--end-lr/--steps, no training-only flags",
                    "first step" in text and "--early-stopping" not in text and "--epochs" not in text, ""))


def main_() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_data(tmp / "data")
        os.environ["CNNLAB_DATA"] = str(tmp / "data")
        os.environ["CNNLAB_LOG_DIR"] = str(tmp / "logs")
        main_cases(tmp)
    width = max(len(n) for n, _, _ in RESULTS)
    for name, ok, detail in RESULTS:
        print(f"{'ok  ' if ok else 'FAIL'} {name:<{width}}  {detail}")
    passed = sum(ok for _, ok, _ in RESULTS)
    print(f"\n{passed} of {len(RESULTS)} re-tried cases behave as promised")
    return 0 if passed == len(RESULTS) else 1


if __name__ == "__main__":
    raise SystemExit(main_())
