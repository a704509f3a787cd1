#!/usr/bin/env python3
"""Real training on CPU: a small convolutional network on scikit-learn's 8x8 digits (no download).

Shows what a training script should do under runctl:

- report step, epoch, loss, total_epochs and accuracy with ``runctl.training.report``;
- check ``should_stop()`` every step, and on a stop save a checkpoint and exit 0;
- save checkpoints atomically (``checkpoints/checkpoint_epoch_N.pt``), resume from one with
  ``--resume-from`` (the epoch count continues; model and optimizer state are restored);
- write the completion marker ``training_complete.txt`` only after the final checkpoint is safe;
- exit 1 with a clear message on any failure.

    pip install torch scikit-learn numpy
    python examples/train_mnist.py
    python examples/train_mnist.py --epochs 8 --resume-from checkpoints/checkpoint_epoch_4.pt
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(description="Train a small CNN on scikit-learn's digits, on CPU.")
    parser.add_argument("--epochs", type=int, default=6, help="total number of epochs (default 6)")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpoint-interval", type=int, default=1, help="epochs between checkpoints")
    parser.add_argument("--resume-from", default=None, help="checkpoint .pt to resume from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.checkpoint_interval < 1:
        parser.error("--epochs, --batch-size and --checkpoint-interval must be at least 1")
    if args.learning_rate <= 0:
        parser.error("--learning-rate must be positive")
    return args


def load_data(seed: int) -> tuple[Any, Any, Any, Any]:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0  # 8x8, values 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    return (
        torch.from_numpy(x_train).unsqueeze(1),
        torch.from_numpy(y_train).long(),
        torch.from_numpy(x_test).unsqueeze(1),
        torch.from_numpy(y_test).long(),
    )


def build_model() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 x 4 x 4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def evaluate(model: Any, x: Any, y: Any) -> tuple[float, float]:
    import torch
    from torch.nn import functional

    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    model.train()
    return loss, accuracy


def save_checkpoint(state: dict[str, Any], epoch: int) -> Path:
    import torch

    path = rt.checkpoint_dir() / f"checkpoint_epoch_{epoch}.pt"
    with rt.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def train(args: argparse.Namespace) -> int:
    import torch
    from torch.nn import functional

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_data(args.seed)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    n_batches = (len(x_train) + args.batch_size - 1) // args.batch_size
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test images, {n_batches} batches per epoch, "
        f"{args.epochs} epochs",
        flush=True,
    )

    start_epoch, skip_batches, step = 1, 0, 0
    resume = Path(args.resume_from) if args.resume_from else rt.resume_from()
    if resume is not None:
        if not resume.is_file():
            raise FileNotFoundError(f"checkpoint to resume from does not exist: {resume}")
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if state.get("epoch_complete", True):
            start_epoch = int(state["epoch"]) + 1
        else:  # stopped mid-epoch: finish that epoch, skipping the batches already trained on
            start_epoch, skip_batches = int(state["epoch"]), int(state["batches_done"])
        print(f"Resumed from {resume}: epoch {state['epoch']}, step {step}", flush=True)

    def checkpoint_state(epoch: int, complete: bool, batches_done: int, loss: float) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "epoch_complete": complete,
            "batches_done": batches_done,
            "step": step,
            "loss": loss,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "args": {k: v for k, v in vars(args).items() if k != "resume_from"},
        }

    accuracy = float("nan")
    last_checkpoint: Optional[Path] = None
    model.train()
    for epoch in range(start_epoch, args.epochs + 1):
        started = time.monotonic()
        # The same order for an epoch whether it runs straight through or after a resume.
        generator = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
        order = torch.randperm(len(x_train), generator=generator)
        batches = order.split(args.batch_size)
        epoch_loss, seen = 0.0, 0
        for index in range(skip_batches, len(batches)):
            if rt.should_stop():
                path = save_checkpoint(checkpoint_state(epoch, False, index, epoch_loss / max(1, seen)), epoch)
                print(f"Stop requested: saved checkpoint {path}", flush=True)
                return 0
            batch = batches[index]
            optimizer.zero_grad()
            loss = functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            step += 1
            value = loss.item()
            epoch_loss += value * len(batch)
            seen += len(batch)
            rt.report(step=step, epoch=epoch, loss=value, total_epochs=args.epochs)
        skip_batches = 0

        train_loss = epoch_loss / max(1, seen)
        test_loss, accuracy = evaluate(model, x_test, y_test)
        rt.report(
            step=step,
            epoch=epoch,
            loss=train_loss,
            total_epochs=args.epochs,
            test_loss=test_loss,
            accuracy=accuracy,
        )
        print(
            f"epoch {epoch}/{args.epochs} step {step} loss={train_loss:.4f} test_loss={test_loss:.4f} "
            f"accuracy={accuracy:.4f} ({time.monotonic() - started:.1f}s)",
            flush=True,
        )
        if epoch % args.checkpoint_interval == 0 or epoch == args.epochs:
            state = checkpoint_state(epoch, True, len(batches), train_loss)
            state["accuracy"] = accuracy
            last_checkpoint = save_checkpoint(state, epoch)
            print(f"Saved checkpoint {last_checkpoint}", flush=True)

    if last_checkpoint is None:  # nothing left to train after the resume
        _, accuracy = evaluate(model, x_test, y_test)
    print(f"Training complete: {args.epochs} epochs, test accuracy {accuracy:.4f}", flush=True)
    rt.mark_complete(f"final accuracy={accuracy:.4f}", checkpoint=last_checkpoint)
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
