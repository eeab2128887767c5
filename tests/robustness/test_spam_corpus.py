"""The spam and ham of ../shared/corpus/ (SpamAssassin's t/data spam, nice and welcomelists,
rspamd's functional test messages) through the pipeline with the session's real spamd:
no exception, a verdict for every message (spamd answered), and every message carrying
the GTUBE string in its body is SPAM.

The messages go through four worker threads (spamd here runs two children), as the milter's
workers would send them; the whole set takes about half a minute.
"""

from __future__ import annotations

import concurrent.futures
import os

import pytest

from conftest import CORPUS, spam_scanners_yaml
from harness.spamd import GTUBE
from pymavis import pipeline
from pymavis.categories import Ccat
from pymavis.config import load
from pymavis.policy import merge
from pymavis.transaction import Connection, Rcpt, TransactionBuilder

SETS = ("spamassassin-t-data/spam", "spamassassin-t-data/nice", "spamassassin-t-data/welcomelists",
        "rspamd-functional-messages")


def corpus_files() -> list[str]:
    files = []
    for folder in SETS:
        for root, _dirs, names in os.walk(os.path.join(CORPUS, folder)):
            files += [os.path.join(root, n) for n in sorted(names)
                      if not n.startswith(("LICENSE", "NOTICE")) and not n.endswith((".md", ".txt.gz"))]
    return sorted(files)


def txn_of(raw: bytes, tmp_dir: str):
    conn = Connection("c1", "192.0.2.1", 40000, "client.example.org", "client.example.org", (), 0.0)
    builder = TransactionBuilder(conn, "<a@example.org>", (), {}, 100 * 1024, tmp_dir)
    builder.add_rcpt(Rcpt("<bob@example.com>", "bob@example.com"), 0)
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, sep, body = raw.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    for field in fields:
        name, _, value = field.partition(b":")
        builder.add_header(name.decode("ascii", "replace"), value.decode("utf-8", "surrogateescape").strip(),
                           field + b"\r\n")
    builder.end_of_headers()
    builder.add_body(body)
    return builder.freeze("QID", {})


def body_has_gtube(raw: bytes) -> bool:
    _, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return GTUBE in body


@pytest.fixture(scope="module")
def config(tmp_path_factory, spamd):
    tmp = tmp_path_factory.mktemp("spam-corpus")
    path = tmp / "pymavis.yaml"
    path.write_text(f"state_dir: {tmp}\nmydomain: example.com\nspam_cache: {{ttl_s: 0}}\n"
                    + spam_scanners_yaml(spamd) + "policy:\n  local_domains: [example.com]\n"
                    "  final_banned_destiny: pass   # so that every message reaches spamd\n")
    return load(str(path)), str(tmp)


def test_corpus_spam_and_ham_through_spamd(config):
    cfg, tmp = config
    policy = merge(cfg, ())
    files = corpus_files()
    assert len(files) > 250, files[:5]

    def one(path):
        with open(path, "rb") as fh:
            raw = fh.read()
        txn = txn_of(raw, tmp)
        try:
            result = pipeline.process(cfg, policy, txn)
        finally:
            txn.spool.close()
        view = next(r.spam for r in result.checks if r.name == "spam")
        ccats = {f.ccat for f in result.findings if f.check == "spam"}
        return path, body_has_gtube(raw), view, ccats

    problems = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for path, gtube, view, ccats in pool.map(one, files):
            name = os.path.relpath(path, CORPUS)
            if view.verdict is None:
                problems.append(f"{name}: no verdict ({view.note})")
            elif gtube and Ccat.SPAM not in ccats:
                problems.append(f"{name}: GTUBE in the body but not SPAM (score {view.verdict.score})")
    assert problems == []
