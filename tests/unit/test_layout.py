"""Guards for the layout the user fixed: milter/ is a source root, never a package."""

import os

from conftest import ROOT


def test_import_milter_is_pymilters_c_module():
    import milter
    assert hasattr(milter, "P_NR_CONN")
    assert not os.path.exists(os.path.join(ROOT, "milter", "__init__.py"))


def test_only_the_adapter_imports_pymilter():
    pkg = os.path.join(ROOT, "milter", "pymavis")
    offenders = []
    for dirpath, _, files in os.walk(pkg):
        for name in files:
            if name.endswith(".py") and name != "adapter.py":
                text = open(os.path.join(dirpath, name), encoding="utf-8").read()
                if "import Milter" in text or "import milter" in text:
                    offenders.append(name)
    assert offenders == []
