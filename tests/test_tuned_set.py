"""Tuned-set files: round trip, validation at load, mismatches named, atomic no-clobber writes."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from timetuner_plugins.sets.tuned_set import TunedSet, TunedSetError, TunedSetMismatch

from helpers import make_set


def test_round_trip(tmp_path):
    ts = make_set()
    path = ts.save(tmp_path / "a.safetensors")
    back = TunedSet.load(path)
    for name in ("sigmas", "eval_sigmas", "tau"):
        assert torch.equal(getattr(back, name), getattr(ts, name))
    assert (back.model_id, back.sampler, back.schedule, back.seed, back.nfe, back.steps) == (
        "m",
        "ddim",
        "karras",
        3,
        4,
        4,
    )
    assert back.sampler_options == {"eta": 0.0} and back.metrics_after == {"fd": 1.0}
    assert back.created and back.library_version
    assert torch.equal(back.lookup().ratio, ts.lookup().ratio)


def test_never_overwrites_unless_asked(tmp_path):
    path = make_set().save(tmp_path / "a.safetensors")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_set(seed=9).save(path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    make_set(seed=9).save(path, overwrite=True)
    assert TunedSet.load(path).seed == 9


def _write(path, tensors, meta):
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda t, m: t.update(tau=torch.tensor([1.0, float("nan"), 1.0, 1.0])), "NaN or infinite"),
        (lambda t, m: t.update(tau=torch.tensor([1.0, float("inf"), 1.0, 1.0])), "NaN or infinite"),
        (lambda t, m: t.update(tau=torch.tensor([1.0, -1.0, 1.0, 1.0])), "non-positive"),
        (lambda t, m: t.update(sigmas=torch.tensor([1.0, 10.0, 1.0, 0.1, 0.0])), "not strictly decreasing"),
        (lambda t, m: t.pop("tau"), "missing"),
        (lambda t, m: t.update(extra=torch.ones(2)), "unexpected"),
        (lambda t, m: t.update(tau=torch.ones(4, dtype=torch.int32)), "dtype"),
        (lambda t, m: m.update(format_version="7"), "newer than"),
        (lambda t, m: m.pop("sampler"), "lacks metadata"),
        (lambda t, m: m.update(nfe="9"), "metadata says"),
        (lambda t, m: m.update(seed="x"), "not an integer"),
    ],
)
def test_invalid_files_are_refused_with_a_named_problem(tmp_path, mutate, match):
    ts = make_set()
    tensors = {k: getattr(ts, k).clone() for k in ("sigmas", "eval_sigmas", "tau")}
    meta = ts.metadata()
    mutate(tensors, meta)
    path = _write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(TunedSetError, match=match) as err:
        TunedSet.load(path)
    assert str(path) in str(err.value)


def test_corrupt_truncated_and_foreign_files(tmp_path):
    good = make_set().save(tmp_path / "good.safetensors").read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "tiny": b"\x01\x02",
        "garbage": b"\xff" * 64,
        "huge_header": struct.pack("<Q", 2**40) + b"{}",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(TunedSetError):
            TunedSet.load(p)
    with pytest.raises(TunedSetError, match="no such file"):
        TunedSet.load(tmp_path / "missing.safetensors")
    with pytest.raises(TunedSetError, match="directory"):
        TunedSet.load(tmp_path)
    p = _write(tmp_path / "model.safetensors", {"w": torch.ones(3)}, {})
    with pytest.raises(TunedSetError, match="not a tuned set"):
        TunedSet.load(p)


def test_mismatch_is_named_and_force_overrides():
    ts = make_set()

    class M:
        fingerprint, model_id = "cd" * 32, "other"

    with pytest.raises(TunedSetMismatch) as err:
        ts.check(model=M(), sampler="heun", sigmas=torch.tensor([80.0, 5.0, 0.0]), nfe=7)
    msg = str(err.value)
    for part in (
        "model 'm'",
        "sampler 'ddim' but the run uses 'heun'",
        "karras schedule",
        "4 network evaluations",
        "--force",
    ):
        assert part in msg
    with pytest.warns(UserWarning, match="applied anyway"):
        problems = ts.check(sampler="heun", force=True)
    assert len(problems) == 1
    assert ts.check(sampler="ddim", sigmas=ts.sigmas * (1 + 1e-6), nfe=4) == []
    json.dumps(ts.summary())


@pytest.mark.parametrize(
    "before,after,said",
    [
        ({"fd": 140.0, "traj_err": 0.09}, {"fd": 120.0, "traj_err": 0.08}, "improves FD and trajectory error"),
        ({"fd": 140.0, "traj_err": 0.0933}, {"fd": 124.0, "traj_err": 0.0950}, "improves FD, worsens trajectory error"),
        ({"fd": 97.6, "traj_err": 0.036}, {"fd": 97.63, "traj_err": 0.039}, "keeps FD, worsens trajectory error"),
        ({"fd": None, "traj_err": 0.2}, {"fd": None, "traj_err": 0.1}, "improves trajectory error"),
        ({}, {}, None),
    ],
)
def test_verdict_names_a_trade_off(before, after, said):
    from timetuner_plugins.sets.tuned_set import verdict

    assert verdict(before, after) == said
