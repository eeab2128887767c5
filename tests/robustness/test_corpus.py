"""Every message of the shared test corpus through one running pymavis, over the milter
protocol as Postfix speaks it (harness.milterclient); plus the client's own checks.

The corpus is read in place from ../shared/corpus (conftest.CORPUS); MANIFEST.tsv lists the
messages (~890, 12.5 MB; the raw TNEF/archive fixtures are not messages and are not sent).
One test per corpus source folder: it sends every message of the folder, collects every
message that went wrong and reports them together, naming folder and file.

What "went wrong" means for a message: the client raised (the milter closed the connection,
answered garbage, or said nothing for CLIENT_TIMEOUT_S), the answer was not "continue" with
our X-Virus-Scanned header inserted at the top (or 552 for a message over the size limit;
every other category's destiny is pass here),
pymavis counted a different size than the client sent (bytes lost or added on the way), it
took longer than SLOW_S, or the pymavis log gained "internal error" or "Traceback" while
it was processed. The process must survive the corpus and exit cleanly on SIGTERM.

Limits: scan_deadline_s is set to 20 s so a check that hangs shows as a TEMPFAIL answer
well before the client gives up (CLIENT_TIMEOUT_S); SLOW_S flags a message that does not
hang but comes close to the deadline (the whole corpus takes a few seconds; speed is
measured in bench/, never asserted here).

A leading mbox "From " line is dropped before sending: it is the envelope of the mailbox
the file came from, which an MTA never sees as part of the message.
"""

import csv
import os
import re
import socket
import threading
import time
from collections import defaultdict

import pytest

from conftest import CORPUS
from conftest import scanners_yaml
from harness.milterclient import (MILTER_CHUNK_SIZE, MILTER_MAX_DATA_SIZE, POSTFIX_PROTOCOL, MilterClient,
                                  MilterProtocolError, MilterTimeout, split_message)
from harness.net import LOOPBACK
from harness.pymavisd import PymavisProcess

SIZE_LIMIT = 10_000_000
CLIENT_TIMEOUT_S = 30
SLOW_S = 15.0   # a hang guard below scan_deadline_s (20 s), not a speed target
SMALL_BANK_PORT = "10587"

MAIN = f"""\
interface_policy: {{{SMALL_BANK_PORT}: SMALL}}
milter: {{scan_deadline_s: 20}}
policy:
  local_domains: [example.com]
  # every category passes (tagged), so every message is answered "continue" and its size checked
  final_virus_destiny: pass
  final_banned_destiny: pass
  final_unchecked_destiny: pass
  final_bad_header_destiny: pass
  message_size_limit: {{"small@example.com": 500, ".": {SIZE_LIMIT}}}
"""
BANKS = {"small.yaml": """\
    SMALL:
      message_size_limit: 1000
"""}
ENVELOPE = {"mail_from": "<sender@example.org>", "rcpts": ["<rcpt@example.com>"]}
ERROR_MARKS = ("internal error", "Traceback")


def _manifest() -> dict[str, list[str]]:
    """{source folder: [message file, ...]} from MANIFEST.tsv; a missing corpus fails collection."""
    path = os.path.join(CORPUS, "MANIFEST.tsv")
    folders = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            folders[row["source"]].append(row["path"])
    return dict(sorted(folders.items()))


MANIFEST = _manifest()


@pytest.fixture(scope="module")
def milter(tmp_path_factory, clamd):
    proc = PymavisProcess(str(tmp_path_factory.mktemp("corpus")), MAIN + scanners_yaml(clamd), BANKS).start()
    yield proc
    assert proc.stop() == 0, proc.log_text()[-5000:]
    assert "pymavis stopped" in proc.log_text()


class LogTail:
    """The part of the pymavis log written since the last call."""

    def __init__(self, path):
        self.path = path
        self.offset = os.path.getsize(path)

    def new(self) -> str:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        return data.decode("utf-8", "replace")


def read_message(path: str) -> bytes:
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    return raw


def expected_size(raw: bytes) -> int:
    """What pymavis should count for `raw` as the client sends it (HDR_LEADSPC negotiated):
    each header field as "name:value" with CRLF line ends, the empty line, the CRLF body."""
    headers, body = split_message(raw, leading_space=True)
    return sum(len(n) + 1 + len(v.replace(b"\n", b"\r\n")) + 2 for n, v in headers) + 2 + len(body)


def logged_size(log: str, qid: str) -> int | None:
    m = re.search(rf"Queue-ID: {qid}, .*?size: (\d+)", log)
    return int(m.group(1)) if m else None


def problems_of(raw: bytes, result, elapsed: float, log: str, qid: str) -> list[str]:
    out = []
    if result.action == "continue" and logged_size(log, qid) != expected_size(raw):
        out.append(f"pymavis counted {logged_size(log, qid)} bytes, the client sent {expected_size(raw)}")
    if len(raw) > SIZE_LIMIT:
        if result.action != "replycode" or not (result.reply or "").startswith("552 5.3.4"):
            out.append(f"over the size limit but answered {result.action} {result.reply!r}")
        return out
    if result.action != "continue":
        out.append(f"answered {result.action} {result.reply!r} at {result.stage}")
    elif not any(m[:3] == ("insheader", 0, "X-Virus-Scanned") for m in result.modifications):
        out.append(f"no X-Virus-Scanned insheader; edits: {result.modifications!r}")
    if elapsed > SLOW_S:
        out.append(f"took {elapsed:.1f} s (> {SLOW_S} s)")
    return out


@pytest.mark.parametrize("folder", sorted(MANIFEST))
def test_corpus_folder(milter, folder):
    tail = LogTail(milter.log_path)
    failures = []
    client = None
    for n, name in enumerate(MANIFEST[folder]):
        rel = f"{folder}/{name}"
        raw = read_message(os.path.join(CORPUS, folder, name))
        qid = f"C{n:04d}X"     # our Queue-ID, to find the message's log line
        if client is None:
            client = MilterClient(LOOPBACK, milter.port, timeout=CLIENT_TIMEOUT_S)
        t0 = time.monotonic()
        try:
            result = client.send_message(raw, macros={"mail": {"i": qid}, "eom": {"i": qid}}, **ENVELOPE)
        except (MilterTimeout, MilterProtocolError) as exc:
            failures.append(f"{rel}: {type(exc).__name__}: {exc}")
            client.close()
            client = None   # a fresh connection for the next message
            result = None
        elapsed = time.monotonic() - t0
        logged = tail.new()
        if result is not None:
            failures += [f"{rel}: {p}" for p in problems_of(raw, result, elapsed, logged, qid)]
        for mark in ERROR_MARKS:
            if mark in logged:
                start = logged.rfind("\n", 0, logged.index(mark)) + 1
                excerpt = logged[start:start + 1500]
                failures.append(f"{rel}: {mark!r} in the pymavis log:\n{excerpt}")
                break
        if milter.proc.poll() is not None:
            failures.append(f"{rel}: pymavis exited with {milter.proc.returncode}")
            break
    if client is not None:
        client.close()
    if failures:
        pytest.fail(f"{len(failures)} problem(s) with {len(MANIFEST[folder])} messages of {folder}:\n"
                    + "\n".join(failures), pytrace=False)


# --- the client's own checks, against the same process ---------------------------------

def _message(body_bytes: int, subject: str = "test") -> bytes:
    line = b"x" * 78 + b"\n"
    body = line * (body_bytes // len(line) + 1)
    return (f"From: a@example.org\nDate: Sun, 22 Nov 2026 06:00:00 +0000\nSubject: {subject}\n\n".encode()
            + body[:body_bytes - 1] + b"\n")


def test_negotiation_is_what_pymavis_asks_for(milter):
    from pymavis import adapter

    with MilterClient(LOOPBACK, milter.port, timeout=10) as mc:
        actions, protocol = mc.negotiate()
    assert actions == adapter.WANTED_ACTIONS
    wanted = adapter.SKIPPED_STEPS | adapter.NO_REPLY_STEPS | adapter.OPTIONAL_PROTOCOL
    assert protocol == POSTFIX_PROTOCOL & wanted
    assert "{daemon_port}" in mc.symlists[0] and mc.symlists[5] == {"i"}


def test_mta_offering_no_protocol_options(milter):
    # Every step then waits for a reply, DATA is sent and header values lose their first space.
    with MilterClient(LOOPBACK, milter.port, timeout=10, protocol=0) as mc:
        assert mc.negotiate()[1] == 0
        r = mc.send_message(_message(200_000), **ENVELOPE)
    assert r.action == "continue", r
    (edit,) = r.modifications
    assert edit[:3] == ("insheader", 0, "X-Virus-Scanned") and edit[3].startswith("pymavis at ")


def test_oversized_for_the_bank_answers_552(milter):
    with MilterClient(LOOPBACK, milter.port, timeout=10) as mc:
        r = mc.send_message(_message(2000), macros={"connect": {"{daemon_port}": SMALL_BANK_PORT}}, **ENVELOPE)
    assert r.action == "replycode", r
    assert r.reply.startswith("552 5.3.4 "), r
    assert r.stage == "eom"


def test_one_small_recipient_is_deleted(milter):
    with MilterClient(LOOPBACK, milter.port, timeout=10) as mc:
        r = mc.send_message(_message(2000), mail_from="<a@example.org>",
                            rcpts=["<small@example.com>", "<big@example.com>"])
    assert r.action == "continue", r
    assert [x.action for x in r.rcpt_replies] == ["continue", "continue"]
    assert ("delrcpt", "<small@example.com>") in r.modifications
    assert ("delrcpt", "<big@example.com>") not in r.modifications


def test_declared_size_refuses_one_recipient_at_rcpt(milter):
    with MilterClient(LOOPBACK, milter.port, timeout=10) as mc:
        r = mc.send_message(_message(100), mail_from="<a@example.org>", mail_args=["SIZE=5000"],
                            rcpts=["<small@example.com>", "<big@example.com>"])
    assert r.action == "continue", r
    assert r.rcpt_replies[0].action == "replycode" and r.rcpt_replies[0].reply.startswith("552 5.3.4")
    assert r.rcpt_replies[1].action == "continue"


def test_many_messages_on_one_connection_with_chunked_bodies(milter):
    size = 3 * MILTER_CHUNK_SIZE + 1234
    raws = [_message(size, "one"), _message(10, "two"), _message(size, "three")]
    with MilterClient(LOOPBACK, milter.port, timeout=10) as mc:
        results = mc.send_many(raws, **ENVELOPE)
    assert [r.action for r in results] == ["continue"] * 3
    # Every chunk arrived: pymavis counts the same bytes we sent (header + CRLF body).
    sent = [len(raw.replace(b"\n", b"\r\n")) for raw in raws]
    sizes = [int(l.split("size: ", 1)[1].split(",", 1)[0]) for l in milter.log_text().splitlines()
             if "Passed CLEAN" in l][-3:]
    assert sizes == sent


def test_messages_with_no_separator_nul_and_huge_header(milter):
    raws = [b"From: a@example.org\nSubject: no separator\nthis is not a header line\nmore\n",
            b"Subject: nul\x00in value\n\nbody with \x00 nul\n",
            b"Subject: " + b"z" * (2 * MILTER_MAX_DATA_SIZE) + b"\n\nbody\n",
            b"\xff\xfe binary junk, not a header\n\x00\x01\x02",
            b""]
    with MilterClient(LOOPBACK, milter.port, timeout=10) as mc:
        results = mc.send_many(raws, **ENVELOPE)
    assert [r.action for r in results] == ["continue"] * len(raws), results


@pytest.mark.parametrize("raw,leadspc,headers,body", [
    (b"A: 1\nB:  2\n\nbody\n", False, [(b"A", b"1"), (b"B", b" 2")], b"body\r\n"),
    (b"A: 1\nB:  2\n\nbody\n", True, [(b"A", b" 1"), (b"B", b"  2")], b"body\r\n"),
    (b"A: 1\r\n\tfolded\r\n  twice\r\n\r\nx\r\n", False, [(b"A", b"1\n\tfolded\n  twice")], b"x\r\n"),
    (b"A: 1\nnot a header\nB: 2\n", False, [(b"A", b"1")], b"not a header\r\nB: 2\r\n"),
    (b"From sender Mon Jan 1\nA: 1\n\nx\n", False, [], b"From sender Mon Jan 1\r\nA: 1\r\n\r\nx\r\n"),
    (b" leading space\nA: 1\n", False, [], b" leading space\r\nA: 1\r\n"),
    (b"Name \t: v\n\n", False, [(b"Name", b"v")], b""),
    (b"A: x\x00y\n\nb\x00c\n", False, [(b"A", b"x")], b"b\x00c\r\n"),
    (b"A: 1\n\nbare\rcr\nno final newline", False, [(b"A", b"1")], b"bare\rcr\r\nno final newline\r\n"),
    (b"A: 1\n", False, [(b"A", b"1")], b""),
    (b"", False, [], b""),
], ids=["strip-one-space", "leadspc-keeps-all", "folded-joined-with-LF", "non-header-starts-body",
        "mbox-from-line-is-body", "continuation-first-is-body", "blank-before-colon", "nul-ends-value",
        "bare-cr-kept-last-line-terminated", "header-only", "empty"])
def test_split_message(raw, leadspc, headers, body):
    assert split_message(raw, leading_space=leadspc) == (headers, body)


def test_split_message_cuts_a_header_to_the_packet_limit():
    (name, value), = split_message(b"Subject: " + b"z" * 100_000 + b"\n\n")[0]
    assert len(name) + len(value) + 2 == MILTER_MAX_DATA_SIZE


def _server(behaviour):
    """A one-connection TCP server on loopback that `behaviour(conn)` drives; returns its port."""
    srv = socket.create_server((LOOPBACK, 0))

    def run():
        conn, _ = srv.accept()
        with conn:
            behaviour(conn)
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1]


def test_silent_milter_raises_timeout_naming_the_stage():
    done = threading.Event()
    port = _server(lambda conn: done.wait(5))
    mc = MilterClient(LOOPBACK, port, timeout=0.3)
    with pytest.raises(MilterTimeout, match="negotiate"):
        mc.negotiate()
    done.set()
    mc.close()


def test_milter_that_hangs_up_raises_protocol_error():
    port = _server(lambda conn: conn.recv(100))
    with MilterClient(LOOPBACK, port, timeout=5) as mc, pytest.raises(MilterProtocolError, match="closed"):
        mc.negotiate()


def test_pymavis_survived_the_corpus(milter):
    """Runs last in this file: the process is alive and its log is clean after everything above."""
    assert milter.proc.poll() is None
    log = milter.log_text()
    for mark in ERROR_MARKS:
        assert mark not in log, log[log.index(mark) - 500:][:3000]
