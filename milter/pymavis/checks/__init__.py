"""Checks: each looks at one message and returns findings.

One interface: `check(scan: Scan) -> CheckResult`. A `Scan` holds the frozen transaction,
the merged policy, the recipients' resolved settings and the decoding settings; the walk
over the message's parts (decode/) runs once, on first use, so a message whose recipients
all bypass the checks that need parts is never decoded. When a virus scanner has method
`parts` (Scan.wants_contents), the walk also keeps each part's decoded bytes
(Scan.contents, decode/contents.py) until the virus check has used them.

A check that could not do its work says so (`could_not_check`, with why); the pipeline
turns that into UNCHECKED for every recipient, never into clean.

The order in which checks run is stated here, in CHECKS, and nowhere else: size, then the
header section, then authentication (DKIM, SPF, DMARC: no findings, only the results for
the Authentication-Results field; early, so that the policy banks its results choose, by
a verified author or by a result, are loaded before the checks after it: the pipeline
then replaces Scan.policy and Scan.rcpt_settings, adds a DMARC finding when the bank
quarantines, and sets Scan.auth), then decoding (its problems are UNCHECKED), then virus scanners, then
banned content, then spam, as in amavisd-new. The spamd call may begin early (the
pipeline calls checks.spam.start) so that clamd and spamd scan one message at once; its
result is taken in its place in the order.

A check may also say `tempfail` (all virus scanners failed and that is fatal): the whole
message is answered TEMPFAIL, whatever the other checks found.

A check that asks scanners (virus: clamd, spam: spamd) lists each call it made in
`scanner_calls` (which scanner, how it ended, how long it took), for the per-scanner
latency histogram (metrics.py); a check does no counting of its own.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from pymavis.banned import DEFAULT_RULE_SETS
from pymavis.categories import Finding
from pymavis.decode import DEFAULT_TYPE_MAP, Limits, Problem, Walk, walk
from pymavis.decode.contents import Contents


@dataclass(frozen=True)
class ScannerCall:
    """One call to one configured scanner: `kind` "virus" or "spam", its configured
    `scanner` name, its `outcome` (virus: clean, infected, unchecked, over_limits, failed;
    spam: answered, failed) and its wall time."""

    kind: str
    scanner: str
    outcome: str
    elapsed_ms: float


@dataclass(frozen=True)
class CheckResult:
    name: str
    findings: tuple[Finding, ...] = ()
    could_not_check: str | None = None   # why, when the check could not do its work
    elapsed_ms: float = 0.0
    scanned_by: tuple[str, ...] = ()     # virus scanners that answered (X-Virus-Scanned)
    tempfail: str | None = None          # why the whole message must be tried again later
    spam: object | None = None           # checks.spam.SpamView: the verdict and each recipient's judgement
    auth: object | None = None           # checks.auth.AuthView: DKIM/SPF/DMARC results, our A-R field
    scanner_calls: tuple[ScannerCall, ...] = ()   # each scanner asked, in order (module doc)


@dataclass
class Scan:
    """What the checks of one message share. Not shared between threads."""

    txn: object                  # transaction.Transaction (or anything with .spool, .size)
    policy: object               # policy.Policy
    rcpt_settings: tuple         # decide.RcptSettings, one per recipient
    limits: Limits = Limits()
    type_map: tuple = DEFAULT_TYPE_MAP
    rule_sets: dict = field(default_factory=lambda: dict(DEFAULT_RULE_SETS))
    gate: DecodeGate | None = None  # bounds the walks running at once
    scanners: tuple = ((), ())      # (primaries, backups): checks.virus.Scanner
    first_infected_stops_scan: bool = False
    spam_scanners: tuple = ()       # checks.spam.SpamScanner, tried in order
    spam_cache: object | None = None  # checks.spam.VerdictCache
    myhostname: str = "localhost"
    dns: object | None = None       # auth.resolver.Lookup for the authentication checks; None: they do not run
    dns_deadline_s: float = 20.0    # the DNS time one message's authentication may take
    authserv_id: str = "localhost"  # ours in Authentication-Results
    auth: object | None = None      # checks.auth.AuthView with its DMARC verdict, once the pipeline has it
    spam_pending: object | None = None
    found: list = field(default_factory=list)  # findings of the checks that ran so far
    decoded: bool = field(default=False, init=False)
    # the parts' decoded bytes, kept by the walk when a virus scanner has method `parts`
    # (wants_contents); the virus check closes it (release_contents), the pipeline again after the checks
    contents: Contents | None = field(default=None, init=False, repr=False)
    _walk: Walk | None = field(default=None, init=False, repr=False)

    def everyone(self, setting: str) -> bool:
        """True when every recipient has `setting` (a bypass) true; False with no recipients."""
        return bool(self.rcpt_settings) and all(rs.get(setting) for rs in self.rcpt_settings)

    @property
    def wants_contents(self) -> bool:
        """Does a virus scanner want the decoded parts (method `parts`) of this message?
        Then the walk runs (checks/content.py) and keeps them."""
        primaries, backups = self.scanners
        return (any(s.method == "parts" for s in (*primaries, *backups))
                and not self.everyone("bypass_virus_checks"))

    def release_contents(self) -> None:
        """Free the kept parts (memory or their temp file); the walk itself stays."""
        if self.contents is not None:
            self.contents.close()
            self.contents = None

    @property
    def walk(self) -> Walk:
        """Every part of the message (decode.walk), computed on first use. Raises only
        OSError (a spool that cannot be read). A message we did not store whole is not
        decoded: its walk is one 'over limits' problem. When wants_contents, the walk
        also keeps the parts' bytes in `contents`. (Not functools.cached_property:
        before Python 3.12 its lock is one per class, so every message's walk would wait
        for every other's.)"""
        if self._walk is None:
            self.decoded = True
            spool = self.txn.spool
            if getattr(spool, "truncated", False):
                detail = f"message not stored whole: {spool.size} bytes, over every recipient's size limit"
                self._walk = Walk((), (Problem("over limits", None, detail),), 0.0)
            else:
                keep = None
                if self.wants_contents:
                    self.contents = Contents(getattr(spool, "tmp_dir", None))
                    keep = self.contents.keep
                try:
                    with self.gate.admit(spool.stored) if self.gate else nullcontext():
                        self._walk = walk(spool.read(), self.limits, self.type_map, keep=keep)
                except BaseException:
                    self.release_contents()
                    raise
        return self._walk


class DecodeGate:
    """Admits at most `walks` walks at once, holding at most `budget` message bytes between
    them (a walk larger than the budget runs alone). A walk holds about six times its
    message in memory and is mostly Python (one core at a time under the GIL): two at once
    keep two cores busy, while a burst of large messages cannot multiply the peak memory
    by the number of workers."""

    def __init__(self, walks: int, budget: int):
        self.walks, self.budget = walks, budget
        self._running, self._bytes, self._waiting = 0, 0, 0
        self._cond = threading.Condition()

    def counts(self) -> tuple[int, int]:
        """(walks running, walks waiting to be admitted): metrics.py's gauges."""
        with self._cond:
            return self._running, self._waiting

    @contextmanager
    def admit(self, size: int):
        weight = min(size, self.budget)
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: self._running == 0 or (
                    self._running < self.walks and self._bytes + weight <= self.budget))
            finally:
                self._waiting -= 1
            self._running += 1
            self._bytes += weight
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._bytes -= weight
                self._cond.notify_all()


_GATES: dict[tuple, DecodeGate] = {}
_GATES_LOCK = threading.Lock()


def decode_gate(walks: int, budget: int) -> DecodeGate:
    """The process-wide gate for these numbers (one per configuration value, so a reload
    that keeps them keeps the gate)."""
    with _GATES_LOCK:
        return _GATES.setdefault((walks, budget), DecodeGate(walks, budget))


def decode_gates() -> list[DecodeGate]:
    """Every gate made (normally one; a reload that changes the numbers adds one)."""
    with _GATES_LOCK:
        return list(_GATES.values())


def _registry():
    from . import auth, banned, content, headers, size, spam, virus
    return (size.check, headers.check, auth.check, content.check, virus.check, banned.check, spam.check)


CHECKS = _registry()
