"""Sample content built at test time (no binaries in the repository): a minimal Windows
executable libmagic recognises, zip archives in memory."""

from __future__ import annotations

import io
import os
import struct
import zipfile


def pe(dll: bool = False, pe32plus: bool = False) -> bytes:
    """A minimal PE header libmagic recognises: MZ stub, PE signature, COFF, optional header."""
    dos = bytearray(128)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 128)
    characteristics = 0x2102 if dll else 0x0102
    machine = 0x8664 if pe32plus else 0x14C
    opt_size = 240 if pe32plus else 224
    coff = struct.pack("<HHIIIHH", machine, 1, 0, 0, 0, opt_size, characteristics)
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B if pe32plus else 0x10B)
    struct.pack_into("<H", opt, 68, 2)  # subsystem: Windows GUI
    return bytes(dos) + b"PE\0\0" + coff + bytes(opt) + bytes(40)


def zip_bytes(*members: tuple[str, bytes]) -> bytes:
    """A deflated zip holding (name, data) members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def corpus_files(root: str, max_bytes: int = 2_000_000):
    """Every file under the shared corpus directory `root` of at most `max_bytes`, walk order."""
    for top, _, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            if os.path.getsize(path) <= max_bytes:
                yield path
