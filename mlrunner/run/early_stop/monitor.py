"""The runner's side of early stopping (SPEC A2): watch the running commands' logs, ask the rule
at each new step, end the commands it stops.

One thread polls every watched log a few times a second. Every experiment's series stays known to
the end of the run (ended ones too: they are the peers of those that come later). The lines after
a stop decision are not read: the recorded step is the one that decided.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from ..state import FINISHED, STOPPED, Experiment, last_run

from .asha import Asha
from .median import Median
from .rules import Decision, Series
from .settings import Settings
from .watch import LogWatch, read_all

POLL = 0.1  # seconds between two reads of the running logs


def make(settings: Settings) -> Any:
    """The rule object `settings.rule` names."""
    if settings.rule == "asha":
        return Asha(settings)
    return Median(settings)


class Monitor:
    """Watches commands by key (the experiment's output directory); `forget` says if it stopped one."""

    def __init__(self, settings: Settings, grace: float):
        """`grace`: between the SIGTERM and the SIGKILL of a stopped command's group (R8)."""
        self.settings = settings
        self.rule = make(settings)
        self.grace = grace
        self.series: Dict[str, Series] = {}
        self.decisions: Dict[str, Decision] = {}
        self._watched: Dict[str, Tuple[Any, Any]] = {}  # key -> (LogWatch or a host's feed, process)
        self._enders: Dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="early_stop", daemon=True)
        self._earlier: Iterable[Tuple[str, str]] = ()

    def start(self, tasks: Iterable[Any] = (), statuses: Callable[[Any], Dict[str, Any]] = dict,
              no_subdir: bool = False) -> None:
        """Start watching; the `tasks` whose command ended in earlier runs (their `statuses`, as the
        review read them) are read first, as peers."""
        self._earlier = earlier_logs(tasks, statuses, self.settings.command, no_subdir)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()

    def watch(self, command: str, key: str, log: str, process: Any) -> bool:
        """Start reading `log` of a command that just started, if it is the one the rule watches (its
        earlier series, if any, is replaced); whether it is."""
        if command != self.settings.command:
            return False
        s = self.settings
        source = process.follow_log(log, s.step_re, s.value_re)  # a remote host's agent reads it there
        if source is None:
            source = LogWatch(log, s.step_re, s.value_re)
        with self._lock:
            self.series[key] = {}
            self.decisions.pop(key, None)
            self._watched[key] = (source, process)
        return True

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

    def _read(self, key: str, watch: Any, process: Any) -> None:
        series = self.series[key]
        for step, value in watch.poll():
            new = step not in series
            series[step] = value
            if not new:
                continue
            decision = self.rule.decide(series, self.peers(key))
            if decision.stop:
                self.decisions[key] = decision
                ender = self._enders[key] = threading.Thread(target=process.end, args=(self.grace,),
                                                                  daemon=True)
                ender.start()
                return

    def _loop(self) -> None:
        for key, log in self._earlier:
            if self._closed.is_set():
                return
            pairs = read_all(log, self.settings.step_re, self.settings.value_re)
            with self._lock:
                self.series.setdefault(key, dict(pairs))  # one this run watches already keeps its own
        while not self._closed.wait(POLL):
            self.poll()


def earlier_logs(tasks: Iterable[Any], statuses: Callable[[Any], Dict[str, Any]], command: str,
                 no_subdir: bool) -> Iterator[Tuple[str, str]]:
    """(output, log) of each task whose `command` ended, finished or stopped, before this run: a
    resumed sweep (or --rerun-stopped) is judged against them too. `statuses(task)`: its review's."""
    for task in tasks:
        if statuses(task).get(command) not in (FINISHED, STOPPED):
            continue
        try:
            log = last_run(Experiment(task.output, task.name, shared=no_subdir).read_stat(), command).get("log")
        except Exception:  # a record that cannot be read now gives no peer; the run goes on
            continue
        if isinstance(log, str):
            yield task.output, log
