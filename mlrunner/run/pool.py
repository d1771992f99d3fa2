"""The task pool: tasks in order, and a task whose host was lost goes back to the front (H6)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Deque, Iterable, Optional

from ..plan.sweep import Task


class Pool:
    """Workers `take` tasks and report them `done`; the pool ends when nothing is left or in flight."""

    def __init__(self, tasks: Iterable[Task]):
        self._tasks = iter(tasks)
        self._returned: Deque[Task] = deque()
        self._exhausted = False
        self._in_flight = 0
        self._closed = False
        self._changed = threading.Condition()

    def take(self) -> Optional[Task]:
        """The next task; waits while the pool is empty but a task in flight may still come back."""
        with self._changed:
            while not self._closed:
                task = self._returned.popleft() if self._returned else self._next()
                if task is not None:
                    self._in_flight += 1
                    return task
                if self._in_flight == 0:
                    return None
                self._changed.wait()
            return None

    def _next(self) -> Optional[Task]:
        task = next(self._tasks, None)
        self._exhausted = task is None
        return task

    def done(self, task: Task, requeue: bool = False) -> None:
        with self._changed:
            self._in_flight -= 1
            if requeue and not self._closed:
                self._returned.appendleft(task)
            self._changed.notify_all()

    def finished(self) -> bool:
        with self._changed:
            return self._closed or (self._exhausted and not self._returned and self._in_flight == 0)

    def left(self) -> int:
        """Tasks never handed out or handed back, once every worker has stopped."""
        with self._changed:
            return len(self._returned) + sum(1 for _ in self._tasks)

    def close(self) -> None:
        """No task is handed out any more (Ctrl-C)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
