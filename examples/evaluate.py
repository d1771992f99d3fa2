"""A stand-in for a test script: reads the "model" that examples/train.py saved and prints a score."""

import math
import sys

model_dir, norm, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(f"{model_dir}/model.txt") as model:
    loss = float(model.read())
bonus = {"batch": 0.0, "layer": 0.4, "new": 1.1}.get(norm, 0.0)
accuracy = 100 * (1 - math.exp(-1 / max(loss, 1e-9) / 3)) + bonus + (seed % 3) * 0.1
print(f"accuracy = {accuracy:.2f}")
