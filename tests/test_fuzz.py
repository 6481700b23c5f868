"""A short fuzzing run in CI (the long one: ``python tests/fuzz_tuned_sets.py --cases 1000``)."""

from fuzz_tuned_sets import SEEDS, outcome, run


def test_seed_files_are_valid():
    assert [outcome(seed) for seed in SEEDS] == ["valid", "valid"]


def test_mutated_tuned_sets_never_crash_the_loader():
    tally = run(cases=200, seed=None)
    assert not [k for k in tally if k.startswith("crash")], tally
    assert tally["refused"] > 0 and sum(tally.values()) >= 150
