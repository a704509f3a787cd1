#!/usr/bin/env python3
"""A tiny Hugging Face Trainer run (GPT-2 built from a config, generated data, CPU, no downloads).

python examples/trainers/train_hf.py                 # unmodified: runctl reads the Trainer's log
python examples/trainers/train_hf.py --callback      # with runctl's HuggingFaceCallback
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments


class Slow(TrainerCallback):
    """Makes each step take --delay seconds, so a run lasts long enough to watch."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)


class Repeating(torch.utils.data.Dataset):
    """One token sequence, over and over: the loss falls fast."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.tokens = torch.arange(16) % 64

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.tokens, "labels": self.tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callback", action="store_true", help="use runctl's HuggingFaceCallback")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=64, help="samples per epoch (8 per step)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per step")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    callbacks: list = [Slow(args.delay)]
    output_dir = "out"
    if args.callback:
        from runctl.training import checkpoint_dir
        from runctl.training.integrations import HuggingFaceCallback

        callbacks.append(HuggingFaceCallback())
        output_dir = str(checkpoint_dir())
    training = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=GPT2LMHeadModel(config), args=training, train_dataset=Repeating(args.samples), callbacks=callbacks
    )
    trainer.train()


if __name__ == "__main__":
    main()
