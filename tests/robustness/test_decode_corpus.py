"""The decoding walker over every message of the shared corpus (../shared/corpus), in process.

One test per corpus source folder walks every message MANIFEST.tsv lists there and collects
what went wrong, naming the file: a Problem "error" (the walker caught an exception; damaged archives excepted), a
walk stopped by its own deadline (Limits.deadline_s, 10 s: a hang guard, not a speed
target - the whole corpus walks in ~2 s; speed is bench/'s business), or an implausible
part count. Plausible means: what Python's
`email` counts (MANIFEST's `parts` column), minus the header blocks of
message/delivery-status parts (one leaf for us), plus what we decode further (uuencoded
blocks, attached messages), so between that and 3x + 10; a walk stopped by a limit only
has to stay within max_parts.

Spot checks: the part trees of the mime4j and MIME-tools messages against mime4j's
expected structure (`*.xml`), and libmagic's types against rspamd's `gargantua.eml`
ground truth (`X-Real-Type:` on each part).
"""

import csv
import email
import email.policy
import os
import time
import xml.etree.ElementTree as ET
from collections import defaultdict

import pytest

from conftest import CORPUS
from pymavis.decode import Limits, walk


with open(os.path.join(CORPUS, "MANIFEST.tsv"), newline="") as _f:
    MANIFEST = list(csv.DictReader(_f, delimiter="\t"))

BY_SOURCE = defaultdict(list)
for _row in MANIFEST:
    BY_SOURCE[_row["source"]].append(_row)

TIMINGS: dict[str, float] = {}


def read(source, path):
    with open(os.path.join(CORPUS, source, path), "rb") as f:
        return f.read()


def delivery_status_blocks(raw):
    """Header blocks Python counts as entities inside message/delivery-status parts."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return sum(
        len(part.get_payload())
        for part in msg.walk()
        if part.get_content_type() == "message/delivery-status" and isinstance(part.get_payload(), list)
    )


def test_manifest_is_complete():
    assert len(MANIFEST) > 800
    assert len(BY_SOURCE) >= 10


@pytest.mark.parametrize("source", sorted(BY_SOURCE))
def test_corpus_folder_walks(source):
    limits = Limits()
    wrong = []
    for row in BY_SOURCE[source]:
        raw = read(source, row["path"])
        started = time.monotonic()
        result = walk(raw, limits)
        wall_ms = (time.monotonic() - started) * 1000
        TIMINGS[f"{source}/{row['path']}"] = wall_ms
        where = f"{source}/{row['path']}"
        # an exception the walker caught; a damaged archive is an error too, but expected
        errors = [p for p in result.problems if p.minor == "error" and not p.detail.startswith("archive unreadable")]
        if errors:
            wrong.append(f"{where}: {errors}")
        if any(p.detail.startswith("decoding time") for p in result.problems):
            wrong.append(f"{where}: stopped by the decoding deadline after {wall_ms:.0f} ms")
        count, python_count = len(result.parts), int(row["parts"])
        if any(p.minor == "over limits" for p in result.problems):
            plausible = 1 <= count <= limits.max_parts
        else:
            low = python_count - delivery_status_blocks(raw)
            plausible = max(1, low) <= count <= 3 * python_count + 10
        if not plausible:
            wrong.append(f"{where}: {count} parts, Python's email counts {python_count}")
    assert not wrong, "\n".join(wrong)


def test_corpus_timing_summary():
    """Runs after the folders (file order): the slowest message, for the report."""
    assert len(TIMINGS) == len(MANIFEST)
    slowest = sorted(TIMINGS.items(), key=lambda item: -item[1])[:5]
    total = sum(TIMINGS.values())
    print(f"\ncorpus walk: {len(TIMINGS)} messages in {total:.0f} ms; slowest: "
          + ", ".join(f"{name} {ms:.0f} ms" for name, ms in slowest))


# --- mime4j's expected structures ----------------------------------------------------


def mime4j_depth_paths(xml_path):
    """Depth paths of the entities in a mime4j structure file: <message> and <body-part>."""
    paths = []

    def visit(element, depth_path):
        paths.append(depth_path)
        kids = []
        for child in element:
            if child.tag == "multipart":
                kids += [c for c in child if c.tag == "body-part"]
            elif child.tag == "message":
                kids.append(child)
        for i, kid in enumerate(kids, 1):
            visit(kid, f"{depth_path}/{i}")

    visit(ET.parse(xml_path).getroot(), "1")
    return paths


MIME4J_AGREE = [
    ("mime4j-testmsgs", name) for name in (
        "bad-newlines-multiple-parts-base64", "bad-newlines-multiple-parts", "base64-encoded-text",
        "base64encoded-rfc822message-nested", "base64encoded-rfc822message", "basic-plain-very-long-lines",
        "basic-plain-with-bad-header-separator", "boundary-name-clash", "example", "intermediate-boundaries",
        "malformedHeader-nocrlfcrlf", "malformedHeader-noheader", "misplaced-boundary", "missing-boundary",
        "missing-inner-boundary", "missing-inner-start-boundary", "multipartdigestnestedemptyparts",
        "multipartemptypart", "multipartnestedemptyparts", "multipartnopart", "obsolete", "qp-body",
        "russian-headers", "simple-attachment",
    )
] + [
    ("mime4j-mimetools-testmsgs", name) for name in (
        "attachment-filename-encoding-Latin1", "attachment-filename-encoding-UTF8", "badbound", "badfile",
        "double-semicolon", "double-semicolon2", "dup-names", "empty-preamble", "frag", "hdr-fakeout",
        "mp-msg-rfc822", "multi-2evil", "multi-2gifs-base64", "multi-bad", "multi-clen", "multi-digest",
        "multi-frag", "multi-nested", "multi-nested3", "multi-simple", "multi-weirdspace", "not-mime",
        "re-fwd", "russian", "ticket-60931", "uu-junk-target", "x-gzip64",
    )
]


@pytest.mark.parametrize("source,name", MIME4J_AGREE, ids=[n for _, n in MIME4J_AGREE])
def test_part_tree_matches_mime4j(source, name):
    expected = mime4j_depth_paths(os.path.join(CORPUS, source, name + ".xml"))
    result = walk(read(source, name + ".msg"))
    assert [p.depth_path for p in result.parts] == expected


# Where we deliberately see more than mime4j: we decode what it leaves as text.
MIME4J_MORE = [
    ("uuencode-in-text", "mime4j-mimetools-testmsgs", "sig-uu", ["1", "1/1", "1/2"],
     [(".signature", "asc"), (None, "gif")]),
    ("uuencode-in-text-part", "mime4j-mimetools-testmsgs", "uu-junk", ["1", "1/1", "1/2", "1/2/1", "1/2/2"],
     [("up.gif", "gif"), ("zeegee.gif", "gif")]),
    ("attached-message-as-text-plain", "mime4j-mimetools-testmsgs", "multi-igor",
     ["1", "1/1", "1/2", "1/3", "1/3/1", "1/3/1/1", "1/3/1/2", "1/3/1/3", "1/3/1/3/1", "1/3/1/3/2",
      "1/3/1/4", "1/3/1/5", "1/3/1/5/1", "1/4"],
     [("3d-compress.gif", "gif"), ("3d-eye.gif", "gif")]),
]


@pytest.mark.parametrize("source,name,paths,named", [c[1:] for c in MIME4J_MORE], ids=[c[0] for c in MIME4J_MORE])
def test_part_tree_beyond_mime4j(source, name, paths, named):
    result = walk(read(source, name + ".msg"))
    assert [p.depth_path for p in result.parts] == paths
    found = [(p.name, p.detected) for p in result.parts if p.detected in ("gif", "asc") and p.depth_path.count("/") >= 1]
    for item in named:
        assert item in found


# --- gargantua.eml: libmagic ground truth --------------------------------------------

# X-Real-Type -> our short type. Where libmagic cannot tell (a truncated tar is "data",
# OOXML/JAR written without the marker files are plain zip), we expect what it says.
GARGANTUA = {
    "zip": "zip", "rar": "rar", "exe": "exe-ms", "elf": "exe-unix", "lnk": "lnk", "class": "java",
    "rtf": "rtf", "pdf": "pdf", "ps": "ps", "chm": "chm", "djvu": "djvu", "arj": "arj", "cab": "cab",
    "ace": "ace", "tar": "dat", "bz2": "bz2", "xz": "xz", "lz4": "lz4", "zst": "zst", "dmg": "zlib",
    "iso": "iso", "zoo": "zoo", "epub": "epub", "pkg": "xar", "psd": "psd", "pcx": "pcx", "tiff": "tif",
    "ico": "ico", "swf": "swf", "doc": "doc", "xls": "doc", "ppt": "doc", "msi": "doc", "vsd": "doc",
    "msg": "msg", "docx": "docx", "xlsx": "xlsx", "pptx": "zip", "odt": "odf", "ods": "odf",
    "odp": "odf", "7z": "7z", "png": "png", "jpg": "jpg", "gif": "gif", "bmp": "bmp", "txt": "txt",
    "html": "html", "csv": "asc", "jar": "zip", "apk": "jar", "bat": "bat", "ics": "ics", "vcf": "vcf",
    "heic": "heic", "svg": "svg", "html-with-svg (should detect as html, not svg)": "html",
}


def test_gargantua_file_types():
    raw = read("rspamd-functional-messages", "gargantua.eml")
    truth = [part.get("X-Real-Type") for part in email.message_from_bytes(raw).walk() if not part.is_multipart()]
    leaves = [p for p in walk(raw).parts if p.depth_path.count("/") == 1]  # not archive members
    assert len(leaves) == len(truth) == 59
    wrong = [
        f"{p.path} {real}: got {p.detected} ({p.magic})"
        for p, real in zip(leaves, truth)
        if real in GARGANTUA and p.detected != GARGANTUA[real]
    ]
    assert not wrong, "\n".join(wrong)
    assert sum(real in GARGANTUA for real in truth) == 58  # only dwg has no short type
