"""Prometheus metrics (prometheus-client) on a loopback HTTP endpoint: `metrics.listen`
("127.0.0.1:9911", "[::1]:9911"; null: off). A non-loopback address is a configuration
error unless `metrics.allow_non_loopback` is true: the counters name banks, and scrapes
are not authenticated.

What is exported (names and labels in docs/observability.md): messages by action,
content category and bank; recipients by action and category; message bytes; check
errors by check and reason; per-stage latency histograms (receive, each check, decide,
quarantine, spamd, total); and, read when scraped, messages in flight (App.in_flight),
quarantine stores kept and failed (keep.COUNTS), spam verdict cache hits, misses and
shared calls, and the JSON event log's written, dropped and failed counts.

Failure: an address that cannot be bound is logged at start and the milter runs without
metrics (mail matters more than its counters); `record` never raises into the milter
(observe.py catches). A reload does not move the endpoint: a new `metrics.listen` takes
effect at the next start.

Configuration read: `metrics` (listen, allow_non_loopback) at start; `spam_cache` of the
running configuration when scraped (its cache is the process-wide one for those values).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__, events, keep
from .log import log
from .outcome import Action

# Seconds; a message takes from about a millisecond (nothing to scan) to minutes (the scan
# deadline, 240 s by default), so the buckets span both.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                 60.0, 120.0, 300.0)
SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


class Metrics:
    """The registry, the instruments, and the HTTP endpoint when served."""

    def __init__(self, *, in_flight=lambda: 0, spam_cache=lambda: None, event_log=None):
        r = self.registry = CollectorRegistry()
        self.messages = Counter("pymavis_messages", "Messages answered, by the milter's answer (pass, hold, "
                                "reject, discard, tempfail), content type and bank path",
                                ("action", "ccat", "bank"), registry=r)
        self.recipients = Counter("pymavis_recipients", "Recipients, by their action (PASS, REJECT, BOUNCE, "
                                  "DISCARD, HOLD, TEMPFAIL) and main content category", ("action", "ccat"),
                                  registry=r)
        self.bytes = Counter("pymavis_message_bytes", "Bytes of the messages answered", registry=r)
        self.sizes = Histogram("pymavis_message_size_bytes", "Size of the messages answered", buckets=SIZE_BUCKETS,
                               registry=r)
        self.check_errors = Counter("pymavis_check_errors", "Checks that could not do their work, by check and "
                                    "reason (failed: UNCHECKED or SPAM CHECK FAILED; tempfail; deadline; internal)",
                                    ("check", "reason"), registry=r)
        self.stages = Histogram("pymavis_stage_seconds", "Time per stage of one message (receive: MAIL FROM to end "
                                "of data; total: MAIL FROM to the answer)", ("stage",), buckets=STAGE_BUCKETS,
                                registry=r)
        info = Gauge("pymavis_build_info", "pymavis version", ("version",), registry=r)
        info.labels(__version__).set(1)
        r.register(_ReadAtScrape(in_flight, spam_cache, event_log))
        ProcessCollector(registry=r)
        self.server = None
        self._thread = None

    def record(self, policy, txn, result, outcome, elapsed_ms: float, *, error_reason: str | None = None) -> None:
        """Count one answered message (result None: the checks never finished)."""
        bank = policy.bank_path_str if policy is not None else "DEFAULT"
        self.messages.labels(events.message_action(outcome), events.content_type(outcome), bank).inc()
        decided = {d.rcpt: d for d in outcome.decisions}
        for rcpt in txn.rcpts:
            d = decided.get(rcpt.addr)
            if d is None:
                action = "PASS" if outcome.action is Action.CONTINUE else outcome.action.name
                self.recipients.labels(action, "MTA").inc()
            else:
                self.recipients.labels(events.recipient_action(outcome, d), events.CONTENT_TYPE_NAMES[d.main]).inc()
        self.bytes.inc(txn.size)
        self.sizes.observe(txn.size)
        if error_reason:
            self.check_errors.labels("pipeline", error_reason).inc()
        if outcome.lookup_error:
            self.check_errors.labels("lookup", "failed").inc()
        if outcome.quarantine_failed:
            self.check_errors.labels("quarantine", "failed").inc()
        if txn.data_done:
            self.stages.labels("receive").observe(max(0.0, txn.data_done - txn.started))
        if result is not None:
            for r in result.checks:
                if r.could_not_check:
                    self.check_errors.labels(r.name, "failed").inc()
                elif r.tempfail:
                    self.check_errors.labels(r.name, "tempfail").inc()
                elif r.spam is not None and r.spam.note.startswith("SPAM CHECK FAILED"):
                    self.check_errors.labels(r.name, "failed").inc()
                if r.spam is not None and r.spam.verdict is not None and not r.spam.verdict.cached:
                    self.stages.labels("spamd").observe(r.spam.verdict.elapsed_ms / 1000)
            for stage, ms in result.timings:
                self.stages.labels(stage).observe(ms / 1000)
        self.stages.labels("total").observe(elapsed_ms / 1000)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (a daemon thread); the port bound. Raises OSError."""
        self.server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _ReadAtScrape:
    """Values owned elsewhere, read when Prometheus asks."""

    def __init__(self, in_flight, spam_cache, event_log):
        self.in_flight, self.spam_cache, self.event_log = in_flight, spam_cache, event_log

    def collect(self):
        g = GaugeMetricFamily("pymavis_messages_in_flight", "Messages between end of data and the answer")
        g.add_metric((), self.in_flight())
        yield g
        q = CounterMetricFamily("pymavis_quarantine_stores", "Blocked messages kept before the answer, and "
                                "keeps that failed (answered TEMPFAIL)", labels=("result",))
        q.add_metric(("kept",), keep.COUNTS.kept)
        q.add_metric(("failed",), keep.COUNTS.failed)
        yield q
        cache = self.spam_cache()
        if cache is not None:
            c = CounterMetricFamily("pymavis_spam_cache", "spamd verdicts reused (hit), asked for (miss), or "
                                    "shared with a copy checked at the same time (joined)", labels=("result",))
            c.add_metric(("hit",), cache.hits)
            c.add_metric(("miss",), cache.misses)
            c.add_metric(("joined",), cache.joined)
            yield c
        if self.event_log is not None:
            e = CounterMetricFamily("pymavis_events", "JSON events written, dropped (queue full) and failed "
                                    "(the sink refused them)", labels=("result",))
            e.add_metric(("written",), self.event_log.written)
            e.add_metric(("dropped",), self.event_log.dropped)
            e.add_metric(("failed",), self.event_log.failed)
            yield e


ACTIVE: Metrics | None = None


def start(config, *, in_flight=lambda: 0, current_config=None) -> Metrics | None:
    """Serve metrics if `metrics.listen` says so; None when off or the address cannot be bound."""
    global ACTIVE
    listen = config["metrics"]["listen"]
    if listen is None:
        return None
    from .checks import spam as spam_mod
    current = current_config or (lambda: config)

    def spam_cache():
        s = current()["spam_cache"]
        return spam_mod.verdict_cache(s["ttl_s"], s["max_entries"]) if s["ttl_s"] else None

    m = Metrics(in_flight=in_flight, spam_cache=spam_cache, event_log=events.EVENTS)
    host, port = listen
    try:
        bound = m.serve(host, port)
    except OSError as exc:
        log.error("metrics endpoint %s:%d cannot be opened (%s); running without metrics", host, port,
                  exc.strerror or exc)
        return None
    log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound)
    ACTIVE = m
    return m


def stop() -> None:
    global ACTIVE
    if ACTIVE is not None:
        ACTIVE.stop()
        ACTIVE = None
