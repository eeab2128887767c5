"""The walker over ClamAV's test files (Debian package clamav-testfiles, `make test` installs it).

Each of the 44 clam* files wraps the harmless test program clam.exe, in a container, an
encoding, a document or an executable packer. Every one is attached (base64,
application/octet-stream, its own file name) to a message and walked: no exception, no
time wasted, and - where the container is one we decode - a part below the attachment
that libmagic calls a Windows program ('exe-ms'): clam.exe reached.

The table says, for every file, which of three outcomes is expected, and why:
- INSIDE: clam.exe is a part below the attachment;
- ITSELF: the attachment is a program, typed exe-ms; what it packs is not unpacked
  (executable packers and installers are clamd's business, as in amavis);
- OPAQUE: neither, for the reason given - a format nobody reads here, or one whose
  embedded objects are for clamd to find.
A file added to the package and missing from the table fails the test.
"""

import base64
import time
from pathlib import Path

import pytest

from pymavis.decode import walk

TESTFILES = Path("/usr/share/clamav-testfiles")
INSIDE, ITSELF, OPAQUE = "clam.exe inside", "a program itself", "opaque"

PACKED = "packed program: unpacking executables is clamd's job"

# file: (libmagic's short type for the attachment, outcome, why / where clam.exe is)
CLAMAV_FILES = {
    # archives and compressed files libarchive reads
    "clam.7z": ("7z", INSIDE, "7-Zip"),
    "clam.zip": ("zip", INSIDE, "zip, deflate"),
    "clam.bz2.zip": ("zip", INSIDE, "zip, bzip2 method"),
    "clam.cab": ("cab", INSIDE, "Microsoft cabinet"),
    "clam.bin-be.cpio": ("cpio", INSIDE, "old binary cpio, big-endian (libmagic: byte-swapped cpio)"),
    "clam.bin-le.cpio": ("cpio", INSIDE, "old binary cpio, little-endian"),
    "clam.newc.cpio": ("cpio", INSIDE, "SVR4 newc cpio"),
    "clam.odc.cpio": ("cpio", INSIDE, "POSIX odc cpio"),
    "clam.tar.gz": ("gz", INSIDE, "gzip'd tar"),
    "clam.exe.bz2": ("bz2", INSIDE, "bzip2 of clam.exe"),
    "clam_cache_emax.tgz": ("gz", INSIDE, "tgz inside tgz, many levels"),
    # our own decoders
    "clam.exe.binhex": ("hqx", INSIDE, "BinHex 4.0 data fork (binhex.py)"),
    "clam.tnef": ("tnef", INSIDE, "TNEF attachment (tnef.py, tnefparse)"),
    "clam.mail": ("mail", INSIDE, "a MIME message, parsed as a nested message"),
    "clam.exe.mbox.base64": ("asc", INSIDE, "an mbox file (libmagic: plain text) with a base64 part"),
    "clam.exe.mbox.uu": ("uue", INSIDE, "an mbox file with an x-uuencode part"),
    # zip members libarchive 3.6 lists but cannot decompress: the name is seen, not the program
    "clam.d64.zip": ("zip", OPAQUE, "Deflate64 (method 9): libarchive has no Deflate64 decoder"),
    "clam.impl.zip": ("zip", OPAQUE, "Implode (method 6, PKZIP 1.x): libarchive has no Implode decoder"),
    # formats nobody reads here
    "clam.arj": ("arj", OPAQUE, "ARJ: libarchive has no ARJ reader (amavis runs arj/unarj)"),
    "clam.exe.szdd": (None, OPAQUE, "SZDD (MS-DOS COMPRESS.EXE): libarchive has no reader"),
    "clam.chm": ("chm", OPAQUE, "Compiled HTML Help: libarchive has no CHM reader"),
    "clam.sis": (None, OPAQUE, "Symbian installer: no reader"),
    # documents whose embedded objects are for clamd
    "clam.ole.doc": ("doc", OPAQUE, "OLE2 Word file, clam.exe an embedded Package object: OLE streams "
                     "are not extracted (amavis does, with ripOLE)"),
    "clam.ppt": ("doc", OPAQUE, "OLE2 PowerPoint file, clam.exe an embedded Package object: as above"),
    "clam.pdf": ("pdf", OPAQUE, "clam.exe in a Flate stream of a PDF object: PDF objects are clamd's job"),
    "clam.exe.rtf": ("rtf", OPAQUE, "clam.exe as hex \\objdata of an RTF Package object: clamd's job"),
    "clam.exe.html": ("html", OPAQUE, "clam.exe in a data: URI of a link: clamd's job"),
    # programs
    "clam.exe": ("exe-ms", ITSELF, "the test program"),
    "clam-aspack.exe": ("exe-ms", ITSELF, "ASPack " + PACKED),
    "clam-fsg.exe": ("exe-ms", ITSELF, "FSG " + PACKED),
    "clam-mew.exe": ("exe-ms", ITSELF, "MEW " + PACKED),
    "clam-pespin.exe": ("exe-ms", ITSELF, "PESpin " + PACKED),
    "clam-petite.exe": ("exe-ms", ITSELF, "Petite " + PACKED),
    "clam-upack.exe": ("exe-ms", ITSELF, "Upack " + PACKED),
    "clam-upx.exe": ("exe-ms", ITSELF, "UPX " + PACKED),
    "clam-wwpack.exe": ("exe-ms", ITSELF, "WWPack32 " + PACKED),
    "clam-yc.exe": ("exe-ms", ITSELF, "yoda's Crypter " + PACKED),
    "clam.ea05.exe": ("exe-ms", ITSELF, "AutoIt 3 (EA05) compiled script: the script is in AutoIt's own format"),
    "clam.ea06.exe": ("exe-ms", ITSELF, "AutoIt 3 (EA06) compiled script: as above"),
    "clam-nsis.exe": ("exe-ms", ITSELF, "Nullsoft installer: libarchive has no NSIS reader"),
    "clam_IScab_ext.exe": ("exe-ms", ITSELF, "InstallShield setup: clam.exe is in an InstallShield cabinet "
                           "(ISc(), which libarchive does not read; programs are not searched for archives)"),
    "clam_IScab_int.exe": ("exe-ms", ITSELF, "InstallShield setup: as above"),
    "clam_ISmsi_ext.exe": ("exe-ms", ITSELF, "InstallShield setup with clam.msi: InstallShield's packing, "
                           "then an MSI (OLE2) database; neither is read"),
    "clam_ISmsi_int.exe": ("exe-ms", ITSELF, "InstallShield setup with clam.msi: as above"),
}

# The problems a walk reports, by file; every other file walks without any.
PROBLEMS = {
    "clam.d64.zip": [("error", "p003", "archive unreadable: clam.exe: Unsupported ZIP compression method "
                      "(9: deflation-64-bit)")],
    "clam.impl.zip": [("error", "p003", "archive unreadable: CLAM.EXE: Unsupported ZIP compression method "
                       "(6: imploded)")],
}

TIMINGS: dict[str, float] = {}


def message(name: str, data: bytes) -> bytes:
    return (
        b"From: sender@example.com\r\nTo: rcpt@example.com\r\nSubject: " + name.encode() + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nThe attachment is a ClamAV test file.\r\n"
        b"--b\r\nContent-Type: application/octet-stream; name=\"" + name.encode() + b"\"\r\n"
        b"Content-Disposition: attachment; filename=\"" + name.encode() + b"\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data) + b"--b--\r\n"
    )


def test_table_lists_every_file():
    on_disk = {path.name for path in TESTFILES.glob("clam*")}
    assert len(on_disk) == 44
    assert on_disk == set(CLAMAV_FILES)


@pytest.mark.parametrize("name", sorted(CLAMAV_FILES))
def test_clamav_file(name):
    short_type, outcome, why = CLAMAV_FILES[name]
    started = time.monotonic()
    result = walk(message(name, (TESTFILES / name).read_bytes()))
    TIMINGS[name] = time.monotonic() - started
    attachment = result.parts[2]
    assert (attachment.depth_path, attachment.name, attachment.detected) == ("1/2", name, short_type), attachment.magic
    inside = [p for p in result.parts if p.depth_path.startswith("1/2/") and p.detected == "exe-ms"]
    if outcome == INSIDE:
        assert inside, f"{name} ({why}): clam.exe not reached: {[p.part_path() for p in result.parts]}"
        # the name, not the size: clam.exe.mbox.uu ends in "e" for "end", which Python's
        # x-uuencode decoder reads as a line of 5 more bytes
        assert inside[0].name.lower() == "clam.exe" and inside[0].size >= 544
    else:
        assert not inside, f"{name}: a program inside, the table says {outcome} ({why})"
        assert (attachment.detected == "exe-ms") == (outcome == ITSELF)
    assert [(p.minor, p.part, p.detail) for p in result.problems] == PROBLEMS.get(name, [])


def test_whole_directory_is_walked_quickly():
    started = time.monotonic()
    for name in CLAMAV_FILES:
        walk(message(name, (TESTFILES / name).read_bytes()))
    elapsed = time.monotonic() - started
    print(f"\nclamav-testfiles: {len(CLAMAV_FILES)} files walked in {elapsed:.2f} s")
    assert elapsed < 30
