"""The virus check behind a real Postfix, with a real clamd.

Infected mail (EICAR plain and base64, clam.exe base64, and clamav-testfiles' zip, 7z,
tar.gz, cab, uuencoded, TNEF and a zip in a forwarded message) is refused at end-of-data
with the virus name in the 554 reply; a virus lover among two recipients gets it tagged
while the other is removed (delrcpt); clean mail passes with X-Virus-Scanned.

Failure modes, on a second pymavis process whose configuration each test rewrites and
reloads, behind its own filtering Postfix and a "front" Postfix (no milter) that relays
into it and keeps what it is refused in its queue:
- every scanner failed with virus_scanners_failure_is_fatal: a fake scanner that stalls,
  and a real clamd stopped mid-run: 451 4.3.0; the front keeps the message and delivers
  it once a working clamd is back;
- the same failures with virus_scanners_failure_is_fatal false: delivered UNCHECKED,
  without X-Virus-Scanned;
- a dead primary: the backup scanner answers;
- a message over clamd's StreamMaxLength: UNCHECKED over limits, never clean.
"""

from __future__ import annotations

import re
import uuid

import pytest

from conftest import scanners_yaml
from harness.clamd import CLAM_EXE_SIGNATURE, EICAR, EICAR_SIGNATURE, ClamdProcess, reported
from harness.fakescanner import FakeScanner
from harness.net import wait_until
from harness.postfix import PostfixInstance, front_mta
from harness.pymavisd import PymavisProcess
from harness.samples import zip_bytes
from harness.virusmail import SENDER, attached, big, clamav_file, eicar_plain, forwarded, plain, uuencoded_inline

BOB, LOVER = "bob@example.net", "lover@example.net"
POLICY = """\
mydomain: example.test
policy:
  mynetworks: [10.0.0.0/8]         # loopback test clients count as the Internet
  local_domains: [example.net]
  final_virus_destiny: reject
  virus_lovers: [lover@example.net]
  virus_scanners_failure_is_fatal: {fatal}
"""


def scanner(name: str, socket: str, method: str, timeout_s: float = 10) -> str:
    return f'{{name: {name}, socket: "{socket}", method: {method}, timeout_s: {timeout_s}}}'


def config(primaries: list[str], backups: list[str] | None = None, *, fatal: bool = True) -> str:
    text = POLICY.format(fatal=str(fatal).lower()) + "av_scanners:\n"
    text += "".join(f"  - {s}\n" for s in primaries)
    if backups:
        text += "av_scanners_backup:\n" + "".join(f"  - {s}\n" for s in backups)
    return text


def subject(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


def clean(subj: str, to: str = BOB) -> bytes:
    return plain(subj, "nothing to see here\r\n", to)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pymavis(tmp_path_factory, clamd):
    """Rejects viruses, with the session's clamd; never reconfigured."""
    proc = PymavisProcess(str(tmp_path_factory.mktemp("pymavis")), POLICY.format(fatal="true")
                          + scanners_yaml(clamd)).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def postfix(public_tmp, sink, pymavis):
    with PostfixInstance(public_tmp / "postfix", sink_port=sink.port, milter=pymavis.socket_spec) as pf:
        yield pf


@pytest.fixture(scope="module")
def spare(tmp_path_factory, clamd):
    """The failure modes' pymavis: each test gives it its configuration with configure()."""
    proc = PymavisProcess(str(tmp_path_factory.mktemp("spare")),
                          config([scanner("clamd", clamd.socket_spec("unix"), "fildes")])).start()
    yield proc
    assert proc.stop() == 0


@pytest.fixture(scope="module")
def spare_postfix(public_tmp, sink, spare):
    with PostfixInstance(public_tmp / "spare-postfix", sink_port=sink.port, milter=spare.socket_spec,
                         extra_main={"myhostname": "filter.test"}) as pf:
        yield pf


@pytest.fixture(scope="module")
def front(public_tmp, sink, spare_postfix):
    """A sending MTA without a milter that relays everything into spare_postfix."""
    with front_mta(public_tmp / "front", spare_postfix, sink.port) as pf:
        yield pf


def configure(proc: PymavisProcess, text: str) -> None:
    """Write and reload `proc`'s configuration; fail unless the reload took."""
    before = proc.log_text().count("configuration reloaded")
    proc.write_config(text, {})
    proc.reload()
    assert proc.log_text().count("configuration reloaded") > before, proc.log_text()[-3000:]


def delivered(sink, subj, timeout=30):
    return wait_until(lambda: next((m for m in sink.messages if m.message["Subject"] == subj), None),
                      timeout, what=f"{subj!r} at the sink")


def arrived(sink, subj: str) -> bool:
    return any(subj in str(m.message["Subject"]) for m in sink.messages)


def log_line(proc: PymavisProcess, contains: str) -> str:
    return wait_until(lambda: next((l for l in reversed(proc.log_text().splitlines()) if contains in l), None),
                      15, what=f"pymavis log line with {contains!r}")


def deferred(front: PostfixInstance, queue_id: str, reason: str) -> dict:
    """Wait until the front holds message `queue_id` deferred with `reason` in its delay
    reason; return its `postqueue -j` entry."""
    def found():
        return next((q for q in front.queue() if q["queue_id"] == queue_id
                     and any(reason in r.get("delay_reason", "") for r in q.get("recipients", []))), None)
    return wait_until(found, 60, what=f"the front MTA to defer {queue_id} with {reason!r}")


def tempfailed(proc: PymavisProcess, reply) -> str:
    """Assert `reply` is our 451 for a failed content check; the log line saying why."""
    m = re.fullmatch(r"4\.3\.0 Temporary content check failure, try again later, id=(\S+)", reply.text)
    assert reply.code == 451 and reply.stage == "eom" and m, reply
    return log_line(proc, f"mail_id {m.group(1)}: ALL VIRUS SCANNERS FAILED: ")


def mail_id_of(proc: PymavisProcess, queue_id: str) -> str:
    """The mail_id of the main log line of the message Postfix queued as `queue_id`."""
    return re.search(r"mail_id: (\S+),", log_line(proc, f"Queue-ID: {queue_id},")).group(1)


def assert_delivered_scanned(sink, subj: str):
    msg = delivered(sink, subj).message
    assert msg["X-Virus-Scanned"] == "pymavis at example.test", msg
    assert msg["X-Pymavis-Alert"] is None, msg["X-Pymavis-Alert"]
    return msg


# --- infected, lover, clean ---------------------------------------------------------------


def _forwarded_zip(subj: str) -> bytes:
    inner = attached("invoice", "docs.zip", "application/zip", zip_bytes(("clam.exe", clamav_file("clam.exe"))))
    return forwarded(subj, inner)


INFECTED = [
    pytest.param(eicar_plain, EICAR_SIGNATURE, id="eicar-plain"),
    pytest.param(lambda s: attached(s, "eicar.com", "application/octet-stream", EICAR), EICAR_SIGNATURE,
                 id="eicar-base64"),
    pytest.param(lambda s: attached(s, "clam.exe", "application/x-msdownload", clamav_file("clam.exe")),
                 CLAM_EXE_SIGNATURE, id="clam.exe-base64"),
    pytest.param(lambda s: attached(s, "clam.zip", "application/zip", clamav_file("clam.zip")),
                 CLAM_EXE_SIGNATURE, id="zip"),
    pytest.param(lambda s: attached(s, "clam.7z", "application/x-7z-compressed", clamav_file("clam.7z")),
                 CLAM_EXE_SIGNATURE, id="7z"),
    pytest.param(lambda s: attached(s, "clam.tar.gz", "application/gzip", clamav_file("clam.tar.gz")),
                 CLAM_EXE_SIGNATURE, id="tar.gz"),
    pytest.param(lambda s: attached(s, "clam.cab", "application/vnd.ms-cab-compressed", clamav_file("clam.cab")),
                 CLAM_EXE_SIGNATURE, id="cab"),
    pytest.param(uuencoded_inline, CLAM_EXE_SIGNATURE, id="uuencoded-inline"),
    pytest.param(lambda s: attached(s, "winmail.dat", "application/ms-tnef", clamav_file("clam.tnef")),
                 CLAM_EXE_SIGNATURE, id="tnef"),
    pytest.param(_forwarded_zip, CLAM_EXE_SIGNATURE, id="zip-in-forwarded-message"),
]


@pytest.mark.parametrize("build, signature", INFECTED)
def test_infected_mail_is_refused_with_the_virus_name(postfix, sink, pymavis, build, signature):
    subj = subject("infected")
    reply = postfix.send("mx", SENDER, [BOB], build(subj))
    assert reply.code == 554 and reply.stage == "eom", reply
    # An exe also trips the banned check; VIRUS ranks higher, so the reply names the virus.
    m = re.fullmatch(r"5\.7\.0 Reject, id=(\S+) - INFECTED: (.*)", reply.text)
    assert m and m.group(2) == reported(signature), reply
    mail_id = m.group(1)
    line = log_line(pymavis, f"mail_id: {mail_id},")
    assert "Blocked INFECTED {RejectedInbound}" in line and "reply: 554 5.7.0" in line, line
    log = pymavis.log_text()
    assert f"mail_id {mail_id}: INFECTED (virus): {reported(signature)}" in log
    if build is not eicar_plain:     # an attached .exe/.com: BANNED too, and still INFECTED
        assert f"mail_id {mail_id}: BANNED (banned): " in log
    assert not arrived(sink, subj)


def test_virus_lover_gets_it_tagged_and_the_other_recipient_is_removed(postfix, sink, pymavis):
    subj = subject("infected-lover")
    reply = postfix.send("mx", SENDER, [BOB, LOVER], eicar_plain(subj))
    assert reply.code == 250, reply
    got = delivered(sink, "***INFECTED*** " + subj)
    assert got.rcpt_tos == (LOVER,)
    assert got.message["X-Pymavis-Alert"] == f"INFECTED, message contains virus: {reported(EICAR_SIGNATURE)}"
    assert got.message["X-Virus-Scanned"] == "pymavis at example.test"
    assert len([m for m in sink.messages if subj in str(m.message["Subject"])]) == 1


def test_clean_mail_passes_with_x_virus_scanned(postfix, sink, pymavis):
    subj = subject("clean")
    reply = postfix.send("mx", SENDER, [BOB], clean(subj))
    assert reply.code == 250, reply
    assert_delivered_scanned(sink, subj)
    assert "Passed CLEAN {RelayedInbound}" in log_line(pymavis, f"Queue-ID: {reply.queue_id},")


# --- failure modes --------------------------------------------------------------------------


def test_stalled_scanner_tempfails_and_the_front_mta_delivers_once_a_scanner_answers(
        spare, spare_postfix, front, sink, clamd):
    with FakeScanner("stall") as fake:
        configure(spare, config([scanner("stalls", fake.socket_spec, "instream", timeout_s=1)]))
        subj = subject("stall-direct")
        direct = spare_postfix.send("mx", SENDER, [BOB], clean(subj))
        assert "SCANNERS FAILED: stalls: ClamdTimeout: " in tempfailed(spare, direct)

        subj = subject("stall-front")
        accepted = front.send("mx", SENDER, [BOB], clean(subj))
        assert accepted.code == 250, accepted
        kept = deferred(front, accepted.queue_id, "451 4.3.0 Temporary content check failure")
        assert [r["address"] for r in kept["recipients"]] == [BOB]
        assert not arrived(sink, subj)

        configure(spare, config([scanner("clamd", clamd.socket_spec("unix"), "fildes")]))
    front.flush()
    assert_delivered_scanned(sink, subj)
    front.wait_for_empty_queue()


def test_real_clamd_stopped_mid_run_tempfails_until_it_is_back(
        spare, spare_postfix, front, sink, tmp_path_factory):
    with ClamdProcess(str(tmp_path_factory.mktemp("clamd-stop"))) as own:
        socket_spec = own.socket_spec("unix")
        configure(spare, config([scanner("own", socket_spec, "fildes")]))
        subj = subject("before-stop")
        assert spare_postfix.send("mx", SENDER, [BOB], clean(subj)).code == 250
        assert_delivered_scanned(sink, subj)

        own.stop()
        subj = subject("stopped-direct")
        direct = spare_postfix.send("mx", SENDER, [BOB], clean(subj))
        assert "SCANNERS FAILED: own: ClamdUnavailable: " in tempfailed(spare, direct)

        subj = subject("stopped-front")
        accepted = front.send("mx", SENDER, [BOB], clean(subj))
        assert accepted.code == 250, accepted
        deferred(front, accepted.queue_id, "451 4.3.0 Temporary content check failure")
        assert not arrived(sink, subj)

        own.start()
        assert own.socket_spec("unix") == socket_spec    # the configuration still points at it
        front.flush()
        assert_delivered_scanned(sink, subj)
        front.wait_for_empty_queue()
        # and a virus is found again by the restarted clamd
        reply = spare_postfix.send("mx", SENDER, [BOB], eicar_plain(subject("after-restart")))
        assert reply.code == 554 and reply.text.endswith(f"INFECTED: {reported(EICAR_SIGNATURE)}"), reply


@pytest.mark.parametrize("mode, error", [("close", "ClamdProtocolError"), ("close_after_command", "ClamdProtocolError"),
                                         ("garbage", "ClamdProtocolError")])
def test_failed_scanner_with_failure_is_fatal_tempfails(spare, spare_postfix, sink, mode, error):
    with FakeScanner(mode) as fake:
        configure(spare, config([scanner(f"fake-{mode}", fake.socket_spec, "instream", timeout_s=1)]))
        subj = subject(f"tempfail-{mode}")
        reply = spare_postfix.send("mx", SENDER, [BOB], clean(subj))
    assert f"SCANNERS FAILED: fake-{mode}: {error}" in tempfailed(spare, reply)
    assert not arrived(sink, subj)


@pytest.mark.parametrize("mode", ["stall", "close", "close_after_command", "garbage"])
def test_failed_scanner_without_failure_is_fatal_passes_unchecked(spare, spare_postfix, sink, mode):
    with FakeScanner(mode) as fake:
        configure(spare, config([scanner(f"fake-{mode}", fake.socket_spec, "instream", timeout_s=1)],
                                fatal=False))
        subj = subject(f"unchecked-{mode}")
        reply = spare_postfix.send("mx", SENDER, [BOB], clean(subj))
        assert reply.code == 250, reply
        msg = delivered(sink, subj).message
        assert fake.accepted >= 1
    alert = str(msg["X-Pymavis-Alert"])
    assert alert.startswith(f"UNCHECKED, virus check failed: all virus scanners failed (fake-{mode}: "), alert
    assert msg["X-Virus-Scanned"] is None, "a scanner that did not answer must not read as scanned"
    assert "Passed UNCHECKED {RelayedTaggedInbound}" in log_line(spare, f"Queue-ID: {reply.queue_id},")


def test_backup_scanner_takes_over_when_the_primary_is_down(spare, spare_postfix, sink, clamd, public_tmp):
    dead = public_tmp / "no-clamd-here.sock"     # nothing listens: ClamdUnavailable
    configure(spare, config([scanner("dead", f"unix:{dead}", "fildes")],
                            [scanner("backup", clamd.socket_spec("inet"), "instream")]))
    reply = spare_postfix.send("mx", SENDER, [BOB], eicar_plain(subject("backup-infected")))
    assert reply.code == 554, reply
    assert reply.text.endswith(f" - INFECTED: {reported(EICAR_SIGNATURE)}"), reply

    subj = subject("backup-clean")
    accepted = spare_postfix.send("mx", SENDER, [BOB], clean(subj))
    assert accepted.code == 250, accepted
    assert_delivered_scanned(sink, subj)
    mail_id = mail_id_of(spare, accepted.queue_id)
    assert "virus scanner dead failed: ClamdUnavailable: " in log_line(spare, f"mail_id {mail_id}: virus scanner")


def test_message_over_stream_max_length_is_unchecked_never_clean(spare, spare_postfix, sink, tmp_path_factory):
    with ClamdProcess(str(tmp_path_factory.mktemp("clamd-1m")), StreamMaxLength="1M") as small:
        configure(spare, config([scanner("small", small.socket_spec("inet"), "instream")]))
        subj = subject("over-stream-max")
        reply = spare_postfix.send("mx", SENDER, [BOB], big(subj, 2 * 1024 * 1024))
        assert reply.code == 250, reply
        msg = delivered(sink, subj).message
        assert str(msg["X-Pymavis-Alert"]).startswith("UNCHECKED, over limits: no scanner took the message (small: "), \
            msg["X-Pymavis-Alert"]
        assert msg["X-Virus-Scanned"] is None
        assert "Passed UNCHECKED-OVERLIMIT " in log_line(spare, f"Queue-ID: {reply.queue_id},")
        assert "UNCHECKED-OVERLIMIT (virus)" in spare.log_text()
        # The same scanner still scans what fits.
        reply = spare_postfix.send("mx", SENDER, [BOB], eicar_plain(subject("under-stream-max")))
        assert reply.code == 554 and reply.text.endswith(f"INFECTED: {reported(EICAR_SIGNATURE)}"), reply
