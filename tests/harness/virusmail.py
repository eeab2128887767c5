"""Test messages for the virus check, built at test time from clamav-testfiles and EICAR
(no malware-like bytes in the repository).

    virusmail.attached(subject, "clam.zip", "application/zip", virusmail.clamav_file("clam.zip"))

Every message is CRLF text with a fresh Message-ID, from SENDER to `to`. The infected
content comes from /usr/share/clamav-testfiles (the Debian package clamav-testfiles):
clam.exe and containers of it, which the test clamd (harness/clamd.py) knows by an md5
signature, and the EICAR string, which it knows by a body signature.
"""

from __future__ import annotations

import base64
import os
import uuid

from .clamd import EICAR, TESTFILES

SENDER = "alice@example.org"
DATE = "Sun, 22 Nov 2026 06:00:00 +0000"


def clamav_file(name: str) -> bytes:
    """A file of clamav-testfiles, e.g. "clam.exe", "clam.7z"."""
    with open(os.path.join(TESTFILES, name), "rb") as fh:
        return fh.read()


def uu_block(name: str = "clam.exe.mbox.uu") -> str:
    """The `begin 644 clam.exe` ... `end` lines of clamav-testfiles' uuencoded mbox.

    The packaged file stops at the "e" of its `end` line; the block is completed here, so
    the body is well-formed uuencode (it decodes to clam.exe exactly)."""
    lines = clamav_file(name).decode("ascii").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("begin "))
    stop = next(i for i, line in enumerate(lines) if i > start and line == "`")   # the zero-length line
    return "\r\n".join(lines[start:stop + 1]) + "\r\nend\r\n"


def _head(subject: str, to: str, extra: str = "") -> str:
    return (f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {DATE}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n{extra}")


def plain(subject: str, body: str, to: str = "bob@example.net") -> bytes:
    """A single text/plain part with `body` as it is (CRLF line ends expected)."""
    return (_head(subject, to, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n")
            + "\r\n" + body).encode()


def eicar_plain(subject: str, to: str = "bob@example.net") -> bytes:
    return plain(subject, "the test string follows\r\n" + EICAR.decode() + "\r\n", to)


def uuencoded_inline(subject: str, to: str = "bob@example.net") -> bytes:
    """clam.exe uuencoded inside a text/plain body, as old mail clients sent attachments."""
    return plain(subject, "here it is\r\n\r\n" + uu_block() + "\r\nbye\r\n", to)


def attached(subject: str, name: str, ctype: str, data: bytes, to: str = "bob@example.net") -> bytes:
    """multipart/mixed: a short text part, then `data` base64-encoded as attachment `name`."""
    body = base64.encodebytes(data).decode().replace("\n", "\r\n")
    return (_head(subject, to, 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n')
            + "\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
            f'--b1\r\nContent-Type: {ctype}; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{body}--b1--\r\n').encode()


def forwarded(subject: str, inner: bytes, to: str = "bob@example.net") -> bytes:
    """`inner` (a whole message) forwarded as a message/rfc822 part."""
    return (_head(subject, to, 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="o"\r\n')
            + "\r\n--o\r\nContent-Type: text/plain\r\n\r\nfyi\r\n"
            "--o\r\nContent-Type: message/rfc822\r\n\r\n").encode() + inner + b"\r\n--o--\r\n"


def big(subject: str, size: int, to: str = "bob@example.net") -> bytes:
    """A clean text message of at least `size` bytes (78-byte lines)."""
    line = "z" * 76 + "\r\n"
    return plain(subject, line * (size // len(line) + 1), to)
