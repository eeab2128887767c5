"""File-type detection: libmagic's description mapped to amavis-style short types.

`detect(data)` asks libmagic (python-magic) for a description of the first
`MAGIC_BYTES` of a part and maps it through an ordered table of (regex, short type),
first match wins, as amavisd-new maps file(1) output through
`$map_full_type_to_short_type_re`. The description, not libmagic's MIME type, is what
we map: libmagic calls a PE file `application/octet-stream` but "PE32 executable ...",
and an OLE2 document `application/x-ole-storage` (DEPENDENCIES.md, "Decoding").

`DEFAULT_TYPE_MAP` is our own table in amavis's spirit and with amavis's short names
where amavis has one (`exe-ms`, `dll`, `exe-unix`, `zip`, `doc`, `asc`, `txt`, `mail`,
...). Where amavis gives a list (`['exe','exe-ms']`) we keep the most specific name.
Order matters: "PE32 executable (DLL)" must meet `dll` before the generic `exe-ms`
pattern, "DOS batch file, ASCII text" must meet `bat` before `asc`. A description that
matches nothing gives short type None. The table is a plain sequence of
(pattern, short type) pairs so that configuration can supply another one.

Limits: libmagic sees at most `MAGIC_BYTES` (64 KiB) - 0.1-1 ms per buffer, 2-8 ms for
text; some formats (ISO 9660 at offset 32 KiB, tar at 257) need only the head.

Threads: a `magic.Magic` object holds a lock and, after its first text buffer, 6-9 MB
of libmagic's memory; handles come from a pool as large as the number of detections
running at once (creating one loads the magic database, ~10 ms).

Failures: libmagic errors raise `magic.MagicException` (a subclass of Exception);
the walker turns it into a Problem for that part.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
import re
import threading
from collections.abc import Iterator, Sequence

import magic

# What libmagic is shown at most: its rules look at the head of a file; 64 KiB covers
# every format we map (the deepest is ISO 9660's volume descriptor at 32 KiB + 6).
MAGIC_BYTES = 64 * 1024
# What it sees first (detect()).
FIRST_LOOK = 8 * 1024

TypeMap = Sequence[tuple["str | re.Pattern[str]", str]]

# (regex searched in libmagic's description, short type); first match wins.
DEFAULT_TYPE_MAP: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), short)
    for pattern, short in (
        # libmagic's own verdicts on nothing / unknown bytes
        (r"^empty$", "empty"),
        (r"^data$", "dat"),
        # Windows executables; DLLs first (amavis: ['exe','dll'])
        (r"^PE32\+? executable\b.*\bDLL\b", "dll"),
        (r"^MS Windows\b.*\bDLL\b", "dll"),
        (r"^(MS-)?DOS executable\b.*\bDLL\b", "dll"),
        # amavis: an "MS-DOS executable (built-in)" is LZ-compressed text, not a program
        (r"^MS-DOS executable \(built-in\)", "asc"),
        (r"^PE32\+? executable\b", "exe-ms"),
        (r"^MS Windows\b.*\bexecutable\b", "exe-ms"),
        (r"\bexecutable\b.*\bfor MS Windows\b", "exe-ms"),
        (r"^(MS-)?DOS executable\b", "exe-ms"),
        (r"^MS-DOS\b.*\bexecutable\b", "exe-ms"),
        (r"^PC\b.*\bexecutable\b", "exe-ms"),
        (r"^COM executable for DOS\b", "asc"),  # amavis: file(1) misreads text as COM
        (r"^MS Windows shortcut\b", "lnk"),
        (r"^MS Windows HtmlHelp Data\b", "chm"),
        (r"^MS Windows\b.*\b(registry|Registry)\b", "reg"),
        # Unix and other executables
        (r"^ELF\b.*\b(executable|shared object|relocatable)\b", "exe-unix"),
        (r"^Mach-O\b", "exe-mac"),
        (r"^compiled Java class data\b", "java"),
        (r"^Java archive data\b", "jar"),
        # scripts before plain text (banned rules want Windows script types by content)
        (r"^DOS batch file\b", "bat"),
        (r"^Microsoft Windows Autorun file\b", "inf"),
        (r"\bscript\b.*\btext executable\b", "txt"),  # amavis: a script is text, not exe
        # mail: amavis decodes a part that file(1) calls mail (its 'mail' decoder)
        (r"^(RFC 822 mail|news or mail|SMTP mail|MIME entity)\b", "mail"),
        # archives and compressors
        (r"^Zip archive\b", "zip"),
        (r"^7-zip archive\b", "7z"),
        (r"^RAR archive\b", "rar"),
        (r"^ACE archive\b", "ace"),
        (r"^\s*LHa\b.*\barchive\b", "lha"),
        (r"^ARJ archive\b", "arj"),
        (r"^Zoo archive\b", "zoo"),
        (r"^ARC archive\b", "arc"),
        (r"^(\S+\s+)?tar archive\b", "tar"),
        (r"^(\S+\s+)?cpio archive\b", "cpio"),
        (r"^Microsoft Cabinet archive\b", "cab"),
        (r"^InstallShield Cabinet\b", "installshield"),
        (r"^ISO 9660 CD-ROM filesystem\b", "iso"),
        (r"^xar archive\b", "xar"),
        (r"^Debian binary package\b", "deb"),
        (r"^current ar archive\b", "ar"),
        (r"^RPM\b", "rpm"),
        (r"^StuffIt Archive\b", "sit"),
        (r"^(Transport Neutral Encapsulation Format|TNEF)\b", "tnef"),
        (r"^gzip compressed\b", "gz"),
        (r"^bzip2 compressed\b", "bz2"),
        (r"^XZ compressed\b", "xz"),
        (r"^LZMA compressed\b", "lzma"),
        (r"^Zstandard compressed\b", "zst"),
        (r"\blz4 compressed\b|^LZ4 compressed\b", "lz4"),
        (r"^lzip compressed\b", "lz"),
        (r"^lzop compressed\b", "lzo"),
        (r"^compress'd\b", "Z"),
        (r"^zlib compressed\b", "zlib"),
        # documents; OLE2 is 'doc' whatever it holds, as amavis (README.banned: xls -> T=doc)
        (r"^CDFV2 Microsoft Outlook Message\b", "msg"),
        (r"^(Composite Document File V2 Document|CDFV2)\b", "doc"),
        (r"^Microsoft Office Document\b", "doc"),
        (r"^Microsoft Installer\b", "doc"),
        (r"^Microsoft Word 2007\+", "docx"),
        (r"^Microsoft Excel 2007\+", "xlsx"),
        (r"^Microsoft PowerPoint 2007\+", "pptx"),
        (r"^Microsoft OOXML\b", "ooxml"),
        (r"^OpenDocument\b", "odf"),
        (r"^EPUB document\b", "epub"),
        (r"^PDF document\b", "pdf"),
        (r"^PostScript document\b", "ps"),
        (r"^Rich Text Format data\b", "rtf"),
        (r"^Macromedia Flash\b", "swf"),
        (r"^DjVu\b", "djvu"),
        (r"^(vCalendar|iCalendar) calendar\b", "ics"),
        (r"^vCard visiting card\b", "vcf"),
        (r"^PGP\b|^(PGP|GPG) encrypted data\b", "pgp"),
        # encodings that carry a file inside text
        (r"^(uuencoded|xxencoded)\b", "uue"),
        (r"^BinHex\b", "hqx"),
        # markup before plain text
        (r"^HTML document\b", "html"),
        (r"^SVG Scalable Vector Graphics image\b", "svg"),
        (r"^XML\b.*\bdocument\b", "xml"),
        # images, audio, video
        (r"^JPEG image data\b", "jpg"),
        (r"^GIF image data\b", "gif"),
        (r"^PNG image data\b", "png"),
        (r"^TIFF image data\b", "tif"),
        (r"^PC bitmap\b", "bmp"),
        (r"^PCX\b.*\bimage data\b", "pcx"),
        (r"^MS Windows icon resource\b", "ico"),
        (r"^Adobe Photoshop Image\b", "psd"),
        (r"^ISO Media, HEIF Image\b", "heic"),
        (r"^RIFF\b.*\banimated cursor\b", "ani"),
        (r"^RIFF\b.*\bWAVE audio\b", "wav"),
        (r"^RIFF\b.*\bAVI\b", "avi"),
        (r"^(Audio file with ID3|MPEG ADTS, layer III)\b", "mp3"),
        (r"^ISO Media\b", "mp4"),
        (r"^Ogg data\b", "ogg"),
        (r"^Windows metafile\b|^ms-windows meta(file|font)\b", "wmf"),
        # plain text last; amavis: pure ASCII is 'asc', other text 'txt'
        (r"^ASCII text\b", "asc"),
        (r"\b(ASCII|ISO-8859|UTF-8|UTF-16|Unicode|Non-ISO extended-ASCII)\b.*\btext\b", "txt"),
        (r"\btext\b", "txt"),
    )
)

_idle: list[magic.Magic] = []
_idle_lock = threading.Lock()


@contextmanager
def _magic() -> Iterator[magic.Magic]:
    """A libmagic handle no other thread is using, from a pool that grows to the number of
    detections running at once. Not one per thread: a handle keeps 6-9 MB after its first
    text buffer, and only the few threads decoding at once (checks.DecodeGate) need one."""
    with _idle_lock:
        handle = _idle.pop() if _idle else None
    if handle is None:
        handle = magic.Magic()
    try:
        yield handle
    finally:
        with _idle_lock:
            _idle.append(handle)


def short_type(description: str, type_map: TypeMap = DEFAULT_TYPE_MAP) -> str | None:
    """The short type of a libmagic description: first matching pattern, else None."""
    if isinstance(type_map, tuple):  # the shipped table, or the configuration's file_type_map
        return _cached_short_type(description, type_map)
    return _first_match(description, type_map)


def _first_match(description: str, type_map: TypeMap) -> str | None:
    for pattern, short in type_map:
        if (pattern.search(description) if isinstance(pattern, re.Pattern) else re.search(pattern, description)):
            return short
    return None


# Descriptions repeat (every HTML part says the same): remember each table's answers.
@functools.lru_cache(maxsize=4096)
def _cached_short_type(description: str, type_map: tuple) -> str | None:
    return _first_match(description, type_map)


def detect(
    data: bytes, type_map: TypeMap = DEFAULT_TYPE_MAP, max_bytes: int = MAGIC_BYTES
) -> tuple[str | None, str]:
    """(short type or None, libmagic description) of the first `max_bytes` of `data`.

    libmagic first sees FIRST_LOOK bytes: text classification costs ~2 ms per 64 KiB and
    nearly every format is known by then. Only when that says nothing ("data", or no short
    type) or reads an OLE2 container (its directory lies further in: doc vs msg vs xls)
    does it see up to `max_bytes` (ISO 9660 is known at 32 KiB)."""
    with _magic() as handle:
        description = handle.from_buffer(bytes(data[:min(max_bytes, FIRST_LOOK)]))
        short = short_type(description, type_map)
        if len(data) > FIRST_LOOK and max_bytes > FIRST_LOOK and _look_further(short, description):
            description = handle.from_buffer(bytes(data[:max_bytes]))
            short = short_type(description, type_map)
    return short, description


def _look_further(short: str | None, description: str) -> bool:
    return short in (None, "dat") or description.startswith("Composite Document File")
