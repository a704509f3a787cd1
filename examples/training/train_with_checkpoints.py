#!/usr/bin/env python3
"""A small real training loop with checkpoints: linear regression by SGD, standard library only.

The script the original system's workflows name (`training/train_with_checkpoints.py`), so they run
as written there, on any host with python3:

    runctl aws train i-xxx training/train_with_checkpoints.py --sync-code --wait \\
        -- --epochs 3 --checkpoint-interval 1
    runctl aws train i-xxx training/train_with_checkpoints.py --sync-code --wait \\
        -- --epochs 5 --resume-from checkpoints/checkpoint_epoch_1.json

It fits y = 3x - 1 (plus noise) on generated data, reports loss through `runctl.training`, saves
`checkpoints/checkpoint_epoch_N.json` atomically every --checkpoint-interval epochs (and on a
graceful stop), resumes weights, epoch and step from --resume-from (or the RUNCTL_RESUME_FROM the
agent sets; mid-epoch from the step saved), and writes the completion marker.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

try:
    import runctl.training as rt
except ImportError:  # run from a checkout without runctl installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    import runctl.training as rt


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Linear regression by SGD, with checkpoints.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoint-interval", type=int, default=1, help="epochs between checkpoints")
    parser.add_argument("--resume-from", default=None, help="checkpoint JSON to resume from")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.02, help="seconds per step (to watch it run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.steps_per_epoch < 1 or args.batch_size < 1:
        parser.error("--epochs, --steps-per-epoch and --batch-size must be at least 1")
    if args.checkpoint_interval < 1:
        parser.error("--checkpoint-interval must be at least 1")
    if not args.learning_rate > 0:
        parser.error("--learning-rate must be positive")
    return args


def batch(rng: random.Random, size: int) -> list[tuple[float, float]]:
    points = []
    for _ in range(size):
        x = rng.uniform(-1.0, 1.0)
        points.append((x, 3.0 * x - 1.0 + rng.gauss(0.0, 0.05)))
    return points


def sgd_step(w: float, b: float, points: list[tuple[float, float]], lr: float) -> tuple[float, float, float]:
    """One gradient step of mean squared error; returns the new (w, b) and the loss before it."""
    n = len(points)
    errors = [(w * x + b) - y for x, y in points]
    loss = sum(e * e for e in errors) / n
    grad_w = 2.0 * sum(e * x for e, (x, _) in zip(errors, points)) / n  # noqa: B905 (runs on old Pythons too)
    grad_b = 2.0 * sum(errors) / n
    return w - lr * grad_w, b - lr * grad_b, loss


def save(epoch: int, step: int, w: float, b: float, loss: float, complete: bool, args: argparse.Namespace) -> Path:
    state: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "epoch_complete": complete,
        "weights": {"w": w, "b": b},
        "loss": loss,
        "learning_rate": args.learning_rate,
        "saved_at": time.time(),
    }
    path = rt.checkpoint_dir() / ("checkpoint_epoch_%d.json" % epoch)
    rt.atomic_write(path, json.dumps(state, indent=2) + "\n")
    return path


def load(path: Path) -> dict[str, Any]:
    state = json.loads(path.read_text())
    if not isinstance(state.get("epoch"), int) or not isinstance(state.get("weights"), dict):
        raise ValueError("%s is not a checkpoint of this script (no epoch or weights)" % path)
    return state


def train(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    w, b, step, first_epoch, loss = 0.0, 0.0, 0, 1, float("nan")
    done_in_first = 0  # steps of the first epoch already done (a checkpoint saved mid-epoch)
    resume = Path(args.resume_from) if args.resume_from else rt.resume_from()
    if resume is not None:
        if not resume.is_file():
            print("checkpoint %s not found (paths are relative to the project dir)" % resume, file=sys.stderr)
            return 2
        state = load(resume)
        w, b, step = float(state["weights"]["w"]), float(state["weights"]["b"]), int(state.get("step") or 0)
        first_epoch = state["epoch"] + (1 if state.get("epoch_complete", True) else 0)
        if first_epoch == state["epoch"]:  # stopped mid-epoch: go on from that step, not the epoch's start
            done_in_first = min(max(0, step - (first_epoch - 1) * args.steps_per_epoch), args.steps_per_epoch)
        print("Resumed from %s: epoch %d, step %d" % (resume, state["epoch"], step), flush=True)
    total_steps = args.epochs * args.steps_per_epoch
    last: Optional[Path] = None
    for epoch in range(first_epoch, args.epochs + 1):
        for _ in range(args.steps_per_epoch - (done_in_first if epoch == first_epoch else 0)):
            if rt.should_stop():
                last = save(epoch, step, w, b, loss, False, args)
                print("Stop requested: saved checkpoint %s" % last, flush=True)
                return 0
            step += 1
            w, b, loss = sgd_step(w, b, batch(rng, args.batch_size), args.learning_rate)
            rt.report(step=step, epoch=epoch, loss=loss, total_epochs=args.epochs, total_steps=total_steps)
            if args.delay > 0:
                time.sleep(args.delay)
        print("epoch %d/%d loss=%.5f w=%.4f b=%.4f" % (epoch, args.epochs, loss, w, b), flush=True)
        if epoch % args.checkpoint_interval == 0 or epoch == args.epochs:
            last = save(epoch, step, w, b, loss, True, args)
            print("Saved checkpoint %s" % last, flush=True)
    summary = "%d epochs, %d steps, w=%.4f b=%.4f" % (args.epochs, step, w, b)
    print("Training complete: %s" % summary, flush=True)
    rt.mark_complete(summary, checkpoint=last)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except KeyboardInterrupt:
        print("Training interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
