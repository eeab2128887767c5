"""`pymavis scan`: messages built here (and one from the shared corpus) run through the
checks offline; the JSON and text reports, the exit codes, and the file-to-transaction step."""

import base64
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import CORPUS
from harness.samples import pe, zip_bytes
from pymavis import cli, pipeline, scan


MZ = pe()
HEAD = "From: a@example.org\nDate: Sun, 22 Nov 2026 06:00:00 +0000\nSubject: {subject}\n"


def message(attachments=(), subject="test", extra_headers="") -> bytes:
    """A multipart/mixed message, LF line ends as files on disk have them."""
    parts = ["--b1\nContent-Type: text/plain\n\nhello\n"]
    for name, ctype, data in attachments:
        body = base64.encodebytes(data).decode()
        parts.append(f'--b1\nContent-Type: {ctype}; name="{name}"\nContent-Transfer-Encoding: base64\n'
                     f'Content-Disposition: attachment; filename="{name}"\n\n{body}')
    return (HEAD.format(subject=subject) + extra_headers + 'MIME-Version: 1.0\n'
            'Content-Type: multipart/mixed; boundary="b1"\n\n' + "".join(parts) + "--b1--\n").encode()


def forwarded(inner: bytes) -> bytes:
    return (HEAD.format(subject="fwd") + 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="o"\n\n'
            '--o\nContent-Type: text/plain\n\nsee below\n--o\nContent-Type: message/rfc822\n\n').encode() \
        + inner + b"\n--o--\n"


def zip_of(files: dict) -> bytes:
    return zip_bytes(*files.items())


def encrypted_zip(tmp_path) -> bytes:
    (tmp_path / "secret.txt").write_bytes(b"for your eyes only\n")
    out = tmp_path / "enc.zip"
    subprocess.run(["zip", "-q", "-j", "-P", "secret", str(out), str(tmp_path / "secret.txt")], check=True)
    return out.read_bytes()


EXE_IN_ZIP_IN_FORWARD = forwarded(message([("docs.zip", "application/zip", zip_of({"invoice.pdf.exe": MZ}))]))


@pytest.fixture
def conf(tmp_path):
    """Write the main configuration (plus bank files) into tmp_path; return its path."""
    def write(policy="", banks=None, extra=""):
        (tmp_path / "banks").mkdir(exist_ok=True)
        for name, text in (banks or {}).items():
            (tmp_path / "banks" / name).write_text(textwrap.dedent(text))
        path = tmp_path / "pymavis.yaml"
        path.write_text(f"state_dir: {tmp_path / 'state'}\nmydomain: example.com\n{textwrap.dedent(extra)}"
                        "policy:\n  local_domains: [example.com]\n" + textwrap.indent(textwrap.dedent(policy), "  "))
        return str(path)
    return write


@pytest.fixture
def eml(tmp_path):
    def write(data: bytes, name="msg.eml"):
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)
    return write


def scan_json(capsys, *args):
    """Run `pymavis scan --json ARGS` in-process: (exit code, [one object per file])."""
    code = cli.main(["scan", "--json", *args])
    out, _ = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()]


def test_clean_message_exits_0(conf, eml, capsys):
    code, [obj] = scan_json(capsys, "-c", conf(), eml(message()))
    assert code == 0
    assert obj["content_type"] == "Clean"
    assert obj["ccat_main"] == {"user@example.com": {"ccat": "Clean", "minor": 0, "destiny": "pass", "blocking": None}}
    assert obj["findings"] == [] and obj["problems"] == []
    assert [(p["path"], p["depth_path"], p["declared_type"]) for p in obj["parts"]] == \
        [("p001", "1", "multipart/mixed"), ("p002", "1/1", "text/plain")]
    assert obj["action"] == "continue" and obj["reply"] is None
    assert obj["headers"] == []   # X-Virus-Scanned only when a virus scanner answered (none configured)
    assert {"lookups", "header", "decode", "banned", "decide", "total"} <= set(obj["timings_ms"])


def test_exe_in_zip_in_forwarded_message_is_banned_with_the_path_chain(conf, eml, capsys):
    code, [obj] = scan_json(capsys, "-c", conf("final_banned_destiny: reject\n"), "--to", "b@example.com",
                            eml(EXE_IN_ZIP_IN_FORWARD))
    assert code == 1
    assert obj["content_type"] == "Banned"
    assert obj["ccat_main"]["b@example.com"]["destiny"] == "reject"
    [finding] = obj["findings"]
    assert (finding["check"], finding["ccat"], finding["rcpts"]) == ("banned", "Banned", None)
    chain = finding["detail"].split(" | ")
    assert chain[0].startswith("P=p001,L=1,") and chain[-1] == "P=p007,L=1/2/1/2/1,T=exe-ms,N=invoice.pdf.exe"
    assert "P=p003,L=1/2,M=message/rfc822" in chain and "P=p006,L=1/2/1/2,M=application/zip,T=zip,N=docs.zip" in chain
    exe = obj["parts"][-1]
    assert (exe["path"], exe["name"], exe["detected"], exe["size"]) == ("p007", "invoice.pdf.exe", "exe-ms", len(MZ))
    assert exe["magic"].startswith("PE32 executable")
    assert obj["action"] == "reject" and obj["reply"].startswith("554 5.7.0 Reject, id=")
    assert obj["reply"].endswith("N=invoice.pdf.exe") and obj["headers"] == []


def test_text_report_shows_tree_findings_and_fate(conf, eml, capsys):
    path = eml(EXE_IN_ZIP_IN_FORWARD)
    assert cli.main(["scan", "-c", conf(), path]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: Banned (mail_id ")
    assert "\n          p006 1/2/1/2 application/zip (zip), " in out    # indented by depth
    assert f'\n            p007 1/2/1/2/1 - (exe-ms), {len(MZ)} bytes, name "invoice.pdf.exe"\n' in out
    assert "\n  problems: none\n" in out
    assert "\n    BANNED (minor 0) banned: P=p001," in out
    assert "\n    <user@example.com>: Banned (minor 0), destiny discard, blocked by BANNED (banned) " \
           "-> discarded (the whole message)\n" in out
    assert "\n  MTA: discard\n" in out
    assert "\n  log: Blocked BANNED {DiscardedInbound}, [local] <> -> <user@example.com>, " in out


def test_two_from_fields_are_bad_header_minor_8(conf, eml, capsys):
    data = b"From: a@example.org\nFrom: b@example.org\nDate: Sun, 22 Nov 2026 06:00:00 +0000\nSubject: x\n\nhi\n"
    code, [obj] = scan_json(capsys, "-c", conf(), eml(data))
    assert code == 1
    assert obj["content_type"] == "BadHdr"
    assert obj["ccat_main"]["user@example.com"] == {"ccat": "BadHdr", "minor": 8, "destiny": "pass", "blocking": None}
    [finding] = obj["findings"]
    assert (finding["check"], finding["minor"]) == ("header", 8)
    assert 'Duplicate header field: "From" (2 times)' in finding["detail"]
    assert ["X-Pymavis-Alert", finding["detail"]] in obj["headers"]


def test_encrypted_zip_is_unchecked_minor_1(conf, eml, capsys, tmp_path):
    data = message([("enc.zip", "application/zip", encrypted_zip(tmp_path))])
    code, [obj] = scan_json(capsys, "-c", conf(), eml(data))
    assert code == 1
    assert obj["content_type"] == "Unchecked"
    assert obj["ccat_main"]["user@example.com"]["minor"] == 1
    assert [(f["ccat"], f["minor"]) for f in obj["findings"]] == [("Unchecked", 1)]
    assert [p["minor"] for p in obj["problems"]] == ["encrypted"]


def test_banned_rule_sets_differ_per_recipient(conf, eml, capsys):
    config = conf("""\
        final_banned_destiny: reject
        banned_filename_maps: {"takes-exe@example.com": "ALLOW_EXE,DEFAULT", ".": DEFAULT}
        """)
    code, [obj] = scan_json(capsys, "-c", config, "--to", "b@example.com", "--to", "<takes-exe@example.com>",
                            eml(EXE_IN_ZIP_IN_FORWARD))
    assert code == 1
    assert obj["ccat_main"] == {
        "b@example.com": {"ccat": "Banned", "minor": 0, "destiny": "reject",
                          "blocking": {"check": "banned", "ccat": "Banned", "minor": 0}},
        "takes-exe@example.com": {"ccat": "Clean", "minor": 0, "destiny": "pass", "blocking": None},
    }
    assert obj["findings"][0]["rcpts"] == ["b@example.com"]
    assert obj["action"] == "continue"
    assert obj["del_rcpts"] == ["b@example.com"] and obj["notify_sender"] == ["b@example.com"]


def test_bank_is_merged_over_the_default(conf, eml, capsys):
    config = conf("final_banned_destiny: discard\n",
                  banks={"b.yaml": "PARTNERS:\n  final_banned_destiny: reject\n"})
    code, [obj] = scan_json(capsys, "-c", config, "--bank", "PARTNERS", eml(EXE_IN_ZIP_IN_FORWARD))
    assert (code, obj["bank"], obj["action"]) == (1, "PARTNERS", "reject")
    code, [obj] = scan_json(capsys, "-c", config, "--bank", "DEFAULT", eml(EXE_IN_ZIP_IN_FORWARD))
    assert (code, obj["bank"], obj["action"]) == (1, "DEFAULT", "discard")


def test_client_ip_selects_banks_as_the_milter_does(conf, eml, capsys):
    config = conf(extra="client_ipaddr_policy:\n  - {ip: [192.0.2.0/24], bank: PARTNERS}\n",
                  banks={"b.yaml": "PARTNERS:\n  bypass_header_checks: true\n"})
    data = b"From: a@example.org\nFrom: b@example.org\nDate: Sun, 22 Nov 2026 06:00:00 +0000\n\nhi\n"
    code, [obj] = scan_json(capsys, "-c", config, "--client-ip", "192.0.2.7", eml(data))
    assert (code, obj["bank"], obj["content_type"]) == (0, "PARTNERS", "Clean")
    code, [obj] = scan_json(capsys, "-c", config, "--client-ip", "127.0.0.1", eml(data))
    assert (code, obj["bank"], obj["content_type"]) == (1, "MYNETS", "BadHdr")


def test_undefined_bank_exits_2_with_a_clear_message(conf, eml, capsys):
    config = conf(banks={"b.yaml": "PARTNERS: {}\n"})
    code = cli.main(["scan", "-c", config, "--bank", "MYNETS,PARTNRES", eml(message())])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "--bank: policy bank 'PARTNRES' is not defined (did you mean 'PARTNERS'?); defined banks: " in err


def test_configuration_error_exits_2(tmp_path, eml, capsys):
    (tmp_path / "bad.yaml").write_text("policy:\n  final_spam_destinyy: pass\n")
    assert cli.main(["scan", "-c", str(tmp_path / "bad.yaml"), eml(message())]) == 2
    assert "bad.yaml:2: unknown key 'final_spam_destinyy'" in capsys.readouterr().err


def test_unreadable_file_is_reported_and_the_next_one_still_scanned(conf, eml, capsys, tmp_path):
    missing = str(tmp_path / "missing.eml")
    code, objs = scan_json(capsys, "-c", conf(), missing, eml(message()))
    assert code == 2
    assert objs[0] == {"file": missing, "error": "cannot read: No such file or directory"}
    assert objs[1]["content_type"] == "Clean"


def test_internal_error_is_reported_and_the_next_file_still_scanned(conf, eml, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "_FAULT_MARKER", "BOOM")
    bad, good = eml(message(subject="BOOM"), "bad.eml"), eml(message(), "good.eml")
    assert cli.main(["scan", "-c", conf(), bad, good]) == 2
    out, err = capsys.readouterr()
    assert f"pymavis scan: {bad}: internal error: InjectedFault: fault injected" in err
    assert out.startswith(f"{good}: Clean")


def test_findings_outrank_clean_and_errors_outrank_findings(conf, eml, capsys, tmp_path):
    config = conf()
    clean, banned = eml(message(), "clean.eml"), eml(EXE_IN_ZIP_IN_FORWARD, "banned.eml")
    assert cli.main(["scan", "-q", "-c", config, clean, clean]) == 0
    assert cli.main(["scan", "-q", "-c", config, banned, clean]) == 1
    assert cli.main(["scan", "-q", "-c", config, banned, str(tmp_path / "missing")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("cannot read") == 1


def test_walk_that_never_ran_is_said(conf, eml, capsys):
    config = conf("bypass_banned_checks: true\n")
    code, [obj] = scan_json(capsys, "-c", config, eml(EXE_IN_ZIP_IN_FORWARD))
    assert (code, obj["decoded"], obj["parts"]) == (0, False, [])
    assert cli.main(["scan", "-c", config, eml(EXE_IN_ZIP_IN_FORWARD)]) == 0
    assert f"\n  parts: {scan.NOT_DECODED}\n" in capsys.readouterr().out


def test_over_every_size_limit_is_oversized_and_not_stored_whole(conf, eml, capsys):
    code, [obj] = scan_json(capsys, "-c", conf("message_size_limit: 300\nfinal_oversized_destiny: pass\n"),
                            eml(EXE_IN_ZIP_IN_FORWARD))
    assert code == 1
    assert {(f["ccat"], f["minor"]) for f in obj["findings"]} == {("Oversized", 0), ("Unchecked", 2)}
    assert obj["size"] > 300 and obj["content_type"] == "Unchecked"


def test_names_are_shown_ascii_safe(conf, eml, capsys):
    name = "=?utf-8?b?" + base64.b64encode("r\u202egpj.exe\x07".encode()).decode() + "?="
    assert cli.main(["scan", "-c", conf(), eml(message([(name, "application/octet-stream", b"data")]))]) == 1
    out = capsys.readouterr().out
    assert 'name "r\\u202egpj.exe\\x07"' in out
    assert out.count("\n") == len(out.splitlines())    # no line broken by a name
    assert out.isascii()


def test_a_corpus_message_with_an_attachment_scans(conf, capsys):
    path = os.path.join(CORPUS, "mime4j-testmsgs", "simple-attachment.msg")
    code, [obj] = scan_json(capsys, "-c", conf(), path)
    assert code == 0, obj
    assert [(p["name"], p["size"]) for p in obj["parts"] if p["name"]] == [("data.bin", 1024)]


def test_console_script(conf, eml):
    script = os.path.join(os.path.dirname(sys.executable), "pymavis")
    assert os.path.exists(script), f"console script {script} not installed (pip install -e .)"
    run = subprocess.run([script, "scan", "-c", conf(), "--json", eml(EXE_IN_ZIP_IN_FORWARD)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert json.loads(run.stdout)["content_type"] == "Banned"
    run = subprocess.run([script, "scan", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "exit codes:" in run.stdout


# --- from file bytes to what the MTA hands over ----------------------------------------

SPLIT_CASES = [
    ("crlf", b"A: 1\r\nB: 2\r\n\r\nbody\r\n", [(b"A", b"1"), (b"B", b"2")], b"body\r\n"),
    ("lf-to-crlf", b"A: 1\n\nline1\nline2\n", [(b"A", b"1")], b"line1\r\nline2\r\n"),
    ("mbox-from-line", b"From a@b Sat Jan  1 00:00:00 2000\nA: 1\n\nb\n", [(b"A", b"1")], b"b\r\n"),
    ("folded", b"Subject: one\n\ttwo\n  three\n\nb\n", [(b"Subject", b"one\r\n\ttwo\r\n  three")], b"b\r\n"),
    ("space-after-colon-dropped", b"A:x\nB :   y\n\n", [(b"A", b"x"), (b"B", b"y")], b""),
    ("no-final-newline", b"A: 1\n\nbody", [(b"A", b"1")], b"body\r\n"),
    ("no-body", b"A: 1\n", [(b"A", b"1")], b""),
    ("non-header-line-starts-body", b"A: 1\nnot a header\nB: 2\n\nb\n", [(b"A", b"1")],
     b"not a header\r\nB: 2\r\n\r\nb\r\n"),
    ("leading-continuation-is-body", b" x\nA: 1\n", [], b" x\r\nA: 1\r\n"),
    ("empty-header-section", b"\nbody\n", [], b"body\r\n"),
    ("lone-cr-kept", b"A: 1\rx\n\n", [(b"A", b"1\rx")], b""),
]


@pytest.mark.parametrize("data,fields,body", [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_split_message(data, fields, body):
    assert scan.split_message(data) == (fields, body)


def test_spool_holds_what_the_adapter_would_write(conf):
    from pymavis.config import load
    from pymavis.policy import merge
    config = load(conf())
    txn = scan.build_transaction(config, merge(config, ()), b"From a@b x\nSubject:hi\n  there\n\nbody\n", "<>",
                                 ["u@example.com"])
    try:
        expected = b"Subject: hi\r\n  there\r\n\r\nbody\r\n"
        assert txn.spool.read() == expected
        assert txn.headers == (("Subject", "hi\n  there"),)
        assert (txn.mail_from, [r.addr for r in txn.rcpts], txn.size) == ("", ["u@example.com"], len(expected))
    finally:
        txn.spool.close()
