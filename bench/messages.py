"""The decode profile's messages: realistic mail with attachments, made at run time.

Nothing binary is committed: every attachment is generated here from a seeded random
generator, with the first bytes real files have (libmagic looks at those), so that the
decoder does the work it does on real mail:

    class               share  what
    50 KB + PDF          20%   text part + application/pdf ("%PDF-1.7", objects, one
                               FlateDecode-like stream of random bytes, xref, trailer)
    50 KB + docx         15%   text part + a Word 2007+ zip ([Content_Types].xml first,
                               word/document.xml of text, deflated; an image stored)
    50 KB + zip          10%   text part + a zip of four files (txt, csv, pdf, png)
                               that libarchive opens and libmagic types one by one
    50 KB + image        15%   text part + image/png (real signature and IHDR)
    50 KB HTML           15%   newsletter: multipart/related[multipart/alternative[text,
                               html (quoted-printable)], inline png logo]
    50 KB forwarded      10%   text part + message/rfc822 holding a message with its own
                               PDF attachment (a nested message, walked as one)
    corpus               13%   messages from /work/shared/corpus (read in place, never
                               copied): multipart, 2 KB - 1 MB, no parser defects, lines
                               <= 998; bench/run.py keeps only those pymavis passes
    5 MB zip              1%   a 5 MB message: zip of PDFs, a CSV and photos
    5 MB PDF              1%   a 5 MB message: one large PDF

The virus profile's mix (`VIRUS_MIX`) is the same with 3% infected messages, made at run
time from the EICAR string and clamav-testfiles' clam.exe (Debian package
clamav-testfiles), which the test clamd (tests/harness/clamd.py) knows by its two
signatures; their share is taken from "50 KB + PDF" (20% -> 17%):

    infected: EICAR in text       1%   8 KB text/plain, the EICAR string as one line of it
    infected: EICAR attachment    1%   8 KB: text part + eicar.com (base64)
    infected: clam.exe in zip     1%   8 KB: text part + a zip holding clam.exe (deflated)

`MsgClass.virus` names the signature clamd must report for a class (None: none).

The spam profile's mix (`SPAM_MIX`, sent by bench/spam.py's SpamMix) is the decode mix
without its 5 MB classes (spamd would only get their first 400 KiB), the shares scaled
down to make room for spam and ham as SpamAssassin's own tests have them:

    50 KB classes              79%   as above (17, 14, 10, 14, 14, 10)
    corpus                     11%   as above
    spam: SpamAssassin t/data   6%   corpus spamassassin-t-data/spam (`sa_corpus("spam")`)
    ham: SpamAssassin t/data    2%   its nice/ and welcomelists/, and the package's
                                     sample-nonspam.txt (`sa_corpus("ham")`)
    GTUBE                       2%   4 KB text/plain: sample-spam.txt's body (the GTUBE
                                     string: score 1000, SPAM), then ordinary text

`MsgClass.pool` names the corpus selection of a class whose messages are read from files.

Sizes are whole messages (headers + body) within 2%; the header section is bench/sender.py's
(16 fields as inbound mail has them, unique Message-ID per message). Each class has a few
variants (`VARIANTS`), so the decoder never sees one body only; the 5 MB classes two.

`message_class(label, rng)` builds one whole message for the in-process benchmark
(bench/decode_cost.py); `DecodeMix` is what bench/sender.py sends through Postfix.

Corpus selection (`corpus_candidates`): rows of the corpus' MANIFEST.tsv with at least two
parts, 2 KB to 1 MB, no Python `email` defects, longest line <= 998 and none of the
features that make a message spam, malware-like or unusual input rather than ordinary mail
(gtube, exe-like-attachment, nul-bytes, binary-cte, bogus-cte:*, huge-header, line>998).
Limits: none of this touches the network or writes files.
"""

from __future__ import annotations

import base64
import io
import quopri
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sender
from harness.clamd import CLAM_EXE_SIGNATURE, EICAR, EICAR_SIGNATURE, TESTFILES
from harness.spamd import GTUBE, SAMPLES as SA_EXAMPLES

CORPUS_DIR = Path("/work/shared/corpus")
CORPUS_MIN_BYTES, CORPUS_MAX_BYTES = 2 * 1024, 1024 * 1024
CORPUS_EXCLUDED_FEATURES = ("gtube", "exe-like-attachment", "nul-bytes", "binary-cte", "bogus-cte",
                            "huge-header", "line>998")
VARIANTS = 4          # bodies per class (the 5 MB classes: BIG_VARIANTS)
BIG_VARIANTS = 2
SIZE_TOLERANCE = 0.02

KB, MB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Body:
    content_type: str
    body: bytes


# --- file contents ----------------------------------------------------------------------


def pdf_bytes(rng: random.Random, n: int) -> bytes:
    """A PDF of exactly n bytes (n >= ~600): catalog, page, one stream of random bytes
    (as compressed page content or an embedded scan looks), xref table, trailer."""
    def build(stream: bytes) -> bytes:
        objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
                b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream"]
        out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for i, obj in enumerate(objs, 1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
        out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
        out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
        return bytes(out)

    overhead = len(build(b"")) + 8       # the /Length and startxref digits grow with n
    data = build(rng.randbytes(max(0, n - overhead)))
    pad = n - len(data)                  # a comment line after %%EOF makes up the size
    return data + (b"%" + b" " * (pad - 2) + b"\n" if pad >= 2 else b"\n" * pad)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(rng: random.Random, n: int) -> bytes:
    """A PNG of about n bytes: signature, IHDR (a photo's dimensions), IDAT of random
    bytes (compressed photo data looks like that), IEND."""
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1024, 768, 8, 2, 0, 0, 0))
    tail = _png_chunk(b"IEND", b"")
    return head + _png_chunk(b"IDAT", rng.randbytes(max(1, n - len(head) - len(tail) - 12))) + tail


def text_bytes(rng: random.Random, n: int, sep: bytes = b"\r\n") -> bytes:
    return sender._text_lines(rng, n).replace(b"\r\n", sep)[:n]


def csv_bytes(rng: random.Random, n: int) -> bytes:
    rows, size = [b"date,account,description,amount,balance\n"], 0
    balance = 10000.0
    while size < n:
        amount = round(rng.uniform(-900, 900), 2)
        balance += amount
        row = (f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d},"
               f"DE{rng.randrange(10**19, 10**20)},{rng.choice(sender._WORDS)} {rng.choice(sender._WORDS)},"
               f"{amount:.2f},{balance:.2f}\n").encode()
        rows.append(row)
        size += len(row)
    return b"".join(rows)[:n]


def _zip(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in members:
            info = zipfile.ZipInfo(name, date_time=(2026, 11, 20, 9, 30, 0))
            info.compress_type = method
            zf.writestr(info, data)
    return buf.getvalue()


_DOCX_TYPES = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
               b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
               b'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
               b'<Default Extension="xml" ContentType="application/xml"/>'
               b'<Default Extension="png" ContentType="image/png"/>'
               b'<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
               b'wordprocessingml.document.main+xml"/></Types>')
_DOCX_RELS = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
              b'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
              b'<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
              b'officeDocument" Target="word/document.xml"/></Relationships>')


def docx_bytes(rng: random.Random, n: int) -> bytes:
    """A Word 2007+ document of about n bytes: the parts libmagic looks for, in its order
    ([Content_Types].xml first, then _rels/, then word/), a deflated document.xml of
    paragraphs, and a stored image making up the size."""
    paras = b"".join(b"<w:p><w:r><w:t>" + text_bytes(rng, 300, b" ") + b"</w:t></w:r></w:p>" for _ in range(60))
    document = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="http://schemas.'
                b'openxmlformats.org/wordprocessingml/2006/main"><w:body>' + paras + b"</w:body></w:document>")

    def build(image_len: int) -> bytes:
        return _zip([("[Content_Types].xml", _DOCX_TYPES, zipfile.ZIP_DEFLATED),
                     ("_rels/.rels", _DOCX_RELS, zipfile.ZIP_DEFLATED),
                     ("word/document.xml", document, zipfile.ZIP_DEFLATED),
                     ("word/media/image1.png", png_bytes(random.Random(image_len), image_len), zipfile.ZIP_STORED),
                     ("docProps/core.xml", b"<cp:coreProperties/>", zipfile.ZIP_DEFLATED)])
    return _fit(build, n, slope=1.0)


def zip_bytes(rng: random.Random, n: int) -> bytes:
    """A zip of about n bytes with four files of the kinds people send (text, csv, pdf, png)."""
    notes, table = text_bytes(rng, 3 * KB, b"\n"), csv_bytes(rng, 12 * KB)
    seed = rng.getrandbits(32)

    def build(pdf_len: int) -> bytes:
        r = random.Random(seed)
        return _zip([("notes.txt", notes, zipfile.ZIP_DEFLATED),
                     ("statement-2026-10.csv", table, zipfile.ZIP_DEFLATED),
                     ("invoice-4471.pdf", pdf_bytes(r, pdf_len), zipfile.ZIP_DEFLATED),
                     ("site-photo.png", png_bytes(r, 4 * KB), zipfile.ZIP_STORED)])
    return _fit(build, n, slope=1.0)


def big_zip_bytes(rng: random.Random, n: int) -> bytes:
    """A zip of about n bytes as a large attachment: a CSV export (deflated), two PDFs and
    three photos (incompressible), and a stored PDF that makes up the size."""
    r = random.Random(rng.getrandbits(32))
    members = [("export/ledger-2026.csv", csv_bytes(r, 2 * MB), zipfile.ZIP_DEFLATED)]
    members += [(f"scans/contract-{i}.pdf", pdf_bytes(r, 500 * KB), zipfile.ZIP_DEFLATED) for i in range(2)]
    members += [(f"photos/IMG_{4100 + i}.png", png_bytes(r, 300 * KB), zipfile.ZIP_STORED) for i in range(3)]
    filler_seed = r.getrandbits(32)

    def build(last_pdf: int) -> bytes:
        last = pdf_bytes(random.Random(filler_seed), max(1 * KB, last_pdf))
        return _zip([*members, ("scans/appendix.pdf", last, zipfile.ZIP_STORED)])
    return _fit(build, n, slope=1.0, start=1 * KB)


def _fit(build: Callable[[int], object], target: int, slope: float, start: int | None = None,
         size: Callable[[object], int] = len):
    """build(k) for the k that makes size(build(k)) about `target` (secant steps; the size
    grows about `slope` bytes per unit of k)."""
    k = start if start is not None else max(1, target // 2)
    out = build(k)
    for _ in range(4):
        err = target - size(out)
        if abs(err) <= target * SIZE_TOLERANCE / 4:
            break
        k = max(1, k + int(err / slope))
        out = build(k)
    return out


def _body_size(body: "Body") -> int:
    return len(body.body)


# --- message bodies -----------------------------------------------------------------------


def _b64(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return b"".join(enc[i:i + 76] + b"\r\n" for i in range(0, len(enc), 76))


def _qp(data: bytes) -> bytes:
    return quopri.encodestring(data.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")


def _text_part(rng: random.Random, n: int = 1500) -> bytes:
    return (b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            + text_bytes(rng, n) + b"\r\n")


def _attachment_part(ctype: str, name: str, data: bytes, disposition: str = "attachment") -> bytes:
    return (f'Content-Type: {ctype}; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
            f'Content-Disposition: {disposition}; filename="{name}"\r\n\r\n').encode() + _b64(data)


def _multipart(boundary: str, subtype: str, parts: list[bytes], extra: str = "") -> Body:
    body = b"This is a multi-part message in MIME format.\r\n\r\n"
    for part in parts:
        body += f"--{boundary}\r\n".encode() + part + (b"" if part.endswith(b"\r\n") else b"\r\n")
    body += f"--{boundary}--\r\n".encode()
    return Body(f'multipart/{subtype};{extra}\r\n\tboundary="{boundary}"', body)


def _boundary(rng: random.Random) -> str:
    return f"=_bench_{rng.getrandbits(48):012x}"


def _one_attachment(ctype: str, name: str, make: Callable[[random.Random, int], bytes]):
    """A body maker: multipart/mixed with a short text part and one base64 attachment."""
    def body(rng: random.Random, room: int) -> Body:
        seed = rng.getrandbits(32)
        filename = name.format(n=seed % 9000 + 1000)

        def build(raw_len: int) -> Body:
            r = random.Random(seed)
            boundary, text = _boundary(r), _text_part(r)
            return _multipart(boundary, "mixed", [text, _attachment_part(ctype, filename, make(r, raw_len))])
        return _fit(build, room, slope=78 / 57, start=room * 57 // 78, size=_body_size)
    return body


def _html_newsletter(rng: random.Random, room: int) -> Body:
    """multipart/related[multipart/alternative[text/plain, text/html], inline png], both
    texts quoted-printable, as newsletters are sent."""
    seed = rng.getrandbits(32)

    def build(html_len: int) -> Body:
        r = random.Random(seed)
        rows, size = [], 0
        while size < html_len:
            row = (f'<tr><td style="padding:12px;font-family:Arial,sans-serif;font-size:14px;color:#333333">'
                   f'<h2 style="margin:0">{" ".join(r.choice(sender._WORDS) for _ in range(5)).title()}</h2>'
                   f'<p>{text_bytes(r, 400, b" ").decode()}</p>'
                   f'<a href="https://news.{sender.SENDER_DOMAIN}/c/{r.getrandbits(64):016x}">Read more</a>'
                   f'</td></tr>\n')
            rows.append(row)
            size += len(row)
        html = ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>Newsletter</title></head>'
                '<body><table width="600" cellpadding="0" cellspacing="0" border="0">\n'
                '<tr><td><img src="cid:logo@bench" alt="Logo" width="200" height="60"></td></tr>\n'
                + "".join(rows) + "</table></body></html>\n").encode()
        plain = text_bytes(r, html_len // 4)
        alt = _multipart(_boundary(r), "alternative", [
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + _qp(plain),
            b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + _qp(html)])
        logo = (b'Content-Type: image/png; name="logo.png"\r\nContent-Transfer-Encoding: base64\r\n'
                b'Content-ID: <logo@bench>\r\nContent-Disposition: inline; filename="logo.png"\r\n\r\n'
                + _b64(png_bytes(r, 3 * KB)))
        inner = f"Content-Type: {alt.content_type}\r\n\r\n".encode() + alt.body
        return _multipart(_boundary(r), "related", [inner, logo], ' type="multipart/alternative";')
    return _fit(build, room, slope=1.3, start=room * 3 // 4, size=_body_size)


def _forwarded(rng: random.Random, room: int) -> Body:
    """A short note and the forwarded message (message/rfc822), which has its own PDF."""
    seed = rng.getrandbits(32)

    def build(pdf_len: int) -> Body:
        r = random.Random(seed)
        outer_boundary = _boundary(r)
        inner = _multipart(_boundary(r), "mixed", [_text_part(r, 800), _attachment_part(
            "application/pdf", f"quote-{seed % 9000 + 1000}.pdf", pdf_bytes(r, pdf_len))])
        head = sender._headers(r, 0, seed, f"colleague@{sender.SENDER_DOMAIN}", f"someone@{sender.RCPT_DOMAIN}",
                               "Quote for the November order", inner.content_type)
        rfc822 = (b'Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename="forwarded.eml"\r\n\r\n'
                  + head + inner.body)
        return _multipart(outer_boundary, "mixed", [_text_part(r, 600), rfc822])
    return _fit(build, room, slope=78 / 57, start=room * 57 // 78, size=_body_size)


def _whole_lines(rng: random.Random, n: int) -> bytes:
    """Text of whole CRLF lines, at most n bytes (at least one line)."""
    text = sender._text_lines(rng, n)
    return text[:max(text.rfind(b"\r\n", 0, n), text.find(b"\r\n")) + 2]


def _eicar_text(rng: random.Random, room: int) -> Body:
    """text/plain with the EICAR test string as one line between two halves of text."""
    line = EICAR + b"\r\n"
    before = _whole_lines(rng, (room - len(line)) // 2)
    after = _whole_lines(rng, room - len(line) - len(before))
    return Body("text/plain; charset=us-ascii", before + line + after)


def clam_exe_zip() -> bytes:
    """A zip holding clamav-testfiles' clam.exe, deflated (built here, nothing committed)."""
    return _zip([("clam.exe", (Path(TESTFILES) / "clam.exe").read_bytes(), zipfile.ZIP_DEFLATED)])


def _text_and_file(ctype: str, name: str, make: Callable[[], bytes]):
    """A body maker: multipart/mixed with a text part sized to fill the message and one
    small base64 attachment of fixed content."""
    def body(rng: random.Random, room: int) -> Body:
        seed = rng.getrandbits(32)
        data = make()

        def build(text_len: int) -> Body:
            r = random.Random(seed)
            boundary = _boundary(r)
            return _multipart(boundary, "mixed", [_text_part(r, text_len), _attachment_part(ctype, name, data)])
        return _fit(build, room, slope=1.0, start=max(200, room - 1500), size=_body_size)
    return body


@dataclass(frozen=True)
class MsgClass:
    label: str
    share: int                      # percent of the mix
    size: int | None                # whole-message bytes; None: corpus messages as they are
    body: Callable[[random.Random, int], Body] | None
    virus: str | None = None        # the signature clamd must report (tests/harness/clamd.py)
    pool: str = "corpus"            # size None: which corpus selection (bench/spam.py: spam, ham)


DECODE_MIX: tuple[MsgClass, ...] = (
    MsgClass("50 KB + PDF", 20, 50 * KB, _one_attachment("application/pdf", "Invoice-{n}.pdf", pdf_bytes)),
    MsgClass("50 KB + docx", 15, 50 * KB, _one_attachment(
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "Proposal-{n}.docx", docx_bytes)),
    MsgClass("50 KB + zip", 10, 50 * KB, _one_attachment("application/zip", "documents-{n}.zip", zip_bytes)),
    MsgClass("50 KB + image", 15, 50 * KB, _one_attachment("image/png", "photo-{n}.png", png_bytes)),
    MsgClass("50 KB HTML", 15, 50 * KB, _html_newsletter),
    MsgClass("50 KB forwarded", 10, 50 * KB, _forwarded),
    MsgClass("corpus", 13, None, None),
    MsgClass("5 MB zip", 1, 5 * MB, _one_attachment("application/zip", "project-files-{n}.zip", big_zip_bytes)),
    MsgClass("5 MB PDF", 1, 5 * MB, _one_attachment("application/pdf", "scan-{n}.pdf", pdf_bytes)),
)
assert sum(c.share for c in DECODE_MIX) == 100

INFECTED: tuple[MsgClass, ...] = (
    MsgClass("infected: EICAR in text", 1, 8 * KB, _eicar_text, EICAR_SIGNATURE),
    MsgClass("infected: EICAR attachment", 1, 8 * KB,
             _text_and_file("application/octet-stream", "eicar.com", lambda: EICAR), EICAR_SIGNATURE),
    MsgClass("infected: clam.exe in zip", 1, 8 * KB,
             _text_and_file("application/zip", "documents.zip", clam_exe_zip), CLAM_EXE_SIGNATURE),
)
# The decode mix with the infected share taken from its largest class.
VIRUS_MIX: tuple[MsgClass, ...] = tuple(
    MsgClass(c.label, c.share - sum(i.share for i in INFECTED), c.size, c.body) if c.label == "50 KB + PDF" else c
    for c in DECODE_MIX) + INFECTED
assert sum(c.share for c in VIRUS_MIX) == 100


def _gtube(rng: random.Random, room: int) -> Body:
    """text/plain: SpamAssassin's sample-spam.txt body (the GTUBE string, score 1000) and
    ordinary text after it to fill the message."""
    sample = (Path(SA_EXAMPLES) / "sample-spam.txt").read_bytes().replace(b"\r\n", b"\n")
    body = sample.partition(b"\n\n")[2].replace(b"\n", b"\r\n")
    assert GTUBE in body, "sample-spam.txt has no GTUBE string"
    return Body("text/plain; charset=us-ascii", body + b"\r\n" + _whole_lines(rng, max(80, room - len(body) - 2)))


# The spam profile's mix (bench/spam.py): the decode mix without its 5 MB classes (spamd
# would get only their first 400 KiB, sa_mail_body_size_limit), with spam and ham as
# SpamAssassin's own test data has them, and 2% GTUBE so that the verdict path is
# exercised (score 1000: SPAM). Shares of the 50 KB classes and the corpus scaled down.
SPAM_MIX: tuple[MsgClass, ...] = (
    MsgClass("50 KB + PDF", 17, 50 * KB, DECODE_MIX[0].body),
    MsgClass("50 KB + docx", 14, 50 * KB, DECODE_MIX[1].body),
    MsgClass("50 KB + zip", 10, 50 * KB, DECODE_MIX[2].body),
    MsgClass("50 KB + image", 14, 50 * KB, DECODE_MIX[3].body),
    MsgClass("50 KB HTML", 14, 50 * KB, DECODE_MIX[4].body),
    MsgClass("50 KB forwarded", 10, 50 * KB, DECODE_MIX[5].body),
    MsgClass("corpus", 11, None, None),
    MsgClass("spam: SpamAssassin t/data", 6, None, None, pool="spam"),
    MsgClass("ham: SpamAssassin t/data", 2, None, None, pool="ham"),
    MsgClass("GTUBE", 2, 4 * KB, _gtube),
)
assert sum(c.share for c in SPAM_MIX) == 100
assert [c.label for c in SPAM_MIX[:6]] == [c.label for c in DECODE_MIX[:6]]


def sized_body(cls: MsgClass, seed: str) -> Body:
    """A body that makes a whole message of cls.size bytes with bench/sender.py's headers."""
    def build(header_len: int) -> Body:
        return cls.body(random.Random(seed), cls.size - header_len)
    sample = build(1500)
    head = sender._headers(random.Random(0), 0, 0, f"sender0@{sender.SENDER_DOMAIN}", f"user0@{sender.RCPT_DOMAIN}",
                           "Sample subject of six words here", sample.content_type)
    return build(len(head))


def message_class(label: str, variant: int = 0, msg_no: int = 0) -> bytes:
    """One whole message (CRLF, not dot-stuffed) of the class `label`, for decode_cost.py."""
    cls = next(c for c in DECODE_MIX if c.label == label)
    body = sized_body(cls, f"decode/{label}/{variant}")
    rng = random.Random(msg_no)
    head = sender._headers(rng, 0, msg_no, f"sender{msg_no}@{sender.SENDER_DOMAIN}",
                           f"user{msg_no}@{sender.RCPT_DOMAIN}", "Documents for the meeting", body.content_type)
    return head + body.body


# --- the corpus ---------------------------------------------------------------------------


def corpus_candidates(root: Path = CORPUS_DIR) -> list[Path]:
    """Corpus messages fit for the mix (see the module doc), in MANIFEST order."""
    manifest = root / "MANIFEST.tsv"
    out = []
    lines = manifest.read_text(errors="replace").splitlines()
    head = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(head, line.split("\t")))
        try:
            size, parts, maxline = int(row["size"]), int(row["parts"]), int(row["maxline"])
        except (KeyError, ValueError):
            continue
        features = row.get("features", "")
        if (parts >= 2 and CORPUS_MIN_BYTES <= size <= CORPUS_MAX_BYTES and maxline <= 998
                and not row.get("python_defects") and not any(f in features for f in CORPUS_EXCLUDED_FEATURES)):
            path = root / row["source"] / row["path"]
            if path.is_file():
                out.append(path)
    return out


SA_DATA = "spamassassin-t-data"
SA_SPAM_DIRS, SA_HAM_DIRS = ("spam/",), ("nice/", "welcomelists/")
SA_MIN_BYTES, SA_MAX_BYTES = 500, 400 * 1024


def sa_corpus(kind: str, root: Path = CORPUS_DIR) -> list[Path]:
    """SpamAssassin's own test messages in the corpus (t/data): `kind` "spam" (spam/) or
    "ham" (nice/, welcomelists/, and the package's sample-nonspam.txt). Any part count,
    500 B - 400 KiB (under sa_mail_body_size_limit), no Python `email` defects, lines <= 998,
    none of CORPUS_EXCLUDED_FEATURES, no GTUBE string anywhere (GTUBE has a class of its own,
    whose count per phase the run checks). In MANIFEST order."""
    dirs = SA_SPAM_DIRS if kind == "spam" else SA_HAM_DIRS
    lines = (root / "MANIFEST.tsv").read_text(errors="replace").splitlines()
    head = lines[0].split("\t")
    out = []
    for line in lines[1:]:
        row = dict(zip(head, line.split("\t")))
        if row.get("source") != SA_DATA or not row.get("path", "").startswith(dirs):
            continue
        try:
            size, maxline = int(row["size"]), int(row["maxline"])
        except (KeyError, ValueError):
            continue
        if (SA_MIN_BYTES <= size <= SA_MAX_BYTES and maxline <= 998 and not row.get("python_defects")
                and not any(f in row.get("features", "") for f in CORPUS_EXCLUDED_FEATURES)):
            path = root / SA_DATA / row["path"]
            if path.is_file() and GTUBE not in path.read_bytes():
                out.append(path)
    if kind == "ham":
        out.append(Path(SA_EXAMPLES) / "sample-nonspam.txt")
    return out


def smtp_data(raw: bytes) -> bytes:
    """A message file's bytes as SMTP DATA: CRLF line ends, a final CRLF, dot-stuffed."""
    if raw.startswith(b"From "):
        raw = raw.partition(b"\n")[2]
    data = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def unstuffed(data: bytes) -> bytes:
    """SMTP DATA (dot-stuffed, CRLF) back to the message bytes Postfix hands the milter."""
    data = data.replace(b"\r\n..", b"\r\n.")
    return data[1:] if data.startswith(b"..") else data


class DecodeMix:
    """What bench/sender.py sends in the decode profile (`mix` DECODE_MIX) and the virus
    profile (VIRUS_MIX): `classes` (label, share), `message(class_idx, msg_no)` and
    `virus(class_idx)`. Built once in the parent; the sender's worker processes inherit it
    by fork (the 5 MB bodies are not rebuilt per phase)."""

    def __init__(self, corpus_files: list[Path], seed: int = 1, mix: tuple[MsgClass, ...] = DECODE_MIX):
        self.mix = mix
        self.classes = tuple((c.label, c.share) for c in self.mix)
        self.bodies: list[list[Body]] = []
        for c in self.mix:
            if c.size is None:
                self.bodies.append([])
                continue
            n = BIG_VARIANTS if c.size >= MB else VARIANTS
            self.bodies.append([sized_body(c, f"{seed}/decode/{c.label}/{v}") for v in range(n)])
        self.corpus = [smtp_data(p.read_bytes()) for p in corpus_files]
        if not self.corpus:
            raise ValueError("no corpus messages for the decode mix")
        for cls, bodies in zip(self.mix, self.bodies):
            for b in bodies:
                assert b.body.endswith(b"\r\n") and b"\r\n." not in b.body, f"{cls.label}: body needs dot-stuffing"

    def virus(self, class_idx: int) -> str | None:
        """The signature clamd must find in every message of this class, or None."""
        return self.mix[class_idx].virus

    def message(self, class_idx: int, msg_no: int) -> tuple[str, str, bytes]:
        """(mail_from, rcpt, data with CRLF line ends, dot-stuffed, no final dot)."""
        rng = random.Random(1_000_003 + msg_no)
        mail_from = f"sender{msg_no % sender.ADDRESS_POOL}@{sender.SENDER_DOMAIN}"
        rcpt = f"user{(msg_no * 7) % sender.ADDRESS_POOL}@{sender.RCPT_DOMAIN}"
        if self.mix[class_idx].size is None:
            return mail_from, rcpt, self.corpus[msg_no % len(self.corpus)]
        bodies = self.bodies[class_idx]
        body = bodies[msg_no % len(bodies)]
        subject = " ".join(rng.choice(sender._WORDS) for _ in range(6)).capitalize()
        head = sender._headers(rng, class_idx, msg_no, mail_from, rcpt, subject, body.content_type)
        return mail_from, rcpt, head + body.body
