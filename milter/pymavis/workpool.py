"""Thread pools that say how busy they are: a ThreadPoolExecutor that counts the tasks
waiting for a worker and the workers running one, for the gauges metrics.py reads when
scraped (pymavis_pool_waiting, pymavis_pool_busy, pymavis_pool_workers).

Pools: "work" (adapter.App.executor, `milter.workers`: one message's checks per task, so
`waiting` is the messages that reached end of data and wait for a worker) and "spam"
(checks/spam.py's network-scan pool: one spamd call per task). Each pool is listed in
POOLS under its name when made (the newest of a name wins: one App per process).

Cost: a lock taken three times per task (submitted, started, finished). A task cancelled
before it began (spam.py drops an early spamd call that is not needed; shutdown cancels
what is queued) leaves `waiting` through the future's done callback; it never ran, so it
was never busy. Nothing here can fail a task: the counting wraps the call, whatever it
raises goes to its future as before.
"""

from __future__ import annotations

import concurrent.futures
import threading

POOLS: dict[str, Pool] = {}
_POOLS_LOCK = threading.Lock()


class Pool(concurrent.futures.ThreadPoolExecutor):
    def __init__(self, name: str, max_workers: int, thread_name_prefix: str = ""):
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix or f"pymavis-{name}")
        self.name, self.workers = name, max_workers
        self.waiting = self.busy = 0
        self._count_lock = threading.Lock()
        with _POOLS_LOCK:
            POOLS[name] = self

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        with self._count_lock:
            self.waiting += 1
        try:
            future = super().submit(self._counted, fn, args, kwargs)
        except BaseException:   # shut down: never queued
            with self._count_lock:
                self.waiting -= 1
            raise
        future.add_done_callback(self._settled)
        return future

    def _counted(self, fn, args, kwargs):
        with self._count_lock:
            self.waiting -= 1
            self.busy += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._count_lock:
                self.busy -= 1

    def _settled(self, future: concurrent.futures.Future) -> None:
        if future.cancelled():   # cancelled while queued: _counted never ran
            with self._count_lock:
                self.waiting -= 1

    def counts(self) -> tuple[int, int, int]:
        """(waiting, busy, workers) now."""
        with self._count_lock:
            return self.waiting, self.busy, self.workers
