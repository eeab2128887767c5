"""The clamd client against a real clamd (harness.clamd) and against a fake one for the
failures a real clamd will not show on demand (harness.fakescanner).

Three clamds, each started once for the module (about 0.1 s each):
- `clamd`: the configuration we recommend (AlertEncrypted, AlertExceedsMax, roomy limits);
- `small_clamd`: StreamMaxLength 1M and MaxFileSize / MaxScanSize 512K, AlertExceedsMax yes;
- `silent_clamd`: the same limits with ClamAV's defaults AlertExceedsMax no and
  AlertEncrypted no, to pin down what those defaults hide: "OK" for a file clamd skipped.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import random
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from harness.clamd import (CLAM_EXE_SIGNATURE, EICAR, EICAR_SIGNATURE, TESTFILES, ClamdProcess,
                           reported)
from harness.fakescanner import FakeScanner
from harness.net import closed_port
from pymavis.clamd import (ClamdClient, ClamdError, ClamdProtocolError, ClamdScanError,
                           ClamdSizeLimit, ClamdTimeout, ClamdUnavailable, ScanReply,
                           is_heuristic_unchecked, parse_reply, parse_socket_spec)

EICAR_FOUND = reported(EICAR_SIGNATURE)
CLAM_EXE_FOUND = reported(CLAM_EXE_SIGNATURE)
with open(os.path.join(TESTFILES, "clam.exe"), "rb") as _fh:
    CLAM_EXE = _fh.read()
CLEAN = b"From: a@example.org\r\nSubject: hello\r\n\r\nnothing to see here\r\n" * 20
KINDS = ("unix", "inet")
LIMIT_SETTINGS = {"StreamMaxLength": "1M", "MaxFileSize": "512K", "MaxScanSize": "512K"}


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    with ClamdProcess(str(tmp_path_factory.mktemp("clamd"))) as process:
        yield process


@pytest.fixture(scope="module")
def small_clamd(tmp_path_factory):
    with ClamdProcess(str(tmp_path_factory.mktemp("clamd-small")), **LIMIT_SETTINGS) as process:
        yield process


@pytest.fixture(scope="module")
def silent_clamd(tmp_path_factory):
    with ClamdProcess(str(tmp_path_factory.mktemp("clamd-silent")), **LIMIT_SETTINGS,
                      AlertExceedsMax="no", AlertEncrypted="no") as process:
        yield process


def client(process: ClamdProcess, kind: str = "unix", **kw) -> ClamdClient:
    return ClamdClient(process.socket_spec(kind), **kw)


def temp_file(data: bytes, directory) -> io.BufferedRandom:
    """An unlinked file holding `data`, flushed (as the milter's spool hands it over)."""
    fh = tempfile.TemporaryFile(dir=directory)
    fh.write(data)
    fh.flush()
    return fh


@pytest.fixture
def files(tmp_path):
    """temp_file() in tmp_path, closed after the test: files(data)."""
    opened = []

    def make(data: bytes) -> io.BufferedRandom:
        opened.append(temp_file(data, tmp_path))
        return opened[-1]

    yield make
    for fh in opened:
        fh.close()


def encrypted_zip(tmp_path) -> bytes:
    (tmp_path / "clam.exe").write_bytes(CLAM_EXE)
    subprocess.run(["zip", "-q", "-P", "secret", "enc.zip", "clam.exe"], cwd=tmp_path, check=True)
    return (tmp_path / "enc.zip").read_bytes()


def over_limit_with_eicar() -> bytes:
    """2 MB that clamd skips under MaxFileSize 512K, with EICAR at the end."""
    return random.Random(4).randbytes(2_000_000) + EICAR


# a real clamd ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_ping_and_version(clamd, kind):
    c = client(clamd, kind)
    c.ping()
    assert c.version().startswith("ClamAV 1.")


@pytest.mark.parametrize("kind", KINDS)
def test_instream_finds_eicar_and_clam_exe_and_passes_clean_bytes(clamd, kind):
    c = client(clamd, kind)
    eicar = c.instream(EICAR)
    assert eicar == ScanReply((EICAR_FOUND,), f"stream: {EICAR_FOUND} FOUND")
    assert not eicar.clean and eicar.unchecked == ()
    assert c.instream(CLAM_EXE).infected == (CLAM_EXE_FOUND,)
    assert c.instream(EICAR + b"\r\n").infected == (EICAR_FOUND,)
    clean = c.instream(CLEAN)
    assert clean == ScanReply((), "stream: OK") and clean.clean
    assert c.instream(b"").clean


@pytest.mark.parametrize("kind", KINDS)
def test_instream_reads_a_file_object_from_its_position(clamd, kind):
    c = client(clamd, kind)
    fh = io.BytesIO(EICAR + CLEAN)
    assert c.instream(fh).infected == (EICAR_FOUND,)
    assert fh.tell() == len(EICAR + CLEAN)
    fh.seek(len(EICAR))
    assert c.instream(fh).clean
    big = io.BytesIO(CLEAN * 300 + EICAR)    # several 64 KiB chunks
    assert c.instream(big).infected == (EICAR_FOUND,)


def test_fildes_scans_the_whole_file_and_keeps_its_offset(clamd, files):
    c = client(clamd, "unix")
    fh = files(EICAR + CLEAN)
    fh.seek(len(EICAR) + 7)
    reply = c.fildes(fh)
    assert reply.infected == (EICAR_FOUND,)
    assert reply.raw.startswith("fd[") and reply.raw.endswith(f": {EICAR_FOUND} FOUND")
    assert fh.tell() == len(EICAR) + 7      # clamd rewinds the shared offset; we put it back
    assert c.fildes(fh.fileno()).infected == (EICAR_FOUND,)
    assert c.fildes(files(CLEAN)).clean
    assert c.scan(files(CLAM_EXE)).infected == (CLAM_EXE_FOUND,)


def test_fildes_flushes_a_file_object_first(clamd, tmp_path):
    """Bytes still in Python's buffer are invisible to clamd, which then answers OK."""
    with tempfile.TemporaryFile(dir=tmp_path) as fh:
        fh.write(EICAR)
        assert client(clamd).fildes(fh).infected == (EICAR_FOUND,)


def test_fildes_refuses_descriptors_clamd_would_read_nothing_from(clamd, tmp_path):
    c = client(clamd)
    path = tmp_path / "eicar"
    path.write_bytes(EICAR)
    with open(path, "ab") as write_only:
        with pytest.raises(ValueError, match="write-only"):
            c.fildes(write_only)        # clamd itself would answer "fd[N]: OK"
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(ValueError, match="Bad file descriptor"):
        c.fildes(fd)


def test_fildes_refuses_a_pipe(clamd):
    """clamd would answer "Not a regular file ERROR"; we say so before connecting."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, EICAR)
        with pytest.raises(ValueError, match="not a regular file"):
            client(clamd).fildes(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_fildes_over_tcp_is_refused_and_scan_falls_back_to_instream(clamd, files):
    c = client(clamd, "inet")
    assert not c.can_pass_fd and client(clamd, "unix").can_pass_fd
    fh = files(EICAR + CLEAN)
    with pytest.raises(ValueError, match="needs a unix: socket"):
        c.fildes(fh)
    fh.seek(len(EICAR))
    assert c.scan(fh).infected == (EICAR_FOUND,)     # the whole file, from offset 0
    assert fh.tell() == len(EICAR)
    assert c.scan(io.BytesIO(EICAR)).infected == (EICAR_FOUND,)
    assert c.scan(bytearray(CLEAN)).clean


# Every file in clamav-testfiles carries clam.exe in some wrapping; the database knows only
# clam.exe's md5, so each is found only if clamd unwraps it. None is missed by clamd 1.4.6.
TESTFILE_FORMATS = {
    "clam-aspack.exe": "PE packed with ASPack",
    "clam-fsg.exe": "PE packed with FSG",
    "clam-mew.exe": "PE packed with MEW",
    "clam-nsis.exe": "NSIS installer",
    "clam-pespin.exe": "PE packed with PESpin",
    "clam-petite.exe": "PE packed with Petite",
    "clam-upack.exe": "PE packed with Upack",
    "clam-upx.exe": "PE packed with UPX",
    "clam-wwpack.exe": "PE packed with WWPack",
    "clam-yc.exe": "PE packed with yC",
    "clam.7z": "7-Zip",
    "clam.arj": "ARJ",
    "clam.bin-be.cpio": "cpio, big-endian binary",
    "clam.bin-le.cpio": "cpio, little-endian binary",
    "clam.bz2.zip": "zip, bzip2 method",
    "clam.cab": "Microsoft cabinet",
    "clam.chm": "compiled HTML help",
    "clam.d64.zip": "zip, deflate64 method",
    "clam.ea05.exe": "AutoIt (EA05) script executable",
    "clam.ea06.exe": "AutoIt (EA06) script executable",
    "clam.exe": "the test program itself",
    "clam.exe.binhex": "BinHex 4.0",
    "clam.exe.bz2": "bzip2",
    "clam.exe.html": "HTML with a data: URI",
    "clam.exe.mbox.base64": "mail, base64 attachment",
    "clam.exe.mbox.uu": "mail, uuencoded",
    "clam.exe.rtf": "RTF with an embedded object",
    "clam.exe.szdd": "SZDD (MS compress)",
    "clam.impl.zip": "zip, implode method",
    "clam.mail": "mail",
    "clam.newc.cpio": "cpio, newc",
    "clam.odc.cpio": "cpio, odc",
    "clam.ole.doc": "OLE2 Word document",
    "clam.pdf": "PDF, Flate stream",
    "clam.ppt": "OLE2 PowerPoint",
    "clam.sis": "Symbian installer",
    "clam.tar.gz": "tar.gz",
    "clam.tnef": "TNEF (winmail.dat)",
    "clam.zip": "zip",
    "clam_IScab_ext.exe": "InstallShield cabinet, external",
    "clam_IScab_int.exe": "InstallShield cabinet, internal",
    "clam_ISmsi_ext.exe": "InstallShield MSI, external",
    "clam_ISmsi_int.exe": "InstallShield MSI, internal",
    "clam_cache_emax.tgz": "tar.gz (clamd's cache test)",
}


def test_the_table_names_every_testfile():
    assert sorted(os.listdir(TESTFILES)) == sorted(TESTFILE_FORMATS)


@pytest.mark.parametrize("name", sorted(TESTFILE_FORMATS))
def test_clamd_finds_clam_exe_in_every_testfile(clamd, name):
    with open(os.path.join(TESTFILES, name), "rb") as fh:
        assert client(clamd).fildes(fh).infected == (CLAM_EXE_FOUND,), TESTFILE_FORMATS[name]


# clamd's limits ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_over_stream_max_length_is_a_size_limit_error(small_clamd, kind):
    c = client(small_clamd, kind)
    with pytest.raises(ClamdSizeLimit, match="StreamMaxLength") as info:
        c.instream(b"x" * 2_000_000)
    assert "INSTREAM size limit exceeded" in str(info.value)
    with pytest.raises(ClamdSizeLimit):
        c.instream(io.BytesIO(b"x" * 2_000_000))
    c.ping()


@pytest.mark.parametrize("how", ("instream", "fildes"))
def test_content_over_max_file_size_is_reported_with_alert_exceeds_max(small_clamd, how, files):
    """StreamMaxLength does not apply to FILDES; MaxFileSize applies to both."""
    c = client(small_clamd)
    data = over_limit_with_eicar() if how == "fildes" else over_limit_with_eicar()[-700_000:]
    reply = c.fildes(files(data)) if how == "fildes" else c.instream(data)
    assert reply.infected == ("Heuristics.Limits.Exceeded.MaxFileSize",)
    assert reply.unchecked == reply.infected


@pytest.mark.parametrize("how", ("instream", "fildes"))
def test_without_alert_exceeds_max_skipped_content_is_answered_ok(silent_clamd, how, files):
    """The hazard: EICAR past MaxFileSize, and clamd says OK. Run clamd with AlertExceedsMax."""
    c = client(silent_clamd)
    data = over_limit_with_eicar() if how == "fildes" else over_limit_with_eicar()[-700_000:]
    reply = c.fildes(files(data)) if how == "fildes" else c.instream(data)
    assert reply.clean


def test_an_encrypted_zip_is_reported_with_alert_encrypted(clamd, silent_clamd, tmp_path):
    data = encrypted_zip(tmp_path)
    reply = client(clamd).instream(data)
    assert reply.infected == ("Heuristics.Encrypted.Zip",) and reply.unchecked == reply.infected
    assert client(silent_clamd).instream(data).clean     # the hazard without AlertEncrypted


def test_a_signature_match_wins_over_the_encryption_heuristic(clamd, tmp_path):
    """A zip with a plain EICAR and an encrypted member: the virus, not 'unchecked'."""
    encrypted_zip(tmp_path)
    (tmp_path / "eicar.com").write_bytes(EICAR)
    subprocess.run(["zip", "-q", "enc.zip", "eicar.com"], cwd=tmp_path, check=True)
    reply = client(clamd).instream((tmp_path / "enc.zip").read_bytes())
    assert reply.infected == (EICAR_FOUND,)


# nothing to talk to ------------------------------------------------------------------------

def test_connection_refused_is_unavailable_at_once():
    with closed_port() as port:
        began = time.monotonic()
        with pytest.raises(ClamdUnavailable, match="Connection refused"):
            ClamdClient(f"inet:127.0.0.1:{port}", connect_timeout=5).ping()
        assert time.monotonic() - began < 2


def test_a_missing_or_dead_unix_socket_is_unavailable(tmp_path):
    with pytest.raises(ClamdUnavailable, match="No such file"):
        ClamdClient(f"unix:{tmp_path}/nothing.sock").instream(EICAR)
    stale = socket.socket(socket.AF_UNIX)    # a socket file nobody listens on (clamd crashed)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    with pytest.raises(ClamdUnavailable, match="Connection refused"):
        ClamdClient(f"unix:{tmp_path}/stale.sock").ping()


# a fake clamd -----------------------------------------------------------------------------

def fake_call(fake: FakeScanner, command: str, timeout: float = 0.5):
    c = ClamdClient(fake.socket_spec, connect_timeout=2, timeout=timeout)
    if command == "ping":
        return c.ping()
    if command == "instream":
        return c.instream(EICAR)
    if command == "big-instream":
        return c.instream(b"x" * 16_000_000)
    raise AssertionError(command)


MISBEHAVIOUR = [
    ("stall", "ping", ClamdTimeout, "no complete answer within 0.5 s"),
    ("stall", "big-instream", ClamdTimeout, "sending"),
    ("close", "ping", ClamdProtocolError, "without a reply|reset"),
    ("close", "big-instream", ClamdProtocolError, "without a reply|reset"),
    ("close_after_command", "ping", ClamdProtocolError, "closed without a reply"),
    ("close_after_command", "instream", ClamdProtocolError, "closed without a reply"),
    ("garbage", "ping", ClamdProtocolError, "PING answered b'HELLO"),
    ("garbage", "instream", ClamdProtocolError, "unexpected reply b'HELLO"),
    ("half", "instream", ClamdProtocolError, "truncated reply b'stre"),
    ("slow", "instream", ClamdTimeout, "no complete answer within 0.5 s"),
    ("trickle", "instream", ClamdTimeout, "no complete answer within 0.5 s"),
]


@pytest.mark.parametrize("mode, command, error, match",
                         [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in MISBEHAVIOUR])
def test_a_misbehaving_clamd_is_a_typed_error_within_the_timeout(mode, command, error, match):
    with FakeScanner(mode, delay=2 if mode == "slow" else 0.2) as fake:
        began = time.monotonic()
        with pytest.raises(error, match=match):
            fake_call(fake, command)
        elapsed = time.monotonic() - began
    if error is ClamdTimeout:
        assert 0.4 < elapsed < 3, elapsed       # one deadline, not one per recv
    else:
        assert elapsed < 3, elapsed


def test_a_slow_clamd_within_the_timeout_is_fine():
    with FakeScanner("slow", delay=0.3) as fake:
        assert fake_call(fake, "instream", timeout=5).clean
        assert fake.commands == [b"zINSTREAM"] and fake.stream_bytes == len(EICAR)


def test_fildes_to_a_fake_unix_clamd_passes_the_descriptor(tmp_path, files):
    with FakeScanner("reply", reply=b"fd[9]: OK\0", unix_path=str(tmp_path / "f.sock")) as fake:
        assert ClamdClient(fake.socket_spec).scan(files(EICAR)).clean
        assert fake.commands == [b"zFILDES"]


@pytest.mark.parametrize("reply, expected", [
    (b"stream: Win.Test.EICAR_HDB-1 FOUND\0stream: Heuristics.Encrypted.Zip FOUND\0",
     ("Win.Test.EICAR_HDB-1", "Heuristics.Encrypted.Zip")),
    (b"stream: A FOUND\0stream: Can't allocate memory ERROR\0", ("A",)),
    (b"stream: OK\n", ()),
], ids=["two-found-lines", "found-beats-error", "newline-terminated"])
def test_replies_from_a_fake_clamd(reply, expected):
    with FakeScanner("reply", reply=reply) as fake:
        assert fake_call(fake, "instream").infected == expected


@pytest.mark.parametrize("reply, error", [
    (b"INSTREAM size limit exceeded. ERROR\0", ClamdSizeLimit),
    (b"stream: Can't allocate memory ERROR\0", ClamdScanError),
    (b"\0", ClamdProtocolError),
    (b"stream: FOUND\0", ClamdProtocolError),
    (b"stream:  FOUND\0", ClamdProtocolError),
    (b"stream: OK", ClamdProtocolError),      # no terminator: truncated
    (b"PONG\0", ClamdProtocolError),
], ids=["size-limit", "scan-error", "empty", "found-without-name", "found-blank-name",
        "no-terminator", "pong"])
def test_error_replies_from_a_fake_clamd(reply, error):
    with FakeScanner("reply", reply=reply) as fake:
        with pytest.raises(error):
            fake_call(fake, "instream")


# many at once -----------------------------------------------------------------------------

def test_twenty_threads_scanning_at_once_all_get_their_answer(clamd, tmp_path):
    cases = [(EICAR, (EICAR_FOUND,)), (CLEAN, ()), (CLAM_EXE, (CLAM_EXE_FOUND,))]
    start = threading.Barrier(20)

    def work(i: int):
        data, expected = cases[i % 3]
        c = client(clamd, KINDS[i % 2])
        start.wait(10)
        results = []
        for j in range(5):
            if c.can_pass_fd and j % 2:
                with temp_file(data, tmp_path) as fh:
                    reply = c.fildes(fh)
            else:
                reply = c.instream(data)
            results.append(reply.infected == expected)
        return results

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(work, range(20)))
    assert all(all(r) for r in outcomes), outcomes


# pure parts --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("unix:/run/clamav/clamd.ctl", "unix:/run/clamav/clamd.ctl"),
    ("local:/tmp/c.sock", "unix:/tmp/c.sock"),
    ("inet:127.0.0.1:3310", "inet:127.0.0.1:3310"),
    ("inet:clamd.example.org:3310", "inet:clamd.example.org:3310"),
    ("inet:3310@127.0.0.1", "inet:127.0.0.1:3310"),
    ("inet:[::1]:3310", "inet:[::1]:3310"),
    ("inet6:3310@[::1]", "inet:[::1]:3310"),
])
def test_socket_specs(spec, expected):
    assert str(parse_socket_spec(spec)) == expected


@pytest.mark.parametrize("spec", ["/run/clamav/clamd.ctl", "127.0.0.1:3310", "unix:relative.sock",
                                  "inet:127.0.0.1", "inet:127.0.0.1:0", "inet:127.0.0.1:99999",
                                  "tcp:127.0.0.1:3310", ""])
def test_bad_socket_specs(spec):
    with pytest.raises(ValueError, match="expected unix:/path, inet:HOST:PORT or inet:PORT@HOST"):
        ClamdClient(spec)


@pytest.mark.parametrize("name, unchecked", [
    ("Heuristics.Encrypted.Zip", True),
    ("Heuristics.Encrypted.RAR", True),
    ("Heuristics.Encrypted.PDF", True),
    ("Heuristics.Limits.Exceeded.MaxFileSize", True),
    ("Heuristics.Limits.Exceeded.MaxScanTime", True),
    ("Heuristics.Limits.Exceeded.EmailHeaders", True),
    ("Heuristics.Limits.Exceeded", True),
    ("Heuristics.Phishing.Email.SpoofedDomain", False),
    ("Heuristics.OLE2.ContainsMacros.VBA", False),
    ("Heuristics.Broken.Executable", False),
    ("Win.Test.EICAR_HDB-1", False),
    (EICAR_FOUND, False),
])
def test_which_names_mean_unchecked(name, unchecked):
    assert is_heuristic_unchecked(name) is unchecked


@pytest.mark.parametrize("raw, infected", [
    (b"stream: OK\0", ()),
    (b"fd[12]: OK\0", ()),
    (b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0", ("Eicar-Test-Signature.UNOFFICIAL",)),
    (b"fd[12]: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0",
     ("Heuristics.Limits.Exceeded.MaxFileSize",)),
    (b"/var/spool/a b: c.txt: Win.Test.EICAR_HDB-1 FOUND\0", ("Win.Test.EICAR_HDB-1",)),
])
def test_parse_reply(raw, infected):
    assert parse_reply(raw).infected == infected


def test_the_raw_reply_is_its_lines_without_terminators():
    reply = parse_reply(b"stream: A FOUND\0stream: B FOUND\0")
    assert reply.raw == "stream: A FOUND\nstream: B FOUND"


def test_every_error_is_a_clamd_error():
    for error in (ClamdUnavailable, ClamdTimeout, ClamdSizeLimit, ClamdProtocolError,
                  ClamdScanError):
        assert issubclass(error, ClamdError)
        assert error("x", "unix:/s").spec == "unix:/s"
