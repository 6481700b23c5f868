"""``python -m timetuner_plugins.bundled.training NAME [--steps N] [--seed S] [--out FILE]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import FILES, WEIGHTS
from . import digits, held_out

TRAINERS = {
    "digits-ddpm": digits.train_ddpm,
    "digits-ddpm-small": digits.train_ddpm_small,
    "digits-edm": digits.train_edm,
    "digits-flow": digits.train_flow,
    "gmm-digits": lambda out, steps=None, **kw: digits.fit_gmm(out, **kw),
    "digits-classifier": digits.train_classifier,
    "digits-features": digits.train_features,
    "heldout-dit-flow": held_out.train_dit_flow,
    "heldout-resnet-v": held_out.train_resnet_v,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m timetuner_plugins.bundled.training", description=__doc__)
    parser.add_argument("name", choices=[*TRAINERS, "all"])
    parser.add_argument("--steps", type=int, help="optimisation steps (default: the shipped recipe)")
    parser.add_argument("--seed", type=int, help="random seed (default: the shipped recipe's)")
    parser.add_argument("--out", type=Path, help="output file (default: the bundled weights path)")
    args = parser.parse_args(argv)
    names = list(TRAINERS) if args.name == "all" else [args.name]
    if args.out and len(names) > 1:
        parser.error("--out needs a single model name")
    for name in names:
        kwargs = {} if args.seed is None else {"seed": args.seed}
        if args.steps:
            kwargs["steps"] = args.steps
        out = args.out or WEIGHTS / FILES[name]
        TRAINERS[name](out, **kwargs)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
