"""The README's complete example configuration must load as written."""

import os
import re

from conftest import ROOT
from pymavis.config import load


def test_readme_example_config_loads(tmp_path):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    main = next(b for b in blocks if "daemon_name_policy" in b)
    banks = next(b for b in blocks if b.startswith("ORIGINATING:"))
    (tmp_path / "banks").mkdir()
    (tmp_path / "banks" / "banks.yaml").write_text(banks)
    (tmp_path / "bad_header_lovers.txt").write_text("# one address per line\npostmaster@example.com\n")
    (tmp_path / "pymavis.yaml").write_text(main)
    config = load(str(tmp_path / "pymavis.yaml"))
    assert {"ORIGINATING", "PARTNERS", "SUBMISSION_PORT", "MYNETS"} <= set(config.banks)
    policy = config.default_policy
    assert policy["message_size_limit"].lookup_address("bigfiles@example.com", is_local=True).value == 104857600
    assert policy["message_size_limit"].lookup_address("x@example.net", is_local=True).value == 5242880
    assert policy["message_size_limit"].lookup_address("x@else.org", is_local=False).value == 26214400
