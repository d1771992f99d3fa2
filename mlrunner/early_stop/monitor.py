"""The runner's side of early stopping (SPEC A2): watch the running commands' logs, ask the rule
at each new step, end the commands it stops.

One thread polls every watched log a few times a second. Every experiment's series stays known to
the end of the run (ended ones too: they are the peers of those that come later). The lines after
a stop decision are not read: the recorded step is the one that decided.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from .rules import Decision, Series, make
from .settings import Settings
from .watch import LogWatch

POLL = 0.1  # seconds between two reads of the running logs


class Monitor:
    """Watches commands by key (the experiment's output directory); `forget` says if it stopped one."""

    def __init__(self, settings: Settings, end: Callable[[Any], None]):
        """`end(process)` ends a stopped command (R8: its group, SIGTERM, grace, SIGKILL); it may block."""
        self.settings = settings
        self.rule = make(settings)
        self.end = end
        self.series: Dict[str, Series] = {}
        self.decisions: Dict[str, Decision] = {}
        self._watched: Dict[str, Tuple[LogWatch, Any]] = {}
        self._enders: Dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="early_stop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()

    def watch(self, key: str, log: str, process: Any) -> None:
        """Start reading `log` of a command that just started (its earlier series, if any, is replaced)."""
        with self._lock:
            self.series[key] = {}
            self.decisions.pop(key, None)
            self._watched[key] = (LogWatch(log, self.settings.step_re, self.settings.value_re), process)

    def forget(self, key: str) -> Optional[Decision]:
        """The command's shell ended: read its log to the end (for its peers) and return the stop
        decision, if any, once the whole group the rule stopped is gone (the grace, then SIGKILL)."""
        with self._lock:
            watched = self._watched.pop(key, None)
            decision = self.decisions.get(key)
            ender = self._enders.pop(key, None)
            if watched is not None and decision is None:
                for step, value in watched[0].poll(final=True):
                    self.series[key][step] = value
        if ender is not None:
            ender.join()
        return decision

    def peers(self, key: str) -> List[Series]:
        return [series for other, series in self.series.items() if other != key]

    def poll(self) -> None:
        """Read each watched log's new lines and ask the rule at each new step."""
        with self._lock:
            for key, (watch, process) in list(self._watched.items()):
                if key not in self.decisions:
                    self._read(key, watch, process)

    def _read(self, key: str, watch: LogWatch, process: Any) -> None:
        series = self.series[key]
        for step, value in watch.poll():
            new = step not in series
            series[step] = value
            if not new:
                continue
            decision = self.rule.decide(series, self.peers(key))
            if decision.stop:
                self.decisions[key] = decision
                ender = self._enders[key] = threading.Thread(target=self.end, args=(process,), daemon=True)
                ender.start()
                return

    def _loop(self) -> None:
        while not self._closed.wait(POLL):
            self.poll()
