"""A stand-in for a training script: "trains" for about a second and prints a metric.

It needs nothing but Python, so the example params.yaml runs on any machine, GPU or not.
"""

import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--layers", type=int, default=2)
parser.add_argument("--norm", default="batch")
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--epochs", type=float, default=1.0, help="seconds to 'train'")
parser.add_argument("--warmup", action="store_true")
parser.add_argument("--save-dir", required=True)
args = parser.parse_args()

print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")
steps = 10
loss = 2.0
for step in range(1, steps + 1):
    time.sleep(args.epochs / steps)
    loss *= 1 - min(args.lr, 0.5) * (0.5 if args.warmup and step < 3 else 1.0)
    print(f"step {step} loss {loss:.4f}", flush=True)
with open(os.path.join(args.save_dir, "model.txt"), "w") as model:
    model.write(f"{loss}\n")
