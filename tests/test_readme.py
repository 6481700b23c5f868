"""The documented examples are the tested ones: the plugin package is the installed fixture, the own-model
snippet runs as written."""

from __future__ import annotations

import pytest

import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_plugin_example_is_the_tested_fixture(doc_block):
    files = re.findall(r"<!-- example: (\S+) -->", (REPO / "docs" / "plugins.md").read_text())
    assert len(files) == 2
    for name in files:
        shown = doc_block(f"example: {name}").split("\n", 1)[1]  # the first line names the file
        assert shown == (REPO / name).read_text(), f"the documented copy of {name} differs from the file"


@pytest.mark.slow
def test_own_model_snippet_runs(tmp_path, monkeypatch, doc_block):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(doc_block("tested: own-model"), "README own-model", "exec"), scope)
    assert scope["images"].shape == (16, 1, 8, 8) and torch.isfinite(scope["images"]).all()
    assert (tmp_path / "my-model_ddim10.safetensors").is_file()
    assert scope["tuned"].model_id == "my-model" and scope["tuned"].nfe == 10


def test_every_documentation_link_resolves():
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
