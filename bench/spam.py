"""The spam profile's spamd, its mixes (with and without repeated messages), and spamd alone.

bench/run.py's spam profile sends bench/messages.py's SPAM_MIX (the decode mix without its
5 MB classes, plus SpamAssassin's own spam and ham test messages and 2% GTUBE) through
Postfix with pymavis asking one spamd, and sends the same messages to that spamd alone:
our SpamdClient (milter/pymavis/spamd.py) asking SYMBOLS, the command pymavis uses, with
the bytes pymavis would give spamd (`payload`), at the same concurrency and from the same
worker processes and threads as bench/sender.py (`run_load`), no Postfix and no milter.
spamd alone is the ceiling for any design that has spamd check every message on these
cores: spamd costs ~100-400 ms of CPU per ordinary message, Postfix and a milter a few.

Two streams:
  SpamMix   every message is new (unique Message-ID; corpus messages get a unique
            `X-Bench-Msg:` field on top, so no two messages of the run have the same bytes);
  MirvMix   the same, but 30% of the messages repeat an earlier message of the same phase
            byte for byte (headers and body; same envelope sender, HELO and client, so
            pymavis' verdict cache, checks/spam.py cache_key, can hit), to another
            recipient: a message sent to many recipients in separate transactions (a
            "MIRV"). A repeat comes at least REPEAT_GAP messages after its original, so the
            original's verdict is normally in (at concurrency 20 about 20 transactions are
            in flight). Headers carry a fixed Date (the mix's start), so a message is a
            function of its class and number and a repeat is made again, not stored.

spamd: one tests/harness/spamd.py SpamdProcess for the whole profile (Debian's rules,
`--local`, no network tests), reached on its unix socket. It runs with the harness's
`--max-children=2` unless SPAMD_ARGS says otherwise (see bench/README.md, "The spam
profile", for what was measured). Its log (`--syslog=stderr`) has one "spamd: result:"
line per message it checked: `results()` counts them, so the run knows how many messages
spamd really checked in a phase (with the cache on: messages - cache hits).

Checks that make a wrong figure fail the run instead:
  - spamd alone: a message carrying the GTUBE string must come back with the GTUBE rule
    (and score >= 1000), any other without it; a failed exchange fails the transaction;
  - bench/run.py: per phase spamd's "result:" lines must grow by exactly the phase's
    messages (spamd alone; pymavis with the cache off), or by at least the messages that
    are not repeats (cache on); pymavis must log no "SPAM CHECK FAILED" and exactly the
    phase's GTUBE messages as SPAM with the GTUBE rule.

Limits: the client's connect timeout 3 s (harness default of the client), each request
SPAMD_TIMEOUT_S; every phase is bounded by bench/run.py's phase timeout.
"""

from __future__ import annotations

import os
import random
import re
import time
from email.utils import formatdate
from pathlib import Path

import messages
import sender
from harness.spamd import GTUBE, SPAMD, SpamdProcess

from pymavis import rawmsg
from pymavis.spamd import SpamdClient, SpamdError

SPAMD_ARGS: tuple[str, ...] = ()     # over the harness's command line (--max-children=2)
SPAMD_TIMEOUT_S = 30.0               # per request, as the shipped example has it
SA_MAIL_BODY_SIZE_LIMIT = 400 * 1024 # pymavis' default (config/schema.py), amavis's
CACHE_TTL_S = 600                    # the cache-on variant: the shipped spam_cache (ttl_s 600)
MIRV_SHARE = 30                      # percent of the MIRV stream's messages that repeat one
REPEAT_GAP = 40                      # a repeat comes at least this many messages after its original
REPEAT_LABEL = "repeat (MIRV)"
# The `by` host of the Received line pymavis puts on top: Postfix's macro j, the harness
# instances' myhostname (tests/harness/postfix.py), so spamd alone gets as many bytes.
BY_HOST = "pymavis-test.localdomain"
COST_REPS, COST_REPS_CORPUS = 6, 10  # spamd_cost: ~15 s
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The X-Spam-* fields pymavis removes from what spamd sees (checks/spam.py OUR_HEADERS).
OUR_HEADERS = frozenset({"x-spam-flag", "x-spam-score", "x-spam-level", "x-spam-status", "x-spam-report",
                         "x-spam-checker-version", "x-spam-tests"})

# What the pymavis variants add to the shipped default policy: spam is passed (delivered,
# tagged), as is mail the banned rules block (some of SpamAssassin's spam carries Office
# macros), so that every message reaches the sink; every check still runs in full.
POLICY = {"final_spam_destiny": "pass", "final_banned_destiny": "pass"}


def scanners_yaml(socket_spec: str) -> str:
    """The spam_scanners value (YAML flow style) for one spamd."""
    return f'[{{name: spamd, socket: "{socket_spec}", timeout_s: {SPAMD_TIMEOUT_S:g}}}]'


def cache_yaml(ttl_s: float) -> str:
    return f"{{ttl_s: {ttl_s:g}, max_entries: 10000}}"


def start_spamd(workdir: Path) -> SpamdProcess:
    """A started SpamdProcess in workdir (the harness makes it die with us: a watchdog)."""
    return SpamdProcess(str(workdir), *SPAMD_ARGS).start()


def spamd_cpu_s(pid: int) -> float:
    """CPU seconds of spamd: the master and its living children (utime+stime), plus the
    children it has reaped (cutime+cstime; spamd replaces a child after
    --max-conn-per-child, 200, connections). A difference of two calls is spamd's CPU in
    between."""
    def stat(p: int) -> list[str]:
        raw = Path(f"/proc/{p}/stat").read_text()
        return raw[raw.rindex(")") + 2:].split()

    f = stat(pid)
    total = sum(int(x) for x in f[11:15])
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            try:
                c = stat(int(entry))
            except (OSError, ValueError):
                continue
            if int(c[1]) == pid:
                total += int(c[11]) + int(c[12])
    return total / CLK_TCK


_RESULT = re.compile(r"spamd: result: (\S) +(-?\d+) - (\S*)")


def results(spamd: SpamdProcess) -> list[tuple[bool, int, str]]:
    """spamd's "result:" lines so far: (is spam, score, rule names), one per message checked."""
    return [(m[1] == "Y", int(m[2]), m[3]) for m in _RESULT.finditer(spamd.log_text())]


# --- what spamd is given ----------------------------------------------------------------


def payload(mail_from: str, data: bytes, queue_id: str) -> bytes:
    """What pymavis sends spamd for a message from bench/sender.py (checks/spam.py
    message_for_spamd and envelope_lines): Return-Path, X-Envelope-From and a Received line
    for the client (127.0.0.1, HELO sender.HELO_NAME) on top, the message without X-Spam-*
    fields, cut at the last line end within sa_mail_body_size_limit."""
    msg = messages.unstuffed(data)
    if len(msg) > SA_MAIL_BODY_SIZE_LIMIT:
        msg = msg[:SA_MAIL_BODY_SIZE_LIMIT]
        cut = msg.rfind(b"\n")
        if cut > 0:
            msg = msg[:cut + 1]
    msg = rawmsg.without(msg, OUR_HEADERS.__contains__)
    lines = [f"Return-Path: <{mail_from}>", f"X-Envelope-From: <{mail_from}>",
             f"Received: from {sender.HELO_NAME} (localhost [127.0.0.1])\r\n\tby {BY_HOST} (pymavis) "
             f"with ESMTP id {queue_id};\r\n\t{formatdate(localtime=False, usegmt=True)}"]
    return "".join(line + "\r\n" for line in lines).encode() + msg


def unexpected(tests: tuple[str, ...], score: float, gtube: bool) -> str | None:
    """What is wrong with spamd's answer for a message that does (not) carry GTUBE."""
    if gtube and ("GTUBE" not in tests or score < 1000):
        return f"GTUBE message: score {score}, tests {','.join(tests) or 'none'}"
    if not gtube and "GTUBE" in tests:
        return f"GTUBE rule on a message without the string (score {score})"
    return None


class SpamdAlone:
    """bench/sender.py's `send` for spamd alone: one SYMBOLS of `payload`, checked for
    GTUBE; (start, end) are the request's (the payload is made before the clock starts)."""

    def __init__(self, socket_spec: str):
        self.socket_spec = socket_spec
        self.client: SpamdClient | None = None   # made in the worker process (after fork)
        self.n = 0

    def __call__(self, class_idx: int, mail_from: str, rcpt: str, data: bytes) -> tuple[float, float]:
        if self.client is None:
            self.client = SpamdClient(self.socket_spec, timeout=SPAMD_TIMEOUT_S)
        self.n += 1
        body = payload(mail_from, data, f"{os.getpid():X}{self.n:06X}")
        start = time.monotonic()
        try:
            reply = self.client.symbols(body)
        except SpamdError as exc:
            raise sender.TransactionFailed("spamd", f"{type(exc).__name__}: {exc}") from None
        end = time.monotonic()
        problem = unexpected(reply.tests, reply.score, GTUBE in body)
        if problem:
            raise sender.TransactionFailed("verdict", problem)
        return start, end


# --- the streams --------------------------------------------------------------------------


class SpamMix:
    """What the spam profile sends (`mix`: messages.SPAM_MIX): `classes` (label, share),
    `message(class_idx, msg_no)`, `gtube_count(n, seed, first_msg_no)`. Built once in the
    parent; the sender's worker processes inherit it by fork."""

    def __init__(self, seed: int = 1, mix: tuple[messages.MsgClass, ...] = messages.SPAM_MIX):
        self.mix = mix
        self.classes = tuple((c.label, c.share) for c in mix)
        self.date = formatdate(localtime=False)   # every message's Date: see the module doc
        self.bodies = [[messages.sized_body(c, f"{seed}/spam/{c.label}/{v}") for v in range(messages.VARIANTS)]
                       if c.size is not None else [] for c in mix]
        for cls, bodies in zip(mix, self.bodies):
            for b in bodies:
                assert b.body.endswith(b"\r\n") and b"\r\n." not in b.body, f"{cls.label}: body needs dot-stuffing"
        files = {"corpus": messages.corpus_candidates(), "spam": messages.sa_corpus("spam"),
                 "ham": messages.sa_corpus("ham")}
        self.files = {k: v for k, v in files.items() if any(c.size is None and c.pool == k for c in mix)}
        self.pools = {k: [messages.smtp_data(p.read_bytes()) for p in v] for k, v in self.files.items()}
        for k, pool in self.pools.items():
            if not pool:
                raise ValueError(f"no {k} messages for the spam mix")
            if k == "corpus":   # the selection leaves out gtube by its MANIFEST feature; be sure
                self.pools[k] = [m for m in pool if GTUBE not in m]

    def gtube(self, class_idx: int) -> bool:
        """Whether every message of this class carries the GTUBE string (the others none)."""
        return self.mix[class_idx].label == "GTUBE"

    def gtube_count(self, n: int, seed: int, first_msg_no: int) -> int:
        return sum(1 for c in sender.plan(n, seed, [s for _, s in self.classes]) if self.gtube(c))

    def message(self, class_idx: int, msg_no: int) -> tuple[str, str, bytes]:
        """(mail_from, rcpt, data with CRLF line ends, dot-stuffed, no final dot)."""
        rng = random.Random(1_000_003 + msg_no)
        mail_from = f"sender{msg_no % sender.ADDRESS_POOL}@{sender.SENDER_DOMAIN}"
        rcpt = f"user{(msg_no * 7) % sender.ADDRESS_POOL}@{sender.RCPT_DOMAIN}"
        cls = self.mix[class_idx]
        if cls.size is None:
            pool = self.pools[cls.pool]
            return mail_from, rcpt, b"X-Bench-Msg: %d\r\n" % msg_no + pool[msg_no % len(pool)]
        bodies = self.bodies[class_idx]
        body = bodies[msg_no % len(bodies)]
        subject = " ".join(rng.choice(sender._WORDS) for _ in range(6)).capitalize()
        head = sender._headers(rng, class_idx, msg_no, mail_from, rcpt, subject, body.content_type, self.date)
        return mail_from, rcpt, head + body.body


class MirvMix:
    """SpamMix's stream with MIRV_SHARE% of the messages repeating an earlier one of the
    same phase (see the module doc). Its `plan` (called by sender.run_load before the
    workers fork) decides which message repeats which; the repeat class is the last one."""

    def __init__(self, base: SpamMix, share: int = MIRV_SHARE, gap: int = REPEAT_GAP):
        self.base, self.share, self.gap = base, share, gap
        self.classes = base.classes + ((REPEAT_LABEL, share),)
        self.repeat = len(base.classes)
        self.origin: dict[int, tuple[int, int]] = {}   # repeat's msg_no -> (class, msg_no) of its original

    def plan(self, n: int, seed: int, first_msg_no: int) -> list[int]:
        """Class per message: the originals in SpamMix's seeded order, the repeats (class
        `self.repeat`) at seeded positions >= gap, each of an original at least `gap`
        messages earlier: its class drawn by the mix's shares, the original uniformly among
        the eligible ones of that class (of any class if there is none yet). The same shape
        for every variant of a repetition."""
        rng = random.Random(f"mirv/{seed}")
        repeats = n * self.share // 100
        gap = max(1, min(self.gap, n - repeats))
        at = set(rng.sample(range(gap, n), repeats)) if repeats else set()
        shares = [s for _, s in self.base.classes]
        originals = iter(sender.plan(n - repeats, seed, shares))
        # The repeats' classes follow the mix's shares as exactly as the originals' do (a
        # seeded shuffle of the same counts): spamd's cost differs 10-fold between classes,
        # so repeats drawn by luck would make the cache's gain a lottery between runs.
        wanted = iter(sender.plan(repeats, seed + 7919, shares))
        order: list[int] = []
        seen: list[int] = []          # positions of originals so far
        for pos in range(n):
            if pos in at:
                eligible = [p for p in seen if p <= pos - gap]
                cls = next(wanted)
                j = rng.choice([p for p in eligible if order[p] == cls] or eligible)
                self.origin[first_msg_no + pos] = (order[j], first_msg_no + j)
                order.append(self.repeat)
            else:
                order.append(next(originals))
                seen.append(pos)
        return order

    def gtube(self, class_idx: int) -> bool:
        return class_idx != self.repeat and self.base.gtube(class_idx)

    def repeats(self, n: int) -> int:
        return n * self.share // 100

    def gtube_count(self, n: int, seed: int, first_msg_no: int) -> int:
        order = self.plan(n, seed, first_msg_no)
        return sum(1 for pos, c in enumerate(order)
                   if self.base.gtube(self.origin[first_msg_no + pos][0] if c == self.repeat else c))

    def message(self, class_idx: int, msg_no: int) -> tuple[str, str, bytes]:
        if class_idx != self.repeat:
            return self.base.message(class_idx, msg_no)
        cls, orig = self.origin[msg_no]
        mail_from, _, data = self.base.message(cls, orig)
        return mail_from, f"user{(msg_no * 7) % sender.ADDRESS_POOL}@{sender.RCPT_DOMAIN}", data


# --- spamd's cost by class ------------------------------------------------------------------


def spamd_cost(client: SpamdClient, pid: int, mix: SpamMix, reps: int = COST_REPS,
               reps_corpus: int = COST_REPS_CORPUS) -> list[dict]:
    """spamd's CPU per message by class of the mix, one request at a time (SYMBOLS of
    `payload`, no other load): `reps` messages per generated class, `reps_corpus` of each
    corpus class (spread over its pool), spamd's CPU (spamd_cpu_s) over the class. One
    unmeasured request first. Every verdict is checked as in SpamdAlone."""
    rows = []
    for idx, cls in enumerate(mix.mix):
        if cls.size is None:
            pool = mix.pools[cls.pool]
            step = max(1, len(pool) // reps_corpus)
            numbers = [k * step for k in range(min(reps_corpus, len(pool)))]
        else:
            numbers = list(range(reps))
        batch = []
        for no in numbers:
            mail_from, _, data = mix.message(idx, 10_000_000 + no)
            batch.append(payload(mail_from, data, f"COST{no:06X}"))
        client.symbols(batch[0])
        cpu0, t0 = spamd_cpu_s(pid), time.monotonic()
        scores = []
        for body in batch:
            reply = client.symbols(body)
            problem = unexpected(reply.tests, reply.score, GTUBE in body)
            if problem:
                raise ValueError(f"{cls.label}: {problem}")
            scores.append(reply.score)
        wall, cpu = time.monotonic() - t0, spamd_cpu_s(pid) - cpu0
        rows.append({"class": cls.label, "share": cls.share, "n": len(batch),
                     "bytes": round(sum(map(len, batch)) / len(batch)),
                     "spamd_cpu_ms": cpu * 1000 / len(batch), "wall_ms": wall * 1000 / len(batch),
                     "score_min": min(scores), "score_max": max(scores)})
    return rows
