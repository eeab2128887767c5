"""docs/settings.md names every setting the schema knows."""

import os

from conftest import ROOT
from pymavis.config.schema import GLOBAL_SETTINGS, POLICY_SETTINGS


def test_settings_reference_lists_every_setting():
    text = open(os.path.join(ROOT, "docs", "settings.md"), encoding="utf-8").read()
    missing = [name for name in [*GLOBAL_SETTINGS, *POLICY_SETTINGS] if f"`{name}`" not in text]
    assert missing == []
