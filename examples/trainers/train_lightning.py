#!/usr/bin/env python3
"""A tiny Lightning run (an MLP on generated data, CPU), with the tqdm or the Rich progress bar.

    python examples/trainers/train_lightning.py --bar tqdm          # unmodified, tqdm bar
    runctl local train examples/trainers/train_lightning.py --tty -- --bar rich
    python examples/trainers/train_lightning.py --callback          # with runctl's LightningCallback

Lightning's own ModelCheckpoint saves to lightning_logs/version_N/checkpoints/ after each epoch.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


class Regression(L.LightningModule):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        time.sleep(self.delay)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callback", action="store_true", help="use runctl's LightningCallback")
    parser.add_argument("--bar", choices=("tqdm", "rich"), default="rich")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=16, help="batches per epoch")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per step")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(16 * args.batches, 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    callbacks: list = [TQDMProgressBar() if args.bar == "tqdm" else RichProgressBar()]
    if args.callback:
        from runctl.training.integrations import LightningCallback

        callbacks.append(LightningCallback())
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", callbacks=callbacks, enable_model_summary=False)
    trainer.fit(Regression(args.delay), data)


if __name__ == "__main__":
    main()
