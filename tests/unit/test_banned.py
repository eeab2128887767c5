"""Banned-content rules (pymavis.banned): the shipped sets, rule order, set order, spec errors.

Parts are built directly as `Part` values; three cases walk a generated message with
`pymavis.decode.walk` to show the rules see what the walker produces (a PE in a zip in a
forwarded message, an RFC 2231 name hiding a double extension).
"""

import base64

import pytest

from harness.samples import pe, zip_bytes
from pymavis.banned import (
    DEFAULT_RULE_SETS,
    DEFAULT_SPEC,
    RuleSpecError,
    build_rule_sets,
    evaluate,
    extension,
    to_finding,
)
from pymavis.categories import Ccat
from pymavis.decode import Part, walk

DEFAULT = DEFAULT_RULE_SETS["DEFAULT"]


def part(path, depth, name=None, declared=None, detected=None):
    return Part(path, depth, name, declared, detected, None, 0)


ROOT = part("p001", "1", declared="multipart/mixed")


def one_attachment(name=None, declared="application/octet-stream", detected=None):
    """A message whose only attachment is described by the arguments."""
    return [ROOT, part("p002", "1/1", declared="text/plain", detected="asc"),
            part("p003", "1/2", name, declared, detected)]


def why(result):
    return None if result is None else result.rule.why


# --- extension() ---------------------------------------------------------------------

EXTENSION_CASES = [
    ("plain", "a.exe", "exe"),
    ("upper", "A.EXE", "exe"),
    ("last-of-two", "invoice.pdf.exe", "exe"),
    ("trailing-dot", "a.exe.", "exe"),
    ("trailing-dots-spaces", "a.exe . . ", "exe"),
    ("space-before-ext", "photo.jpg     .scr", "scr"),
    ("directory", "foto/expander.exe", "exe"),
    ("backslash-directory", "dir\\run.bat", "bat"),
    ("dot-in-directory", "v1.2/readme", None),
    ("none", "README", None),
    ("only-dots", "...", None),
    ("empty", "", None),
    ("missing", None, None),
]


@pytest.mark.parametrize("name,expected", [c[1:] for c in EXTENSION_CASES], ids=[c[0] for c in EXTENSION_CASES])
def test_extension(name, expected):
    assert extension(name) == expected


# --- the DEFAULT set, one attachment -------------------------------------------------

EXE_WHY = "Windows executable (by content)"
EXT_WHY = "Windows executable or script extension"
DOUBLE_WHY = "double extension"
TRAILING_WHY = "trailing dot or space in name"
BIDI_WHY = "bidi control character in name (RTLO)"
CLSID_WHY = "CLSID extension"
MIME_WHY = "executable MIME type"
PARTIAL_WHY = "message/partial or external-body"

DEFAULT_CASES = [
    # (id, name, declared type, detected type, the rule that decides or None)
    ("exe-by-content", "setup.exe", "application/octet-stream", "exe-ms", EXE_WHY),
    ("renamed-exe-as-jpg", "photo.jpg", "image/jpeg", "exe-ms", EXE_WHY),
    ("renamed-exe-no-name", None, "application/octet-stream", "exe-ms", EXE_WHY),
    ("dll-by-content", "data.bin", "application/octet-stream", "dll", EXE_WHY),
    ("message-partial", None, "message/partial", None, PARTIAL_WHY),
    ("message-external-body", None, "message/external-body", None, PARTIAL_WHY),
    ("x-msdownload", "a.dat", "application/x-msdownload", "dat", MIME_WHY),
    ("x-msdos-program", None, "application/x-msdos-program", None, MIME_WHY),
    ("hta-type", "info", "application/hta", "html", MIME_WHY),
    ("rtlo", "invoice\u202egpj.exe", "image/jpeg", None, BIDI_WHY),
    ("rtlo-harmless-ext", "report\u202etxt.pdf", "application/pdf", "pdf", BIDI_WHY),
    ("lre", "a\u202ab.pdf", "application/pdf", None, BIDI_WHY),
    ("pdf-isolate", "a\u2068b\u2069.pdf", "application/pdf", None, BIDI_WHY),
    ("clsid", "readme.txt.{3050F4D8-98B5-11CF-BB82-00AA00BDCE0B}", "text/plain", "asc", CLSID_WHY),
    ("clsid-no-closing-brace", "readme.txt.{3050f4d8-98b5-11cf-bb82-00aa00bdce0b", "text/plain", "asc", CLSID_WHY),
    ("double-pdf-exe", "invoice.pdf.exe", "application/pdf", None, DOUBLE_WHY),
    ("double-txt-vbs", "notes.txt.vbs", "text/plain", "asc", DOUBLE_WHY),
    ("double-upper", "INVOICE.PDF.EXE", "application/octet-stream", None, DOUBLE_WHY),
    ("double-spaces", "photo.jpg            .scr", "image/jpeg", None, DOUBLE_WHY),
    ("double-trailing-dot", "invoice.pdf.exe .", "application/octet-stream", None, DOUBLE_WHY),
    ("double-js", "scan.doc.js", "application/javascript", "asc", DOUBLE_WHY),
    ("trailing-dot", "invoice.exe.", "application/octet-stream", None, TRAILING_WHY),
    ("trailing-space", "report.pdf ", "application/pdf", "pdf", TRAILING_WHY),
    ("version-is-not-double", "setup-1.2.exe", "application/octet-stream", None, EXT_WHY),
    ("ext-exe", "a.exe", "application/octet-stream", None, EXT_WHY),
    ("ext-upper-pif", "MESSAGE.PIF", "application/octet-stream", None, EXT_WHY),
    ("ext-scr", "your_details.scr", "application/octet-stream", None, EXT_WHY),
    ("ext-vbs", "a.vbs", "text/plain", "asc", EXT_WHY),
    ("ext-bat", "run.bat", "text/plain", "bat", EXT_WHY),
    ("ext-cmd", "dir\\run.cmd", "text/plain", "asc", EXT_WHY),
    ("ext-com", "a.com", None, None, EXT_WHY),
    ("ext-cpl", "a.cpl", None, None, EXT_WHY),
    ("ext-js", "a.js", "text/javascript", "asc", EXT_WHY),
    ("ext-jse", "a.jse", None, None, EXT_WHY),
    ("ext-wsf", "a.wsf", None, "xml", EXT_WHY),
    ("ext-wsh", "a.wsh", None, None, EXT_WHY),
    ("ext-hta", "MoreInfo.hta", "application/octet-stream", "html", EXT_WHY),
    ("ext-msi", "a.msi", None, "doc", EXT_WHY),
    ("ext-msp", "a.msp", None, "doc", EXT_WHY),
    ("ext-lnk", "a.lnk", None, "lnk", EXT_WHY),
    ("ext-ps1", "a.ps1", "text/plain", "asc", EXT_WHY),
    ("ext-reg", "a.reg", None, "reg", EXT_WHY),
    ("ext-chm", "help.chm", None, "chm", EXT_WHY),
    ("ext-jar", "app.jar", None, "jar", EXT_WHY),
    ("ext-url", "click.url", None, "asc", EXT_WHY),
    ("clean-pdf", "report.pdf", "application/pdf", "pdf", None),
    ("clean-jpg", "photo.jpg", "image/jpeg", "jpg", None),
    ("clean-zip", "archive.zip", "application/zip", "zip", None),
    ("clean-exe-then-zip", "setup.exe.zip", "application/zip", "zip", None),
    ("clean-exe-in-middle", "my.exe.pdf", "application/pdf", "pdf", None),
    ("clean-no-ext", "README", "text/plain", "asc", None),
    ("clean-word-exe", "exe", "text/plain", "asc", None),
    ("clean-text", None, "text/plain", "asc", None),
    ("clean-elf-by-default", "tool", "application/octet-stream", "exe-unix", None),
    ("clean-iso-by-default", "disk.iso", "application/octet-stream", "iso", None),
    ("clean-crt", "ca.crt", "application/x-x509-ca-cert", "asc", None),
    ("clean-brace-name", "report {draft}.doc", "application/msword", "doc", None),
    ("clean-arabic-ok", "\u062a\u0642\u0631\u064a\u0631.pdf", "application/pdf", "pdf", None),
]


@pytest.mark.parametrize(
    "name,declared,detected,expected", [c[1:] for c in DEFAULT_CASES], ids=[c[0] for c in DEFAULT_CASES]
)
def test_default_set(name, declared, detected, expected):
    result = evaluate(one_attachment(name, declared, detected), [DEFAULT])
    assert why(result) == expected
    if expected is not None:
        assert result.part.path == "p003"
        assert result.rule_set == "DEFAULT"
        assert DEFAULT.rules[result.rule_index] is result.rule


def test_message_partial_as_the_whole_message():
    assert why(evaluate([part("p001", "1", declared="message/partial")], [DEFAULT])) == PARTIAL_WHY


# --- containers: chains, Unix archives --------------------------------------------------

def in_archive(archive_type, member_name, member_detected=None):
    return [
        ROOT,
        part("p002", "1/1", "src.bin", "application/octet-stream", archive_type),
        part("p003", "1/1/1", member_name, None, member_detected),
    ]


CONTAINER_CASES = [
    ("bat-in-tar-allowed", "tar", "build.bat", "asc", None),
    ("com-in-cpio-allowed", "cpio", "x.com", None, None),
    ("bat-in-rpm-allowed", "rpm", "win/setup.bat", "bat", None),
    ("bat-in-zip-banned", "zip", "build.bat", "asc", EXT_WHY),
    ("exe-ms-in-tar-banned", "tar", "tool", "exe-ms", EXE_WHY),
    ("double-ext-in-tar-banned", "tar", "invoice.pdf.exe", None, DOUBLE_WHY),
    ("rtlo-in-tar-banned", "tar", "a\u202eexe.txt", "asc", BIDI_WHY),
    ("renamed-exe-in-zip", "zip", "photo.jpg", "exe-ms", EXE_WHY),
    ("pdf-in-zip-clean", "zip", "report.pdf", "pdf", None),
]


@pytest.mark.parametrize(
    "archive,member,detected,expected", [c[1:] for c in CONTAINER_CASES], ids=[c[0] for c in CONTAINER_CASES]
)
def test_default_set_in_archives(archive, member, detected, expected):
    assert why(evaluate(in_archive(archive, member, detected), [DEFAULT])) == expected


def test_chain_lists_ancestors_amavis_style():
    parts = [
        part("p001", "1", declared="multipart/mixed"),
        part("p002", "1/1", declared="text/plain", detected="asc"),
        part("p003", "1/2", declared="message/rfc822"),
        part("p004", "1/2/1", declared="multipart/mixed"),
        part("p005", "1/2/1/1", "docs.zip", "application/zip", "zip"),
        part("p006", "1/2/1/1/1", "invoice.pdf.exe", None, "exe-ms"),
    ]
    result = evaluate(parts, [DEFAULT])
    assert result.chain == (
        "P=p001,L=1,M=multipart/mixed | P=p003,L=1/2,M=message/rfc822 | P=p004,L=1/2/1,M=multipart/mixed"
        " | P=p005,L=1/2/1/1,M=application/zip,T=zip,N=docs.zip | P=p006,L=1/2/1/1/1,T=exe-ms,N=invoice.pdf.exe"
    )
    assert result.rule_ref == "DEFAULT[0]"


def test_first_offending_part_in_walk_order_is_reported():
    parts = [ROOT, part("p002", "1/1", "a.txt.vbs"), part("p003", "1/2", "b.exe", detected="exe-ms")]
    assert evaluate(parts, [DEFAULT]).part.path == "p002"


def test_no_parts_no_result():
    assert evaluate([], [DEFAULT]) is None
    assert evaluate(one_attachment("a.exe"), []) is None


# --- custom sets: rule order, set order, matchers ---------------------------------------

CUSTOM = build_rule_sets({
    "IMAGES-OK": [
        {"allow": {"declared": "^image/"}},
        {"deny": {"ext": ["jpg", ".PNG"]}, "why": "image not declared as one"},
    ],
    "NOTHING": [],
    "NO-TXT-IN-ZIP": [
        {"deny": {"path": r"T=zip,[^|]* \| [^|]*N=[^|]*\.txt$"}, "why": "txt in zip"},
    ],
    "NO-PDF-IN-RFC822": [
        {"deny": {"ext": ["pdf"], "within": {"declared": "^message/rfc822$"}}, "why": "pdf in forward"},
    ],
    "SMALL-NAMES": [
        {"deny": {"name": "^secret", "declared": "^text/"}, "why": "secret text"},
    ],
})

SET_ORDER_CASES = [
    # (id, set names in order, parts, rule that decides (set[index]) or None)
    ("allow-before-deny", ["IMAGES-OK"], one_attachment("a.jpg", "image/jpeg", "jpg"), None),
    ("deny-after-allow", ["IMAGES-OK"], one_attachment("a.jpg", "application/octet-stream"), "IMAGES-OK[1]"),
    ("ext-list-dot-and-case", ["IMAGES-OK"], one_attachment("A.png", "application/octet-stream"), "IMAGES-OK[1]"),
    ("empty-set-no-opinion", ["NOTHING", "DEFAULT"], one_attachment("a.exe"), "DEFAULT[8]"),
    ("no-opinion-passes-on", ["IMAGES-OK", "DEFAULT"], one_attachment("a.exe"), "DEFAULT[8]"),
    ("first-set-allows", ["IMAGES-OK", "DEFAULT"], one_attachment("a.exe", "image/gif", "exe-ms"), None),
    ("default-alone-bans-that", ["DEFAULT"], one_attachment("a.exe", "image/gif", "exe-ms"), "DEFAULT[0]"),
    ("allow-exe-first", ["ALLOW_EXE", "DEFAULT"], one_attachment("setup.exe", detected="exe-ms"), None),
    ("allow-exe-still-bans-vbs-double", ["ALLOW_EXE", "DEFAULT"], one_attachment("a.txt.js"), "DEFAULT[5]"),
    ("no-exe-elf", ["NO-EXE", "DEFAULT"], one_attachment("tool", detected="exe-unix"), "NO-EXE[0]"),
    ("no-exe-macho", ["NO-EXE", "DEFAULT"], one_attachment("tool", detected="exe-mac"), "NO-EXE[0]"),
    ("no-exe-pdf-clean", ["NO-EXE", "DEFAULT"], one_attachment("a.pdf", "application/pdf", "pdf"), None),
    ("disk-images-iso", ["NO-DISK-IMAGES", "DEFAULT"], one_attachment("a.iso", detected="iso"), "NO-DISK-IMAGES[0]"),
    ("disk-images-img", ["DEFAULT", "NO-DISK-IMAGES"], one_attachment("a.IMG"), "NO-DISK-IMAGES[1]"),
    ("path-txt-in-zip", ["NO-TXT-IN-ZIP"], in_archive("zip", "notes.txt"), "NO-TXT-IN-ZIP[0]"),
    ("path-txt-in-tar", ["NO-TXT-IN-ZIP"], in_archive("tar", "notes.txt"), None),
    ("path-txt-alone", ["NO-TXT-IN-ZIP"], one_attachment("notes.txt", "text/plain"), None),
    ("within-rfc822", ["NO-PDF-IN-RFC822"],
     [ROOT, part("p002", "1/1", declared="message/rfc822"), part("p003", "1/1/1", declared="multipart/mixed"),
      part("p004", "1/1/1/1", "a.pdf", "application/pdf", "pdf")], "NO-PDF-IN-RFC822[0]"),
    ("within-not-rfc822", ["NO-PDF-IN-RFC822"], one_attachment("a.pdf", "application/pdf"), None),
    ("all-matchers-must-match", ["SMALL-NAMES"], one_attachment("secret.pdf", "application/pdf"), None),
    ("all-matchers-match", ["SMALL-NAMES"], one_attachment("SECRET.txt", "text/plain"), "SMALL-NAMES[0]"),
]


@pytest.mark.parametrize("names,parts,expected", [c[1:] for c in SET_ORDER_CASES], ids=[c[0] for c in SET_ORDER_CASES])
def test_rule_and_set_order(names, parts, expected):
    sets = {**DEFAULT_RULE_SETS, **CUSTOM}
    result = evaluate(parts, [sets[n] for n in names])
    assert (result.rule_ref if result else None) == expected


def test_default_rule_indexes_used_above():
    # the set-order table names DEFAULT rules by index: keep it honest
    assert DEFAULT.rules[0].why == EXE_WHY
    assert DEFAULT.rules[5].why == DOUBLE_WHY
    assert DEFAULT.rules[8].why == EXT_WHY


def test_to_finding():
    result = evaluate(one_attachment("a.exe"), [DEFAULT])
    finding = to_finding(result)
    assert finding.check == "banned"
    assert finding.ccat == Ccat.BANNED
    assert finding.detail == "P=p001,L=1,M=multipart/mixed | P=p003,L=1/2,M=application/octet-stream,N=a.exe"
    assert ("banned_rule", "DEFAULT[8]") in finding.values


def test_shipped_spec_builds_and_names_match():
    assert set(build_rule_sets(DEFAULT_SPEC)) == set(DEFAULT_RULE_SETS) == {
        "DEFAULT", "NO-EXE", "ALLOW_EXE", "NO-DISK-IMAGES"}
    assert all(rule.why for rs in DEFAULT_RULE_SETS.values() for rule in rs.rules)


# --- spec errors --------------------------------------------------------------------------

SPEC_ERROR_CASES = [
    # (id, spec, path, words in the message)
    ("not-a-mapping", [{"deny": {}}], (), "expected a mapping"),
    ("rules-not-a-list", {"X": {"deny": {"ext": ["exe"]}}}, ("X",), "expected a list of rules"),
    ("set-name-with-comma", {"A,B": []}, ("A,B",), "without commas"),
    ("rule-not-a-mapping", {"X": ["deny"]}, ("X", 0), "expected a rule"),
    ("unknown-rule-key", {"X": [{"deyn": {"ext": ["exe"]}}]}, ("X", 0, "deyn"), "did you mean 'deny'"),
    ("matcher-at-rule-level", {"X": [{"deny": {}, "ext": ["exe"]}]}, ("X", 0, "ext"), "allow or deny"),
    ("both-actions", {"X": [{"deny": {}, "allow": {}}]}, ("X", 0), "exactly one of allow or deny"),
    ("no-action", {"X": [{"why": "x"}]}, ("X", 0), "exactly one of allow or deny"),
    ("why-not-text", {"X": [{"deny": {}, "why": 3}]}, ("X", 0, "why"), "expected a string"),
    ("matchers-null", {"X": [{"deny": None}]}, ("X", 0, "deny"), "expected a mapping of matchers"),
    ("unknown-matcher", {"X": [{"deny": {"detcted": ["exe-ms"]}}]}, ("X", 0, "deny", "detcted"),
     "did you mean 'detected'"),
    ("unknown-matcher-ext", {"X": [{"ok": 1}, {"allow": {"extension": ["exe"]}}]}, ("X", 0, "ok"), "unknown key"),
    ("unknown-matcher-second-rule", {"X": [{"deny": {}}, {"allow": {"extension": ["exe"]}}]},
     ("X", 1, "allow", "extension"), "unknown matcher 'extension'"),
    ("bad-name-regex", {"X": [{"deny": {"name": "(exe"}}]}, ("X", 0, "deny", "name"), "bad regular expression"),
    ("bad-path-regex", {"X": [{"deny": {"path": "[a-"}}]}, ("X", 0, "deny", "path"), "bad regular expression"),
    ("regex-not-text", {"X": [{"deny": {"declared": ["^a"]}}]}, ("X", 0, "deny", "declared"), "regular expression"),
    ("empty-regex", {"X": [{"deny": {"name": ""}}]}, ("X", 0, "deny", "name"), "non-empty string"),
    ("ext-not-a-list", {"X": [{"deny": {"ext": "exe"}}]}, ("X", 0, "deny", "ext"), "list of strings"),
    ("ext-empty-list", {"X": [{"deny": {"ext": []}}]}, ("X", 0, "deny", "ext"), "non-empty list"),
    ("ext-item-number", {"X": [{"deny": {"ext": ["exe", 3]}}]}, ("X", 0, "deny", "ext", 1), "got a number 3"),
    ("ext-item-dot", {"X": [{"deny": {"ext": ["."]}}]}, ("X", 0, "deny", "ext", 0), "non-empty string"),
    ("double-ext-true", {"X": [{"deny": {"double_ext": True}}]}, ("X", 0, "deny", "double_ext"), "list of strings"),
    ("detected-item-null", {"X": [{"deny": {"detected": [None]}}]}, ("X", 0, "deny", "detected", 0), "got null"),
    ("within-unknown", {"X": [{"allow": {"within": {"nme": "a"}}}]}, ("X", 0, "allow", "within", "nme"),
     "did you mean 'name'"),
    ("within-not-mapping", {"X": [{"allow": {"within": "tar"}}]}, ("X", 0, "allow", "within"), "mapping of matchers"),
]


@pytest.mark.parametrize("spec,path,words", [c[1:] for c in SPEC_ERROR_CASES], ids=[c[0] for c in SPEC_ERROR_CASES])
def test_spec_errors(spec, path, words):
    with pytest.raises(RuleSpecError) as info:
        build_rule_sets(spec)
    assert info.value.path == path
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_empty_matchers_match_every_part():
    sets = build_rule_sets({"PASSALL": [{"allow": {}}], "DENYALL": [{"deny": {}}]})
    assert evaluate(one_attachment("a.exe", detected="exe-ms"), [sets["PASSALL"], DEFAULT]) is None
    assert evaluate(one_attachment("a.txt"), [sets["DENYALL"]]).part.path == "p001"


# --- through the walker ---------------------------------------------------------------------


def multipart(*parts, boundary="BOUNDARY", headers=b"From: a@example.com\nSubject: test\n"):
    body = b"".join(b"--" + boundary.encode() + b"\n" + p + b"\n" for p in parts)
    return (headers + b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"" + boundary.encode()
            + b"\"\n\n" + body + b"--" + boundary.encode() + b"--\n")


def attachment(data, disposition, ctype=b"application/octet-stream"):
    return (b"Content-Type: " + ctype + b"\nContent-Transfer-Encoding: base64\n"
            + b"Content-Disposition: attachment; " + disposition + b"\n\n" + base64.encodebytes(data))


TEXT = b"Content-Type: text/plain\n\nhello\n"


def test_walk_exe_in_zip_in_forwarded_message():
    inner = multipart(
        TEXT,
        attachment(zip_bytes(("invoice.pdf.exe", pe()), ("notes.txt", b"hi\n")), b'filename="docs.zip"',
                   b"application/zip"),
        boundary="INNER", headers=b"From: b@example.com\nSubject: fw\n",
    )
    raw = multipart(TEXT, b"Content-Type: message/rfc822\n\n" + inner)
    result = evaluate(walk(raw).parts, [DEFAULT])
    assert result is not None
    assert result.rule_ref == "DEFAULT[0]"  # by content: exe-ms
    assert result.chain == (
        "P=p001,L=1,M=multipart/mixed | P=p003,L=1/2,M=message/rfc822 | P=p004,L=1/2/1,M=multipart/mixed"
        " | P=p006,L=1/2/1/2,M=application/zip,T=zip,N=docs.zip | P=p007,L=1/2/1/2/1,T=exe-ms,N=invoice.pdf.exe"
    )
    assert to_finding(result).detail == result.chain


def test_walk_rfc2231_continuation_hides_double_extension():
    # filename*0/filename*1: a filter that reads only the first piece sees "invoice.pdf"
    raw = multipart(TEXT, attachment(b"%PDF-1.4\n", b'filename*0="invoice.pdf"; filename*1=".exe"',
                                     b"application/pdf"))
    result = evaluate(walk(raw).parts, [DEFAULT])
    assert result.rule.why == DOUBLE_WHY
    assert result.part.name == "invoice.pdf.exe"
    assert result.chain.endswith("N=invoice.pdf.exe")


def test_walk_rfc2231_encoded_rtlo_name():
    # RFC 2231 percent-encoding carries U+202E: "invoice<RLO>fdp.exe" shows as "invoiceexe.pdf"
    raw = multipart(TEXT, attachment(b"hello\n", b"filename*=UTF-8''invoice%E2%80%AEfdp.exe", b"text/plain"))
    result = evaluate(walk(raw).parts, [DEFAULT])
    assert result.rule.why == BIDI_WHY


def test_walk_clean_message_is_not_banned():
    raw = multipart(TEXT, attachment(b"%PDF-1.4\n", b'filename="report.pdf"', b"application/pdf"),
                    attachment(zip_bytes(("a.txt", b"hi\n")), b'filename="a.zip"', b"application/zip"))
    assert evaluate(walk(raw).parts, [DEFAULT]) is None
