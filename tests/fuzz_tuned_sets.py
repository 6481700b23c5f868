"""Fuzzing of tuned-set loading: mutate valid files (bytes, header JSON, metadata, tensors).

Every case must end in a valid load or in ``TunedSetError``; anything else is a crash.
``python tests/fuzz_tuned_sets.py --cases 1000`` runs a long campaign and prints the tally;
``tests/test_fuzz.py`` runs a short one in CI.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections import Counter

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timetuner_plugins.sets.tuned_set import TunedSet, TunedSetError


def seed_set(dode: bool = False) -> TunedSet:
    """A valid τ-only set (format 1), or with D-ODE λ's (format 2)."""
    sigmas = torch.tensor([80.0, 12.0, 2.0, 0.3, 0.02, 0.0])
    ev = torch.cat([sigmas[:-2], sigmas[1:-1]]).sort(descending=True).values  # a two-evaluation sampler
    return TunedSet(
        sigmas=sigmas,
        eval_sigmas=ev,
        tau=ev * 1.05,
        model_id="m",
        model_fingerprint="ab" * 32,
        sampler="heun",
        schedule="karras",
        objective="energy",
        mode="joint",
        iterations=5,
        seed=1,
        sampler_options={"s_churn": 0.0},
        metrics_before={"fd": 3.0},
        metrics_after={"fd": 2.0},
        extra={"selection": {"fallback_identity": False}},
        dode_lambda=torch.linspace(0.0, 0.3, len(ev)) if dode else None,
    )


SEEDS = (seed_set().to_bytes(), seed_set(dode=True).to_bytes())
SEED = SEEDS[0]


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.sampled_from([0.0, -1.0, 1e-30, 1e30])


@st.composite
def byte_mutation(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "length"]))
    pos = draw(st.integers(0, len(data) - 1))
    if op == "flip":
        data[pos] ^= draw(st.integers(1, 255))
    elif op == "truncate":
        del data[pos:]
    elif op == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    elif op == "delete":
        del data[pos : pos + draw(st.integers(1, 64))]
    else:
        data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(data)


@st.composite
def header_mutation(draw) -> bytes:
    header, body = split(draw(st.sampled_from(SEEDS)))
    names = [k for k in header if k != "__metadata__"]
    op = draw(
        st.sampled_from(
            ["dtype", "shape", "offsets", "drop", "add", "meta_value", "meta_drop", "meta_json", "meta_type", "version"]
        )
    )
    meta = header["__metadata__"]
    if op == "dtype":
        header[draw(st.sampled_from(names))]["dtype"] = draw(
            st.sampled_from(["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "XX", ""])
        )
    elif op == "shape":
        header[draw(st.sampled_from(names))]["shape"] = draw(st.lists(st.integers(-3, 40), max_size=3))
    elif op == "offsets":
        header[draw(st.sampled_from(names))]["data_offsets"] = draw(st.lists(st.integers(-8, 400), max_size=3))
    elif op == "drop":
        del header[draw(st.sampled_from(names))]
    elif op == "add":
        header[draw(st.text(max_size=12))] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    elif op == "meta_value":
        meta[draw(st.sampled_from(sorted(meta)))] = draw(st.text(max_size=40))
    elif op == "meta_drop":
        del meta[draw(st.sampled_from(sorted(meta)))]
    elif op == "meta_json":
        key = draw(st.sampled_from(["sampler_options", "metrics_before", "metrics_after", "extra"]))
        meta[key] = json.dumps(draw(JSONISH))
    elif op == "meta_type":
        meta[draw(st.sampled_from(sorted(meta)))] = draw(JSONISH)
    else:
        meta["format_version"] = str(draw(st.integers(-5, 10**12)))
    return join(header, body)


@st.composite
def tensor_mutation(draw) -> bytes:
    dode = draw(st.booleans())
    ts = seed_set(dode)
    tensors = ts.tensors()
    name = draw(st.sampled_from(sorted(tensors)))
    n = draw(st.integers(0, 12))
    values = torch.tensor(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype=torch.float32)
    tensors[name] = values
    header, body = split(SEEDS[dode])
    from safetensors.torch import save

    rebuilt = save({k: v.contiguous() for k, v in tensors.items()}, metadata=header["__metadata__"])
    if draw(st.booleans()):  # keep the metadata's counts consistent with the new lengths
        h, b = split(rebuilt)
        h["__metadata__"].update(nfe=str(len(tensors["tau"])), steps=str(max(len(tensors["sigmas"]) - 1, 0)))
        rebuilt = join(h, b)
    return rebuilt


MUTATIONS = st.one_of(byte_mutation(), header_mutation(), tensor_mutation())


def outcome(data: bytes) -> str:
    """'valid', 'refused' (TunedSetError) — or raises: a crash."""
    try:
        loaded = TunedSet.from_bytes(data, "fuzz.safetensors")
    except TunedSetError:
        return "refused"
    loaded.lookup()
    json.dumps(loaded.summary())
    TunedSet.from_bytes(loaded.to_bytes())  # what loads must also save and load again
    return "valid"


def run(cases: int, seed: int) -> Counter:
    tally: Counter = Counter()

    @settings(
        max_examples=cases,
        database=None,
        derandomize=seed is None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(MUTATIONS)
    def case(data: bytes) -> None:
        try:
            tally[outcome(data)] += 1
        except Exception as exc:  # a crash: counted, then re-raised so hypothesis shrinks and reports it
            tally[f"crash: {type(exc).__name__}"] += 1
            raise

    if seed is not None:
        import random

        random.seed(seed)
    try:
        case()
    except Exception as exc:  # hypothesis re-raises the shrunk failing case: keep it for the report
        tally.setdefault("crash: " + type(exc).__name__, 1)
        tally["first crash"] = 0
        run.failure = f"{type(exc).__name__}: {exc}"
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    tally = run(args.cases, args.seed)
    total = sum(tally.values())
    crashes = sum(v for k, v in tally.items() if k.startswith("crash"))
    print(
        f"cases tried: {total}; ended in our own error: {tally['refused']}; valid loads: {tally['valid']}; "
        f"crashes: {crashes}"
    )
    if crashes:
        print(f"first crash (shrunk): {getattr(run, 'failure', '?')}")
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
