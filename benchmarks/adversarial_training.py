"""Adversarial training of LeNet-5 on MNIST with the library's pieces, under a wall-clock budget.

    python benchmarks/adversarial_training.py --attack fgsm-rs:0.3,0.375 --minutes 8 --out runs/lenet5-adv

Uses exactly what ``cnnlab train --adversarial`` uses (the registry's model, ``BatchLoader``,
``cnnlab.inspect.adversarial.make_training_attack``), in a plain loop: Adam with a one-cycle
learning rate over the planned steps, every batch replaced by its adversarial version (Wong et al.
2020 train on adversarial batches only). It stops at the time budget, then reports clean, FGSM and
PGD-40 accuracy at ε = 0.3 on the first ``--test`` test images, and saves the weights as a cnnlab
checkpoint (``best.pt``, loadable by ``cnnlab attack`` / ``cnnlab report``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab import data, models  # noqa: E402
from cnnlab.inspect import adversarial  # noqa: E402
from cnnlab.train import TrainConfig  # noqa: E402
from cnnlab.train import checkpoint as ckpt  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attack", default="fgsm-rs:0.3,0.375")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget")
    p.add_argument("--epochs", type=float, default=3.0, help="planned epochs (the lr schedule's length)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--test", type=int, default=1000, help="test images for the robust accuracy")
    p.add_argument("--out", default="runs/lenet5-adversarial")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    ds = data.load_dataset("mnist")
    model = models.create(args.model, num_classes=10, in_channels=1)
    loader = data.BatchLoader(ds.train_x, ds.train_y, batch_size=args.batch_size, mean=ds.mean, std=ds.std,
                              seed=args.seed, drop_last=True)
    attack = adversarial.make_training_attack(args.attack, mean=ds.mean, std=ds.std)
    total = int(args.epochs * len(loader))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total)
    start, step, epoch = time.perf_counter(), 0, 0
    budget = 60 * args.minutes
    while step < total and time.perf_counter() - start < budget:
        loader.set_epoch(epoch)
        model.train()
        for x, y in loader:
            x_adv = attack(model, x, y)
            loss = torch.nn.functional.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                print(f"step {step}/{total}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s", flush=True)
            if step >= total or time.perf_counter() - start >= budget:
                break
        epoch += 1
    train_seconds = time.perf_counter() - start
    model.eval()
    x = ds.test_x[:args.test].float() / 255
    y = ds.test_y[:args.test]
    t0 = time.perf_counter()
    clean = adversarial.robustness_curve(model, x, y, [0.0], mean=ds.mean, std=ds.std)[0].accuracy
    fgsm = adversarial.robustness_curve(model, x, y, [0.3], method="fgsm", mean=ds.mean, std=ds.std)[0].accuracy
    pgd = adversarial.robustness_curve(model, x, y, [0.3], method="pgd", steps=40, alpha=0.01,
                                       mean=ds.mean, std=ds.std)[0].accuracy
    result = {"attack": args.attack, "model": args.model, "steps": step, "epochs_done": step / len(loader),
              "train_seconds": round(train_seconds, 1), "test_images": args.test, "clean": clean,
              "fgsm_0.3": fgsm, "pgd40_0.3": pgd, "eval_seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    cfg = TrainConfig(model=args.model, data="mnist", epochs=max(1, round(args.epochs)), batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed)
    ckpt.save_checkpoint(out / ckpt.BEST, {
        "model": model.state_dict(), "config": cfg.to_dict(), "epoch": epoch, "step": step,
        "dataset": {"name": "mnist", "num_classes": 10, "input_size": [1, 28, 28]},
        "adversarial": args.attack, "result": result})
    (out / "adversarial_training.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
