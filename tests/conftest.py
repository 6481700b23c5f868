"""Shared fixtures: a private reference cache and the bundled models, loaded once."""

from __future__ import annotations

import pytest
import torch

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

