"""The virus check in the pipeline against a real clamd (and fakes for what a real one cannot
be made to do on demand): verdicts, heuristics, backups, the failure policy, headers."""

import base64
import os
import textwrap

import pytest

from harness.clamd import CLAM_EXE_SIGNATURE, EICAR, EICAR_SIGNATURE, ClamdProcess, reported
from harness.fakescanner import FakeScanner
from harness.samples import zip_bytes
from pymavis import pipeline
from pymavis.categories import Ccat
from pymavis.config import ConfigError, load
from pymavis.outcome import Action
from pymavis.policy import merge
from pymavis.transaction import Connection, Rcpt, TransactionBuilder

CLAM_EXE = open("/usr/share/clamav-testfiles/clam.exe", "rb").read()
HEAD = "From: a@example.org\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\nSubject: {subject}\r\n"


def message(attachment: bytes | None = None, name="file.bin", subject="test", body="hello\r\n") -> bytes:
    if attachment is None:
        return (HEAD.format(subject=subject) + "\r\n" + body).encode()
    data = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (HEAD.format(subject=subject) + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            f"--b\r\nContent-Type: text/plain\r\n\r\n{body}--b\r\nContent-Type: application/octet-stream\r\n"
            f'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="{name}"\r\n\r\n'
            f"{data}--b--\r\n").encode()


def txn_of(raw: bytes, rcpts=("b@example.com",), tmp_dir=None):
    conn = Connection("c1", "192.0.2.1", 40000, "client.example", "client.example", (), 0.0)
    builder = TransactionBuilder(conn, "<a@example.org>", (), {}, 100 * 1024, tmp_dir)
    for r in rcpts:
        builder.add_rcpt(Rcpt(f"<{r}>", r), 0)
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        builder.add_header(name.decode(), value.decode().strip(), line + b"\r\n")
    builder.end_of_headers()
    builder.add_body(body)
    return builder.freeze("QID1", {})


def run(tmp_path, raw, config_text, rcpts=("b@example.com",)):
    path = tmp_path / "pymavis.yaml"
    path.write_text(f"state_dir: {tmp_path}\nmydomain: example.com\n" + textwrap.dedent(config_text))
    config = load(str(path))
    txn = txn_of(raw, rcpts, str(tmp_path))
    try:
        return pipeline.process(config, merge(config, ()), txn)
    finally:
        txn.spool.close()


def scanners(*entries, key="av_scanners"):
    return f"{key}:\n" + "".join(f"  - {e}\n" for e in entries)


def clamd_entry(clamd, method="fildes", name="clamd", **extra):
    socket = clamd.socket_spec("unix" if method == "fildes" else "inet")
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return f'{{name: {name}, socket: "{socket}", method: {method}{more}}}'


def headers(result):
    return {h.name: h.value for h in result.outcome.headers}


@pytest.mark.parametrize("method", ["fildes", "instream"])
@pytest.mark.parametrize("raw,signature", [
    (message(body="X " + EICAR.decode() + "\r\n"), EICAR_SIGNATURE),
    (message(CLAM_EXE, "clam.exe"), CLAM_EXE_SIGNATURE),
    (message(zip_bytes(("inner/clam.exe", CLAM_EXE))), CLAM_EXE_SIGNATURE),
], ids=["eicar-body", "clam.exe", "clam.exe-in-zip"])
def test_infected_is_virus_with_the_name(tmp_path, clamd, method, raw, signature):
    result = run(tmp_path, raw, scanners(clamd_entry(clamd, method)) + "policy: {final_virus_destiny: reject}\n")
    assert result.outcome.action is Action.REJECT
    assert str(result.outcome.reply).startswith("554 5.7.0 Reject, id=")
    assert str(result.outcome.reply).endswith(f" - INFECTED: {reported(signature)}")
    [virus] = [f for f in result.findings if f.ccat is Ccat.VIRUS]
    assert dict(virus.values)["virus_names"] == (reported(signature),)


def test_clean_mail_gets_x_virus_scanned(tmp_path, clamd):
    result = run(tmp_path, message(zip_bytes(("notes.txt", b"hello\n"))), scanners(clamd_entry(clamd)))
    assert result.outcome.action is Action.CONTINUE and result.findings == ()
    assert headers(result)["X-Virus-Scanned"] == "pymavis at example.com"
    assert {r.name: r for r in result.checks}["virus"].scanned_by == ("clamd",)


def test_lover_gets_it_tagged_other_removed(tmp_path, clamd):
    config = scanners(clamd_entry(clamd)) + "policy: {virus_lovers: [lover@example.com], final_virus_destiny: reject}\n"
    # EICAR as text: clam.exe would also be BANNED (exe-ms), and the lover loves only viruses
    result = run(tmp_path, message(body=EICAR.decode() + "\r\n", subject="invoice"), config,
                 rcpts=("b@example.com", "lover@example.com"))
    out = result.outcome
    assert out.action is Action.CONTINUE and out.del_rcpts == ("b@example.com",)
    edits = {(h.name, h.op): h.value for h in out.headers}
    assert edits[("Subject", "change")] == "***INFECTED*** invoice"
    assert any(h.name == "X-Pymavis-Alert" and h.value.startswith("INFECTED, message contains virus: ")
               for h in out.headers)


def test_bypass_for_everyone_skips_the_scan(tmp_path, clamd):
    config = scanners(clamd_entry(clamd)) + "policy: {bypass_virus_checks: true}\n"
    result = run(tmp_path, message(CLAM_EXE, "clam.exe"), config)
    assert {r.name: r for r in result.checks}["virus"].scanned_by == ()
    assert "X-Virus-Scanned" not in headers(result)
    assert Ccat.VIRUS not in {f.ccat for f in result.findings}


def test_encrypted_archive_heuristic_is_unchecked_encrypted(tmp_path, clamd):
    import subprocess
    (tmp_path / "a.txt").write_bytes(b"secret\n")
    subprocess.run(["zip", "-q", "-j", "-P", "pw", str(tmp_path / "e.zip"), str(tmp_path / "a.txt")], check=True)
    raw = message((tmp_path / "e.zip").read_bytes(), "e.zip")
    result = run(tmp_path, raw, scanners(clamd_entry(clamd)))
    from_virus = [f for f in result.findings if f.check == "virus"]
    assert [(f.ccat, f.minor) for f in from_virus] == [(Ccat.UNCHECKED, 1)]
    assert "Heuristics.Encrypted.Zip" in from_virus[0].detail


def test_backup_takes_over_when_the_primary_is_down(tmp_path, clamd):
    config = (scanners(f'{{name: dead, socket: "unix:{tmp_path}/nothing.sock"}}')
              + scanners(clamd_entry(clamd, name="backup"), key="av_scanners_backup")
              + "policy: {final_virus_destiny: reject}\n")
    result = run(tmp_path, message(body=EICAR.decode() + "\r\n"), config)
    assert result.outcome.action is Action.REJECT
    assert {r.name: r for r in result.checks}["virus"].scanned_by == ("backup",)


def test_backups_are_not_asked_when_a_primary_answered(tmp_path, clamd):
    with FakeScanner("garbage") as fake:
        config = scanners(clamd_entry(clamd)) + scanners(
            f'{{name: fake, socket: "inet:127.0.0.1:{fake.port}"}}', key="av_scanners_backup")
        result = run(tmp_path, message(), config)
    assert {r.name: r for r in result.checks}["virus"].scanned_by == ("clamd",)


@pytest.mark.parametrize("mode", ["stall", "close", "garbage"])
def test_all_scanners_failed_is_tempfail_by_default(tmp_path, mode):
    with FakeScanner(mode) as fake:
        config = scanners(f'{{name: fake, socket: "inet:127.0.0.1:{fake.port}", timeout_s: 0.5}}')
        result = run(tmp_path, message(), config)
    assert result.outcome.action is Action.TEMPFAIL
    assert str(result.outcome.reply).startswith("451 4.3.0 ")


def test_all_scanners_failed_is_unchecked_when_not_fatal(tmp_path):
    with FakeScanner("garbage") as fake:
        config = (scanners(f'{{name: fake, socket: "inet:127.0.0.1:{fake.port}", timeout_s: 0.5}}')
                  + "policy: {virus_scanners_failure_is_fatal: false}\n")
        result = run(tmp_path, message(), config)
    assert result.outcome.action is Action.CONTINUE
    [f] = [f for f in result.findings if f.check == "virus"]
    assert (f.ccat, f.minor) == (Ccat.UNCHECKED, 0) and "all virus scanners failed" in f.detail
    assert "X-Virus-Scanned" not in headers(result)


def test_over_the_stream_limit_is_unchecked_over_limits_never_clean(tmp_path, tmp_path_factory):
    with ClamdProcess(str(tmp_path_factory.mktemp("small")), StreamMaxLength="1M") as small:
        raw = message(b"\x00" * (2 << 20), "big.bin")
        result = run(tmp_path, raw, scanners(clamd_entry(small, "instream")))
    [f] = [f for f in result.findings if f.check == "virus"]
    assert (f.ccat, f.minor) == (Ccat.UNCHECKED, 2)
    assert "X-Virus-Scanned" not in headers(result)


def test_our_max_size_is_unchecked_over_limits(tmp_path, clamd):
    result = run(tmp_path, message(b"x" * 5000), scanners(clamd_entry(clamd, max_size=1000)))
    [f] = [f for f in result.findings if f.check == "virus"]
    assert (f.ccat, f.minor) == (Ccat.UNCHECKED, 2) and "max_size 1000" in f.detail


def test_first_infected_stops_scan(tmp_path, clamd):
    with FakeScanner("garbage") as fake:
        fake_entry = f'{{name: fake, socket: "inet:127.0.0.1:{fake.port}", timeout_s: 0.5}}'
        raw = message(body=EICAR.decode() + "\r\n")
        stopping = run(tmp_path, raw, scanners(clamd_entry(clamd), fake_entry) + "first_infected_stops_scan: true\n")
        assert fake.accepted == 0
        run(tmp_path, raw, scanners(clamd_entry(clamd), fake_entry))
        assert fake.accepted == 1
    assert Ccat.VIRUS in {f.ccat for f in stopping.findings}


def test_first_infected_stops_scan_also_when_the_reply_has_a_heuristic_too(tmp_path):
    """A virus next to a "could not look inside" name is still a virus: the scan stops."""
    both = b"stream: Heuristics.Encrypted.Zip FOUND\nstream: Eicar-Test-Signature FOUND\0"
    with FakeScanner("reply", reply=both) as first, FakeScanner("garbage") as second:
        entries = scanners(fake_entry(first, "first", "instream"), fake_entry(second, "second", "instream"))
        result = run(tmp_path, message(), entries + "first_infected_stops_scan: true\n")
        assert second.accepted == 0
    assert Ccat.VIRUS in {f.ccat for f in result.findings}


@pytest.mark.parametrize("entry,words", [
    ('{name: x, socket: "inet:127.0.0.1:3310", method: fildes}', ["fildes needs a unix: socket"]),
    ('{name: x, socket: "tcp:nowhere"}', ["socket"]),
    ('{name: x, sokcet: "unix:/x"}', ["unknown key 'sokcet'", "socket"]),
    ('{socket: "unix:/x"}', ["needs 'name'"]),
    ('{name: x, socket: "unix:/x", method: streaming}', ["expected one of fildes, instream, parts"]),
])
def test_scanner_config_errors(tmp_path, entry, words):
    path = tmp_path / "p.yaml"
    path.write_text("state_dir: /tmp\n" + scanners(entry))
    with pytest.raises(ConfigError) as info:
        load(str(path))
    [error] = info.value.errors
    assert error.startswith(f"{path}:3: "), error
    for word in words:
        assert word in error, error


def test_fildes_passes_the_descriptor_of_a_spool_on_disk(tmp_path, clamd):
    # over spool_memory_bytes (100 KiB here) the spool is a file: clamd reads it by descriptor
    raw = message(zip_bytes(("filler.bin", os.urandom(300_000)), ("clam.exe", CLAM_EXE)), "big.zip")
    txn = txn_of(raw, tmp_dir=str(tmp_path))
    try:
        assert txn.spool.on_disk
        from pymavis.checks.virus import Scanner, _scan_one
        from pymavis.clamd import ClamdClient
        scanner = Scanner("clamd", ClamdClient(clamd.socket_spec("unix")), "fildes", 0)
        assert _scan_one(scanner, txn.spool).infected == (reported(CLAM_EXE_SIGNATURE),)
    finally:
        txn.spool.close()
    result = run(tmp_path, raw, scanners(clamd_entry(clamd)) + "policy: {final_virus_destiny: reject}\n")
    assert str(result.outcome.reply).endswith(f"INFECTED: {reported(CLAM_EXE_SIGNATURE)}")


def test_pymavis_scan_reports_the_virus(tmp_path, clamd, capsys):
    import json
    from pymavis import cli
    config = tmp_path / "pymavis.yaml"
    config.write_text(f"state_dir: {tmp_path}\nmydomain: example.com\n" + scanners(clamd_entry(clamd)))
    eml = tmp_path / "eicar.eml"
    eml.write_bytes(message(body=EICAR.decode() + "\r\n"))
    assert cli.main(["scan", "--json", "-c", str(config), str(eml)]) == 1
    [obj] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert obj["content_type"] == "Virus"
    [finding] = [f for f in obj["findings"] if f["check"] == "virus"]
    assert finding["detail"] == reported(EICAR_SIGNATURE)


def test_pymavis_scan_never_calls_a_failed_scan_clean(tmp_path, capsys):
    from pymavis import cli
    with FakeScanner("garbage") as fake:
        config = tmp_path / "pymavis.yaml"
        config.write_text(f"state_dir: {tmp_path}\n"
                          + scanners(f'{{name: fake, socket: "inet:127.0.0.1:{fake.port}", timeout_s: 0.5}}'))
        eml = tmp_path / "m.eml"
        eml.write_bytes(message())
        assert cli.main(["scan", "-c", str(config), str(eml)]) == 2
    err = capsys.readouterr().err
    assert "all virus scanners failed" in err and "451 4.3.0" in err


# --- method parts: the decoded parts, one zINSTREAM each (checks/virus.py) ----------------

def tar_gz(*members: tuple[str, bytes]) -> bytes:
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def parts_entry(clamd, name="clamd", **extra):
    return clamd_entry(clamd, "instream", name, **extra).replace("method: instream", "method: parts")


def fake_entry(fake, name="fake", method="parts", timeout_s=0.5):
    return f'{{name: {name}, socket: "{fake.socket_spec}", method: {method}, timeout_s: {timeout_s}}}'


def virus_check(result):
    return {r.name: r for r in result.checks}["virus"]


def inner_clam_exe() -> bytes:
    from harness import virusmail
    return virusmail.attached("inner", "clam.exe", "application/octet-stream", CLAM_EXE)


def _parts_cases():
    from harness import virusmail
    return [
        (virusmail.eicar_plain("eicar"), EICAR_SIGNATURE, "p001"),
        (message(b"harmless\n", "a.txt", body="X " + EICAR.decode() + "\r\n"), EICAR_SIGNATURE, "p002"),
        (message(CLAM_EXE, "clam.exe"), CLAM_EXE_SIGNATURE, "p003"),
        (message(zip_bytes(("inner/clam.exe", CLAM_EXE)), "a.zip"), CLAM_EXE_SIGNATURE, "p003"),
        (message(tar_gz(("dir/clam.exe", CLAM_EXE)), "a.tar.gz"), CLAM_EXE_SIGNATURE, "p003"),
        (virusmail.forwarded("fwd", inner_clam_exe()), CLAM_EXE_SIGNATURE, None),
        (virusmail.attached("tnef", "winmail.dat", "application/ms-tnef", virusmail.clamav_file("clam.tnef")),
         CLAM_EXE_SIGNATURE, "p003"),
        (virusmail.uuencoded_inline("uu"), CLAM_EXE_SIGNATURE, "p002"),   # the uuencoded block, decoded
        (HEAD.format(subject=EICAR.decode()).encode() + b"\r\nhello\r\n", EICAR_SIGNATURE, "header"),
        (message(b"harmless\n", "a.txt").replace(b"\r\n\r\n--b\r\n", b"\r\n\r\npreamble " + EICAR + b"\r\n--b\r\n", 1),
         EICAR_SIGNATURE, "p001"),
    ]


@pytest.mark.parametrize("raw,signature,where", _parts_cases(),
                         ids=["eicar-plain", "eicar-text-part", "clam.exe-base64", "clam.exe-in-zip",
                              "clam.exe-in-tar.gz", "nested-rfc822", "tnef", "uuencoded-in-text",
                              "eicar-in-header", "eicar-in-preamble"])
def test_parts_infected_is_virus_with_the_name_and_the_part(tmp_path, clamd, caplog, raw, signature, where):
    import logging
    caplog.set_level(logging.INFO, logger="pymavis")
    result = run(tmp_path, raw, scanners(parts_entry(clamd)) + "policy: {final_virus_destiny: reject}\n")
    assert result.outcome.action is Action.REJECT
    assert str(result.outcome.reply).endswith(f" - INFECTED: {reported(signature)}")
    [virus] = [f for f in result.findings if f.ccat is Ccat.VIRUS]
    values = dict(virus.values)
    assert values["virus_names"] == (reported(signature),)
    [(name, found_in)] = values["virus_parts"][:1]
    assert name == reported(signature)
    if where is not None:
        assert found_in == where
    label = "P=p001,header" if found_in == "header" else f"P={found_in},"
    assert any("virus scanner clamd: " in r.getMessage() and label in r.getMessage()
               and f"INFECTED: {reported(signature)}" in r.getMessage() for r in caplog.records), caplog.text
    assert "scanning the whole message" not in caplog.text      # the parts were scanned, one by one
    assert virus_check(result).scanned_by == ("clamd",)


def test_parts_clean_multipart_is_clean_and_every_part_is_sent(tmp_path, clamd):
    raw = message(zip_bytes(("notes.txt", b"hello\n"), ("more.txt", b"more\n")), "notes.zip")
    result = run(tmp_path, raw, scanners(parts_entry(clamd)))
    assert result.outcome.action is Action.CONTINUE and result.findings == ()
    assert headers(result)["X-Virus-Scanned"] == "pymavis at example.com"
    with FakeScanner("reply") as fake:
        result = run(tmp_path, raw, scanners(fake_entry(fake)))
    # header, p002 text, p003 zip, p004 and p005 its members (p001, the multipart, has no bytes of its own)
    assert fake.commands == [b"zINSTREAM"] * 5
    assert result.findings == () and virus_check(result).scanned_by == ("fake",)


def test_parts_stop_at_the_first_infected_part(tmp_path, clamd):
    raw = message(CLAM_EXE, "clam.exe", body=EICAR.decode() + "\r\n")    # p002 EICAR, p003 clam.exe
    result = run(tmp_path, raw, scanners(parts_entry(clamd)) + "policy: {final_virus_destiny: reject}\n")
    [virus] = [f for f in result.findings if f.ccat is Ccat.VIRUS]
    assert dict(virus.values)["virus_names"] == (reported(EICAR_SIGNATURE),)
    assert dict(virus.values)["virus_parts"] == ((reported(EICAR_SIGNATURE), "p002"),)


def test_parts_over_max_size_is_unchecked_over_limits(tmp_path, clamd):
    result = run(tmp_path, message(b"x" * 5000, "big.bin"), scanners(parts_entry(clamd, max_size=2000)))
    [f] = [f for f in result.findings if f.check == "virus"]
    assert (f.ccat, f.minor) == (Ccat.UNCHECKED, 2)
    assert "part p003 5000 bytes > max_size 2000" in f.detail
    assert "X-Virus-Scanned" not in headers(result)


def test_parts_a_virus_next_to_a_part_over_max_size_is_still_found(tmp_path, clamd):
    raw = message(b"x" * 5000, "big.bin", body=EICAR.decode() + "\r\n")
    result = run(tmp_path, raw, scanners(parts_entry(clamd, max_size=2000)) + "policy: {final_virus_destiny: reject}\n")
    assert str(result.outcome.reply).endswith(f" - INFECTED: {reported(EICAR_SIGNATURE)}")


def test_parts_over_the_stream_limit_is_unchecked_over_limits(tmp_path, tmp_path_factory):
    with ClamdProcess(str(tmp_path_factory.mktemp("small")), StreamMaxLength="1M") as small:
        result = run(tmp_path, message(b"\x00" * (2 << 20), "big.bin"), scanners(parts_entry(small)))
    [f] = [f for f in result.findings if f.check == "virus"]
    assert (f.ccat, f.minor) == (Ccat.UNCHECKED, 2) and "part p003" in f.detail
    assert "X-Virus-Scanned" not in headers(result)


def test_parts_a_failure_on_the_second_part_is_a_failed_scanner(tmp_path, clamd):
    raw = message(CLAM_EXE, "clam.exe")      # header, p002 text, p003 clam.exe

    def failing_on_p003(extra: str = ""):
        with FakeScanner("garbage", ok_first=2) as fake:   # answers OK twice, then garbage
            result = run(tmp_path, raw, scanners(fake_entry(fake)) + extra)
        assert fake.accepted == 3
        return result

    fatal = failing_on_p003()
    not_fatal = failing_on_p003("policy: {virus_scanners_failure_is_fatal: false}\n")
    backed_up = failing_on_p003(scanners(parts_entry(clamd, name="backup"), key="av_scanners_backup")
                                + "policy: {final_virus_destiny: reject}\n")
    assert fatal.outcome.action is Action.TEMPFAIL and str(fatal.outcome.reply).startswith("451 4.3.0 ")
    [f] = [f for f in not_fatal.findings if f.check == "virus"]
    assert (f.ccat, f.minor) == (Ccat.UNCHECKED, 0) and "at part p003 (3 of 3)" in f.detail, f.detail
    assert "X-Virus-Scanned" not in headers(not_fatal)
    assert str(backed_up.outcome.reply).endswith(f" - INFECTED: {reported(CLAM_EXE_SIGNATURE)}")
    assert virus_check(backed_up).scanned_by == ("backup",)


def test_parts_share_one_timeout(tmp_path):
    # each part answered after 0.4 s: three streams (header, p002, p003) do not fit in 1 s,
    # though each alone would
    with FakeScanner("slow", delay=0.4) as fake:
        result = run(tmp_path, message(b"data", "a.bin"), scanners(fake_entry(fake, timeout_s=1.0))
                     + "policy: {virus_scanners_failure_is_fatal: false}\n")
    [f] = [f for f in result.findings if f.check == "virus"]
    assert (f.ccat, f.minor) == (Ccat.UNCHECKED, 0) and "ClamdTimeout" in f.detail, f.detail


def test_parts_incomplete_decoding_streams_the_whole_message(tmp_path, clamd, caplog):
    import logging
    import subprocess
    caplog.set_level(logging.INFO, logger="pymavis")
    (tmp_path / "a.txt").write_bytes(b"secret\n")
    subprocess.run(["zip", "-q", "-j", "-P", "pw", str(tmp_path / "e.zip"), str(tmp_path / "a.txt")], check=True)
    raw = message((tmp_path / "e.zip").read_bytes(), "e.zip")
    with FakeScanner("reply") as fake:
        run(tmp_path, raw, scanners(fake_entry(fake)))
    assert fake.accepted == 1 and fake.stream_bytes == len(raw)      # the message as stored, once
    assert "decoding incomplete (encrypted: p003" in caplog.text and "scanning the whole message" in caplog.text
    result = run(tmp_path, raw, scanners(parts_entry(clamd)))
    from_virus = [f for f in result.findings if f.check == "virus"]
    assert [(f.ccat, f.minor) for f in from_virus] == [(Ccat.UNCHECKED, 1)]
    assert "Heuristics.Encrypted.Zip" in from_virus[0].detail


def test_parts_without_decoded_parts_stream_the_whole_message(tmp_path, clamd):
    from pymavis import decode
    from pymavis.checks import virus
    from pymavis.decide import resolve_rcpt
    path = tmp_path / "pymavis.yaml"
    with FakeScanner("reply") as fake:
        path.write_text(f"state_dir: {tmp_path}\nmydomain: example.com\n"
                        + scanners(fake_entry(fake), parts_entry(clamd)))
        config = load(str(path))
        policy = merge(config, ())
        raw = message(body=EICAR.decode() + "\r\n")
        txn = txn_of(raw, tmp_dir=str(tmp_path))
        try:
            scan = pipeline.scan_for(config, policy, txn, tuple(resolve_rcpt(policy, r.addr) for r in txn.rcpts))
            scan._walk = decode.walk(txn.spool.read())     # decoded, but no parts kept
            scan.decoded = True
            result = virus.check(scan)
        finally:
            txn.spool.close()
    assert fake.accepted == 1 and fake.stream_bytes == len(raw)
    [f] = result.findings
    assert f.ccat is Ccat.VIRUS and dict(f.values)["virus_names"] == (reported(EICAR_SIGNATURE),)
    assert "virus_parts" not in dict(f.values)     # streamed whole: no part to name


def test_parts_decode_even_when_everyone_bypasses_banned_checks(tmp_path, clamd):
    raw = message(zip_bytes(("inner/clam.exe", CLAM_EXE)), "a.zip")
    result = run(tmp_path, raw, scanners(parts_entry(clamd))
                 + "policy: {bypass_banned_checks: true, final_virus_destiny: reject}\n")
    assert result.scan.decoded and result.scan.contents is None      # decoded, and freed after the check
    [virus] = [f for f in result.findings if f.ccat is Ccat.VIRUS]
    assert dict(virus.values)["virus_parts"] == ((reported(CLAM_EXE_SIGNATURE), "p003"),)


def test_parts_not_decoded_when_everyone_bypasses_both(tmp_path, clamd):
    config = scanners(parts_entry(clamd)) + "policy: {bypass_banned_checks: true, bypass_virus_checks: true}\n"
    result = run(tmp_path, message(CLAM_EXE, "clam.exe"), config)
    assert not result.scan.decoded and virus_check(result).scanned_by == ()


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_method_parts_is_accepted_on_both_sockets(tmp_path, clamd, kind):
    path = tmp_path / "p.yaml"
    path.write_text("state_dir: /tmp\n" + scanners(f'{{name: x, socket: "{clamd.socket_spec(kind)}", method: parts}}'))
    [scanner] = load(str(path))["av_scanners"]
    assert scanner.method == "parts"
