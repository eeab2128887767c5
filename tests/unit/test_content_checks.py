"""Decoding, banned and bad-header checks as the pipeline runs them: per-recipient rule
sets, lovers, UNCHECKED minors, the alert header, replies, and configuration errors."""

import base64
import os
import subprocess
import textwrap

import pytest

from harness.samples import pe, zip_bytes

from pymavis import pipeline
from pymavis.categories import Ccat
from pymavis.checks import CheckResult
from pymavis.config import ConfigError, load
from pymavis.outcome import Action
from pymavis.policy import merge
from pymavis.transaction import Connection, Rcpt, TransactionBuilder

MZ = pe()
HEAD = "From: a@example.org\r\nDate: Sun, 22 Nov 2026 06:00:00 +0000\r\nSubject: {subject}\r\n"


def zip_of(files: dict, password: str | None = None, tmp_path=None) -> bytes:
    if password is None:
        return zip_bytes(*files.items())
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "enc.zip"
    subprocess.run(["zip", "-q", "-j", "-P", password, str(out), *[str(tmp_path / n) for n in files]], check=True)
    return out.read_bytes()


def message(attachments=(), subject="test", extra_headers="") -> bytes:
    """A multipart/mixed message with base64 attachments [(name, type, data)]."""
    parts = ["--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"]
    for name, ctype, data in attachments:
        body = base64.encodebytes(data).decode().replace("\n", "\r\n")
        parts.append(f'--b1\r\nContent-Type: {ctype}; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
                     f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{body}')
    return (HEAD.format(subject=subject) + extra_headers + 'MIME-Version: 1.0\r\n'
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n' + "".join(parts) + "--b1--\r\n").encode()


def forwarded(inner: bytes) -> bytes:
    return (HEAD.format(subject="fwd") + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="o"\r\n\r\n'
            '--o\r\nContent-Type: text/plain\r\n\r\nsee below\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n').encode() \
        + inner + b"\r\n--o--\r\n"


def txn_of(raw: bytes, rcpts=("b@example.com",), store_limit=None):
    conn = Connection("c1", "192.0.2.1", 40000, "client.example", "client.example", (), 0.0)
    builder = TransactionBuilder(conn, "<a@example.org>", (), {}, 1 << 20, None)
    builder.rcpts = [Rcpt(f"<{r}>", r) for r in rcpts]
    builder.store_limit = store_limit
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        builder.add_header(name.decode(), value.decode("utf-8", "surrogateescape").strip(), line + b"\r\n")
    builder.end_of_headers()
    builder.add_body(body)
    return builder.freeze("QID1", {})


def config_from(tmp_path, text=""):
    path = tmp_path / "pymavis.yaml"
    path.write_text(f"state_dir: {tmp_path}\nmydomain: example.com\n" + textwrap.dedent(text))
    return load(str(path))


def run(tmp_path, raw, config_text="", rcpts=("b@example.com",), bank=(), **txn_args):
    config = config_from(tmp_path, config_text)
    txn = txn_of(raw, rcpts, **txn_args)
    try:
        return pipeline.process(config, merge(config, tuple(bank)), txn)
    finally:
        txn.spool.close()


def alerts(result):
    return [h.value for h in result.outcome.headers if h.name == "X-Pymavis-Alert"]


EXE_IN_ZIP_IN_FORWARD = forwarded(message([("docs.zip", "application/zip", zip_of({"invoice.pdf.exe": MZ}))]))


def test_exe_in_zip_in_forwarded_message_is_rejected_with_the_part_path(tmp_path):
    result = run(tmp_path, EXE_IN_ZIP_IN_FORWARD, "policy: {final_banned_destiny: reject}\n")
    assert result.outcome.action is Action.REJECT
    reply = str(result.outcome.reply)
    assert reply.startswith("554 5.7.0 Reject, id=") and " - BANNED: P=p001,L=1,M=multipart/mixed | " in reply
    assert "M=application/zip,T=zip,N=docs.zip | " in reply
    assert reply.endswith("T=exe-ms,N=invoice.pdf.exe")
    [finding] = [f for f in result.findings if f.ccat is Ccat.BANNED]
    assert dict(finding.values)["banned_rule"] == "DEFAULT[0]"


def test_banned_default_destiny_discards(tmp_path):
    result = run(tmp_path, EXE_IN_ZIP_IN_FORWARD)
    assert result.outcome.action is Action.DISCARD


def test_banned_rule_sets_per_recipient(tmp_path):
    config = """\
    policy:
      final_banned_destiny: reject
      banned_filename_maps: {"takes-exe@example.com": "ALLOW_EXE,DEFAULT", ".": DEFAULT}
    """
    result = run(tmp_path, EXE_IN_ZIP_IN_FORWARD, config, rcpts=("b@example.com", "takes-exe@example.com"))
    out = result.outcome
    assert out.action is Action.CONTINUE
    assert out.del_rcpts == ("b@example.com",) and out.notify_sender == ("b@example.com",)
    by_rcpt = {d.rcpt: d for d in out.decisions}
    assert by_rcpt["b@example.com"].main is Ccat.BANNED
    assert by_rcpt["takes-exe@example.com"].main is Ccat.CLEAN
    assert alerts(result) == []  # the finding is not about the passed recipient


def test_banned_files_lover_gets_it_with_an_alert_header(tmp_path):
    result = run(tmp_path, EXE_IN_ZIP_IN_FORWARD, "policy: {banned_files_lovers: [lover@example.com]}\n",
                 rcpts=("lover@example.com",))
    assert result.outcome.action is Action.CONTINUE
    [alert] = alerts(result)
    assert alert.startswith("BANNED, message contains P=p001,L=1,M=multipart/mixed | ")
    assert result.outcome.decisions[0].main is Ccat.BANNED


def test_bypass_banned_for_everyone_skips_decoding(tmp_path):
    result = run(tmp_path, EXE_IN_ZIP_IN_FORWARD, "policy: {bypass_banned_checks: true}\n")
    assert result.outcome.action is Action.CONTINUE and result.findings == ()
    assert {r.name: r for r in result.checks}["decode"] == CheckResult("decode")


def test_bypass_for_one_recipient_makes_it_a_lover(tmp_path):
    config = 'policy: {bypass_banned_checks: ["bypass@example.com"], final_banned_destiny: reject}\n'
    out = run(tmp_path, EXE_IN_ZIP_IN_FORWARD, config, rcpts=("b@example.com", "bypass@example.com")).outcome
    assert out.del_rcpts == ("b@example.com",)


def test_rule_sets_from_configuration(tmp_path):
    config = """\
    banned_rules:
      NO-PDF:
        - deny: {ext: [pdf]}
          why: no PDFs here
    policy:
      banned_filename_maps: "NO-PDF,DEFAULT"
      final_banned_destiny: reject
    """
    raw = message([("report.pdf", "application/pdf", b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n<<>>\nendobj\n")])
    result = run(tmp_path, raw, config)
    assert result.outcome.action is Action.REJECT
    assert dict(result.findings[0].values)["banned_why"] == "no PDFs here"


def test_rtlo_name_reply_and_alert_are_ascii(tmp_path):
    name = "invoice\u202efdp.exe"
    raw = (HEAD.format(subject="x") + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
           "--b1\r\nContent-Type: application/octet-stream\r\n"
           f"Content-Disposition: attachment; filename*=utf-8''{name.encode().hex('%').upper().join(['%', ''])}"
           "\r\n\r\nhello\r\n--b1--\r\n").encode()
    result = run(tmp_path, raw, "policy: {final_banned_destiny: reject}\n")
    reply = str(result.outcome.reply)
    assert result.outcome.action is Action.REJECT and reply.isascii()
    assert "N=invoice\\u202efdp.exe" in reply
    lover = run(tmp_path, raw, "policy: {banned_files_lovers: true}\n")
    [alert] = alerts(lover)
    assert "\u202e" in alert  # the Finding keeps the name; apply() escapes it (test_outcome)


def test_encrypted_zip_is_unchecked_encrypted_and_passes_tagged(tmp_path):
    raw = message([("secret.zip", "application/zip", zip_of({"a.txt": b"hello" * 100}, "pw", tmp_path))])
    result = run(tmp_path, raw)
    [finding] = result.findings
    assert (finding.ccat, finding.minor) == (Ccat.UNCHECKED, 1)
    assert finding.detail.startswith("encrypted: p003: a.txt: encrypted archive member")
    assert result.outcome.action is Action.CONTINUE
    assert alerts(result) == ["UNCHECKED, " + finding.detail]


def test_unchecked_destiny_reject_uses_the_detail(tmp_path):
    raw = message([("secret.zip", "application/zip", zip_of({"a.txt": b"x"}, "pw", tmp_path))])
    out = run(tmp_path, raw, "policy: {final_unchecked_destiny: reject}\n").outcome
    assert out.action is Action.REJECT and "UNCHECKED: encrypted: p003" in str(out.reply)


def test_over_limits_is_minor_2(tmp_path):
    raw = forwarded(forwarded(forwarded(message())))
    result = run(tmp_path, raw, "decode: {max_depth: 3}\n")
    kinds = {(f.ccat, f.minor) for f in result.findings}
    assert (Ccat.UNCHECKED, 2) in kinds
    [f] = [f for f in result.findings if f.minor == 2]
    assert "nesting depth 4 > limit 3" in f.detail


def test_ambiguous_mime_is_minor_3(tmp_path):
    raw = (HEAD.format(subject="x") + 'MIME-Version: 1.0\r\n'
           'Content-Type: multipart/mixed; boundary="a"; boundary="b"\r\n\r\n'
           "--a\r\nContent-Type: text/plain\r\n\r\nx\r\n--a--\r\n").encode()
    result = run(tmp_path, raw)
    assert (Ccat.UNCHECKED, 3) in {(f.ccat, f.minor) for f in result.findings}
    assert result.outcome.decisions[0].main_minor == 3


def test_could_not_check_is_unchecked_never_clean(tmp_path):
    def broken(scan):
        return CheckResult("broken", could_not_check="scanner unreachable")

    config = config_from(tmp_path)
    txn = txn_of(message())
    result = pipeline.process(config, merge(config, ()), txn, checks=(broken,))
    [finding] = result.findings
    assert (finding.ccat, finding.minor, finding.detail) == (Ccat.UNCHECKED, 0,
                                                             "broken check failed: scanner unreachable")
    assert result.outcome.decisions[0].main is Ccat.UNCHECKED


def test_truncated_spool_is_unchecked_not_clean(tmp_path):
    raw = message([("a.zip", "application/zip", zip_of({"a.exe": MZ}))])
    config = "policy: {message_size_limit: 100, final_oversized_destiny: pass}\n"
    result = run(tmp_path, raw, config, store_limit=100)
    kinds = {(f.ccat, f.minor) for f in result.findings}
    assert (Ccat.UNCHECKED, 2) in kinds and (Ccat.OVERSIZED, 0) in kinds
    assert Ccat.BANNED not in {c for c, _ in kinds}
    assert any("message not stored whole" in f.detail for f in result.findings)


def test_bad_header_is_badh_with_its_minor_and_passes_tagged(tmp_path):
    raw = message(extra_headers="From: second@example.org\r\n")
    result = run(tmp_path, raw)
    [finding] = result.findings
    assert (finding.ccat, finding.minor) == (Ccat.BADH, 8)
    assert alerts(result) == [finding.detail] and finding.detail.startswith("BAD HEADER SECTION, ")


def test_allowed_header_tests_per_bank(tmp_path):
    (tmp_path / "banks").mkdir()
    (tmp_path / "banks" / "lax.yaml").write_text("LAX:\n  allowed_header_tests: {multiple: false}\n")
    raw = message(extra_headers="From: second@example.org\r\n")
    assert run(tmp_path, raw, bank=("LAX",)).findings == ()
    assert run(tmp_path, raw).findings != ()


def test_alert_header_can_be_turned_off(tmp_path):
    raw = message(extra_headers="From: second@example.org\r\n")
    assert alerts(run(tmp_path, raw, "policy: {alert_header_tag: null}\n")) == []


def test_clean_message_with_attachment_is_clean(tmp_path):
    raw = message([("notes.zip", "application/zip", zip_of({"notes.txt": b"hello\n" * 50}))])
    result = run(tmp_path, raw)
    assert result.findings == () and result.outcome.action is Action.CONTINUE
    assert result.outcome.headers == ()   # no virus scanner configured: no X-Virus-Scanned


# --- configuration errors name file, line and key -------------------------------------


def errors_of(tmp_path, text):
    path = tmp_path / "pymavis.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return info.value.errors


@pytest.mark.parametrize("text,line,words", [
    ("policy:\n  banned_filename_maps: 'NO-EXE,DEFALT'\n", 2, ["unknown banned rule set 'DEFALT'", "DEFAULT"]),
    ("policy:\n  banned_filename_maps:\n    - {a@example.com: NOPE}\n", 3, ["'NOPE'"]),
    ("banned_rules:\n  MINE:\n    - deny: {nmae: x}\n", 3, ["unknown matcher 'nmae'", "name"]),
    ("banned_rules:\n  MINE:\n    - deny: {name: '('}\n", 3, ["bad regular expression"]),
    ("decode:\n  max_depht: 3\n", 2, ["unknown key 'max_depht'", "max_depth"]),
    ("decode:\n  max_parts: 0\n", 2, ["at least 1"]),
    ("file_type_map:\n  - ['^PE32', exe-ms]\n  - ['(', x]\n", 3, ["bad regular expression"]),
    ("policy:\n  allowed_header_tests: {multple: false}\n", 2, ["unknown key 'multple'", "multiple"]),
])
def test_config_errors(tmp_path, text, line, words):
    [error] = errors_of(tmp_path, text)
    assert error.startswith(f"{tmp_path}/pymavis.yaml:{line}: "), error
    for word in words:
        assert word in error, error


def test_user_rule_set_can_be_named_in_a_bank(tmp_path):
    (tmp_path / "banks").mkdir()
    (tmp_path / "banks" / "b.yaml").write_text("STRICT:\n  banned_filename_maps: MINE\n")
    config = config_from(tmp_path, "banned_rules:\n  MINE:\n    - deny: {ext: [pdf]}\n")
    assert set(config["banned_rules"]) == {"DEFAULT", "NO-EXE", "ALLOW_EXE", "NO-DISK-IMAGES", "MINE"}


def test_file_type_map_comes_first(tmp_path):
    raw = message([("a.bin", "application/octet-stream", MZ)])
    config = "file_type_map:\n  - ['^PE32', harmless]\n"
    assert run(tmp_path, raw, config).findings == ()
    assert run(tmp_path, raw).outcome.action is Action.DISCARD


def test_reply_text_escapes_non_ascii():
    from pymavis.sanitize import header_text, reply_text
    assert reply_text("N=a\u202eb.exe 100%") == "N=a\\u202eb.exe 100%%"
    assert header_text("caf\xe9\r\nX: y") == "caf\\xe9 X: y"


@pytest.mark.parametrize("raw,head", [
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore", b"A: 1\r\nB: 2\r\n\r\n"),
    (b"A: 1\nB: 2\n\nbody", b"A: 1\nB: 2\n\n"),
    (b"A: 1\r\n" * 5, b"A: 1\r\n" * 5),
])
def test_spool_read_head(raw, head):
    from pymavis.transaction import Spool
    spool = Spool(10, None)
    spool.write(raw)
    assert spool.read_head() == head
    big = Spool(10, None)
    big.write(b"X: " + b"y" * 200_000 + b"\r\n\r\nbody")
    assert len(big.read_head(100_000)) == 100_000
    assert big.read_head().endswith(b"\r\n\r\n")
    assert os.path.exists  # spools close with the test process


def test_decode_gate_bounds_walks_and_bytes():
    import threading
    import time
    from pymavis.checks import DecodeGate
    gate = DecodeGate(walks=2, budget=100)
    running, peak, lock = [], [], threading.Lock()

    def walk(size):
        with gate.admit(size):
            with lock:
                running.append(size)
                peak.append((len(running), sum(min(s, 100) for s in running)))
            time.sleep(0.02)
            with lock:
                running.remove(size)

    threads = [threading.Thread(target=walk, args=(size,)) for size in (60, 60, 30, 500, 10, 10, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert max(n for n, _ in peak) <= 2 and max(b for _, b in peak) <= 100


def test_subject_tag_keeps_the_subjects_utf8():
    from pymavis.outcome import Action as A, Outcome, apply
    from pymavis.edits import for_rcpt
    from pymavis.categories import Ccat as C
    from pymavis.decide import RcptDecision
    from types import SimpleNamespace
    policy = SimpleNamespace(x_header_line=None, alert_header_tag=None, subject_tag_by_ccat={"VIRUS": "***INFECTED*** "})
    decision = RcptDecision("a@example.com", C.VIRUS, 0, None, "pass")
    [edit] = for_rcpt(None, policy, decision, (), False, "Caf\xe9 \u202e", None)
    calls = []
    ctx = SimpleNamespace(chgheader=lambda name, idx, value: calls.append((name, idx, value)),
                          setreply=None, addheader=None, delrcpt=None, addrcpt=None, quarantine=None)
    apply(Outcome(A.CONTINUE, headers=(edit,)), ctx)
    assert calls == [("Subject", 1, "***INFECTED*** Caf\xe9 \u202e")]


def test_message_text_with_non_utf8_bytes_is_made_encodable():
    from pymavis.sanitize import header_text
    raw_latin1 = b"Caf\xe9".decode("utf-8", "surrogateescape")   # as the adapter holds it
    value = header_text("***INFECTED*** " + raw_latin1, ascii_only=False)
    assert value == "***INFECTED*** Caf\ufffd" and value.encode("utf-8")
