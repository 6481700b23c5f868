"""Shared fixtures: a private reference cache and the bundled models, loaded once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import helpers
import registry


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TIMETUNER_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def gmm():
    return registry.load_model("gmm-digits")


@pytest.fixture(scope="session")
def ddpm():
    return registry.load_model("digits-ddpm")


@pytest.fixture(scope="session")
def edm():
    return registry.load_model("digits-edm")


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def doc_block():
    """The body of the fenced code block after ``<!-- marker -->`` in the README or a page of docs/ (each marker
    appears once), so documented examples are the tested ones."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

    def find(marker: str) -> str:
        found = [
            m.group(1)
            for page in pages
            for m in re.finditer(re.escape(f"<!-- {marker} -->") + r"\n```\w*\n(.*?)```", page.read_text(), re.S)
        ]
        assert len(found) == 1, f"<!-- {marker} --> should precede exactly one code block, found {len(found)}"
        return found[0]

    return find


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ComfyUI server (COMFYUI_PATH) with this repository as a custom node pack and two user sets."""
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "timetuner").symlink_to(helpers.REPO)
    user = base / "models" / "timetuner"
    user.mkdir(parents=True)
    good = helpers.make_set()
    good.save(user / "valid.safetensors")
    data = bytearray((user / "valid.safetensors").read_bytes())
    (user / "corrupt.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    srv = helpers.Server(base)
    yield srv
    srv.stop()
