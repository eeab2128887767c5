"""The spamd client against a real spamd (harness.spamd, started once for the module: it
compiles SpamAssassin's rules for several seconds) and against fakes for the failures a
real spamd will not show on demand (harness.fakespamd, harness.fakescanner's "stall").
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

from harness.fakescanner import FakeScanner
from harness.fakespamd import FakeSpamd
from harness.net import closed_port
from harness.spamd import GTUBE, SAMPLES, SpamdProcess
from pymavis.spamd import (SpamdClient, SpamdError, SpamdProtocolError, SpamdServerError,
                           SpamdTimeout, SpamdUnavailable, SpamReply)

KINDS = ("unix", "inet")
GTUBE_MESSAGE = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: test\r\n"
                 b"Message-ID: <gtube@example.org>\r\n\r\n" + GTUBE + b"\r\n")
with open(os.path.join(SAMPLES, "sample-nonspam.txt"), "rb") as _fh:
    NONSPAM = _fh.read()
_PARAGRAPH = (b"Minutes of the meeting: we went through the list of open items, agreed on "
              b"the dates for the next release and assigned the remaining reviews.\n")
BIG_MESSAGE = NONSPAM + _PARAGRAPH * (50 * 1024 // len(_PARAGRAPH))


@pytest.fixture(scope="module")
def spamd(tmp_path_factory):
    with SpamdProcess(str(tmp_path_factory.mktemp("spamd"))) as process:
        print(f"\nspamd started in {process.startup_s:.2f} s")
        yield process


def client(process: SpamdProcess, kind: str = "unix", **kw) -> SpamdClient:
    return SpamdClient(process.socket_spec(kind), **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_ping(spamd, kind):
    client(spamd, kind).ping()


@pytest.mark.parametrize("kind", KINDS)
def test_gtube_is_spam(spamd, kind):
    reply = client(spamd, kind).symbols(GTUBE_MESSAGE)
    assert reply.is_spam and reply.score >= 1000 and reply.required == 5.0
    assert "GTUBE" in reply.tests


def test_sample_nonspam_is_ham(spamd):
    reply = client(spamd).symbols(NONSPAM)
    assert not reply.is_spam and reply.score < 2, reply


def test_check_gives_verdict_only(spamd):
    reply = client(spamd).check(GTUBE_MESSAGE)
    assert reply.is_spam and reply.score >= 1000 and reply.tests == ()


def test_report_gives_names_with_scores(spamd):
    reply = client(spamd).report(GTUBE_MESSAGE)
    assert dict(reply.scores)["GTUBE"] == 1000.0
    assert set(reply.tests) == set(client(spamd).symbols(GTUBE_MESSAGE).tests)


@pytest.mark.parametrize("message, flag", [(GTUBE_MESSAGE, "Yes"), (NONSPAM, "No")],
                         ids=["gtube", "nonspam"])
def test_headers_returns_x_spam_status(spamd, message, flag):
    reply = client(spamd).headers(message)
    status = reply.header("X-Spam-Status")
    assert status is not None and status.startswith(f"{flag}, score="), reply.headers
    assert ("GTUBE" in reply.tests) == (flag == "Yes")


def test_user_header_accepted(spamd):
    assert client(spamd, user="alice").symbols(GTUBE_MESSAGE).is_spam


def test_user_with_space_refused():
    with pytest.raises(ValueError):
        SpamdClient("inet:127.0.0.1:783", user="a b")


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_round_trip(spamd, kind):
    compressed = client(spamd, kind, compress=True)
    assert compressed.symbols(GTUBE_MESSAGE) == client(spamd, kind).symbols(GTUBE_MESSAGE)
    assert not compressed.symbols(NONSPAM).is_spam


def test_tell_learns(spamd):
    message = NONSPAM.replace(b"Message-Id: <", b"Message-Id: <tell-test.")
    assert client(spamd).tell(message, "ham")
    assert not client(spamd).tell(message, "ham"), "learned twice"
    assert client(spamd).tell(message, "spam"), "relearning as the other class"


def test_tell_refuses_unknown_class():
    with pytest.raises(ValueError):
        SpamdClient("inet:127.0.0.1:783").tell(b"x", "maybe")


def test_bad_spec_is_value_error():
    with pytest.raises(ValueError):
        SpamdClient("tcp:localhost")


def test_connection_refused_is_unavailable_fast():
    with closed_port() as port:
        began = time.monotonic()
        with pytest.raises(SpamdUnavailable):
            SpamdClient(f"inet:127.0.0.1:{port}").ping()
    assert time.monotonic() - began < 0.5


def test_missing_socket_file_is_unavailable(tmp_path):
    with pytest.raises(SpamdUnavailable):
        SpamdClient(f"unix:{tmp_path}/nothing.sock").ping()


def test_stall_is_timeout():
    with FakeScanner("stall") as fake:
        began = time.monotonic()
        with pytest.raises(SpamdTimeout):
            SpamdClient(fake.socket_spec, timeout=0.5).symbols(GTUBE_MESSAGE)
        assert 0.4 < time.monotonic() - began < 2


@pytest.mark.parametrize("reply", [
    b"HELLO\r\n",
    b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe\r\n\r\n",
    b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1.2.3 / 5.0\r\n\r\n",
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: 50\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE",
    b"SPAMD/1.1 0 EX_OK\r\nno colon here\r\n\r\n",
    b"",
], ids=["garbage", "bad-spam-header", "bad-score", "truncated-body", "bad-header-line", "closed"])
def test_garbage_is_protocol_error(reply):
    with FakeSpamd(reply) as fake:
        with pytest.raises(SpamdProtocolError):
            SpamdClient(fake.socket_spec).symbols(GTUBE_MESSAGE)


def test_ex_code_is_server_error():
    with FakeSpamd(b"SPAMD/1.0 76 Bad header line: x\r\n") as fake:
        with pytest.raises(SpamdServerError) as info:
            SpamdClient(fake.socket_spec).symbols(GTUBE_MESSAGE)
    assert info.value.code == 76 and isinstance(info.value, SpamdError)


def test_request_format():
    with FakeSpamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.1 / 5.0\r\n\r\n") as fake:
        reply = SpamdClient(fake.socket_spec, user="bob").check(b"abc")
    assert reply == SpamReply(0.1, 5.0, False)
    assert fake.requests == [b"CHECK SPAMC/1.5\r\nContent-length: 3\r\nUser: bob\r\n\r\nabc"]


def test_eight_threads_at_once(spamd):
    messages = [GTUBE_MESSAGE, NONSPAM] * 4
    spamd_client = client(spamd)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(spamd_client.symbols, messages))
    assert [r.is_spam for r in replies] == [True, False] * 4
    assert all("GTUBE" in r.tests for r in replies[::2])


@pytest.mark.parametrize("message", [GTUBE_MESSAGE, NONSPAM, BIG_MESSAGE],
                         ids=["gtube", "sample-nonspam", "50KB"])
def test_timing(spamd, message):
    """Not a benchmark: prints the per-message time (-s shows it) and bounds it loosely."""
    spamd_client = client(spamd)
    spamd_client.symbols(message)       # warm: the child's first message costs more
    times = []
    for _ in range(3):
        began = time.monotonic()
        spamd_client.symbols(message)
        times.append(time.monotonic() - began)
    print(f"\n{len(message)} bytes: {min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms")
    assert max(times) < 10
