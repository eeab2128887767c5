"""The milter's counters since start, in one place: exported as Prometheus metrics
(prometheus-client) on a loopback HTTP endpoint when `metrics.listen` says so
("127.0.0.1:9911", "[::1]:9911"; null: no endpoint), and read by `pymavis stats` through the
control socket (`stats`, amavisd-agent's names) either way. A non-loopback address is a
configuration error unless `metrics.allow_non_loopback` is true: the counters name banks,
and scrapes are not authenticated.

What is exported (names and labels in docs/observability.md): messages by action,
content category and bank; recipients by action and category; message bytes; check
errors by check and reason; per-stage latency histograms (receive, each check, decide,
quarantine, spamd, total); per-scanner latency (each clamd and spamd call, by kind,
configured scanner name and outcome: checks.ScannerCall in CheckResult.scanner_calls);
messages decoded and decoder runs by decoder (decode.Walk.decoders: amavisd-agent's
OpsDec, OpsDecBy*); and, read when scraped, messages in flight (App.in_flight), each
worker pool's tasks waiting and workers busy (workpool.POOLS), quarantine stores kept and
failed (keep.COUNTS), spam verdict cache hits, misses and shared calls, and the JSON
event log's written, dropped and failed counts. Messages quarantined by category, and
(for `stats` only: names are unbounded, no Prometheus label) virus names, at most
MAX_VIRUS_NAMES distinct ones. Releases are not counted here: `pymavis release` runs in
its own process; the quarantine index records each one (msgrcpt.rs = 'R').

Failure: an address that cannot be bound is logged at start and the milter runs without
the endpoint (mail matters more than its counters; `stats` still counts); `record` never raises into the milter
(observe.py catches). A reload does not move the endpoint: a new `metrics.listen` takes
effect at the next start.

Configuration read: `metrics` (listen, allow_non_loopback) at start; `spam_cache` of the
running configuration when scraped (its cache is the process-wide one for those values).
"""

from __future__ import annotations

import os
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__, events, keep, workpool
from .checks import decode_gates
from .log import log
from .outcome import Action

# Seconds; a message takes from about a millisecond (nothing to scan) to minutes (the scan
# deadline, 240 s by default), so the buckets span both.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                 60.0, 120.0, 300.0)
SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
# Distinct virus names counted for `stats`; later new names count as "(other)". An outbreak
# has a handful of names; this bounds the memory a stream of unique names could take.
MAX_VIRUS_NAMES = 1000
OTHER_VIRUSES = "(other)"
# amavisd-agent's InMsgsStatus* for our one answer per message (events.message_action)
STATUS_NAMES = {"pass": "Accepted", "hold": "Held", "reject": "Rejected", "discard": "Discarded",
                "tempfail": "TempFailed"}
# the Content*Msgs and Quar*Msgs that stats always shows (amavisd-agent's), in its order
STATS_CATEGORIES = ("Clean", "Spam", "Spammy", "Virus", "Banned", "BadHdr", "Unchecked", "Oversized")
QUAR_CATEGORIES = ("Virus", "Banned", "Unchecked", "Spam", "BadHdr", "Oversized")   # what can be kept
# a recipient's direction by (originating, local recipient), and its amavisd-agent name part
DIRECTIONS = {(False, True): "inbound", (False, False): "openrelay", (True, False): "outbound",
              (True, True): "internal"}
DIRECTION_STATS_NAMES = {"inbound": "Inbound", "openrelay": "OpenRelay", "outbound": "Outbound",
                         "internal": "Internal"}
# amavisd-agent's OpsDecBy<Name> for our decoder names (decode.Walk.decoders); another name
# (an archive's short type: zip, 7z, gz, ...) is capitalised: OpsDecByZip
DECODER_STATS_NAMES = {"mime": "MimeParser", "mbox": "Mbox", "tnef": "Tnef", "uue": "Uue", "hqx": "Binhex"}


class Metrics:
    """The registry, the instruments, and the HTTP endpoint when served."""

    def __init__(self, *, in_flight=lambda: 0, spam_cache=lambda: None, event_log=None,
                 pools=lambda: tuple(workpool.POOLS.values())):
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
        self.quarantined = Counter("pymavis_quarantined_messages", "Messages whose blocked copies were kept, by "
                                   "content type", ("ccat",), registry=r)
        self.scanners = Histogram("pymavis_scanner_seconds", "Time per call to one scanner, by kind (virus, spam), "
                                  "its configured name and the outcome (virus: clean, infected, unchecked, "
                                  "over_limits, failed; spam: answered, failed)", ("kind", "scanner", "outcome"),
                                  buckets=STAGE_BUCKETS, registry=r)
        self.directions = Counter("pymavis_messages_direction", "Messages by direction, as amavisd-agent counts "
                                  "them: inbound (not originating, a local recipient), openrelay (not originating, "
                                  "no local recipient), outbound (originating, a recipient elsewhere), internal "
                                  "(originating, every recipient local)", ("direction",), registry=r)
        self.recipient_directions = Counter("pymavis_recipients_direction", "Recipients by direction: inbound "
                                            "(local, not originating), openrelay (elsewhere, not originating), "
                                            "outbound (elsewhere, originating), internal (local, originating)",
                                            ("direction",), registry=r)
        self.checks_run = Counter("pymavis_checks_run", "Messages each check did its work for (virus: a scanner "
                                  "answered; spam: a verdict, cached or from spamd; header, banned, auth: the "
                                  "check ran), amavisd-agent's OpsVirusCheck, OpsSpamCheck", ("check",), registry=r)
        self.decoded = Counter("pymavis_decoded_messages", "Messages whose parts were walked (decoded)", registry=r)
        self.decoder_runs = Counter("pymavis_decoder_runs", "Times each decoder ran (mime: a message parsed; mbox, "
                                    "tnef, uue, hqx; an archive's short type: zip, 7z, gz, ...)", ("decoder",),
                                    registry=r)
        info = Gauge("pymavis_build_info", "pymavis version", ("version",), registry=r)
        info.labels(__version__).set(1)
        r.register(_ReadAtScrape(in_flight, spam_cache, event_log, pools))
        ProcessCollector(registry=r)
        self.spam_cache = spam_cache
        self.started = time.time()
        self._viruses: dict[str, int] = {}
        self._viruses_lock = threading.Lock()
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
        self._count_direction(policy, txn)
        self.bytes.inc(txn.size)
        self.sizes.observe(txn.size)
        if outcome.quarantined:
            self.quarantined.labels(events.content_type(outcome)).inc()
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
                if r.name in events.CHECK_LETTERS and events.performed(r):
                    self.checks_run.labels(r.name).inc()
                for call in r.scanner_calls:
                    self.scanners.labels(call.kind, call.scanner, call.outcome).observe(call.elapsed_ms / 1000)
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
            scan = result.scan
            if scan is not None and scan.decoded and scan.walk.decoders:   # decoded: .walk is computed already
                self.decoded.inc()
                for decoder, runs in scan.walk.decoders:
                    self.decoder_runs.labels(decoder).inc(runs)
            names = events.virus_names(result)
            if names:
                self._count_viruses(names)
        self.stages.labels("total").observe(elapsed_ms / 1000)

    def _count_direction(self, policy, txn) -> None:
        """amavisd-agent's InMsgs{Inbound,OpenRelay,Outbound,Internal} and InMsgsRecips* (a
        message answered before a policy was chosen counts as inbound: it came from outside)."""
        originating = bool(policy is not None and policy.originating)
        local = [policy is None or policy.is_local(r.addr) for r in txn.rcpts]
        for is_local in local:
            self.recipient_directions.labels(DIRECTIONS[originating, is_local]).inc()
        if originating:
            self.directions.labels("internal" if local and all(local) else "outbound").inc()
        else:
            self.directions.labels("inbound" if any(local) or not local else "openrelay").inc()

    def _count_viruses(self, names) -> None:
        with self._viruses_lock:
            for name in names:
                if name not in self._viruses and len(self._viruses) >= MAX_VIRUS_NAMES:
                    name = OTHER_VIRUSES
                self._viruses[name] = self._viruses.get(name, 0) + 1

    def stats(self, top: int = 100) -> dict:
        """The counters since start with amavisd-agent's names, and the `top` virus names:
        {"started", "uptime_s", "pid", "version", "counters": {name: value}, "bases": {name:
        the counter its percentage is of}, "virus_names": [[name, count], ...]}."""
        by_action, by_ccat, quarantined = {}, {}, {}
        for labels, value in _totals(self.messages):
            by_action[labels["action"]] = by_action.get(labels["action"], 0) + value
            by_ccat[labels["ccat"]] = by_ccat.get(labels["ccat"], 0) + value
        for labels, value in _totals(self.quarantined):
            quarantined[labels["ccat"]] = value
        counters, bases = {}, {}

        def put(name, value, base="InMsgs"):
            counters[name] = int(value)
            if base:
                bases[name] = base

        put("InMsgs", sum(by_action.values()))
        put("InMsgsRecips", sum(v for _, v in _totals(self.recipients)))
        put("InMsgsSize", sum(v for _, v in _totals(self.bytes)), None)
        for action, name in STATUS_NAMES.items():
            put(f"InMsgsStatus{name}", by_action.get(action, 0))
        directions = {labels["direction"]: value for labels, value in _totals(self.directions)}
        rcpt_directions = {labels["direction"]: value for labels, value in _totals(self.recipient_directions)}
        put("InMsgsOriginating", directions.get("outbound", 0) + directions.get("internal", 0))
        for key, name in DIRECTION_STATS_NAMES.items():
            put(f"InMsgs{name}", directions.get(key, 0))
        for key, name in DIRECTION_STATS_NAMES.items():
            put(f"InMsgsRecips{name}", rcpt_directions.get(key, 0), "InMsgsRecips")
        for ccat in (*STATS_CATEGORIES, *sorted(set(by_ccat) - set(STATS_CATEGORIES))):
            put(f"Content{ccat}Msgs", by_ccat.get(ccat, 0))
        put("QuarMsgs", keep.COUNTS.kept)
        for ccat in (*QUAR_CATEGORIES, *sorted(set(quarantined) - set(QUAR_CATEGORIES))):
            put(f"Quar{ccat}Msgs", quarantined.get(ccat, 0))
        put("QuarFailedMsgs", keep.COUNTS.failed)
        checks_run = {labels["check"]: value for labels, value in _totals(self.checks_run)}
        put("OpsVirusCheck", checks_run.get("virus", 0))
        put("OpsSpamCheck", checks_run.get("spam", 0))
        put("OpsDec", sum(v for _, v in _totals(self.decoded)))
        runs = {DECODER_STATS_NAMES.get(labels["decoder"], labels["decoder"][:1].upper() + labels["decoder"][1:]):
                value for labels, value in _totals(self.decoder_runs)}
        put("OpsDecByMimeParser", runs.pop("MimeParser", 0))
        for name in sorted(runs):
            put(f"OpsDecBy{name}", runs[name])
        cache = self.spam_cache()
        if cache is not None:
            put("SpamCacheAttempts", cache.hits + cache.misses + cache.joined)
            put("SpamCacheHits", cache.hits, "SpamCacheAttempts")
            put("SpamCacheMisses", cache.misses, "SpamCacheAttempts")
            put("SpamCacheJoined", cache.joined, "SpamCacheAttempts")
        with self._viruses_lock:
            viruses = sorted(self._viruses.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        now = time.time()
        return {"version": __version__, "pid": os.getpid(), "started": self.started,
                "uptime_s": round(now - self.started, 3), "counters": counters, "bases": bases,
                "virus_names": [list(kv) for kv in viruses]}

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (a daemon thread); the port bound. Raises OSError."""
        self.server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _totals(counter):
    """(labels, value) of each `_total` sample of a prometheus-client Counter."""
    return [(s.labels, s.value) for metric in counter.collect() for s in metric.samples if s.name.endswith("_total")]


class _ReadAtScrape:
    """Values owned elsewhere, read when Prometheus asks."""

    def __init__(self, in_flight, spam_cache, event_log, pools):
        self.in_flight, self.spam_cache, self.event_log, self.pools = in_flight, spam_cache, event_log, pools

    def collect(self):
        g = GaugeMetricFamily("pymavis_messages_in_flight", "Messages between end of data and the answer")
        g.add_metric((), self.in_flight())
        yield g
        waiting = GaugeMetricFamily("pymavis_pool_waiting", "Tasks waiting for a worker, by pool (work: messages "
                                    "at end of data; spam: spamd calls)", labels=("pool",))
        busy = GaugeMetricFamily("pymavis_pool_busy", "Workers running a task, by pool", labels=("pool",))
        size = GaugeMetricFamily("pymavis_pool_workers", "Workers a pool may run at once", labels=("pool",))
        for pool in self.pools():
            w, b, n = pool.counts()
            waiting.add_metric((pool.name,), w)
            busy.add_metric((pool.name,), b)
            size.add_metric((pool.name,), n)
        yield waiting
        yield busy
        yield size
        running = GaugeMetricFamily("pymavis_decode_running", "Message walks (decoding) running now (at most "
                                    "milter.decode_workers)")
        queued = GaugeMetricFamily("pymavis_decode_waiting", "Message walks waiting for the decode gate (walks "
                                   "or memory budget taken)")
        gates = decode_gates()
        running.add_metric((), sum(g.counts()[0] for g in gates))
        queued.add_metric((), sum(g.counts()[1] for g in gates))
        yield running
        yield queued
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


def start(config, *, in_flight=lambda: 0, current_config=None) -> Metrics:
    """The process's counters (ACTIVE), served over HTTP if `metrics.listen` says so and the
    address can be bound (else `server` is None)."""
    global ACTIVE
    listen = config["metrics"]["listen"]
    from .checks import spam as spam_mod
    current = current_config or (lambda: config)

    def spam_cache():
        s = current()["spam_cache"]
        return spam_mod.verdict_cache(s["ttl_s"], s["max_entries"]) if s["ttl_s"] else None

    m = ACTIVE = Metrics(in_flight=in_flight, spam_cache=spam_cache, event_log=events.EVENTS)
    if listen is None:
        return m
    host, port = listen
    try:
        bound = m.serve(host, port)
    except OSError as exc:
        log.error("metrics endpoint %s:%d cannot be opened (%s); running without the endpoint (pymavis stats "
                  "still counts)", host, port, exc.strerror or exc)
        return m
    log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound)
    return m


def stop() -> None:
    global ACTIVE
    if ACTIVE is not None:
        ACTIVE.stop()
        ACTIVE = None
