#!/usr/bin/env python3
"""Simulated training: no GPU, no framework, standard library only.

It behaves like a real training script under runctl (metrics, graceful stop, atomic checkpoints,
resume, completion marker, exit codes) and can be told to misbehave (NaN loss, crash, hang), so every
policy can be exercised quickly:

    python examples/train_stub.py --epochs 3 --steps-per-epoch 20 --delay 0.05
    python examples/train_stub.py --curve nan-at:25          # diverges at global step 25
    python examples/train_stub.py --fail-at-step 7           # exits 1
    python examples/train_stub.py --hang-at-step 30          # stops printing and sleeps forever
    python examples/train_stub.py --resume-from checkpoints/checkpoint_epoch_1.json

Steps are counted globally from 1. Each step prints ``epoch E/N step S loss=L``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

try:
    import runctl.training as rt
except ImportError:  # run from a checkout without runctl installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import runctl.training as rt


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulated training for testing runctl.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds per step")
    parser.add_argument("--loss-start", type=float, default=2.0)
    parser.add_argument("--loss-end", type=float, default=0.1)
    parser.add_argument(
        "--curve",
        default="exp",
        help="exp | linear | flat | nan-at:STEP (loss is NaN from global step STEP on)",
    )
    parser.add_argument("--checkpoint-interval", type=int, default=1, help="epochs between checkpoints")
    parser.add_argument("--resume-from", default=None, help="checkpoint JSON to resume from")
    parser.add_argument("--fail-at-step", type=int, default=None, help="exit 1 at this global step")
    parser.add_argument("--hang-at-step", type=int, default=None, help="sleep forever at this global step")
    parser.add_argument("--no-report", action="store_true", help="print log lines only, no metrics")
    parser.add_argument("--no-marker", action="store_true", help="do not write training_complete.txt")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.steps_per_epoch < 1:
        parser.error("--epochs and --steps-per-epoch must be at least 1")
    if args.checkpoint_interval < 1:
        parser.error("--checkpoint-interval must be at least 1")
    if args.curve not in ("exp", "linear", "flat") and not args.curve.startswith("nan-at:"):
        parser.error("--curve must be exp, linear, flat or nan-at:STEP")
    if args.curve.startswith("nan-at:"):
        try:
            int(args.curve.split(":", 1)[1])
        except ValueError:
            parser.error("--curve nan-at:STEP needs an integer STEP, e.g. nan-at:25")
    return args


def loss_at(step: int, total_steps: int, args: argparse.Namespace) -> float:
    """Loss at global step ``step`` (1-based) of ``total_steps``: from --loss-start to --loss-end."""
    curve = args.curve
    if curve.startswith("nan-at:"):
        if step >= int(curve.split(":", 1)[1]):
            return math.nan
        curve = "exp"
    progress = (step - 1) / max(1, total_steps - 1)
    start, end = args.loss_start, args.loss_end
    if curve == "flat":
        return start
    if curve == "linear" or start <= 0 or end <= 0:
        return start + (end - start) * progress
    return start * (end / start) ** progress


def save_checkpoint(epoch: int, step: int, loss: Optional[float], epoch_complete: bool) -> Path:
    state: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "loss": loss,
        "epoch_complete": epoch_complete,
        "saved_at": time.time(),
    }
    path = rt.checkpoint_dir() / f"checkpoint_epoch_{epoch}.json"
    rt.atomic_write(path, json.dumps(state, indent=2) + "\n")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = json.loads(path.read_text())
    for key in ("epoch", "step"):
        if not isinstance(state.get(key), int):
            raise ValueError(f"checkpoint {path} has no integer {key!r}")
    return state


def train(args: argparse.Namespace) -> int:
    total_steps = args.epochs * args.steps_per_epoch
    start_epoch, step = 1, 0
    loss: Optional[float] = None
    resume = Path(args.resume_from) if args.resume_from else rt.resume_from()
    if resume is not None:
        state = load_checkpoint(resume)
        step = state["step"]
        # A stop mid-epoch saves an incomplete epoch: continue it; otherwise start the next one.
        start_epoch = state["epoch"] + (1 if state.get("epoch_complete", True) else 0)
        print("Resumed from {}: epoch {}, step {}".format(resume, state["epoch"], step), flush=True)
        loss = state.get("loss")
        if start_epoch > args.epochs:
            print("Nothing left to train: checkpoint is at epoch {}".format(state["epoch"]), flush=True)

    last_checkpoint: Optional[Path] = None
    for epoch in range(start_epoch, args.epochs + 1):
        first_in_epoch = step - (epoch - 1) * args.steps_per_epoch + 1
        for _ in range(max(1, first_in_epoch), args.steps_per_epoch + 1):
            if rt.should_stop():
                path = save_checkpoint(epoch, step, loss, epoch_complete=False)
                print(f"Stop requested: saved checkpoint {path}", flush=True)
                return 0
            step += 1
            if args.hang_at_step is not None and step >= args.hang_at_step:
                while True:  # a hung process: no output, no metrics, deaf to the stop file
                    time.sleep(3600)
            if args.fail_at_step is not None and step >= args.fail_at_step:
                print(f"Simulated failure at step {step}", file=sys.stderr, flush=True)
                return 1
            if args.delay > 0:
                time.sleep(args.delay)
            loss = loss_at(step, total_steps, args)
            print(f"epoch {epoch}/{args.epochs} step {step} loss={loss:.4f}", flush=True)
            if not args.no_report:
                rt.report(step=step, epoch=epoch, loss=loss, total_epochs=args.epochs, total_steps=total_steps)
        if epoch % args.checkpoint_interval == 0 or epoch == args.epochs:
            last_checkpoint = save_checkpoint(epoch, step, loss, epoch_complete=True)
            print(f"Saved checkpoint {last_checkpoint}", flush=True)

    final = f"final loss={loss:.6f}" if loss is not None else "no steps run"
    print(f"Training complete: {args.epochs} epochs, {step} steps, {final}", flush=True)
    if not args.no_marker:
        rt.mark_complete(final, checkpoint=last_checkpoint)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except KeyboardInterrupt:
        print("Training interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        print(f"Training failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
