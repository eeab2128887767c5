"""What is recorded about a message once the milter has answered it, besides the main log
line (report.py): the TIMING line, the JSON event (events.py) and the counters (metrics.py:
the Prometheus metrics and `pymavis stats` read the same ones; the milter always keeps them).

The adapter calls `after_answer` at the end of end-of-message, for every answered message
(also one answered TEMPFAIL before or without the checks), after the main log lines.
Nothing here can change or delay the answer by more than building a small dict: events
are written by their own thread, metrics are in-memory counters, and any error is logged
with the mail_id and swallowed (`after_answer` never raises).

TIMING, at `log.timing_level` (debug by default):

  TIMING [total 212 ms, cpu 35 ms] - receive: 3 (1%), lookups: 0 (0%), size: 0 (0%),
  header: 1 (0%), decode: 12 (6%), virus: 40 (19%), banned: 1 (0%), spam: 150 (71%),
  decide: 0 (0%), rest: 5 (2%)

total is MAIL FROM to the answer; receive MAIL FROM to end of data; then the pipeline's
stages in order (pipeline.Result.timings: the spam stage is the wait for spamd, which
began before decoding); rest is what is left (waiting for a worker, applying the answer).
cpu is the CPU time of the worker thread that ran the checks (decoding, parsing, our own
Python; not clamd's or spamd's), measured by `with_cpu`.

Configuration read: `log.timing_level`, `event_log` (events.py), `metrics` (metrics.py).
"""

from __future__ import annotations

import time

from . import events, metrics
from .log import LEVELS, log


def with_cpu(fn, *args, **kwargs):
    """(fn(*args, **kwargs), CPU milliseconds of this thread meanwhile)."""
    started = time.thread_time()
    value = fn(*args, **kwargs)
    return value, (time.thread_time() - started) * 1000


def timing_line(txn, result, elapsed_ms: float, cpu_ms: float | None = None) -> str:
    receive = max(0.0, txn.data_done - txn.started) * 1000 if txn.data_done else 0.0
    stages = [("receive", receive), *(result.timings if result is not None else ())]
    rest = elapsed_ms - sum(ms for _, ms in stages)
    stages.append(("rest", max(0.0, rest)))
    total = max(elapsed_ms, 1e-9)
    parts = ", ".join(f"{name}: {ms:.0f} ({ms * 100 / total:.0f}%)" for name, ms in stages)
    cpu = f", cpu {cpu_ms:.0f} ms" if cpu_ms is not None else ""
    return f"TIMING [total {elapsed_ms:.0f} ms{cpu}] - {parts}"


def after_answer(config, policy, txn, result, outcome, *, logger=None, log_id: str | None = None,
                 elapsed_ms: float | None = None, cpu_ms: float | None = None, error: str | None = None,
                 error_reason: str | None = None) -> None:
    """TIMING line, JSON event, metrics for one answered message. Never raises.
    `error` says why the message was answered without the checks' result; `error_reason`
    is its metrics label (deadline, internal)."""
    logger = logger or log
    if elapsed_ms is None:
        elapsed_ms = (time.monotonic() - txn.started) * 1000
    try:
        level = LEVELS[config["log"]["timing_level"]]
        if logger.isEnabledFor(level):
            logger.log(level, "%s", timing_line(txn, result, elapsed_ms, cpu_ms))
        if config["event_log"]["target"] != "none":
            event = events.build(config, policy, txn, result, outcome, elapsed_ms, log_id=log_id, error=error)
            events.EVENTS.emit(config, event)
        m = metrics.ACTIVE
        if m is not None:
            m.record(policy, txn, result, outcome, elapsed_ms, error_reason=error_reason)
    except Exception:   # noqa: BLE001 - observing a message must never reach into its answer
        logger.exception("mail_id %s: recording the TIMING line, event or metrics failed", txn.mail_id)
