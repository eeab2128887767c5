"""Small transactions for the unit tests of what is recorded about a message (events,
metrics): a Transaction built as the adapter builds one, a clean message's header fields,
a message with a banned attachment, and a configuration file written to a temp dir."""

from __future__ import annotations

import base64
import textwrap

from pymavis.config import load
from pymavis.transaction import Connection, Rcpt, TransactionBuilder

from .samples import pe

BODY = b"hello\r\n"


def config_from(tmp_path, text=""):
    path = tmp_path / "pymavis.yaml"
    path.write_text(f"state_dir: {tmp_path}\nmyhostname: mx.example.com\nmydomain: example.com\n"
                    + textwrap.dedent(text))
    return load(str(path))


def txn_of(headers: list[tuple[str, str]], body: bytes = BODY, rcpts=("b@example.com",),
           macros=(("{daemon_port}", "25"), ("{daemon_addr}", "192.0.2.25"))):
    conn = Connection("4711-01", "192.0.2.1", 40000, "client.example", "client.example", tuple(macros), 0.0)
    builder = TransactionBuilder(conn, "<a@example.org>", (), {}, 1 << 20, None)
    for r in rcpts:
        builder.add_rcpt(Rcpt(f"<{r}>", r), 0)
    for name, value in headers:
        builder.add_header(name, value, f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    builder.end_of_headers()
    builder.add_body(body)
    return builder.freeze("4Xyz", {})


HEADERS = [("From", '"Alice A." <a@example.org>'), ("To", "b@example.com, Carol <c@example.com>"),
           ("Cc", "d@example.net"), ("Subject", "=?utf-8?q?caf=C3=A9_menu?="), ("Message-ID", "<m1@example.org>"),
           ("Date", "Sun, 22 Nov 2026 06:00:00 +0000"), ("User-Agent", "Mutt/2.2")]


def zip_message() -> list[tuple[str, str]]:
    return HEADERS[:5] + [("MIME-Version", "1.0"), ("Content-Type", 'multipart/mixed; boundary="b1"')]


def banned_body() -> bytes:
    data = base64.encodebytes(pe()).decode().replace("\n", "\r\n")
    return ("--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
            'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="run.exe"\r\n\r\n'
            f"{data}--b1--\r\n").encode()
