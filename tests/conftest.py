"""Shared fixtures. tests/ is on sys.path (rootdir conftest), so `harness` imports work."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "milter")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
CORPUS = os.path.normpath(os.path.join(ROOT, "..", "shared", "corpus"))


import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def public_tmp():
    """A temp dir the `postfix` user can reach (pytest's tmp_path parents are mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pymavis-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def clamd(tmp_path_factory):
    """One real clamd for the session (harness/clamd.py; starts in ~0.1 s)."""
    from harness.clamd import ClamdProcess
    with ClamdProcess(str(tmp_path_factory.mktemp("clamd"))) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def spamd(tmp_path_factory):
    """One real spamd for the session (harness/spamd.py; starts in about a second)."""
    from harness.spamd import SpamdProcess
    with SpamdProcess(str(tmp_path_factory.mktemp("spamd"))) as daemon:
        yield daemon


def spam_scanners_yaml(spamd, kind: str = "unix") -> str:
    """The `spam_scanners:` lines of a pymavis config using the session's spamd."""
    return f'spam_scanners:\n  - {{name: spamd, socket: "{spamd.socket_spec(kind)}", timeout_s: 60}}\n'


def scanners_yaml(clamd, method: str = "fildes") -> str:
    """The `av_scanners:` lines of a pymavis config using the session's clamd."""
    socket = clamd.socket_spec("unix" if method == "fildes" else "inet")
    return f'av_scanners:\n  - {{name: clamd, socket: "{socket}", method: {method}, timeout_s: 30}}\n'


@pytest.fixture(scope="module")
def sink():
    """An SMTP sink for Postfix to relay to: one per module, so each module sees only its mail."""
    from harness.sink import SMTPSink
    with SMTPSink() as s:
        yield s


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster (unix socket only) for the whole run."""
    from harness.postgres import PostgresCluster
    with PostgresCluster() as cluster:
        yield cluster
