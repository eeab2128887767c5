"""The walk's `keep` hook and decode/contents.py, which keeps the parts' bytes for the virus
check's method parts: what is handed over, in which order, and how the store behaves."""

import base64
import io
import zipfile

from pymavis.decode import Limits, walk
from pymavis.decode.contents import Contents


def zip_of(*members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def multipart(attachment: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    data = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (b'From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            + preamble + b"--b\r\nContent-Type: text/plain\r\n\r\nhello text\r\n"
            b'--b\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n'
            b'Content-Disposition: attachment; filename="a.zip"\r\n\r\n' + data + b"--b--\r\n" + epilogue)


def kept(raw: bytes, limits: Limits = Limits()):
    pairs = []
    result = walk(raw, limits, keep=lambda path, data: pairs.append((path, data)))
    return result, pairs


def test_every_part_with_bytes_of_its_own_is_handed_over_in_walk_order():
    archive = zip_of(("one.txt", b"first member\n"), ("two.bin", b"\x00second"))
    result, pairs = kept(multipart(archive, preamble=b"This is MIME.\r\n", epilogue=b"trailer\r\n"))
    assert [p.path for p in result.parts] == ["p001", "p002", "p003", "p004", "p005"]
    assert [path for path, _ in pairs] == ["p001", "p002", "p003", "p004", "p005"]
    data = dict(pairs)
    assert data["p001"].startswith(b"This is MIME.") and b"trailer" in data["p001"]   # preamble and epilogue
    assert data["p002"] == b"hello text"         # the CRLF before a boundary belongs to it
    assert data["p003"] == archive                  # the container's own bytes
    assert data["p004"] == b"first member\n" and data["p005"] == b"\x00second"


def test_a_multipart_without_preamble_or_epilogue_hands_nothing_over():
    _, pairs = kept(multipart(zip_of(("x.txt", b"x"))))
    assert "p001" not in dict(pairs)


def test_without_keep_the_walk_is_the_same():
    raw = multipart(zip_of(("x.txt", b"x")), preamble=b"pre\r\n")
    with_keep, _ = kept(raw)
    assert walk(raw).parts == with_keep.parts


def test_a_part_past_the_quota_is_not_handed_over():
    limits = Limits(min_expanded_bytes=1000, max_expanded_bytes=1000, min_expansion_factor=0, expansion_factor=0)
    result, pairs = kept(multipart(zip_of(("big.bin", b"\x01" * 5000))), limits)
    assert any(p.minor == "over limits" for p in result.problems)
    assert all(len(data) <= 1000 for _, data in pairs)


def test_contents_keeps_slices_in_memory_then_on_disk(tmp_path):
    contents = Contents(str(tmp_path), memory_bytes=100)
    contents.keep("p001", b"a" * 60)
    contents.keep("p002", b"")               # nothing to scan: not kept
    contents.keep("p003", b"b" * 80)         # past 100 bytes: rolled to an unlinked temp file
    contents.keep("p003", b"other")          # once per part
    try:
        assert list(contents) == [("p001", 60), ("p003", 80)] and len(contents) == 2 and contents.size == 140
        first, second = contents.open("p001"), contents.open("p003")
        assert first.read(50) == b"a" * 50 and second.read(10) == b"b" * 10   # interleaved reads
        assert first.read(50) == b"a" * 10 and first.read(50) == b""
        assert second.read() == b"b" * 70
        assert contents.read("p001") == b"a" * 60
        assert contents.failed is None
    finally:
        contents.close()


def test_contents_stops_keeping_on_a_write_error_and_says_why():
    contents = Contents()

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(28, "No space left on device")

    contents._file = Full()
    contents.keep("p002", b"data")
    contents.keep("p003", b"more")
    assert list(contents) == [] and "storing part p002 (4 bytes) failed: OSError" in contents.failed
