"""Shared fixtures. tests/ is on sys.path (rootdir conftest), so `harness` imports work."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "milter")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
CORPUS = os.path.normpath(os.path.join(ROOT, "..", "shared", "corpus"))
