"""The walker's container formats beyond MIME and libarchive: BinHex, TNEF, mbox files,
and archive members libarchive can list but not decompress.

Inputs are built here at test time - a BinHex 4.0 encoder (run-length and 6-bit
encoding, CRCs) and a TNEF writer (objects, MAPI properties) a few lines each - plus,
as what other encoders write, ClamAV's clam.exe.binhex and clam.tnef (Debian package
clamav-testfiles) and tnefparse's 19 example files (shared corpus). Corrupt, truncated
and looping inputs must end in Problems, never in an exception, and quickly.
"""

import base64
import binascii
import io
import logging
import random
import struct
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from conftest import CORPUS
from pymavis.decode import Limits, tnef, walk
from pymavis.decode.mime import mbox_messages, mbox_starts

TESTFILES = Path("/usr/share/clamav-testfiles")
CLAM_EXE = (TESTFILES / "clam.exe").read_bytes()

# A hang guard, not a speed target (speed is bench/'s business): far above what these take.
HANG_S = 30


# --- messages ------------------------------------------------------------------------


def message(*parts):
    """A multipart/mixed message: a text part, then `parts` (entity texts, headers included)."""
    body = b"".join(b"--B\n" + part + b"\n" for part in (b"Content-Type: text/plain\n\nsee attached\n", *parts))
    return b"From: a@example.com\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=B\n\n" + body + b"--B--\n"


def attached(data, name, ctype=b"application/octet-stream"):
    return (b"Content-Type: " + ctype + b"\nContent-Transfer-Encoding: base64\n"
            b'Content-Disposition: attachment; filename="' + name.encode() + b'"\n\n' + base64.encodebytes(data))


def below(result, depth_path="1/2"):
    """(depth path, name, detected type, size) of the parts under `depth_path`."""
    prefix = depth_path + "/"
    return [(p.depth_path, p.name, p.detected, p.size) for p in result.parts if p.depth_path.startswith(prefix)]


def problems(result):
    return [(p.minor, p.part, p.detail) for p in result.problems]


def pe():
    """A minimal PE header libmagic calls "PE32 executable" (as in test_decode.py)."""
    dos = bytearray(128)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 128)
    coff = struct.pack("<HHIIIHH", 0x14C, 1, 0, 0, 0, 224, 0x0102)
    opt = bytearray(224)
    struct.pack_into("<H", opt, 0, 0x10B)
    struct.pack_into("<H", opt, 68, 2)
    return bytes(dos) + b"PE\0\0" + coff + bytes(opt) + bytes(40)


# --- BinHex 4.0 ----------------------------------------------------------------------

HQX = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
MARKER = b"(This file must be converted with BinHex 4.0)"


def crc(data):
    return struct.pack(">H", binascii.crc_hqx(data, 0))


def binhex_header(name, data_len, rsrc_len):
    """Name length, name (Mac Roman), version, type, creator, flags, fork lengths; no CRC."""
    raw_name = name.encode("mac_roman")
    return bytes([len(raw_name)]) + raw_name + b"\0APPL????" + struct.pack(">HII", 0, data_len, rsrc_len)


def binhex_stream(name, data, rsrc=b"", header_crc=None, data_crc=None):
    """The decoded BinHex stream: header, data fork, resource fork, each with its CRC."""
    header = binhex_header(name, len(data), len(rsrc))
    return header + (header_crc or crc(header)) + data + (data_crc or crc(data)) + rsrc + crc(rsrc)


def run_length(stream):
    """0x90 run-length encoding: a run of 3 or more is 'byte 0x90 count', 0x90 itself '0x90 0x00'."""
    out, i = bytearray(), 0
    while i < len(stream):
        byte, n = stream[i], 1
        while i + n < len(stream) and stream[i + n] == byte and n < 255:
            n += 1
        literal = b"\x90\x00" if byte == 0x90 else bytes([byte])
        out += literal + b"\x90" + bytes([n]) if n >= 3 else literal * n
        i += n
    return bytes(out)


def hqx_text(packed, closed=True):
    """`packed` (run-length encoded) in BinHex's 6-bit characters, 64 to a line, with marker and colons."""
    chars = b":" + base64.b64encode(packed).rstrip(b"=").translate(bytes.maketrans(B64, HQX))
    lines = [chars[i : i + 64] for i in range(0, len(chars), 64)]
    return MARKER + b"\r\n" + b"\r\n".join(lines) + (b":\r\n" if closed else b"\r\n")


def binhex(name, data, rsrc=b"", **crcs):
    return hqx_text(run_length(binhex_stream(name, data, rsrc, **crcs)))


def test_run_length_encoder_round_trip():
    # the test's own encoder against the decoder's alphabet and runs: 0x90 literals, long runs
    data = b"\x90\x90\x90abc" + bytes(600) + b"\x90" + b"zz"
    result = walk(message(attached(binhex("r.bin", data), "r.hqx")))
    assert below(result) == [("1/2/1", "r.bin", "dat", len(data))]
    assert problems(result) == []


def test_clamav_binhex_file():
    result = walk(message(attached((TESTFILES / "clam.exe.binhex").read_bytes(), "clam.exe.hqx")))
    assert result.parts[2].detected == "hqx"
    # data fork (the program), then a one-byte resource fork, both under the header's name
    assert below(result) == [("1/2/1", "clam.exe", "exe-ms", len(CLAM_EXE)), ("1/2/2", "clam.exe", None, 1)]
    assert problems(result) == []


def test_binhex_forks_names_and_types():
    rsrc = b"resource fork"
    text = binhex("R\u00e9sum\u00e9 \u2022.exe", pe(), rsrc)
    result = walk(message(attached(text, "x.hqx", b"application/mac-binhex40")))
    assert below(result) == [
        ("1/2/1", "R\u00e9sum\u00e9 \u2022.exe", "exe-ms", len(pe())),  # Mac Roman name
        ("1/2/2", "R\u00e9sum\u00e9 \u2022.exe", "asc", len(rsrc)),
    ]
    assert problems(result) == []


def test_empty_resource_fork_is_left_out_but_empty_data_fork_is_not():
    result = walk(message(attached(binhex("empty", b""), "e.hqx")))
    assert below(result) == [("1/2/1", "empty", "empty", 0)]


def test_binhex_in_a_text_body_after_other_text():
    body = b"Here is the program, in BinHex:\r\n\r\n" + binhex("prog.exe", pe()) + b"\r\nBye.\r\n"
    result = walk(b"From: a@example.com\nContent-Type: text/plain\n\n" + body)
    assert below(result, "1") == [("1/1", "prog.exe", "exe-ms", len(pe()))]


def test_two_binhex_blocks_and_uuencode_in_one_text():
    uu = b"begin 644 u.txt\n" + binascii.b2a_uu(b"uu data\n") + b"`\nend\n"
    body = binhex("one.txt", b"first\n") + b"between\n" + uu + binhex("two.txt", b"second\n")
    result = walk(b"Content-Type: text/plain\n\n" + body)
    assert [(p.depth_path, p.name) for p in result.parts[1:]] == [
        ("1/1", "u.txt"), ("1/2", "one.txt"), ("1/3", "two.txt")]


def test_marker_without_data_is_just_text():
    body = b"Please send it " + MARKER + b" if you can.\n\nThanks: me\n"
    result = walk(b"Content-Type: text/plain\n\n" + body)
    assert len(result.parts) == 1 and problems(result) == []


BINHEX_DAMAGE = [
    # (id, BinHex text, problems' details after "BinHex ...: ", the data fork we still get or None)
    ("data-fork-crc", binhex("a.txt", b"hello\n", data_crc=b"\0\0"),
     ["BinHex a.txt: data fork CRC mismatch"], b"hello\n"),
    ("header-crc", binhex("a.txt", b"hello\n", header_crc=b"\0\0"), ["BinHex a.txt: header CRC mismatch"], b"hello\n"),
    ("no-closing-colon", hqx_text(run_length(binhex_stream("a.txt", b"hello\n")), closed=False),
     ["BinHex a.txt: no closing ':'"], b"hello\n"),
    ("truncated", binhex("a.txt", b"x" * 20 + bytes(range(200)))[:120] + b":",
     ["BinHex a.txt: data fork cut short (46 of 220 bytes, no CRC)"], None),
    ("stranger-character", binhex("a.txt", bytes(range(100))).replace(b"!", b"~", 3),
     None, None),
    ("run-without-byte", hqx_text(b"\x90\x05" + binhex_stream("a.txt", b"x")),
     ["BinHex unreadable: ValueError: run with no byte before it"], None),
    ("empty-block", MARKER + b"\n::\n", ["BinHex unreadable: ValueError: no header"], None),
    ("header-only", hqx_text(run_length(binhex_stream("a.txt", b"hello\n")[:10])),
     ["BinHex unreadable: ValueError: header cut short (10 of 27 bytes)"], None),
]


@pytest.mark.parametrize("text,details,data", [c[1:] for c in BINHEX_DAMAGE], ids=[c[0] for c in BINHEX_DAMAGE])
def test_damaged_binhex(text, details, data):
    result = walk(message(attached(text, "a.hqx"), attached(b"after\n", "after.txt")))
    assert all(p.minor == "error" and p.part == "p003" and p.detail.startswith("BinHex") for p in result.problems)
    if details is not None:
        assert [p.detail for p in result.problems] == details
    else:
        assert result.problems
    if data is not None:
        assert below(result)[0] == ("1/2/1", "a.txt", "asc", len(data))
    assert result.parts[-1].name == "after.txt"  # the walk went on


def test_stranger_character_decodes_up_to_it():
    text = binhex("a.txt", bytes(range(100)))
    at = text.index(b":") + 40
    result = walk(message(attached(text[:at] + b"\x01" + text[at:], "a.hqx")))
    assert [detail for _, _, detail in problems(result)] == [
        "BinHex a.txt: character '\\x01' outside the BinHex alphabet, decoded up to it",
        "BinHex a.txt: data fork cut short (6 of 100 bytes, no CRC)",
    ]
    assert below(result) == [("1/2/1", "a.txt", "dat", 6)]


def test_binhex_run_bomb_stops_at_the_quota():
    # a data fork of 50 MB of zeros in runs of 255 (3 bytes each): ~800 KB of BinHex text
    size = 255 * 205_600
    header = binhex_header("zeros.bin", size, 0)
    text = hqx_text(run_length(header + crc(header)) + b"\0\x90\xff" * (size // 255))
    assert len(text) < 1 << 20
    started = time.monotonic()
    result = walk(message(attached(text, "bomb.hqx")), Limits(expansion_factor=20))
    assert time.monotonic() - started < HANG_S
    assert [(p.minor, p.part) for p in result.problems] == [("over limits", "p003")]
    assert result.problems[0].detail.startswith(f"BinHex zeros.bin: forks ({size} + 0 bytes) > quota left (")
    assert below(result) == []


def test_random_damage_never_raises():
    rng = random.Random(1741)
    good = binhex("prog.exe", pe() + bytes(300) + b"\x90" * 10, b"rsrc")
    for _ in range(300):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(MARKER) + 3, len(damaged))] = rng.choice(HQX + b"\x90:\n ")
        result = walk(message(attached(bytes(damaged), "d.hqx")))
        assert all(p.detail.startswith("BinHex") for p in result.problems), problems(result)


# --- TNEF ----------------------------------------------------------------------------

TNEF_SIGNATURE = 0x223E9F78
IMESSAGE_SIG = bytes.fromhex("0703020000000000c000000000000046")  # an attached message


def tnef_object(level, attr_id, attr_type, data):
    """level, attribute id and type, length, data, checksum (sum of the data bytes)."""
    return struct.pack("<BHHI", level, attr_id, attr_type, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def mapi(*props, count=None):
    return struct.pack("<I", len(props) if count is None else count) + b"".join(props)


def mapi_string(prop_id, value, unicode=False):
    raw = value.encode("utf-16-le") + b"\0\0" if unicode else value.encode("cp1252") + b"\0"
    return struct.pack("<HHII", 0x001F if unicode else 0x001E, prop_id, 1, len(raw)) + raw + bytes(-len(raw) % 4)


def mapi_binary(prop_id, value):
    return struct.pack("<HHII", 0x0102, prop_id, 1, len(value)) + value + bytes(-len(value) % 4)


def tnef_bytes(attachments=(), message_props=(), extra=b"", codepage=1252):
    """A TNEF stream: version, OEM code page, message properties, `extra`, then per
    attachment (short name bytes or None, long name or None, data, unicode long name?)."""
    out = struct.pack("<IH", TNEF_SIGNATURE, 0x0101)
    out += tnef_object(1, 0x9006, 0x0008, struct.pack("<I", 0x10000))
    out += tnef_object(1, 0x9007, 0x0006, struct.pack("<II", codepage, 0))
    if message_props:
        out += tnef_object(1, 0x9003, 0x0006, mapi(*message_props))
    out += extra
    for short, long_name, data, *unicode in attachments:
        out += tnef_object(2, 0x9002, 0x0006, bytes(14))  # attAttachRenddata starts an attachment
        if short is not None:
            out += tnef_object(2, 0x8010, 0x0001, short + b"\0")
        out += tnef_object(2, 0x800F, 0x0006, data)
        if long_name is not None:
            out += tnef_object(2, 0x9005, 0x0006, mapi(mapi_string(0x3707, long_name, *unicode)))
    return out


def winmail(data):
    return message(attached(data, "winmail.dat", b"application/ms-tnef"), attached(b"after\n", "after.txt"))


def test_clamav_tnef_file():
    result = walk(winmail((TESTFILES / "clam.tnef").read_bytes()))
    assert result.parts[2].detected == "tnef"
    assert below(result) == [("1/2/1", None, "html", 516), ("1/2/2", "clam.exe", "exe-ms", len(CLAM_EXE))]
    assert problems(result) == []


def test_tnef_attachments_and_names():
    inner_zip = io.BytesIO()
    with zipfile.ZipFile(inner_zip, "w") as zf:
        zf.writestr("inside.exe", pe())
    data = tnef_bytes([
        (b"INVOIC~1.EXE", "invoice 2024.pdf.exe", pe()),  # long name wins
        ("R\u00c9SUM\u00c9.ZIP".encode("cp1252"), None, inner_zip.getvalue()),  # short name, code page 1252
        (b"X.TXT", "\u0444\u0430\u0439\u043b.txt", b"plain text\n", True),  # unicode long name
        (None, None, b"nameless\n"),
    ])
    result = walk(winmail(data))
    assert below(result) == [
        ("1/2/1", "invoice 2024.pdf.exe", "exe-ms", len(pe())),
        ("1/2/2", "R\u00c9SUM\u00c9.ZIP", "zip", len(inner_zip.getvalue())),
        ("1/2/2/1", "inside.exe", "exe-ms", len(pe())),
        ("1/2/3", "\u0444\u0430\u0439\u043b.txt", "asc", 11),
        ("1/2/4", None, "asc", 9),
    ]
    assert problems(result) == []


def test_tnef_bodies():
    data = tnef_bytes([(b"A.TXT", None, b"a\n")], message_props=[
        mapi_binary(0x1013, b"<html><body>see <a href='http://example.com/'>this</a></body></html>"),
        mapi_string(0x1000, "the plain body"),
    ])
    result = walk(winmail(data))
    assert [(d, n, t) for d, n, t, _ in below(result)] == [("1/2/1", None, "html"), ("1/2/2", None, "asc"),
                                                           ("1/2/3", "A.TXT", "asc")]


def attaching(inner):
    """A TNEF stream whose one attachment is the message `inner` (a TNEF stream), as Outlook writes it."""
    value = IMESSAGE_SIG + inner + b"\1"  # tnefparse strips trailing NULs from binary properties
    data_object = struct.pack("<HHII", 0x000D, 0x3701, 1, len(value)) + value + bytes(-len(value) % 4)
    return tnef_bytes([(b"MSG", None, b"")]) + tnef_object(2, 0x9005, 6, mapi(data_object, mapi_string(0x3707, "fw")))


def test_tnef_attached_message_is_walked_into():
    result = walk(winmail(attaching(tnef_bytes([(b"DEEP.EXE", "deep.exe", pe())]))))
    assert [(d, n, t) for d, n, t, _ in below(result)] == [("1/2/1", "fw", "tnef"), ("1/2/1/1", "deep.exe", "exe-ms")]


def test_tnef_attached_messages_nested_too_deep():
    data = tnef_bytes([(b"DEEP.EXE", "deep.exe", pe())])
    for _ in range(tnef.MAX_NESTED - 1):
        data = attaching(data)
    # 15 levels: tnefparse may parse them; the walker stops at its own depth limit
    result = walk(winmail(data))
    assert problems(result) == [("over limits", "p015", "nesting depth 15 > limit 14")]
    assert result.parts[-1].name == "after.txt"
    # 16 levels: tnefparse is stopped before it recurses further
    result = walk(winmail(attaching(data)))
    assert problems(result) == [("over limits", "p003", "TNEF not decoded: attached messages nested > 16 levels")]
    assert result.parts[-1].name == "after.txt"


# tnefparse's example files (shared corpus): real Outlook and Exchange output
TNEF_EXAMPLES = {
    "two-files.tnef": [("1/2/1", "AUTHORS", "asc"), ("1/2/2", "README", "asc")],
    "long-filename.tnef": [("1/2/1", "allproductsmar2000.dat", "asc")],
    "umlaut.tnef": [("1/2/1", "TBZ PARIV GmbH.jpg", "jpg"), ("1/2/2", "image003.jpg", "jpg"),
                    ("1/2/3", "UmlautAnhang-\u00e4\u00fc\u00f6.txt", "txt")],
    "MAPI_ATTACH_DATA_OBJ.tnef": [("1/2/1", "VIA_Nytt_1402.doc", "doc"), ("1/2/2", "VIA_Nytt_1402.pdf", "pdf"),
                                  ("1/2/3", "VIA_Nytt_14021.htm", "html")],
    "data-before-name.tnef": [("1/2/1", "AUTOEXEC.BAT", "empty"), ("1/2/2", "CONFIG.SYS", "empty"),
                              ("1/2/3", "boot.ini", None)],
    "unicode-mapi-attr.tnef": [("1/2/1", None, "html"), ("1/2/2", None, "txt"), ("1/2/3", "example.dat", "dat")],
    "rtf.tnef": [],  # an RTF body only, which is compressed (see tnef.py)
}


def tnef_example(name):
    return (Path(CORPUS) / "tnefparse-examples" / name).read_bytes()


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(CORPUS) / "tnefparse-examples").glob("*.tnef")))
def test_tnefparse_examples(name):
    result = walk(winmail(tnef_example(name)))
    assert result.parts[2].detected == "tnef"
    assert problems(result) == []
    if name in TNEF_EXAMPLES:
        assert [(d, n, t) for d, n, t, _ in below(result)] == TNEF_EXAMPLES[name]


def test_garbage_declared_as_tnef_is_not_decoded():
    result = walk(winmail(random.Random(3).randbytes(4000)))
    assert result.parts[2].declared_type == "application/ms-tnef"
    assert result.parts[2].detected == "dat" and below(result) == []
    assert problems(result) == []


TNEF_DAMAGE = [
    # (id, data, start of the one problem's detail)
    ("signature-only", struct.pack("<IB", TNEF_SIGNATURE, 1), "TNEF unreadable: error: unpack_from requires a buffer"),
    ("recipient-rows-past-the-end", tnef_bytes(extra=tnef_object(1, 0x9004, 6, struct.pack("<II", 0xFFFFFFFF, 0))),
     "TNEF unreadable: error: unpack_from requires a buffer"),
    ("unknown-code-page", tnef_bytes(extra=tnef_object(1, 0x8004, 7, b"subject\0"), codepage=99999),
     "TNEF unreadable: LookupError: unknown encoding: cp99999"),
    ("unknown-mapi-type", tnef_bytes(message_props=[struct.pack("<HHI", 0x0999, 0x1000, 1)]),
     "TNEF: decode_mapi exception: Unknown MAPI type 0x0999"),
    ("attachment-data-object-is-an-int", tnef_bytes([(b"A.TXT", None, b"x")]) + tnef_object(
        2, 0x9005, 6, mapi(struct.pack("<HHi", 0x0003, 0x3701, 7))), "TNEF unreadable: AttributeError: "),
    ("body-is-an-int", tnef_bytes(message_props=[struct.pack("<HHi", 0x0003, 0x1000, 7)]),
     "TNEF: body is int, not data"),
]


class RootRecords(logging.Handler):
    """What reaches the root logger, where the mail log's handlers are."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def root_records():
    handler = RootRecords()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.records
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("data,detail", [c[1:] for c in TNEF_DAMAGE], ids=[c[0] for c in TNEF_DAMAGE])
def test_damaged_tnef(data, detail, root_records):
    result = walk(winmail(data))
    assert result.parts[2].detected == "tnef"
    assert [(p.minor, p.part) for p in result.problems] == [("error", "p003")]
    assert result.problems[0].detail.startswith(detail)
    assert result.parts[-1].name == "after.txt"
    assert not [r for r in root_records if r.name.startswith("tnefparse")]  # its logger stays quiet


TNEF_TOLERATED = [
    # tnefparse skips what it does not know and takes what is there: no content, no problem
    ("signature-then-garbage", struct.pack("<IH", TNEF_SIGNATURE, 1) + bytes(range(256)) * 4),
    ("object-longer-than-the-data", tnef_bytes() + struct.pack("<BHHI", 1, 0x9004, 6, 10**9) + bytes(30)),
]


@pytest.mark.parametrize("data", [c[1] for c in TNEF_TOLERATED], ids=[c[0] for c in TNEF_TOLERATED])
def test_tolerated_tnef(data):
    result = walk(winmail(data))
    assert (below(result), problems(result)) == ([], [])


def test_truncated_clamav_tnef_never_raises():
    data = (TESTFILES / "clam.tnef").read_bytes()
    for size in list(range(6, 200, 7)) + list(range(200, len(data), 97)):
        result = walk(winmail(data[:size]))
        assert result.parts[-1].name == "after.txt"
        assert all(p.detail.startswith("TNEF") for p in result.problems), (size, problems(result))


def test_random_damage_to_tnef_never_raises():
    rng = random.Random(8)
    good = bytearray(tnef_bytes([(b"A.EXE", "a.exe", pe()), (b"B.TXT", "b.txt", b"text\n" * 20)],
                                message_props=[mapi_string(0x1000, "body")]))
    for _ in range(200):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            damaged[rng.randrange(6, len(damaged))] = rng.randrange(256)
        started = time.monotonic()
        result = walk(winmail(bytes(damaged)))
        assert time.monotonic() - started < HANG_S
        assert result.parts[-1].name == "after.txt"
        assert all(p.detail.startswith("TNEF") for p in result.problems), problems(result)


LOOPING = [
    # counts read from the data that tnefparse loops over whatever the data's length
    ("property-count-4-billion", tnef_bytes(extra=tnef_object(1, 0x9003, 6, mapi(count=0xFFFFFFFF)))),
    ("multi-value-count-4-billion", tnef_bytes(extra=tnef_object(
        1, 0x9003, 6, mapi(struct.pack("<HHI", 0x1002, 0x6001, 0xFFFFFFFF) + b"\1\0")))),
]


@pytest.mark.parametrize("data", [c[1] for c in LOOPING], ids=[c[0] for c in LOOPING])
def test_tnef_loops_stop_at_the_step_limit(data):
    started = time.monotonic()
    result = walk(winmail(data))
    assert time.monotonic() - started < HANG_S
    assert [(p.minor, p.part) for p in result.problems] == [("over limits", "p003")]
    steps = 16 * len(data) + 100_000
    assert result.problems[0].detail == f"TNEF not decoded: more than {steps} steps for {len(data)} bytes"
    assert result.parts[-1].name == "after.txt"  # the rest of the message is still walked


def test_tnef_many_objects_cost_their_copying(monkeypatch):
    # 40,000 empty objects: 1.36 M lines of tnefparse, and it copies the rest of the
    # stream for each (8.8 GB, 2.1 M steps more): the copies tip it over
    data = tnef_bytes(extra=tnef_object(1, 0x0004, 1, b"") * 40_000)
    monkeypatch.setattr(tnef, "STEPS_PER_BYTE", 0)
    monkeypatch.setattr(tnef, "STEPS_BASE", 1_500_000)
    started = time.monotonic()
    result = walk(winmail(data))
    assert time.monotonic() - started < HANG_S
    assert problems(result) == [
        ("over limits", "p003", f"TNEF not decoded: more than 1500000 steps for {len(data)} bytes")]


def test_tnef_deadline_ends_the_walk(monkeypatch):
    monkeypatch.setattr(tnef, "MAX_STEPS", 10**12)
    monkeypatch.setattr(tnef, "STEPS_BASE", 10**12)
    started = time.monotonic()
    result = walk(winmail(LOOPING[0][1]), Limits(deadline_s=0.3))
    assert time.monotonic() - started < HANG_S
    assert [(p.minor, p.part, p.detail) for p in result.problems] == [
        ("over limits", "p003", "TNEF not decoded: decoding time past the deadline")]
    assert result.parts[-1].path == "p003"  # the walk stopped there


def test_tnef_trace_is_restored():
    seen = []

    def tracer(frame, event, arg):
        seen.append(event)
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        walk(winmail(LOOPING[0][1]))
        after = sys.gettrace()
    finally:
        sys.settrace(previous)
    assert after is tracer


def test_tnef_in_threads():
    clam = (TESTFILES / "clam.tnef").read_bytes()
    results = {}

    def run(i):
        data = clam if i % 2 else LOOPING[i % 4 // 2][1]
        results[i] = walk(winmail(data))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, result in results.items():
        if i % 2:
            assert [p.name for p in result.parts[3:5]] == [None, "clam.exe"] and not result.problems
        else:
            assert [p.minor for p in result.problems] == ["over limits"]


# --- mbox files ----------------------------------------------------------------------

MBOX = (
    b"From alice@example.com  Thu Jul 31 13:49:50 2008\nFrom: alice@example.com\nSubject: one\n\n"
    b"first message\n>From the quoted line, not a new message\n\n"
    b"From bob@example.com  Thu Jul 31 13:50:00 2008\nFrom: bob@example.com\nMIME-Version: 1.0\n"
    b"Content-Type: application/octet-stream; name=prog.exe\nContent-Transfer-Encoding: base64\n\n"
)


def test_mbox_file_messages_are_walked():
    data = MBOX + base64.encodebytes(pe())
    result = walk(message(attached(data, "mail.mbox")))
    assert result.parts[2].detected == "asc"  # libmagic calls an mbox file plain text
    # the first message is a single text part, the second an attachment itself
    assert [(d, n, t) for d, n, t, _ in below(result)] == [("1/2/1", None, "asc"), ("1/2/2", "prog.exe", "exe-ms")]


def test_mbox_split():
    assert [m.split(b"\n", 1)[0] for m in mbox_messages(MBOX)] == [
        b"From alice@example.com  Thu Jul 31 13:49:50 2008", b"From bob@example.com  Thu Jul 31 13:50:00 2008"]


@pytest.mark.parametrize("data,expected", [
    (b"From a@b Thu Jul 31 13:49:50 2008\nSubject: x\n\nbody\n", True),
    (b"From a@b Thu Jul 31 13:49:50 2008\r\nX-Y: z\r\n\r\nbody\r\n", True),
    (b"From the desk of the director:\nplease read this\n", False),  # no header field after it
    (b"Hello\nFrom a@b Thu Jul 31 13:49:50 2008\nSubject: x\n", False),  # not at the start
])
def test_mbox_starts(data, expected):
    assert mbox_starts(data) is expected


# --- archive members libarchive lists but cannot decompress --------------------------


def zip_with_method(method):
    """A zip whose first member claims compression `method` (stored data), then a readable one."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("odd.exe", pe())
        zf.writestr("plain.txt", b"readable\n")
    data = bytearray(buf.getvalue())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.find(signature)  # the first local header and the first central directory entry
        struct.pack_into("<H", data, at + offset, method)
    return bytes(data)


@pytest.mark.parametrize("method,label", [(9, "9: deflation-64-bit"), (6, "6: imploded")])
def test_member_libarchive_cannot_decompress_keeps_its_name(method, label):
    result = walk(message(attached(zip_with_method(method), "odd.zip")))
    assert below(result) == [("1/2/1", "odd.exe", None, 0), ("1/2/2", "plain.txt", "asc", 9)]
    assert problems(result) == [
        ("error", "p003", f"archive unreadable: odd.exe: Unsupported ZIP compression method ({label})")]


# --- zip names that differ between local headers and the central directory -----------


def disguised_zip(local_name: bytes, central_name: bytes, content: bytes) -> bytes:
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(local_name.decode(), content)
        zf.writestr("notes.txt", b"hello\n")
    data = bytearray(buf.getvalue())
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x01\x02"))  # the first central entry
    at = data.index(local_name, cd)
    data[at:at + len(local_name)] = central_name
    return bytes(data)


def test_central_directory_name_disguised_by_local_header_is_a_part_and_ambiguous():
    from pymavis.banned import DEFAULT_RULE_SETS, evaluate
    data = disguised_zip(b"aaaa.txt", b"aaaa.vbs", b'WScript.Echo "hi"\n')
    result = walk(message(attached(data, "files.zip", b"application/zip")))
    names = [p.name for p in result.parts if p.depth_path.count("/") == 2]
    assert names == ["aaaa.txt", "notes.txt", "aaaa.vbs"]
    assert [(p.minor, p.detail) for p in result.problems] == [
        ("ambiguous", "aaaa.vbs: in the zip's central directory, not in its local headers")]
    banned = evaluate(result.parts, [DEFAULT_RULE_SETS["DEFAULT"]])
    assert banned is not None and banned.part.name == "aaaa.vbs"


def test_agreeing_zip_has_no_ambiguity():
    data = disguised_zip(b"aaaa.txt", b"aaaa.txt", b"x")
    result = walk(message(attached(data, "files.zip", b"application/zip")))
    assert result.problems == ()


def overlapping_zip(entries: int, size: int) -> bytes:
    """Fifield's non-recursive zip bomb: one deflated file that every central directory
    entry points at (2,000 entries x 1 MiB would expand to 2 GB)."""
    import io
    import struct
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("k", b"\0" * size)
    data = buf.getvalue()
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", data[eocd + 12:eocd + 20])
    fixed = data[cd_offset:cd_offset + 46]
    central = b"".join(fixed[:28] + struct.pack("<H", len(name)) + fixed[30:] + name
                       for name in (b"f%05d" % i for i in range(entries)))
    end = data[eocd:eocd + 8] + struct.pack("<HHII", entries, entries, len(central), cd_offset) + data[eocd + 20:eocd + 22]
    return data[:cd_offset] + central + end


def test_overlapping_file_zip_bomb_is_read_once():
    started = time.monotonic()
    result = walk(message(attached(overlapping_zip(2000, 1 << 20), "bomb.zip", b"application/zip")))
    assert time.monotonic() - started < HANG_S
    members = [p for p in result.parts if p.depth_path.count("/") == 2]
    # libarchive reads the one local file once; the central directory's 2,000 other names
    # are parts without content, up to the parts limit, and the zip is ambiguous
    assert sum(p.size for p in members) == 1 << 20
    assert [(p.minor, p.detail) for p in result.problems] == [
        ("ambiguous", "f00000, f00001, f00002 and 1997 more: in the zip's central directory, not in its local headers"),
        ("over limits", "parts 1501 > limit 1500")]
