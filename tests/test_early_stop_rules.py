"""The early-stopping rules, settings and log reader as pure units (SPEC A1)."""

from __future__ import annotations

import doctest
import re

import pytest

from mlrunner.run.early_stop import asha, median, rules, settings, watch
from mlrunner.run.early_stop.asha import Asha, rung_of
from mlrunner.run.early_stop.median import Median
from mlrunner.run.early_stop.settings import Settings
from mlrunner.run.early_stop.watch import LINE_LIMIT, LogWatch

STEP, VALUE = re.compile(r"epoch (\d+)"), re.compile(r"val_loss ([\d.]+)")


def _settings(**kwargs) -> Settings:
    return Settings("val_loss", "train", VALUE, STEP, **kwargs)


@pytest.mark.parametrize("module", [asha, median, rules, settings, watch])
def test_A1_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_A1_median_uses_best_so_far_against_peers_at_that_step():
    rule = Median(_settings(after=2, min_peers=3))
    peers = [{1: 1.0, 2: 0.5, 3: 0.4}, {1: 1.0, 2: 0.6, 3: 0.5}, {1: 1.0, 2: 0.7}, {1: 0.9}]
    # step 2: peers 0.5, 0.6, 0.7 -> median 0.6; our best 0.65 is worse
    decision = rule.decide({1: 2.0, 2: 0.65}, peers)
    assert decision.stop and decision.step == 2
    assert decision.why == {"rule": "median", "value": 0.65, "median": 0.6, "peers": 3}
    # the best so far counts, not the last value: 0.55 at step 1 beats the median at step 2
    assert not rule.decide({1: 0.55, 2: 0.65}, peers).stop
    # step 3: only two peers reported it, fewer than min_peers: no decision
    assert not rule.decide({1: 2.0, 2: 0.9, 3: 0.9}, peers).stop
    # before `after`: never
    assert not rule.decide({1: 9.0}, peers).stop


def test_A1_median_max_mode_and_every():
    rule = Median(_settings(mode="max", after=1, every=2, min_peers=1))
    peers = [{1: 0.8, 2: 0.8, 3: 0.8}]
    assert rule.decide({1: 0.1}, peers).stop  # step 1 = after: decided
    assert not rule.decide({1: 0.9, 2: 0.1}, peers).stop  # best 0.9 beats 0.8 anyway
    assert not rule.decide({2: 0.1}, peers).stop  # step 2 is not after + k*every
    assert rule.decide({3: 0.1}, peers).stop


def test_A1_asha_rungs_and_top_fraction():
    rule = Asha(_settings(rule="asha", after=1, eta=3, min_peers=2))
    assert [rung_of(s, 1, 3) for s in (1, 2, 3, 8, 9, 27)] == [1, 1, 3, 3, 9, 27]
    peers = [{1: 0.1}, {1: 0.2}, {1: 0.3}, {1: 0.4}, {1: 0.5}]
    # six at rung 1: 6 // 3 = 2 go on: 0.15 is second, 0.25 third
    assert not rule.decide({1: 0.15}, peers).stop
    stopped = rule.decide({1: 0.25}, peers)
    assert stopped.stop and stopped.why["keep"] == 2 and stopped.why["reached"] == 6 and stopped.why["cutoff"] == 0.2
    # steps between rungs are never decided
    assert not rule.decide({1: 0.0, 2: 9.0}, peers).stop
    # five at rung 1: only the best goes on (5 / 3 < 2)
    assert rule.decide({1: 0.25}, peers[1:]).stop and not rule.decide({1: 0.15}, peers[1:]).stop
    # too few peers at a rung: promoted
    assert not rule.decide({1: 9.0}, peers[:1]).stop


def test_A1_asha_rung_value_is_best_until_first_step_past_it():
    rule = Asha(_settings(rule="asha", after=2, eta=2, min_peers=1))
    # steps 1, 3: rung 2 is passed at step 3; the best up to there is 0.3
    assert not rule.decide({1: 0.3, 3: 0.5}, [{2: 0.4}]).stop
    assert rule.decide({1: 0.6, 3: 0.5}, [{2: 0.4}]).stop


def test_A1_watch_splits_carriage_returns_and_bounds_lines(tmp_path):
    log = tmp_path / "log"
    reader = LogWatch(str(log), STEP, VALUE)
    assert reader.poll() == []  # no file yet
    with open(log, "w") as stream:
        stream.write("epoch 1 [=>   ] 10%\repoch 1 [====>] 90%\repoch 1 val_loss 0.9\n")
        stream.write("x" * (5 * LINE_LIMIT))  # a huge line with no end yet
    assert reader.poll() == [(1, 0.9)]
    assert len(reader.partial) <= LINE_LIMIT
    with open(log, "a") as stream:
        stream.write("\nepoch 2\rval_loss 0.8\repoch 3 val_loss 0.7")  # a value on a line of its own
    assert reader.poll() == [(2, 0.8)]
    assert reader.poll(final=True) == [(3, 0.7)]  # the last, unended line, once the command ended


def _bad(tmp_path, text: str):
    from mlrunner.plan import config
    from mlrunner.errors import UserError
    path = tmp_path / "params.yaml"
    path.write_text("template: {train: 'python3 t.py'}\n"
                    "metric: {val_loss: {command: train, regex: 'val_loss ([\\d.]+)'}}\n" + text)
    with pytest.raises(UserError) as caught:
        config.load(str(path))
    return str(caught.value)


@pytest.mark.parametrize("text, message", [
    ("early_stop: {metric: val_los, step: 'epoch (\\d+)'}", "unknown metric 'val_los' (did you mean 'val_loss'?)"),
    ("early_stop: {metric: val_loss, step: 'epoch \\d+'}", "needs a (group)"),
    ("early_stop: {metric: val_loss, step: 'epoch (\\d+'}", "bad 'step' regex"),
    ("early_stop: {metric: val_loss, step: 'epoch (\\d+)', after: 0}", "'after' must be an integer >= 1"),
    ("early_stop: {metric: val_loss, step: 'epoch (\\d+)', aftr: 2}", "unknown key 'aftr' (did you mean 'after'?)"),
    ("early_stop: {metric: val_loss, step: 'epoch (\\d+)', rule: ashа}", "unknown rule"),
    ("early_stop: {metric: val_loss, step: 'epoch (\\d+)', mode: minimum}", "'mode' must be min or max"),
    ("early_stop: {metric: val_loss, step: 'epoch (\\d+)', rule: asha, eta: 1}", "'eta' must be an integer >= 2"),
    ("early_stop: {metric: val_loss, step: 'epoch (\\d+)', min_peers: true}", "'min_peers' must be an integer"),
    ("early_stop: {metric: val_loss}", "'step' is required"),
    ("early_stop: [val_loss]", "'early_stop' must be a mapping"),
])
def test_A1_bad_settings_are_one_line_at_their_line(tmp_path, text, message):
    error = _bad(tmp_path, text)
    assert message in error and "\n" not in error
    assert error.startswith(f"{tmp_path / 'params.yaml'}:3: ")
