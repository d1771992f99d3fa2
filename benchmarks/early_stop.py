#!/usr/bin/env python3
"""Early stopping against the full grid (SPEC A1-A2): worker-seconds, makespan, and whether the
full grid's best experiment is still found, for `median` and `asha`.

An event simulation, not a run: it asks the runner's own rule classes
(`mlrunner.run.early_stop.median.Median`, `.asha.Asha`) at each step of each experiment, with every
other experiment's series so far as its peers, as `early_stop/monitor.py` does; it starts no
command. 81 experiments (a 3^4 grid) on 8 workers take tasks in order. Each experiment's curve is

    value(step) = final + gap * exp(-step / tau) + noise,  steps 1..27, `seconds` per step

with `final` set by its params (plus a per-seed offset), `gap` and `tau` drawn per experiment
(slow starters cross faster ones), Gaussian noise on every step. The grid's best is the
experiment with the lowest last value when all run to the end; "found" means the rule did not
stop it. The tasks come in grid order (the low-lr third, the slow starters, first: the
worst case for asynchronous rules, whose early arrivals are judged against few peers), then
shuffled. Where Optuna is importable, the same curves, in the same order of events, also go
through `optuna.pruners.MedianPruner` (ask/tell), and the stopped sets are compared.

    python3 benchmarks/early_stop.py [--seeds 20] [--workers 8] [--hard]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import random
import re
import sys
from typing import Dict, List, Set, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlrunner.run.early_stop.monitor import make  # noqa: E402
from mlrunner.run.early_stop.settings import Settings  # noqa: E402

STEPS = 27
RULES = {
    "median": dict(rule="median", after=5, min_peers=4),
    "asha": dict(rule="asha", after=3, eta=3, min_peers=4),
}


def curves(seed: int, hard: bool = False) -> Tuple[List[List[float]], List[float]]:
    """Per experiment: its values at steps 1..STEPS and its seconds per step."""
    r = random.Random(seed)
    grid = list(itertools.product(range(3), repeat=4))  # lr, width, depth, dropout: 81
    out, seconds = [], []
    for lr, width, depth, dropout in grid:
        final = 0.2 + 0.08 * abs(lr - 1) + 0.05 * (2 - width) + 0.03 * abs(depth - 1) + 0.02 * dropout
        final += r.gauss(0, 0.02)
        spread = 1.0 if hard else 0.2  # how far the start varies apart from the final quality
        gap = r.uniform(1 - spread, 1 + spread) * (1.3 if lr == 0 else 1.0)  # low lr starts worse ...
        tau = r.uniform(4 - 2 * spread, 4 + 2 * spread) * (1.8 if lr == 0 else 1.0)  # ... ends later: curves cross
        out.append([final + gap * math.exp(-step / tau) + r.gauss(0, 0.01) for step in range(1, STEPS + 1)])
        seconds.append(1.0 + 0.5 * width)  # wider models take longer per step
    return out, seconds


def simulate(values: List[List[float]], seconds: List[float], workers: int, rule, pruner=None
             ) -> Tuple[float, float, Set[int], Set[int]]:
    """(worker-seconds, makespan, our stopped set, Optuna's stopped set) with tasks taken in order."""
    series: Dict[int, Dict[int, float]] = {}
    events: List[Tuple[float, int, int]] = []  # (time, experiment, step it reaches then)
    stopped: Set[int] = set()
    optuna_stopped: Set[int] = set()
    trials: Dict[int, object] = {}
    busy = 0.0
    pending = iter(range(len(values)))
    now = 0.0

    def start(at: float) -> None:
        task = next(pending, None)
        if task is not None:
            series[task] = {}
            if pruner is not None:
                trials[task] = pruner.ask()
            heapq.heappush(events, (at + seconds[task], task, 1))

    for _ in range(workers):
        start(0.0)
    while events:
        now, task, step = heapq.heappop(events)
        series[task][step] = values[task][step - 1]
        if pruner is not None and task not in optuna_stopped:
            if pruner.report(trials[task], values[task][step - 1], step):
                optuna_stopped.add(task)
        ended = step == STEPS
        if rule is not None and rule.decide(series[task], [s for k, s in series.items() if k != task]).stop:
            stopped.add(task)
            ended = True
        if ended:
            busy += step * seconds[task]
            if pruner is not None and task not in optuna_stopped:
                pruner.tell(trials[task], values[task][step - 1])
            start(now)
        else:
            heapq.heappush(events, (now + seconds[task], task, step + 1))
    return busy, now, stopped, optuna_stopped


class _Optuna:
    """Optuna's MedianPruner through ask/tell, given the same events (it compares with completed trials)."""

    def __init__(self, after: int, min_peers: int):
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner(
            n_startup_trials=0, n_warmup_steps=after - 1, interval_steps=1, n_min_trials=min_peers))

    def ask(self):
        return self.study.ask()

    def report(self, trial, value: float, step: int) -> bool:
        trial.report(value, step)
        if trial.should_prune():
            self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
            return True
        return False

    def tell(self, trial, value: float) -> None:
        self.study.tell(trial, value)


def _run(args: argparse.Namespace, shuffled: bool, have_optuna: bool) -> None:
    """One table over the seeds, then the totals, with tasks in grid order or shuffled."""
    pattern = re.compile("(x)")
    totals: Dict[str, List[float]] = {name: [0.0, 0.0, 0] for name in ["grid", *RULES]}
    differences: List[int] = []
    print(f"\n{'shuffled' if shuffled else 'grid'} order ({'hard' if args.hard else 'default'} curves)")
    print(f"{'seed':>4} {'grid w-s':>9} {'makespan':>8} | " + " | ".join(
        f"{name:>6} w-s makespan stopped best" for name in RULES))
    for seed in range(args.seeds):
        values, seconds = curves(seed, args.hard)
        if shuffled:
            order = list(range(len(values)))
            random.Random(seed).shuffle(order)
            values, seconds = [values[i] for i in order], [seconds[i] for i in order]
        lasts = [curve[-1] for curve in values]
        best = min(range(len(values)), key=lasts.__getitem__)
        grid_busy, grid_span, _, _ = simulate(values, seconds, args.workers, None)
        totals["grid"][0] += grid_busy
        totals["grid"][1] += grid_span
        cells = []
        for name, options in RULES.items():
            rule = make(Settings("loss", "train", pattern, pattern, **options))
            pruner = _Optuna(options["after"], options["min_peers"]) if have_optuna and name == "median" else None
            busy, span, stopped, theirs = simulate(values, seconds, args.workers, rule, pruner)
            found = best not in stopped
            totals[name][0] += busy
            totals[name][1] += span
            totals[name][2] += found
            if pruner is not None:
                differences.append(len(stopped ^ theirs))
            cells.append(f"{busy:10.0f} {span:8.0f} {len(stopped):7d} {'yes' if found else 'NO':>4}")
        print(f"{seed:4d} {grid_busy:9.0f} {grid_span:8.0f} | " + " | ".join(cells))
    grid_busy, grid_span = totals["grid"][0], totals["grid"][1]
    print(f"Over {args.seeds} seeds, 81 experiments, {args.workers} workers (simulated seconds):")
    for name, options in RULES.items():
        busy, span, found = totals[name]
        print(f"  {name:6} {options}: {grid_busy / busy:.2f}x fewer worker-seconds, makespan {grid_span / span:.2f}x "
              f"shorter, grid's best found in {found} of {args.seeds} seeds")
    if have_optuna:
        print(f"  Optuna MedianPruner (same after/min_peers, completed trials only): stopped sets differ by "
              f"{sum(differences) / len(differences):.1f} experiments per seed on average")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--hard", action="store_true",
                        help="curves whose start says little about their end (gap and tau vary 5x more)")
    args = parser.parse_args()
    try:
        import optuna  # noqa: F401
        have_optuna = True
    except ImportError:
        have_optuna = False
        print("Optuna is not installed: the MedianPruner comparison is not run")
    for shuffled in (False, True):
        _run(args, shuffled, have_optuna)


if __name__ == "__main__":
    main()
