"""The README's examples are the tested ones: the plugin package is the installed fixture, the own-model
snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _block_after(marker: str) -> str:
    """The body of the fenced block that follows ``<!-- marker -->``, without its first comment line."""
    match = re.search(re.escape(f"<!-- {marker} -->") + r"\n```\w*\n(.*?)```", README, re.S)
    assert match, f"README has no block after <!-- {marker} -->"
    return match.group(1)


def test_plugin_example_is_the_tested_fixture():
    files = re.findall(r"<!-- example: (\S+) -->", README)
    assert len(files) == 2
    for name in files:
        body = _block_after(f"example: {name}")
        shown = body.split("\n", 1)[1]  # the first line names the file
        assert shown == (REPO / name).read_text(), f"the README's copy of {name} differs from the file"


def test_own_model_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_block_after("tested: own-model"), "README own-model", "exec"), scope)
    assert scope["images"].shape == (16, 1, 8, 8) and torch.isfinite(scope["images"]).all()
    assert (tmp_path / "my-model_ddim10.safetensors").is_file()
    assert scope["tuned"].model_id == "my-model" and scope["tuned"].nfe == 10
