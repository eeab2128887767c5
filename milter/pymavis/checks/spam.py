"""SPAM and SPAMMY: the message through spamd (SpamAssassin), judged per recipient against
amavisd-new's levels.

spamd is asked once per message (SYMBOLS: score, required score, rule names) by our own
client (pymavis/spamd.py). The scanners (`spam_scanners`, config/schema.py) are tried in
order until one answers. The verdict is the message's; the judgement is per recipient
(`judge`, pure, table-tested): the recipient's spam level is spamd's score plus the
sender's `score_sender` boost (plus `dmarc_fail_score` when the bank's DMARC action is
`score`, checks/auth.py: shown as the test PYMAVIS_DMARC_FAIL=N), compared with that
recipient's levels (lookups):

| level                                   | category         | what the recipient gets           |
|-----------------------------------------|------------------|-----------------------------------|
| >= spam_tag_level (or that undefined)   | CLEAN (minor 1)  | X-Spam-Flag NO, -Score, -Level,   |
|                                         |                  | -Status; spam_subject_tag         |
| >= spam_tag2_level                      | SPAMMY           | X-Spam-Flag YES; spam_subject_tag2;|
|                                         |                  | addr_extension_spam (user+spam@)  |
| >= spam_tag3_level                      | SPAMMY minor 1   | spam_subject_tag3 instead         |
| >= spam_kill_level                      | SPAM             | final_spam_destiny (lovers: as    |
|                                         |                  | SPAMMY)                           |

`blacklist_sender` makes the message SPAM for the recipient whatever the score,
`whitelist_sender` keeps it below SPAMMY (both keyed by the envelope sender); a recipient
with `bypass_spam_checks` is not judged at all (no category, no headers). When every
judged recipient's answer is decided by the lists, spamd is not asked.
`spam_dsn_cutoff_level` and `spam_quarantine_cutoff_level` travel with the judgement:
above them no sender notice is sent, nothing is quarantined (notifications, quarantine).

What spamd sees (`spamd_input`): the message without the X-Spam-* fields we write
(`remove_existing_spam_headers`, also removed from the delivered mail by edits.py), with
`Return-Path`, `X-Envelope-From` and a `Received` line for the SMTP client on top (from
the connect and HELO macros; "with ESMTPA" when the client authenticated) unless the
message already starts with a Received line naming the client's address, so that
SpamAssassin's trust path and envelope rules work in milter mode.

Limits: `sa_mail_body_size_limit` (400 KiB, amavis's): a larger message is truncated at a
line end near the limit (`sa_mail_body_size_action: truncate`, amavis's behaviour since
2.7) or not given to spamd (`skip`); both are logged. Each scanner has a connect timeout
and one I/O deadline.

Cache: the verdict for the same bytes from the same client, HELO and sender is reused for
`spam_cache.ttl_s` seconds (an in-process LRU of `spam_cache.max_entries`), so a message
sent to many recipients in separate transactions is scanned once.

Failure: no scanner answered -> `spam_scanner_failure`: `pass` (default, as amavis: the
mail is not marked spam, the log says SPAM CHECK FAILED and why) or `tempfail`. Never spam,
never a crash.

Threads: the spamd call may start before the checks before it have finished (`start`,
called by the pipeline, reads the message from the spool in the pipeline's thread, then
asks spamd on the network-scan pool) so that clamd and spamd work on one message at the
same time; `check` waits for it. Only the pipeline's thread reads the spool: it has one
file position.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from email.utils import formatdate

from pymavis import rawmsg, spamd, workpool
from pymavis.categories import Ccat, Finding
from pymavis.decide import SPAM_RCPT_SETTINGS, decide
from pymavis.log import log
from pymavis.lookups import LookupFailed

from . import CheckResult, ScannerCall

# The X-Spam-* fields we write: incoming ones are not believed (remove_existing_spam_headers).
OUR_HEADERS = frozenset({"x-spam-flag", "x-spam-score", "x-spam-level", "x-spam-status", "x-spam-report",
                         "x-spam-checker-version", "x-spam-tests"})
LEVEL_CHAR = "*"
MAX_LEVEL_CHARS = 64  # X-Spam-Level: one star a point, up to this many (amavis's cap)


@dataclass(frozen=True)
class SpamScanner:
    name: str
    client: spamd.SpamdClient


# --- per-recipient judgement (pure) ---------------------------------------------------------

LEVEL_SETTINGS, TAG_SETTINGS = SPAM_RCPT_SETTINGS[:6], SPAM_RCPT_SETTINGS[6:]
# Every per-recipient setting that changes what a recipient of a spam check gets: the policy
# fingerprint for the RCPT-time split is built from these (and the lovers and bypasses).
RCPT_SETTINGS = LEVEL_SETTINGS + TAG_SETTINGS + ("bypass_spam_checks", "spam_lovers")


@dataclass(frozen=True)
class Levels:
    """One recipient's spam settings; a level of None is undefined (amavis's undef)."""

    tag: float | None = 2.0
    tag2: float | None = 6.2
    tag3: float | None = None
    kill: float | None = 6.9
    dsn_cutoff: float | None = 10.0
    quarantine_cutoff: float | None = None
    subject_tag: str | None = None
    subject_tag2: str | None = "***SPAM*** "
    subject_tag3: str | None = None
    addr_extension: str | None = None
    bypass: bool = False

    @classmethod
    def of(cls, get) -> "Levels":
        """From a per-recipient getter (name -> value) of RCPT_SETTINGS."""
        return cls(*(get(n) for n in LEVEL_SETTINGS), *(get(n) for n in TAG_SETTINGS),
                   bool(get("bypass_spam_checks")))


@dataclass(frozen=True)
class SenderLists:
    """What the envelope sender's lookups say."""

    whitelisted: bool = False
    blacklisted: bool = False
    boost: float = 0.0   # score_sender


@dataclass(frozen=True)
class Judgement:
    """The spam side of one recipient's fate."""

    rcpt: str
    level: float | None         # score + boost; None when spamd was not asked
    ccat: Ccat | None           # SPAM, SPAMMY or None (not spam for this recipient)
    minor: int = 0              # SPAMMY 1: at or above spam_tag3_level
    tag_headers: bool = False   # X-Spam-* headers for this recipient
    subject_tag: str | None = None
    extension: str | None = None
    levels: Levels = Levels()
    lists: SenderLists = SenderLists()

    @property
    def flagged(self) -> bool:
        return self.ccat is not None

    def over(self, cutoff: float | None) -> bool:
        return cutoff is not None and self.level is not None and self.level >= cutoff


def _at(level: float | None, threshold: float | None) -> bool:
    return threshold is not None and level is not None and level >= threshold


def judge(rcpt: str, levels: Levels, score: float | None, lists: SenderLists) -> Judgement:
    """Where `score` (None: spamd was not asked or failed) puts this recipient."""
    if levels.bypass:
        return Judgement(rcpt, None, None, levels=levels, lists=lists)
    level = None if score is None else score + lists.boost
    if lists.blacklisted:
        ccat, minor = Ccat.SPAM, 0
    elif lists.whitelisted:
        ccat, minor = None, 0
    elif _at(level, levels.kill):
        ccat, minor = Ccat.SPAM, int(_at(level, levels.tag3))
    elif _at(level, levels.tag3):
        ccat, minor = Ccat.SPAMMY, 1
    elif _at(level, levels.tag2):
        ccat, minor = Ccat.SPAMMY, 0
    else:
        ccat, minor = None, 0
    tag_headers = lists.blacklisted or (level is not None and (levels.tag is None or level >= levels.tag
                                                               or ccat is not None))
    if ccat is not None and minor == 1 and levels.subject_tag3:
        subject = levels.subject_tag3
    elif ccat is not None and levels.subject_tag2:
        subject = levels.subject_tag2
    elif tag_headers and levels.subject_tag:
        subject = levels.subject_tag
    else:
        subject = None
    return Judgement(rcpt, level, ccat, minor, tag_headers, subject,
                     levels.addr_extension if ccat is not None else None, levels, lists)


# --- the X-Spam-* header values (pure) -------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".") if x is not None else "-"


def header_values(j: Judgement, tests: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(name, value) of the X-Spam-* fields for a recipient whose `tag_headers` is true."""
    spammy = j.ccat is not None
    stars = LEVEL_CHAR * max(0, min(MAX_LEVEL_CHARS, int(j.level))) if j.level is not None else ""
    shown = list(tests)
    if j.lists.blacklisted:
        shown.insert(0, "BLACKLISTED")
    if j.lists.whitelisted:
        shown.insert(0, "WHITELISTED")
    status = (f"{'Yes' if spammy else 'No'}, score={_num(j.level)} tag={_num(j.levels.tag)} "
              f"tag2={_num(j.levels.tag2)} kill={_num(j.levels.kill)}")
    test_text = ", ".join(shown) or "none"
    room = 900 - len(status) - len(" tests=[]")
    if len(test_text) > room:
        test_text = test_text[:room].rsplit(", ", 1)[0] + ", ..."
    values = [("X-Spam-Flag", "YES" if spammy else "NO")]
    if j.level is not None:
        values.append(("X-Spam-Score", _num(j.level)))
    if stars:
        values.append(("X-Spam-Level", stars))
    values.append(("X-Spam-Status", f"{status} tests=[{test_text}]"))
    return tuple(values)


# --- what spamd sees ------------------------------------------------------------------------


def envelope_lines(txn, myhostname: str) -> bytes:
    """Return-Path, X-Envelope-From and (unless the message has it already) a Received line
    for the SMTP client, in the form SpamAssassin's Received parser reads."""
    sender = f"<{txn.mail_from}>"
    lines = [f"Return-Path: {sender}", f"X-Envelope-From: {sender}"]
    conn = txn.conn
    first_received = next((v for k, v in txn.headers if k.lower() == "received"), "")
    if conn.client_ip and f"[{conn.client_ip}]" not in first_received:
        helo = conn.helo or conn.client_name or conn.client_ip
        rdns = conn.client_name if conn.client_name and conn.client_name != "unknown" else "unknown"
        proto = "ESMTPA" if txn.macro("{auth_authen}") else "ESMTP"
        by = txn.macro("j") or myhostname
        ident = txn.queue_id or txn.mail_id
        lines.append(f"Received: from {helo} ({rdns} [{conn.client_ip}])\r\n\tby {by} (pymavis) with {proto} "
                     f"id {ident};\r\n\t{formatdate(localtime=False, usegmt=True)}")
    text = "".join(line + "\r\n" for line in lines)
    return text.encode("ascii", "backslashreplace")


def message_for_spamd(spool, limit: int, drop_ours: bool) -> tuple[bytes, bool]:
    """(the message bytes spamd gets, whether they were cut at `limit`; 0 = no limit).
    Cut at the last line end within the limit, as amavis does."""
    reader = spool.reader()
    data = reader.read(limit + 1) if limit else reader.read()
    truncated = bool(limit) and len(data) > limit
    if truncated:
        data = data[:limit]
        cut = data.rfind(b"\n")
        if cut > 0:
            data = data[: cut + 1]
    if drop_ours:
        data = rawmsg.without(data, OUR_HEADERS.__contains__)
    return data, truncated


# --- cache ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    score: float
    required: float
    tests: tuple[str, ...]
    scanner: str
    elapsed_ms: float = 0.0
    truncated: bool = False
    cached: bool = False
    calls: tuple[ScannerCall, ...] = ()   # the spamd calls that gave it (none when it came from the cache)


class VerdictCache:
    """An LRU of verdicts by digest, each valid for `ttl_s`; thread-safe. ttl_s 0: off."""

    def __init__(self, ttl_s: float, max_entries: int):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._items: OrderedDict[bytes, tuple[float, Verdict]] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[bytes, concurrent.futures.Future] = {}
        self.hits = self.misses = self.joined = 0

    def get(self, key: bytes) -> Verdict | None:
        if not self.ttl_s:
            return None
        now = time.monotonic()
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] < now:
                if item is not None:
                    del self._items[key]
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: bytes, verdict: Verdict) -> None:
        if not self.ttl_s:
            return
        with self._lock:
            self._items[key] = (time.monotonic() + self.ttl_s, verdict)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def lead_or_join(self, key: bytes, submit) -> tuple[concurrent.futures.Future, bool]:
        """(the call in flight for `key`, True) if another message with these bytes is being
        checked right now (copies of a MIRV arrive together, before any verdict is in);
        else (submit(), False), registered until it is done."""
        with self._lock:
            leader = self._inflight.get(key)
            if leader is not None:
                self.joined += 1
                return leader, True
            future = self._inflight[key] = submit()
        future.add_done_callback(lambda _f: self._done(key, future))
        return future, False

    def _done(self, key: bytes, future) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]


_CACHES: dict[tuple, VerdictCache] = {}
_CACHES_LOCK = threading.Lock()


def verdict_cache(ttl_s: float, max_entries: int) -> VerdictCache:
    """The process-wide cache for these settings (a reload that keeps them keeps it)."""
    with _CACHES_LOCK:
        return _CACHES.setdefault((ttl_s, max_entries), VerdictCache(ttl_s, max_entries))


def cache_key(txn, data: bytes) -> bytes:
    conn = txn.conn
    context = "\0".join(str(x) for x in (txn.mail_from, conn.client_ip, conn.helo, bool(txn.macro("{auth_authen}"))))
    return hashlib.sha256(context.encode("utf-8", "surrogateescape") + b"\0" + data).digest()


# --- the check ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpamView:
    """What the spam check tells the rest of the pipeline (edits, outcome, report)."""

    verdict: Verdict | None                 # None: spamd not asked, or it failed
    judgements: tuple[Judgement, ...] = ()
    note: str = ""                          # why spamd was not asked / what went wrong
    remove_existing: bool = True

    def judgement(self, rcpt: str) -> Judgement | None:
        return next((j for j in self.judgements if j.rcpt == rcpt), None)


@dataclass
class _Pending:
    future: concurrent.futures.Future | None = None


_POOL: workpool.Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> workpool.Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = workpool.Pool("spam", 32, "pymavis-spam")   # its queue depth: pymavis_pool_* {pool="spam"}
        return _POOL


def sender_lists(policy, sender: str) -> SenderLists:
    """The envelope sender's whitelist_sender / blacklist_sender / score_sender. Raises LookupFailed."""
    is_local = policy.is_local(sender) if sender else False
    boost = policy.rcpt_value("score_sender", sender, is_local=is_local)
    return SenderLists(bool(policy.rcpt_value("whitelist_sender", sender, is_local=is_local)),
                       bool(policy.rcpt_value("blacklist_sender", sender, is_local=is_local)),
                       float(boost or 0.0))


def dmarc_boost(scan) -> float:
    """The points a DMARC failure adds for every recipient: the bank's dmarc_fail_score
    when its action for this failure is score (checks/auth.py), else 0."""
    view = getattr(scan, "auth", None)
    verdict = view.dmarc if view is not None else None
    if verdict is None or verdict.action != "score":
        return 0.0
    return float(scan.policy.dmarc_fail_score)


def _levels(scan) -> tuple[tuple[str, Levels], ...]:
    return tuple((rs.rcpt, Levels.of(rs.get)) for rs in scan.rcpt_settings)


def _needs_spamd(levels, lists: SenderLists) -> bool:
    return any(not lv.bypass for _, lv in levels) and not (lists.blacklisted or lists.whitelisted)


def start(scan) -> None:
    """Begin the spamd call for `scan` on the network-scan pool (the pipeline calls this
    before the checks that come first; `check` collects it)."""
    if not scan.spam_scanners or scan.spam_pending is not None:
        return
    try:
        if not _needs_spamd(_levels(scan), sender_lists(scan.policy, scan.txn.mail_from)):
            return
    except LookupFailed:
        return   # check() looks them up again and the pipeline answers TEMPFAIL
    _begin(scan)


def _begin(scan) -> _Pending:
    """Read what spamd gets here, in the calling thread (the spool has one file position,
    and the walk or clamd read it next), and ask spamd on the pool."""
    pending = scan.spam_pending = _Pending()
    done, job, key = _prepare(scan)
    if done is not None:
        pending.future = concurrent.futures.Future()
        pending.future.set_result(done)
    elif scan.spam_cache is None or not scan.spam_cache.ttl_s:
        pending.future = _pool().submit(job)
    else:
        leader, joined = scan.spam_cache.lead_or_join(key, lambda: _pool().submit(job))
        pending.future = _follow(leader, job) if joined else leader
    return pending


def _follow(leader: concurrent.futures.Future, job) -> concurrent.futures.Future:
    """The leader's verdict as a cached one once it is in; if the leader failed or was
    dropped (its message needed no spam check after all), ask spamd ourselves."""
    out: concurrent.futures.Future = concurrent.futures.Future()

    def settle(result=None, exc=None) -> None:
        try:
            if exc is not None:
                out.set_exception(exc)
            else:
                out.set_result(result)
        except concurrent.futures.InvalidStateError:   # dropped by our own check (_cancel)
            pass

    def own(f) -> None:
        if f.cancelled():
            settle(exc=_AllFailed("spam check dropped"))
        else:
            settle(f.result() if f.exception() is None else None, f.exception())

    def leader_done(f) -> None:
        if not f.cancelled() and f.exception() is None:
            verdict, note = f.result()
            settle((replace(verdict, elapsed_ms=0.0, cached=True, calls=()), note))
        elif not out.cancelled():
            _pool().submit(job).add_done_callback(own)

    leader.add_done_callback(leader_done)
    return out


def _prepare(scan):
    """(the answer when spamd need not be asked, None, None) or (None, the call to make,
    the cache key)."""
    txn, policy = scan.txn, scan.policy
    if getattr(txn.spool, "truncated", False):
        return (None, f"not checked: message not stored whole ({txn.spool.size} bytes)"), None, None
    limit = policy.sa_mail_body_size_limit
    if limit and txn.spool.stored > limit and policy.sa_mail_body_size_action == "skip":
        return (None, f"not checked: size {txn.spool.stored} > sa_mail_body_size_limit {limit}"), None, None
    data, truncated = message_for_spamd(txn.spool, limit, policy.remove_existing_spam_headers)
    note = f"truncated to {len(data)} bytes (sa_mail_body_size_limit {limit})" if truncated else ""
    key = cache_key(txn, data)
    cache = scan.spam_cache
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return (Verdict(hit.score, hit.required, hit.tests, hit.scanner, 0.0, truncated, True), note), None, None
    payload = envelope_lines(txn, scan.myhostname) + data
    return None, functools.partial(_ask, scan.spam_scanners, payload, truncated, note, txn.mail_id, cache, key), key


def _ask(scanners, payload: bytes, truncated: bool, note: str, mail_id: str, cache, key) -> tuple[Verdict, str]:
    """spamd's verdict: the first scanner that answers. Raises _AllFailed."""
    failures, calls = [], []
    for scanner in scanners:
        started = time.monotonic()
        try:
            reply = scanner.client.symbols(payload)
        except (spamd.SpamdError, OSError) as exc:
            failures.append(f"{scanner.name}: {type(exc).__name__}: {exc}")
            calls.append(ScannerCall("spam", scanner.name, "failed", _ms(started)))
            continue
        elapsed = _ms(started)
        calls.append(ScannerCall("spam", scanner.name, "answered", elapsed))
        verdict = Verdict(reply.score, reply.required, reply.tests, scanner.name, elapsed, truncated,
                          calls=tuple(calls))
        for why in failures:
            log.warning("mail_id %s: spam scanner %s", mail_id, why)
        if cache is not None:
            cache.put(key, verdict)
        return verdict, note
    raise _AllFailed("; ".join(failures), tuple(calls))


class _AllFailed(Exception):
    def __init__(self, why: str, calls: tuple = ()):
        super().__init__(why)
        self.calls = calls   # ScannerCall of each scanner that failed


def _cancel(scan) -> None:
    """Not needed after all: drop the early call if it has not begun (else it runs out)."""
    if scan.spam_pending is not None:
        scan.spam_pending.future.cancel()


def _all_blocked(scan) -> bool:
    """Whether the checks before this one already block every recipient (amavis does not
    spam-check mail nobody will get)."""
    found = tuple(scan.found)
    return bool(found) and all(decide(scan.policy, rs, found).blocked for rs in scan.rcpt_settings)


def check(scan) -> CheckResult:
    started = time.monotonic()
    if not scan.spam_scanners:
        return CheckResult("spam")
    levels = _levels(scan)
    lists = sender_lists(scan.policy, scan.txn.mail_from)
    verdict, note, calls = None, "", ()
    if not _needs_spamd(levels, lists):
        note = "spamd not asked: " + ("every recipient bypasses spam checks" if all(lv.bypass for _, lv in levels)
                                      else "the sender is " + ("blacklisted" if lists.blacklisted else "whitelisted"))
        _cancel(scan)
    elif _all_blocked(scan):
        note = "spamd not asked: every recipient is blocked already"
        _cancel(scan)
    else:
        pending = scan.spam_pending or _begin(scan)
        try:
            verdict, note = pending.future.result()
        except _AllFailed as exc:
            note, calls = f"SPAM CHECK FAILED: {exc}", exc.calls
            log.error("mail_id %s: %s", scan.txn.mail_id, note)
            if scan.policy.spam_scanner_failure == "tempfail":
                return CheckResult("spam", elapsed_ms=_ms(started), tempfail=f"spam check failed ({exc})",
                                   spam=SpamView(None, (), note, scan.policy.remove_existing_spam_headers),
                                   scanner_calls=calls)
        else:
            calls = verdict.calls if verdict is not None else ()   # None: not sent (size, spool)
            if note:
                log.info("mail_id %s: spam check %s", scan.txn.mail_id, note)
    boost = dmarc_boost(scan)
    if boost and verdict is not None:
        lists = replace(lists, boost=lists.boost + boost)
        verdict = replace(verdict, tests=(f"PYMAVIS_DMARC_FAIL={_num(boost)}", *verdict.tests))
        log.info("mail_id %s: DMARC fail for %s scored %s (dmarc_fail_score)", scan.txn.mail_id,
                 scan.auth.dmarc.domain, _num(boost))
    score = verdict.score if verdict is not None else None
    judgements = tuple(judge(rcpt, lv, score, lists) for rcpt, lv in levels)
    view = SpamView(verdict, judgements, note, scan.policy.remove_existing_spam_headers)
    return CheckResult("spam", _findings(judgements, verdict), elapsed_ms=_ms(started), spam=view,
                       scanner_calls=calls)


def _findings(judgements, verdict) -> tuple[Finding, ...]:
    groups: dict[tuple, set] = {}
    for j in judgements:
        if j.ccat is not None:
            groups.setdefault((j.ccat, j.minor, j.level, j.lists.blacklisted), set()).add(j.rcpt)
    tests = verdict.tests if verdict else ()
    findings = []
    for (ccat, minor, level, blacklisted), rcpts in groups.items():
        detail = "sender blacklisted" if blacklisted else f"score={_num(level)}"
        if tests:
            detail += " tests=[" + ", ".join(tests[:20]) + (", ..." if len(tests) > 20 else "") + "]"
        findings.append(Finding("spam", ccat, minor, detail, frozenset(rcpts),
                                (("score", _num(level)), ("tests", ", ".join(tests)))))
    return tuple(sorted(findings, key=lambda f: (-f.ccat, sorted(f.rcpts))))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
