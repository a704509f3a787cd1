#!/usr/bin/env python3
"""A plain loop with one tqdm bar for the whole run and the loss in its postfix; no `\\n` until the end.

    python examples/trainers/train_tqdm.py --steps 200 --delay 0.02
    python examples/trainers/train_tqdm.py --stall-at 50     # keeps redrawing the bar at step 50

It saves out/ckpt.pt every 50 steps (a checkpoint outside checkpoints/, like many scripts).
"""

from __future__ import annotations

import argparse
import math
import os
import time

from tqdm import tqdm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--stall-at", type=int, default=None, help="stop making progress at this step")
    args = parser.parse_args()
    os.makedirs("out", exist_ok=True)
    bar = tqdm(range(1, args.steps + 1), mininterval=0, desc="train")
    for step in bar:
        loss = 2.0 * math.exp(-step / (args.steps / 5))
        bar.set_postfix(loss="%.4f" % loss)
        while args.stall_at is not None and step >= args.stall_at:
            bar.refresh()  # the bar is redrawn, the counter does not move
            time.sleep(0.05)
        if step % 50 == 0:
            with open("out/ckpt.pt.tmp", "wb") as handle:
                handle.write(b"step %d" % step)
            os.replace("out/ckpt.pt.tmp", "out/ckpt.pt")
        time.sleep(args.delay)


if __name__ == "__main__":
    main()
