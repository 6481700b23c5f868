"""The public API: every name resolves from the package, and docs/api.md lists exactly those names."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import timetuner_plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.mark.parametrize("name", timetuner_plugins.__all__)
def test_public_name_resolves(name):
    assert getattr(timetuner_plugins, name) is not None
    assert name in dir(timetuner_plugins)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Tunr'"):
        timetuner_plugins.Tunr  # noqa: B018


def test_docs_list_exactly_the_public_names():
    documented = set()
    for cell in re.findall(r"^\| (.+?) \|", DOC.read_text(), flags=re.M):
        documented |= set(re.findall(r"`([A-Za-z_]+)", cell))
    public = set(timetuner_plugins.__all__) - {"__version__"}
    assert public - documented == set(), "public names missing from docs/api.md"
    assert {n for n in documented - public if not n.startswith("timetuner_plugins")} == set(), (
        "docs/api.md lists names the package does not export"
    )


def test_importing_the_package_loads_no_torch():
    code = "import sys, timetuner_plugins; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
