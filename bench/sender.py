"""The benchmark's load: SMTP transactions of realistic sizes at a fixed concurrency, timed
one by one as the client sees them.

Why not only `smtp-source`: it sends one fixed size per invocation and reports no
per-message time. This sender interleaves the size mix message by message (so concurrency
stays at C until the last message, and every size class meets every load level) and records
each transaction's latency. bench/run.py checks it against smtp-source in the same run
(Postfix alone, same messages and concurrency): if the C program gets clearly more through,
this sender was a bottleneck and the run says so.

Messages come from a mix: an object with `classes` ((label, share in percent) per class)
and `message(class_idx, msg_no)`. `SizeMix` below is the pass-through profile's;
bench/messages.py's `DecodeMix` is the decode profile's (attachments, nested messages,
corpus messages, 5 MB messages). The mix is built once by the caller and inherited by the
worker processes through fork, so large bodies are not rebuilt per phase.

SizeMix: `SIZE_MIX` below, shuffled deterministically (seeded) per repetition. Each has 16
header fields like inbound mail (Received x3, Authentication-Results, DKIM-Signature, ...),
a unique Message-ID and Date; 4 KB is text/plain, 32 KB and 256 KB are multipart/mixed with
a text part and a base64 attachment (256 KB is above pymavis' in-memory spool limit of
100 KiB, so it exercises the temp-file spool). Sizes are whole-message sizes (headers +
body), within 1%. One recipient per message, one message per connection (the common case
for an inbound MX).

One transaction: connect; 220; EHLO; MAIL FROM (with SIZE=), RCPT TO and DATA pipelined
(RFC 2920, as a real MTA client does); 354; the message and "."; 250. Its latency runs from
the start of connect() to the 250 after the dot: the time a sending MTA waits until it may
consider the message delivered. QUIT is sent afterwards, outside the timing.

Concurrency: `workers` processes (default: one per core, so the sender's own Python work
is not serialised on one GIL) each run their share of the C threads; every thread takes the
next message index from a counter shared by all processes, so exactly C transactions are in
flight until the messages run out.

Limits: every socket operation times out after `io_timeout_s` (an SMTP server that stalls
makes the transaction fail, it does not hang the benchmark); the caller bounds the whole
phase with `phase_timeout_s` and kills worker processes that overrun.

Failure: any reply other than the expected code, a timeout or a dropped connection is
recorded for that message with its stage and reply; the caller decides (bench/run.py: any
failed transaction fails the run).

Other loads: `run_load(send, ...)` drives any per-message `send(class_idx, mail_from, rcpt,
data) -> (start, end)` the same way (same plan, processes, threads, counter and records);
bench/virus.py uses it to scan the same messages with clamd alone, bench/spam.py to ask
spamd alone. A `send` reports a failure by raising TransactionFailed (SMTPFailure is one)
or OSError. A mix with a `plan(n, seed, first_msg_no)` method gives the class order itself
(bench/spam.py's MirvMix: 30% of the messages repeat an earlier one).
"""

from __future__ import annotations

import base64
import functools
import multiprocessing as mp
import os
import queue as queue_mod
import random
import resource
import socket
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate

# (label, whole-message bytes, share in percent). The shares follow the usual shape of
# inbound mail: most messages are a few KB of text, a third carry a small attachment or
# HTML, a tenth a larger attachment.
SIZE_MIX: tuple[tuple[str, int, int], ...] = (
    ("4 KB", 4 * 1024, 60),
    ("32 KB", 32 * 1024, 30),
    ("256 KB", 256 * 1024, 10),
)
SENDER_DOMAIN = "sender.example.org"
RCPT_DOMAIN = "example.com"
HELO_NAME = "mta.sender.example.org"
# Distinct sender and recipient addresses (cycled), so Postfix's address caches do not
# see a 100% hit rate (as smtp-source -N avoids).
ADDRESS_POOL = 100
VARIANTS_PER_CLASS = 4

_WORDS = ("the of and to in is that for it as was with be by on not he this are or his from "
          "at which but have an they you were her she there been one all we their has would "
          "when if so no will more about can out up them some could time these two may then "
          "do first any my now such like our over man me even most made after also did many "
          "invoice meeting report quarterly attached please find review project schedule").split()


def plan(n: int, seed: int, shares: list[int] | None = None) -> list[int]:
    """Class index per message: exactly the mix's shares (percent) of n (rounded down, the
    remainder to the first class), in a seeded random order."""
    counts = [n * share // 100 for share in (shares or [share for _, _, share in SIZE_MIX])]
    counts[0] += n - sum(counts)
    order = [i for i, c in enumerate(counts) for _ in range(c)]
    random.Random(seed).shuffle(order)
    return order


def _text_lines(rng: random.Random, nbytes: int) -> bytes:
    lines, size = [], 0
    while size < nbytes:
        words, width = [], 0
        while width < 68:
            w = rng.choice(_WORDS)
            words.append(w)
            width += len(w) + 1
        line = (" ".join(words)).capitalize().encode() + b"\r\n"
        lines.append(line)
        size += len(line)
    return b"".join(lines)


def _b64_lines(rng: random.Random, nbytes: int) -> bytes:
    raw = rng.randbytes(max(1, nbytes * 57 // 78))
    encoded = base64.b64encode(raw)
    return b"".join(encoded[i:i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


def _headers(rng: random.Random, idx: int, msg_no: int, mail_from: str, rcpt: str,
             subject: str, content_type: str, date: str | None = None) -> bytes:
    """The header section; `date` (Date and the Received lines) defaults to now. A fixed
    date makes the bytes a function of the arguments and the rng's state alone (the spam
    profile's MIRV stream repeats a message by making it again)."""
    ip = f"198.51.100.{rng.randrange(1, 255)}"
    host = f"out{rng.randrange(1, 40)}.{SENDER_DOMAIN}"
    date = date or formatdate(localtime=False)
    fields = [
        f"Received: from {host} ({host} [{ip}])\r\n\tby mx1.{RCPT_DOMAIN} (Postfix) with ESMTPS id 4Q{idx:08X}\r\n"
        f"\tfor <{rcpt}>; {date}",
        f"Received: from app{rng.randrange(1, 9)}.internal ([10.1.{rng.randrange(256)}.{rng.randrange(256)}])\r\n"
        f"\tby {host} with ESMTP id {rng.getrandbits(48):012x}; {date}",
        f"Received: by app.internal (Postfix, from userid 1000) id {rng.getrandbits(32):08X}; {date}",
        f"Authentication-Results: mx1.{RCPT_DOMAIN};\r\n\tdkim=pass header.d={SENDER_DOMAIN};\r\n"
        f"\tspf=pass smtp.mailfrom={SENDER_DOMAIN}; dmarc=pass header.from={SENDER_DOMAIN}",
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={SENDER_DOMAIN}; s=s1;\r\n"
        f"\th=from:to:subject:date:message-id:mime-version:content-type;\r\n"
        f"\tbh={base64.b64encode(rng.randbytes(32)).decode()};\r\n"
        f"\tb={base64.b64encode(rng.randbytes(128)).decode()[:70]}\r\n"
        f"\t {base64.b64encode(rng.randbytes(128)).decode()[:100]}",
        f"From: Sender {msg_no % ADDRESS_POOL} <{mail_from}>",
        f"To: <{rcpt}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <bench.{msg_no}.{rng.getrandbits(40):010x}@{SENDER_DOMAIN}>",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
        "X-Mailer: bench/sender.py",
        f"List-Unsubscribe: <mailto:unsubscribe-{msg_no}@{SENDER_DOMAIN}>",
        "Precedence: bulk" if rng.random() < 0.3 else "Importance: normal",
        f"X-Campaign-ID: {rng.getrandbits(64):016x}",
    ]
    return ("\r\n".join(fields) + "\r\n\r\n").encode()


@dataclass(frozen=True)
class Body:
    content_type: str
    body: bytes


def _body(rng: random.Random, class_idx: int, header_guess: int) -> Body:
    size = SIZE_MIX[class_idx][1]
    room = size - header_guess
    if class_idx == 0:
        text = _text_lines(rng, room)
        cut = text.rfind(b"\r\n", 0, room - 1) + 2   # whole lines only, then pad to the size
        return Body("text/plain; charset=us-ascii", text[:cut] + b"x" * (room - cut - 2) + b"\r\n")
    boundary = f"=_bench_{rng.getrandbits(48):012x}"
    text = _text_lines(rng, 1500)
    head = (f"This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            ).encode() + text + (
            f"\r\n--{boundary}\r\nContent-Type: application/pdf; name=\"report-{rng.randrange(999)}.pdf\"\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename=\"report-{rng.randrange(999)}.pdf\"\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    attachment = _b64_lines(rng, room - len(head) - len(tail))
    return Body(f"multipart/mixed;\r\n\tboundary=\"{boundary}\"", head + attachment + tail)


class SizeMix:
    """The pass-through profile's mix: message bodies per size class (a few variants each),
    headers made per message."""

    classes = tuple((label, share) for label, _, share in SIZE_MIX)

    def __init__(self, seed: int = 1):
        self.seed = seed
        self.bodies = [[self._sized_body(c, v) for v in range(VARIANTS_PER_CLASS)]
                       for c in range(len(SIZE_MIX))]

    def _sized_body(self, class_idx: int, variant: int) -> Body:
        # Size the body for the header section a message of this variant gets (the header
        # length varies by a few bytes between messages, well within 1%).
        def build(header_len: int) -> Body:
            return _body(random.Random(f"{self.seed}/{class_idx}/{variant}"), class_idx, header_len)
        sample = build(1500)
        head = _headers(random.Random(0), class_idx, variant, f"sender0@{SENDER_DOMAIN}",
                        f"user0@{RCPT_DOMAIN}", "Sample subject of six words here", sample.content_type)
        body = build(len(head))
        # The final "." must start a line of its own, or the server waits for more data.
        assert body.body.endswith(b"\r\n") and b"\r\n." not in body.body, "body needs dot-stuffing"
        return body

    def message(self, class_idx: int, msg_no: int) -> tuple[str, str, bytes]:
        """(mail_from, rcpt, data with CRLF line ends, ready to send, no final dot)."""
        rng = random.Random(self.seed * 1_000_003 + msg_no)
        mail_from = f"sender{msg_no % ADDRESS_POOL}@{SENDER_DOMAIN}"
        rcpt = f"user{(msg_no * 7) % ADDRESS_POOL}@{RCPT_DOMAIN}"
        body = self.bodies[class_idx][msg_no % VARIANTS_PER_CLASS]
        subject = " ".join(rng.choice(_WORDS) for _ in range(6)).capitalize()
        head = _headers(rng, class_idx, msg_no, mail_from, rcpt, subject, body.content_type)
        return mail_from, rcpt, head + body.body


# --- SMTP ---------------------------------------------------------------------------------


class TransactionFailed(Exception):
    """One message's transaction (an SMTP session, a clamd scan) did not do what it should."""

    def __init__(self, stage: str, detail: str):
        super().__init__(f"{stage}: {detail}")
        self.stage = stage
        self.detail = detail


class SMTPFailure(TransactionFailed):
    pass


def _expect(reader, code: bytes, stage: str) -> bytes:
    while True:
        line = reader.readline(4096)
        if not line:
            raise SMTPFailure(stage, "connection closed by server")
        if line[3:4] != b"-":
            break
    if line[:3] != code:
        raise SMTPFailure(stage, line.decode("ascii", "replace").rstrip())
    return line


def transact(host: str, port: int, mail_from: str, rcpt: str, data: bytes,
             io_timeout_s: float) -> tuple[float, float]:
    """One SMTP transaction (see the module doc); returns (start, accepted) monotonic times.
    Raises SMTPFailure or OSError."""
    start = time.monotonic()
    sock = socket.create_connection((host, port), timeout=io_timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        _expect(reader, b"220", "greeting")
        sock.sendall(f"EHLO {HELO_NAME}\r\n".encode())
        _expect(reader, b"250", "ehlo")
        sock.sendall(f"MAIL FROM:<{mail_from}> SIZE={len(data)}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        _expect(reader, b"250", "mail")
        _expect(reader, b"250", "rcpt")
        _expect(reader, b"354", "data")
        sock.sendall(data + b".\r\n")
        _expect(reader, b"250", "end of data")
        accepted = time.monotonic()
        try:
            sock.sendall(b"QUIT\r\n")
            reader.readline(4096)
        except OSError:
            pass  # the message is accepted; a lost QUIT reply does not matter
        return start, accepted
    finally:
        sock.close()


# --- the phase ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    msg_no: int
    class_idx: int
    start: float          # monotonic
    end: float            # monotonic; for a failure, when it failed
    error: str = ""


@dataclass(frozen=True)
class PhaseResult:
    records: tuple[Record, ...]
    t0: float                    # monotonic time the workers were released
    sender_cpu_s: float          # user+system CPU of all sender processes during the phase

    @property
    def failures(self) -> list[Record]:
        return [r for r in self.records if r.error]

    @property
    def wall_s(self) -> float:
        return max(r.end for r in self.records) - self.t0


def _smtp_send(host: str, port: int, io_timeout_s: float, class_idx: int, mail_from: str, rcpt: str,
               data: bytes) -> tuple[float, float]:
    return transact(host, port, mail_from, rcpt, data, io_timeout_s)


def _worker(send, mix, order, first_msg_no, threads, counter, start_evt, out_q):
    records: list[Record] = []
    lock = threading.Lock()

    def run_thread():
        mine = []
        while True:
            with counter.get_lock():
                i = counter.value
                counter.value += 1
            if i >= len(order):
                break
            cls = order[i]
            mail_from, rcpt, data = mix.message(cls, first_msg_no + i)
            t = time.monotonic()
            try:
                start, end = send(cls, mail_from, rcpt, data)
                mine.append(Record(i, cls, start, end))
            except (TransactionFailed, OSError) as exc:
                mine.append(Record(i, cls, t, time.monotonic(), f"{type(exc).__name__}: {exc}"))
        with lock:
            records.extend(mine)

    pool = [threading.Thread(target=run_thread, daemon=True) for _ in range(threads)]
    out_q.put(("ready", os.getpid()))
    start_evt.wait()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out_q.put(("done", records, cpu))


def run_phase(host: str, port: int, n: int, concurrency: int, *, mix, seed: int, first_msg_no: int,
              workers: int | None = None, io_timeout_s: float = 120.0,
              phase_timeout_s: float = 1800.0) -> PhaseResult:
    """Send n messages of `mix` (its classes shuffled with `seed`) at `concurrency`; return
    every transaction's record. Message numbers start at first_msg_no (unique Message-IDs
    across phases). Raises TimeoutError (after killing its workers) past phase_timeout_s."""
    return run_load(functools.partial(_smtp_send, host, port, io_timeout_s), n, concurrency, mix=mix,
                    seed=seed, first_msg_no=first_msg_no, workers=workers, phase_timeout_s=phase_timeout_s)


def run_load(send, n: int, concurrency: int, *, mix, seed: int, first_msg_no: int,
             workers: int | None = None, phase_timeout_s: float = 1800.0) -> PhaseResult:
    """run_phase with any `send(class_idx, mail_from, rcpt, data) -> (start, end)` per
    message (see the module doc). The worker processes are forked: `send` and `mix` are
    inherited, not pickled."""
    # A mix may make its own plan (the spam profile's MIRV stream: which messages repeat
    # which, by message number); it is made here, before the workers fork, so they inherit it.
    order = (mix.plan(n, seed, first_msg_no) if hasattr(mix, "plan")
             else plan(n, seed, [share for _, share in mix.classes]))
    workers = max(1, min(concurrency, workers or os.cpu_count() or 2))
    shares = [concurrency // workers + (1 if w < concurrency % workers else 0) for w in range(workers)]
    ctx = mp.get_context("fork")
    counter = ctx.Value("l", 0)
    start_evt = ctx.Event()
    out_q = ctx.Queue()
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(send, mix, order, first_msg_no, k, counter, start_evt, out_q))
             for k in shares]
    deadline = time.monotonic() + phase_timeout_s
    try:
        for p in procs:
            p.start()
        for _ in procs:
            kind, *_ = out_q.get(timeout=60)
            assert kind == "ready", kind
        t0 = time.monotonic()
        start_evt.set()
        records: list[Record] = []
        cpu = 0.0
        for _ in procs:
            left = deadline - time.monotonic()
            try:
                kind, recs, c = out_q.get(timeout=max(1.0, left))
            except queue_mod.Empty:
                raise TimeoutError(f"sender did not finish {n} messages within {phase_timeout_s:g} s")
            records.extend(recs)
            cpu += c
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    records.sort(key=lambda r: r.msg_no)
    if len(records) != n:
        raise RuntimeError(f"sender returned {len(records)} records for {n} messages")
    return PhaseResult(tuple(records), t0, cpu)
