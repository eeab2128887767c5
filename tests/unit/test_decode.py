"""The decoding walker (pymavis.decode): file types, MIME walk, names, ambiguity, limits.

Every sample is built here at test time (no binary fixtures, no bombs in the repository):
minimal PE and ELF headers, archives made with zipfile/tarfile/gzip, MIME text assembled
by hand. Nasty inputs (100,000 parts, 1,000 nesting levels, 1 MB header lines) must end
within the deadline with Problems, never with an exception.
"""

import base64
import binascii
import bz2
import gzip
import io
import lzma
import struct
import tarfile
import threading
import time
import zipfile

import pytest

from harness.samples import pe
from pymavis.decode import DEFAULT_TYPE_MAP, Limits, Part, Problem, walk
from pymavis.decode import mime
from pymavis.decode.types import detect, short_type


# --- samples -------------------------------------------------------------------------


def elf(kind=2):
    header = bytearray(64)
    header[0:4] = b"\x7fELF"
    header[4:7] = b"\x02\x01\x01"  # 64-bit, little endian, version 1
    struct.pack_into("<HHI", header, 16, kind, 62, 1)  # e_type, x86-64, version
    return bytes(header)


def zip_bytes(members=(("a.txt", b"hello"),), compression=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("a.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


def ole2():
    return bytes.fromhex("d0cf11e0a1b11ae1") + bytes(600)


def ooxml(kind="word"):
    return zip_bytes(
        (
            ("[Content_Types].xml", b'<?xml version="1.0"?><Types/>'),
            ("_rels/.rels", b"<Relationships/>"),
            (f"{kind}/document.xml", b"<document/>"),
        ),
        compression=zipfile.ZIP_STORED,
    )


# --- step 1: file types --------------------------------------------------------------

TYPE_CASES = [
    ("pe32-gui", pe(), "exe-ms"),
    ("pe32+", pe(pe32plus=True), "exe-ms"),
    ("pe-dll", pe(dll=True), "dll"),
    ("ms-dos-mz", b"MZ" + bytes(200), "exe-ms"),
    ("elf-exec", elf(2), "exe-unix"),
    ("elf-shared", elf(3), "exe-unix"),
    ("zip", zip_bytes(), "zip"),
    ("docx", ooxml("word"), "docx"),
    ("gzip", gzip.compress(b"x" * 100), "gz"),
    ("bzip2", bz2.compress(b"x"), "bz2"),
    ("xz", lzma.compress(b"x"), "xz"),
    ("lzma", lzma.compress(b"x", format=lzma.FORMAT_ALONE), "lzma"),
    ("zstd", b"\x28\xb5\x2f\xfd" + bytes(20), "zst"),
    ("tar", tar_bytes(), "tar"),
    ("cpio", b"070701" + b"0" * 100, "cpio"),
    ("7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(30), "7z"),
    ("rar4", b"Rar!\x1a\x07\x00" + bytes(30), "rar"),
    ("rar5", b"Rar!\x1a\x07\x01\x00" + bytes(30), "rar"),
    ("cab", b"MSCF\0\0\0\0" + bytes(40), "cab"),
    ("lha", b"\x00\x00-lh5-" + bytes(30), "lha"),
    ("iso9660", bytes(32768) + b"\x01CD001\x01" + bytes(2000), "iso"),
    ("ar", b"!<arch>\n", "ar"),
    ("tnef", b"\x78\x9f\x3e\x22" + bytes(30), "tnef"),
    ("ole2", ole2(), "doc"),
    ("pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "pdf"),
    ("html", b"<html><head><title>x</title></head><body>hi</body></html>\n", "html"),
    ("rtf", b"{\\rtf1\\ansi hello}", "rtf"),
    ("ascii", b"hello world\nthis is text\n", "asc"),
    ("utf8", "h\u00e9llo w\u00f6rld\n".encode(), "txt"),
    ("latin1", "h\u00e9llo w\u00f6rld\n".encode("latin-1"), "txt"),
    ("bat", b"@echo off\r\necho hi\r\n", "bat"),
    ("shell-script-is-text", b"#!/bin/sh\necho hi\n", "txt"),
    ("uuencoded", b"begin 644 a.exe\nM35H``\n`\nend\n", "uue"),
    ("binhex", b"(This file must be converted with BinHex 4.0)\n:!!\n", "hqx"),
    ("mail-rfc822", b"Received: from x by y; Mon, 1 Jan 2024\nFrom: a@example.com\nSubject: hi\n\nbody\n", "mail"),
    ("mail-news", b"From: a@example.com\nTo: b@example.com\nSubject: hi\n\nbody\n", "mail"),
    ("mime-entity", b"MIME-Version: 1.0\nContent-Type: text/plain\n\nbody\n", "mail"),
    ("gif", b"GIF89a" + bytes(20), "gif"),
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(20), "jpg"),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00", "png"),
    ("empty", b"", "empty"),
    ("zeros", bytes(1000), "dat"),
]


@pytest.mark.parametrize("data,expected", [c[1:] for c in TYPE_CASES], ids=[c[0] for c in TYPE_CASES])
def test_detect_short_type(data, expected):
    short, description = detect(data)
    assert short == expected, description


DESCRIPTION_CASES = [
    # libmagic 5.44's own words for the samples in rspamd's gargantua.eml
    ("MS-DOS executable", "exe-ms"),
    ("PE32 executable (DLL) (GUI) Intel 80386, for MS Windows", "dll"),
    ("PE32+ executable (console) x86-64, for MS Windows", "exe-ms"),
    ("MS-DOS executable (built-in)", "asc"),
    ("ELF 64-bit LSB executable, x86-64, version 1 (SYSV)", "exe-unix"),
    ("ELF 64-bit LSB shared object, x86-64", "exe-unix"),
    ("Composite Document File V2 Document, Little Endian, Os: Windows, Version 6.1", "doc"),
    ("Composite Document File V2 Document, Can't read SAT", "doc"),
    ("CDFV2 Microsoft Outlook Message", "msg"),
    ("Microsoft Excel 2007+", "xlsx"),
    ("Microsoft PowerPoint 2007+", "pptx"),
    ("Microsoft Cabinet archive data, 78 bytes, 1 file", "cab"),
    ("ACE archive data version 20, from Win/32", "ace"),
    ("ARJ archive data, v11, slash-switched", "arj"),
    ("  LHa (2.x) archive data  [lh5]", "lha"),
    ("Mozilla lz4 compressed data, originally 2441 bytes", "lz4"),
    ("xar archive compressed TOC: 7456, SHA-1 checksum", "xar"),
    ("POSIX tar archive (GNU)", "tar"),
    ("ASCII cpio archive (SVR4 with no CRC)", "cpio"),
    ("MS Windows shortcut, Item id list present", "lnk"),
    ("MS Windows HtmlHelp Data", "chm"),
    ("compiled Java class data, version 52.0 (Java 1.8)", "java"),
    ("DOS batch file, ASCII text, with CRLF line terminators", "bat"),
    ("Python script, ASCII text executable", "txt"),
    ("HTML document, ASCII text", "html"),
    ("RFC 822 mail, ASCII text", "mail"),
    ("news or mail, ASCII text", "mail"),
    ("ISO-8859 text", "txt"),
    ("Unicode text, UTF-8 text", "txt"),
    ("ASCII text, with CRLF line terminators", "asc"),
    ("something libmagic invents tomorrow", None),
]


@pytest.mark.parametrize("description,expected", DESCRIPTION_CASES, ids=[c[0][:40] for c in DESCRIPTION_CASES])
def test_type_map(description, expected):
    assert short_type(description) == expected


def test_custom_type_map_first_match_wins():
    table = [(r"^PE32", "my-exe"), (r"executable", "other")]
    assert short_type("PE32 executable (GUI)", table) == "my-exe"
    assert short_type("ELF executable", table) == "other"
    assert short_type("ASCII text", table) is None
    assert detect(pe(), table)[0] == "my-exe"


def test_default_type_map_is_a_table_of_pairs():
    assert all(len(row) == 2 and isinstance(row[1], str) for row in DEFAULT_TYPE_MAP)


def test_detect_sees_only_the_head():
    # a PE header followed by 1 MB: only the head is handed to libmagic
    short, _ = detect(pe() + bytes(1 << 20), max_bytes=1024)
    assert short == "exe-ms"
    # an ISO 9660 descriptor at 32 KiB is invisible in the first 1 KiB
    assert detect(bytes(32768) + b"\x01CD001\x01" + bytes(2000), max_bytes=1024)[0] == "dat"


def test_detect_from_many_threads():
    # one libmagic handle per thread: no lock contention errors, same answers
    results, errors = [], []

    def work():
        try:
            for _ in range(50):
                results.append(detect(pe())[0])
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(results) == {"exe-ms"} and len(results) == 400


# --- step 2: the MIME walk -----------------------------------------------------------


def multipart(*parts, boundary="BOUNDARY", subtype="mixed", headers=b"From: a@example.com\nSubject: test\n"):
    """A multipart message (or entity) from already-built part texts (bytes, headers included)."""
    body = b"".join(b"--" + boundary.encode() + b"\n" + part + b"\n" for part in parts)
    return (
        headers
        + b"MIME-Version: 1.0\nContent-Type: multipart/" + subtype.encode()
        + b'; boundary="' + boundary.encode() + b'"\n\n'
        + body + b"--" + boundary.encode() + b"--\n"
    )


def attachment(data, name=None, ctype=b"application/octet-stream", extra=b""):
    """A base64 part; `name` goes into Content-Disposition filename unless None."""
    header = b"Content-Type: " + ctype + b"\nContent-Transfer-Encoding: base64\n"
    if name is not None:
        header += b'Content-Disposition: attachment; filename="' + name.encode() + b'"\n'
    return header + extra + b"\n" + base64.encodebytes(data)


def text(body=b"hello\n", ctype=b"text/plain"):
    return b"Content-Type: " + ctype + b"\n\n" + body


def single_attachment(disposition: bytes):
    """A message with one part whose headers are `disposition` (to test name decoding)."""
    return multipart(disposition + b"\n\nhello\n")


def shape(result):
    return [(p.path, p.depth_path, p.declared_type, p.detected, p.name) for p in result.parts]


def test_single_part_message():
    result = walk(b"From: a@example.com\nSubject: hi\n\nhello world\n")
    assert shape(result) == [("p001", "1", None, "asc", None)]
    assert result.parts[0].size == len(b"hello world\n")
    assert result.problems == ()


def test_nested_message_part_paths():
    inner = multipart(text(), attachment(zip_bytes(), "docs.zip", b"application/zip"), boundary="INNER",
                      headers=b"From: b@example.com\nSubject: inner\n")
    raw = multipart(text(), b"Content-Type: message/rfc822\n\n" + inner)
    result = walk(raw)
    assert shape(result) == [
        ("p001", "1", "multipart/mixed", None, None),
        ("p002", "1/1", "text/plain", "asc", None),
        ("p003", "1/2", "message/rfc822", None, None),
        ("p004", "1/2/1", "multipart/mixed", None, None),
        ("p005", "1/2/1/1", "text/plain", "asc", None),
        ("p006", "1/2/1/2", "application/zip", "zip", "docs.zip"),
        ("p007", "1/2/1/2/1", None, "asc", "a.txt"),
    ]
    assert result.parts[5].part_path() == "P=p006,L=1/2/1/2,M=application/zip,T=zip,N=docs.zip"
    assert result.parts[5].size == len(zip_bytes())
    assert result.parts[5].magic.startswith("Zip archive data")
    assert result.problems == ()


def test_rfc822_inside_base64_is_walked():
    inner = b"From: b@example.com\nSubject: inner\nContent-Type: text/html\n\n<html><body>hi</body></html>\n"
    raw = multipart(text(), attachment(inner, None, b"message/rfc822"))
    result = walk(raw)
    assert shape(result) == [
        ("p001", "1", "multipart/mixed", None, None),
        ("p002", "1/1", "text/plain", "asc", None),
        ("p003", "1/2", "message/rfc822", None, None),
        ("p004", "1/2/1", "text/html", "html", None),
    ]
    assert result.parts[2].size == len(inner)


def test_attached_eml_detected_as_mail_is_walked():
    # amavis's 'mail' decoder: a part libmagic calls mail is parsed whatever it declares
    inner = multipart(attachment(pe(), "setup.exe"), boundary="IN", headers=b"From: x@example.com\nSubject: fw\n")
    result = walk(multipart(text(), attachment(inner, "forward.eml")))
    assert [(p.depth_path, p.detected, p.name) for p in result.parts] == [
        ("1", None, None),
        ("1/1", "asc", None),
        ("1/2", "mail", "forward.eml"),
        ("1/2/1", None, None),
        ("1/2/1/1", "exe-ms", "setup.exe"),
    ]


def test_headers_only_mail_part_is_a_leaf():
    # text/rfc822-headers in a DSN: libmagic says mail, but there is no body to walk
    result = walk(multipart(text(b"Received: from x\nFrom: a@example.com\nSubject: s\n", b"text/rfc822-headers")))
    assert [p.depth_path for p in result.parts] == ["1", "1/1"]


def test_delivery_status_is_one_leaf():
    dsn = b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; a@example.com\nAction: failed\n"
    result = walk(multipart(text(), dsn, subtype="report"))
    assert [(p.depth_path, p.declared_type) for p in result.parts] == [
        ("1", "multipart/report"), ("1/1", "text/plain"), ("1/2", "message/delivery-status")]
    assert result.parts[2].size > 0


PE_CONTENT = pe()

NAME_CASES = [
    ("plain", b'Content-Disposition: attachment; filename="report.pdf"', "report.pdf"),
    ("unquoted", b"Content-Disposition: attachment; filename=plain.exe", "plain.exe"),
    ("content-type-name", b'Content-Type: application/octet-stream; name="a.zip"', "a.zip"),
    ("filename-wins-over-name",
     b'Content-Type: application/octet-stream; name="a.zip"\nContent-Disposition: attachment; filename="b.exe"', "b.exe"),
    ("rfc2047-b-utf8", b'Content-Disposition: attachment; filename="=?UTF-8?B?0YTQsNC50LsuZXhl?="', "\u0444\u0430\u0439\u043b.exe"),
    ("rfc2047-q-latin1", b'Content-Disposition: attachment; filename="=?iso-8859-1?Q?r=E9sum=E9.doc?="', "r\u00e9sum\u00e9.doc"),
    ("rfc2047-koi8r-readme-banned", b'Content-Type: application/x-zip-compressed; name="=?koi8-r?B?Zm90by56aXA=?="', "foto.zip"),
    ("rfc2047-two-words-hide-double-ext",
     b'Content-Disposition: attachment; filename="=?utf-8?B?aW52b2ljZS5wZGY=?= =?utf-8?B?LmV4ZQ==?="', "invoice.pdf.exe"),
    # "\u00e9" is C3 A9 in UTF-8: split between two encoded-words
    ("rfc2047-split-mid-character",
     b'Content-Disposition: attachment; filename="=?utf-8?Q?r=C3?= =?utf-8?Q?=A9sum=C3=A9.exe?="', "r\u00e9sum\u00e9.exe"),
    ("rfc2231-continuation-hides-double-ext",
     b'Content-Disposition: attachment; filename*0="invoice.pdf"; filename*1=".exe"', "invoice.pdf.exe"),
    ("rfc2231-encoded-continuations",
     b"Content-Disposition: attachment; filename*0*=UTF-8''invoice%2Epdf; filename*1*=%2Eexe", "invoice.pdf.exe"),
    ("rfc2231-utf8", b"Content-Disposition: attachment; filename*=UTF-8''%D1%84.exe", "\u0444.exe"),
    ("rfc2231-garbage-charset", b"Content-Disposition: attachment; filename*=x-garbage''caf%E9.exe", "caf\u00e9.exe"),
    ("rfc2231-mixed-garbage-charset",
     b"Content-Disposition: attachment; filename*0*=x-bogus''a%E9; filename*1=.exe", "a\u00e9.exe"),
    ("rfc2047-unknown-charset", b'Content-Disposition: attachment; filename="=?x-nonsense?Q?abc.exe?="', "abc.exe"),
    ("rfc2047-strict-only-codec", b'Content-Disposition: attachment; filename="=?idna?Q?abc=FF.exe?="', "abc\u00ff.exe"),
    ("rfc2047-non-text-codec", b'Content-Disposition: attachment; filename="=?rot13?Q?nop.rkr?="', "nop.rkr"),
    ("rfc2047-bad-base64-kept", b'Content-Disposition: attachment; filename="=?UTF-8?B?!!!notbase64?="', "=?UTF-8?B?!!!notbase64?="),
    ("rtlo-kept-verbatim", b"Content-Disposition: attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe", "invoice\u202efdp.exe"),
    ("rtlo-in-encoded-word", b'Content-Disposition: attachment; filename="=?UTF-8?Q?photo=E2=80=AEgpj.scr?="', "photo\u202egpj.scr"),
    ("literal-backslash-u-stays-text", b'Content-Disposition: attachment; filename="a\\\\u202e.exe"', "a\\u202e.exe"),
    ("raw-utf8", 'Content-Disposition: attachment; filename="r\u00e9sum\u00e9.pdf"'.encode(), "r\u00e9sum\u00e9.pdf"),
    ("raw-latin1", 'Content-Disposition: attachment; filename="r\u00e9sum\u00e9.pdf"'.encode("latin-1"), "r\u00e9sum\u00e9.pdf"),
    ("clsid-suffix", b'Content-Disposition: attachment; filename="doc.txt.{00021401-0000-0000-C000-000000000046}"',
     "doc.txt.{00021401-0000-0000-C000-000000000046}"),
    ("spaces-before-ext", b'Content-Disposition: attachment; filename="photo.jpg            .scr"', "photo.jpg            .scr"),
    ("trailing-dots-spaces", b'Content-Disposition: attachment; filename="setup.exe. . "', "setup.exe. . "),
    ("no-name", b"Content-Type: application/octet-stream", None),
    ("empty-name", b'Content-Disposition: attachment; filename=""', None),
]


@pytest.mark.parametrize("header,expected", [c[1:] for c in NAME_CASES], ids=[c[0] for c in NAME_CASES])
def test_declared_name(header, expected):
    result = walk(single_attachment(header))
    assert result.parts[1].name == expected
    assert result.problems == ()


PART_PATH_CASES = [
    ("all-fields", Part("p003", "1/2", "docs.zip", "application/zip", "zip", "Zip archive data", 10),
     "P=p003,L=1/2,M=application/zip,T=zip,N=docs.zip"),
    ("container", Part("p001", "1", None, "multipart/mixed", None, None, 0), "P=p001,L=1,M=multipart/mixed"),
    ("archive-member-no-mime-type", Part("p004", "1/2/1", "invoice.pdf.exe", None, "exe-ms", "PE32", 9),
     "P=p004,L=1/2/1,T=exe-ms,N=invoice.pdf.exe"),
    ("no-type-detected", Part("p002", "1/1", None, "text/plain", None, None, 0), "P=p002,L=1/1,M=text/plain"),
    ("newline-in-name-stays-one-line", Part("p002", "1/1", "a\nb.exe", None, None, None, 0), "P=p002,L=1/1,N=a?b.exe"),
    ("rtlo-kept", Part("p002", "1/1", "a\u202efdp.exe", None, None, None, 0), "P=p002,L=1/1,N=a\u202efdp.exe"),
]


@pytest.mark.parametrize("part,expected", [c[1:] for c in PART_PATH_CASES], ids=[c[0] for c in PART_PATH_CASES])
def test_part_path(part, expected):
    assert part.part_path() == expected


def test_declared_type_is_lowercased_without_parameters():
    result = walk(single_attachment(b'Content-Type: Application/PDF; name="a.pdf"'))
    assert result.parts[1].declared_type == "application/pdf"


def test_detected_type_ignores_declared_type():
    # an executable declared as a picture (README.banned: audio/x-wav holding message.scr)
    result = walk(multipart(attachment(PE_CONTENT, "message.scr", b"audio/x-wav")))
    assert result.parts[1].part_path() == "P=p002,L=1/1,M=audio/x-wav,T=exe-ms,N=message.scr"


# --- ambiguity -----------------------------------------------------------------------


def two_boundaries(first="A", second="B"):
    """CVE-2024-28054's shape: Python reads the parts under the first boundary, others the last."""
    return (
        b"From: a@example.com\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="' + first.encode() + b'"; boundary="' + second.encode() + b'"\n\n'
        b"--" + first.encode() + b"\nContent-Type: text/plain\n\nharmless\n"
        b"--" + second.encode() + b"\n" + attachment(PE_CONTENT, "evil.exe") + b"\n"
        b"--" + second.encode() + b"--\n--" + first.encode() + b"--\n"
    )


AMBIGUITY_CASES = [
    ("duplicate-boundary", two_boundaries(), ["p001: 2 different boundary parameters in Content-Type"]),
    ("duplicate-boundary-same-value", two_boundaries("A", "A"), []),
    ("two-content-types",
     b"From: a@example.com\nContent-Type: text/plain\nContent-Type: application/octet-stream\n\nhi\n",
     ["p001: 2 Content-Type header fields"]),
    ("two-content-types-in-a-part",
     multipart(b"Content-Type: text/plain\nContent-Type: application/x-msdownload\n\nhi\n"),
     ["p002: 2 Content-Type header fields"]),
    ("conflicting-transfer-encodings",
     b"From: a@example.com\nContent-Transfer-Encoding: base64\nContent-Transfer-Encoding: 7bit\n\naGk=\n",
     ["p001: 2 different Content-Transfer-Encoding header fields"]),
    ("plain-multipart", multipart(text()), []),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in AMBIGUITY_CASES], ids=[c[0] for c in AMBIGUITY_CASES])
def test_ambiguity(raw, expected):
    result = walk(raw)
    assert [f"{p.part}: {p.detail}" for p in result.problems if p.minor == "ambiguous"] == expected
    assert all(p.minor == "ambiguous" for p in result.problems)


def test_duplicate_boundary_still_walks_what_python_reads():
    result = walk(two_boundaries())
    assert result.parts[0].declared_type == "multipart/mixed"
    assert len(result.parts) >= 2


# --- uuencode ------------------------------------------------------------------------


def uuencode(name, data, mode="644"):
    lines = [f"begin {mode} {name}".encode()]
    for i in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[i : i + 45]).rstrip(b"\n"))
    lines += [b"`", b"end"]
    return b"\n".join(lines) + b"\n"


def test_uuencoded_blocks_in_text_become_parts():
    body = b"See the files:\n\n" + uuencode("setup.exe", PE_CONTENT) + b"\nand\n\n" + uuencode("notes.txt", b"just text\n") + b"bye\n"
    result = walk(b"From: a@example.com\nSubject: uu\nContent-Type: text/plain\n\n" + body)
    assert [(p.depth_path, p.name, p.detected, p.size) for p in result.parts] == [
        ("1", None, "uue", len(body)),
        ("1/1", "setup.exe", "exe-ms", len(PE_CONTENT)),
        ("1/2", "notes.txt", "asc", len(b"just text\n")),
    ]
    assert result.parts[1].part_path() == "P=p002,L=1/1,T=exe-ms,N=setup.exe"


def test_uuencode_without_end_and_with_garbage():
    body = uuencode("a.bin", b"\x00\x01" * 100).replace(b"`\nend\n", b"") + b"this is not uu at all\n"
    result = walk(b"Subject: x\n\nhello\n" + body)
    assert [(p.name, p.size) for p in result.parts[1:]] == [("a.bin", 200)]


def test_uuencoded_in_attachment_text_part():
    raw = multipart(text(), text(b"intro\n" + uuencode("x.zip", zip_bytes())))
    result = walk(raw)
    assert [(p.depth_path, p.detected, p.name) for p in result.parts[-2:]] == [
        ("1/2/1", "zip", "x.zip"), ("1/2/1/1", "asc", "a.txt")]


def test_x_uuencode_transfer_encoding_is_decoded():
    encoded = b"".join(binascii.b2a_uu(PE_CONTENT[i : i + 45]) for i in range(0, len(PE_CONTENT), 45))
    part = (b'Content-Type: application/octet-stream; name="a.exe"\nContent-Transfer-Encoding: x-uuencode\n\n'
            b"begin 644 a.exe\n" + encoded + b"`\nend\n")
    result = walk(multipart(part))
    assert (result.parts[1].detected, result.parts[1].size) == ("exe-ms", len(PE_CONTENT))


# --- step 3: limits ------------------------------------------------------------------

QUOTA_CASES = [
    # amavis: max(MIN_QUOTA, size * 5, min(MAX_QUOTA, size * 500))
    ("empty-message-gets-the-floor", 0, 100 * 1024),
    ("small-message-floor", 100, 100 * 1024),
    ("10-KB-message-500x", 10_000, 5_000_000),
    ("1-MB-message-capped", 1 << 20, 300 << 20),
    ("100-MB-message-5x-beats-the-cap", 100 << 20, 500 << 20),
]


@pytest.mark.parametrize("size,expected", [c[1:] for c in QUOTA_CASES], ids=[c[0] for c in QUOTA_CASES])
def test_expansion_quota(size, expected):
    assert Limits().quota(size) == expected


def over_limits(result):
    return [(p.part, p.detail) for p in result.problems if p.minor == "over limits"]


def nested_rfc822(levels, leaf=b"Content-Type: text/plain\n\nbottom\n"):
    return b"From: a@example.com\n" + b"Content-Type: message/rfc822\n\n" * levels + leaf


def nested_multipart(levels):
    head, tail = [], []
    for i in range(levels):
        head.append(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n'.encode())
        tail.append(f"\n--b{i}--\n".encode())
    return b"From: a@example.com\n" + b"".join(head) + b"Content-Type: text/plain\n\nbottom\n" + b"".join(reversed(tail))


def test_depth_limit_stops_the_branch():
    result = walk(nested_rfc822(20), Limits(max_depth=5))
    assert [p.depth_path for p in result.parts] == ["1", "1/1", "1/1/1", "1/1/1/1", "1/1/1/1/1"]
    assert ("p005", "nesting depth 6 > limit 5") in over_limits(result)


def test_depth_limit_keeps_the_shallow_siblings():
    deep = b"Content-Type: message/rfc822\n\n" + nested_rfc822(3)
    result = walk(multipart(deep, attachment(PE_CONTENT, "after.exe")), Limits(max_depth=3))
    assert ("1/2", "after.exe") in [(p.depth_path, p.name) for p in result.parts]
    assert ("p003", "nesting depth 4 > limit 3") in over_limits(result)


def test_parts_limit():
    raw = multipart(*[text(b"x\n") for _ in range(50)])
    result = walk(raw, Limits(max_parts=10))
    assert len(result.parts) == 10
    assert over_limits(result)[0][1] == "MIME parts > limit 10, rest of message not parsed"


def test_parts_limit_counts_uuencoded_blocks():
    body = b"".join(uuencode(f"f{i}.bin", b"data") for i in range(20))
    result = walk(b"Subject: x\n\n" + body, Limits(max_parts=5))
    assert len(result.parts) == 5
    assert over_limits(result) == [("p001", "parts 6 > limit 5")]


def test_expansion_quota_stops_the_walk():
    limits = Limits(min_expanded_bytes=1000, min_expansion_factor=0, expansion_factor=0)
    raw = multipart(attachment(b"a" * 600, "one.txt"), attachment(b"b" * 600, "two.txt"), attachment(b"c", "three.txt"))
    result = walk(raw, limits)
    assert [p.name for p in result.parts] == [None, "one.txt", "two.txt"]
    assert over_limits(result) == [("p003", "expanded 1200 bytes > limit 1000 bytes")]


def test_expansion_quota_message_in_megabytes():
    limits = Limits(min_expanded_bytes=10 << 20, min_expansion_factor=0, expansion_factor=0)
    result = walk(multipart(attachment(bytes(11 << 20), "zeros.bin")), limits)
    assert over_limits(result) == [("p002", "expanded 11 MB > limit 10 MB")]


def test_deadline():
    result = walk(multipart(*[text() for _ in range(10)]), Limits(deadline_s=0))
    assert result.parts == ()
    assert over_limits(result) == [(None, "decoding time > limit 0 s while parsing")]


def test_deadline_between_parts(monkeypatch):
    # time moves 1 s per libmagic call: the walk stops after the deadline, between parts
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    import pymavis.decode as decode

    real_detect = decode.detect

    def slow_detect(*args, **kwargs):
        clock[0] += 1.0
        return real_detect(*args, **kwargs)

    monkeypatch.setattr(decode, "detect", slow_detect)
    result = walk(multipart(*[text() for _ in range(10)]), Limits(deadline_s=2.5))
    assert len(result.parts) == 4  # the container and three leaves (t = 0, 1, 2, 3)
    assert over_limits(result) == [("p001", "decoding time 3.0 s > limit 2.5 s")]


def test_an_exception_in_one_part_is_a_problem_and_the_walk_goes_on(monkeypatch):
    import pymavis.decode as decode

    real_detect = decode.detect

    def picky_detect(data, *args, **kwargs):
        if data.startswith(b"MZ"):
            raise RuntimeError("libmagic fell over")
        return real_detect(data, *args, **kwargs)

    monkeypatch.setattr(decode, "detect", picky_detect)
    result = walk(multipart(attachment(PE_CONTENT, "a.exe"), text()))
    assert result.problems == (Problem("error", "p002", "RuntimeError: libmagic fell over"),)
    assert [p.depth_path for p in result.parts] == ["1", "1/2"]


def test_an_exception_outside_parts_is_a_problem(monkeypatch):
    def broken_parse(*args):
        raise ValueError("parser broke")

    monkeypatch.setattr(mime, "parse", broken_parse)
    result = walk(b"Subject: x\n\nhi\n")
    assert result.problems == (Problem("error", None, "ValueError: parser broke"),)
    assert result.parts == ()


# --- step 4: generated nasties -------------------------------------------------------


def flood(count):
    return multipart(*[b"Content-Type: text/plain\n\nx" for _ in range(count)])


def nul_bytes():
    return b"From: a@example.com\nSubject: \x00\x00\nContent-Type: multipart/mixed; boundary=\"\x00B\"\n\n--\x00B\n\x00\x00\n\n\x00body\x00\n--\x00B--\n"


def garbage_base64():
    return multipart(b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
                     b'Content-Disposition: attachment; filename="x.exe"\n\n'
                     b"TVqQ!!!@@@###$$$%%%^^^&&&***(((\xff\xfe\x00===TVqQ=A=B=C\n????????\n" * 50)


NASTY_CASES = [
    ("10000-parts", lambda: flood(10_000), "over limits"),
    ("100000-parts", lambda: flood(100_000), "over limits"),
    ("100-multipart-levels", lambda: nested_multipart(100), "over limits"),
    ("1000-multipart-levels", lambda: nested_multipart(1000), "over limits"),
    ("100-rfc822-levels", lambda: nested_rfc822(100), "over limits"),
    ("1000-rfc822-levels", lambda: nested_rfc822(1000), "over limits"),
    ("1MB-header-line", lambda: b"From: a@example.com\nSubject: " + b"A" * (1 << 20) + b"\n\nbody\n", None),
    ("1MB-content-type-line",
     lambda: b"Content-Type: multipart/mixed; " + b"x=y; " * 200_000 + b'boundary="B"\n\n--B\n\nhi\n--B--\n', None),
    ("1MB-filename", lambda: single_attachment(b'Content-Disposition: attachment; filename="' + b"a" * (1 << 20) + b'.exe"'), None),
    ("nul-bytes", nul_bytes, None),
    ("garbage-base64", garbage_base64, None),
    ("not-mime-at-all", lambda: bytes(range(256)) * 4000, None),
    ("empty", lambda: b"", None),
    ("headers-only", lambda: b"Subject: x\n", None),
    ("100000-rfc2231-params", lambda: single_attachment(
        b"Content-Disposition: attachment; " + b"; ".join(b"filename*%d=a" % i for i in range(100_000))), None),
    ("deep-boundaries-never-closed", lambda: b"".join(
        b'Content-Type: multipart/mixed; boundary="%d"\n\n--%d\n' % (i, i) for i in range(500)), "over limits"),
]


@pytest.mark.parametrize("build,minor", [c[1:] for c in NASTY_CASES], ids=[c[0] for c in NASTY_CASES])
def test_nasty_input_ends_in_time_without_raising(build, minor):
    raw = build()
    limits = Limits()
    started = time.monotonic()
    result = walk(raw, limits)
    wall = time.monotonic() - started
    # ends by itself (no deadline problem) and well within a hang guard - not a speed target
    assert not [p for p in result.problems if p.detail.startswith("decoding time")], result.problems
    assert wall < limits.deadline_s + 20
    assert not [p for p in result.problems if p.minor == "error"], result.problems
    if minor:
        assert minor in {p.minor for p in result.problems}
    assert len(result.parts) <= limits.max_parts
    assert all(p.depth_path.count("/") < limits.max_depth for p in result.parts)


def test_1000_levels_report_the_depth_and_keep_the_top():
    result = walk(nested_rfc822(1000))
    assert len(result.parts) == 14
    assert over_limits(result) == [
        (None, "MIME nesting > 64 levels, rest of message not parsed"),
        ("p014", "nesting depth 15 > limit 14"),
    ]


def test_100000_parts_stop_at_the_limit():
    result = walk(flood(100_000))
    assert len(result.parts) == 1500
    assert not [p for p in result.problems if p.detail.startswith("decoding time")]


def test_walk_from_many_threads_gives_the_same_answer():
    raw = multipart(text(), attachment(PE_CONTENT, "a.exe"), attachment(zip_bytes(), "b.zip"))
    expected = walk(raw).parts
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(walk(raw).parts)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(r == expected for r in results) and len(results) == 120


PARAM_AMBIGUITY_CASES = [
    # Python's own decode_params raises TypeError on this one and the parse would die
    ("unnumbered-and-numbered-boundary",
     b"From: a@example.com\nContent-Type: multipart/mixed; boundary*=A; boundary*0=B\n\n--A\n\nx\n--A--\n",
     "p001: 2 different boundary parameters in Content-Type"),
    ("plain-and-rfc2231-boundary",
     b'From: a@example.com\nContent-Type: multipart/mixed; boundary="A"; boundary*0="B"\n\n--A\n\nx\n--A--\n',
     "p001: 2 different boundary parameters in Content-Type"),
    ("two-filenames",
     single_attachment(b'Content-Disposition: attachment; filename="a.pdf"; filename="a.exe"'),
     "p002: 2 different filename parameters in Content-Disposition"),
    ("filename-continuations-and-plain",
     single_attachment(b"Content-Disposition: attachment; filename*=a.pdf; filename*0=a.exe"),
     "p002: 2 different filename parameters in Content-Disposition"),
    ("two-names", single_attachment(b'Content-Type: application/pdf; name="a.pdf"; name="a.scr"'),
     "p002: 2 different name parameters in Content-Type"),
    ("two-dispositions",
     single_attachment(b'Content-Disposition: attachment; filename="a.pdf"\nContent-Disposition: attachment; filename="a.exe"'),
     "p002: 2 different Content-Disposition header fields"),
]


@pytest.mark.parametrize("raw,expected", [c[1:] for c in PARAM_AMBIGUITY_CASES], ids=[c[0] for c in PARAM_AMBIGUITY_CASES])
def test_parameter_ambiguity(raw, expected):
    result = walk(raw)
    assert [f"{p.part}: {p.detail}" for p in result.problems] == [expected]


PARAM_CASES = [
    ("simple", 'multipart/mixed; boundary="B"', ["multipart/mixed", 'boundary="B"']),
    ("semicolon-in-quotes", 'a/b; name="x;y.exe"; q=1', ["a/b", 'name="x;y.exe"', "q=1"]),
    ("escaped-quote", 'a/b; name="x\\";y"; q=1', ["a/b", 'name="x\\";y"', "q=1"]),
    ("empty-pieces", "a/b;;; q=1", ["a/b", "", "", "q=1"]),
    ("unclosed-quote", 'a/b; name="x; q=1', ["a/b", 'name="x; q=1']),
]


@pytest.mark.parametrize("value,expected", [c[1:] for c in PARAM_CASES], ids=[c[0] for c in PARAM_CASES])
def test_split_params_matches_python(value, expected):
    from email.message import _parseparam  # Python's quadratic original, for comparison

    def as_python(piece):
        name, sep, val = piece.partition("=")
        return (name.strip().lower() + "=" + val.strip()) if sep else piece.strip()

    assert mime.split_params(value) == expected
    assert [as_python(p) for p in mime.split_params(value)] == _parseparam(value)


def test_huge_continuation_number_is_harmless():
    result = walk(single_attachment(b"Content-Disposition: attachment; filename*0=a; filename*" + b"9" * 5000 + b"=.exe"))
    assert result.parts[1].name == "a.exe"
    assert result.problems == ()


def test_folded_boundary_is_unfolded():
    # compat32 keeps the fold inside the value: Python alone would see one text part
    raw = (b'From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="simple\r\n'
           b' boundary"\r\n\r\n--simple boundary\r\n' + attachment(PE_CONTENT, "hidden.exe").replace(b"\n", b"\r\n")
           + b"\r\n--simple boundary--\r\n")
    result = walk(raw)
    assert [(p.depth_path, p.detected, p.name) for p in result.parts] == [("1", None, None), ("1/1", "exe-ms", "hidden.exe")]


def test_folded_filename_is_unfolded():
    result = walk(single_attachment(b'Content-Disposition: attachment;\n filename="invoice.pdf\n .exe"'))
    assert result.parts[1].name == "invoice.pdf .exe"


# --- step 5: archives (libarchive memory_reader) -------------------------------------


def archive_message(data, name, ctype=b"application/octet-stream"):
    return multipart(text(), attachment(data, name, ctype))


def members_of(result, archive_depth_path="1/2"):
    prefix = archive_depth_path + "/"
    return [(p.depth_path, p.name, p.detected, p.size) for p in result.parts if p.depth_path.startswith(prefix)]


def test_zip_members_are_child_parts():
    data = zip_bytes((("invoice.pdf.exe", PE_CONTENT), ("../../etc/passwd", b"root\n"), ("/abs/x.txt", b"x\n")))
    result = walk(archive_message(data, "docs.zip", b"application/zip"))
    assert members_of(result) == [
        ("1/2/1", "invoice.pdf.exe", "exe-ms", len(PE_CONTENT)),
        ("1/2/2", "../../etc/passwd", "asc", 5),
        ("1/2/3", "/abs/x.txt", "asc", 2),
    ]
    assert " | ".join(p.part_path() for p in result.parts if p.depth_path in ("1/2", "1/2/1")) == (
        "P=p003,L=1/2,M=application/zip,T=zip,N=docs.zip | P=p004,L=1/2/1,T=exe-ms,N=invoice.pdf.exe")
    assert result.problems == ()


def test_tar_with_symlink_and_traversal_names():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, ".."
        tf.addfile(link)
        info = tarfile.TarInfo("link/payload.exe")
        info.size = len(PE_CONTENT)
        tf.addfile(info, io.BytesIO(PE_CONTENT))
    result = walk(archive_message(buf.getvalue(), "a.tgz"))
    assert [(name, detected) for _, name, detected, _ in members_of(result)] == [("link", "empty"), ("link/payload.exe", "exe-ms")]


def test_nested_gz_gz_gz():
    # libarchive's filter 'all' peels every compression layer at once
    data = PE_CONTENT
    for _ in range(3):
        data = gzip.compress(data)
    result = walk(archive_message(data, "setup.exe.gz.gz.gz"))
    assert members_of(result) == [("1/2/1", "setup.exe.gz.gz", "exe-ms", len(PE_CONTENT))]


def test_tar_gz_members():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as tf:
        info = tarfile.TarInfo("dir/run.exe")
        info.size = len(PE_CONTENT)
        tf.addfile(info, io.BytesIO(PE_CONTENT))
    result = walk(archive_message(buf.getvalue(), "a.tar.bz2"))
    assert members_of(result) == [("1/2/1", "dir/run.exe", "exe-ms", len(PE_CONTENT))]


def test_42_zip_style_nesting_hits_the_depth_limit():
    data = PE_CONTENT
    for level in range(16):
        data = zip_bytes(tuple((f"{copy}-level{level}.zip" if level else f"{copy}-deep.exe", data) for copy in "ab"))
    result = walk(archive_message(data, "42.zip"))
    assert any(p.minor == "over limits" and p.detail.startswith("nesting depth 15") for p in result.problems)
    assert len(result.parts) <= Limits().max_parts


def zeros_zip(size):
    """A zip with one member of `size` zero bytes, streamed (never `size` bytes in memory)."""
    buf = io.BytesIO()
    block = bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.bin", "w", force_zip64=True) as member:
            for _ in range(size // len(block)):
                member.write(block)
    return buf.getvalue()


@pytest.fixture(scope="module")
def gigabyte_of_zeros():
    data = zeros_zip(1 << 30)
    assert len(data) < 2 << 20  # about 1 MB: deflate reaches ~1030:1
    return archive_message(data, "bomb.zip")


def test_1gb_of_zeros_stops_at_the_quota(gigabyte_of_zeros):
    # deflate cannot beat ~1030:1, so the member ratio (1000x the archive) barely
    # applies; amavis's quota (300 MiB here) stops it
    result = walk(gigabyte_of_zeros)
    assert [(p.minor, p.part) for p in result.problems] == [("over limits", "p003")]
    assert result.problems[0].detail == "zeros.bin: expanded bytes > quota left (313529020 bytes)"
    assert members_of(result) == []


def test_1gb_of_zeros_stops_at_the_member_ratio(gigabyte_of_zeros):
    result = walk(gigabyte_of_zeros, Limits(max_member_ratio=100))
    assert [(p.minor, p.part) for p in result.problems] == [("over limits", "p003")]
    assert "zeros.bin: expands > 100x the archive" in result.problems[0].detail
    assert members_of(result) == []


def test_member_over_the_quota_stops_the_walk():
    data = zip_bytes((("a.bin", bytes(2_000_000)), ("b.bin", b"b")))
    result = walk(archive_message(data, "big.zip"), Limits(max_member_ratio=10**6))
    # the message is ~1 KB: quota = 500x its size (~0.5 MB), less what the MIME parts used
    over = [p for p in result.problems if p.minor == "over limits"]
    assert len(over) == 1 and over[0].detail.startswith("a.bin: expanded bytes > quota left")
    assert members_of(result) == []


def test_encrypted_zip_member(tmp_path):
    import subprocess

    (tmp_path / "secret.exe").write_bytes(PE_CONTENT)
    subprocess.run(["zip", "-q", "-P", "password", "enc.zip", "secret.exe"], cwd=tmp_path, check=True)
    result = walk(archive_message((tmp_path / "enc.zip").read_bytes(), "enc.zip"))
    assert members_of(result) == [("1/2/1", "secret.exe", None, 0)]
    assert [(p.minor, p.part) for p in result.problems] == [("encrypted", "p003")]


def test_damaged_archive_keeps_what_was_read():
    data = zip_bytes((("a.txt", b"hello"), ("b.bin", bytes(range(256)) * 40)), compression=zipfile.ZIP_STORED)
    result = walk(archive_message(data[:5000], "broken.zip"))
    assert [p.minor for p in result.problems] == ["error"]
    assert result.problems[0].detail.startswith("archive unreadable: ")
    assert "archive_p" not in result.problems[0].detail
    assert [name for _, name, _, _ in members_of(result)] == ["a.txt"]
