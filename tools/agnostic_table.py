"""The model-agnostic page's results table from bench results files, for one tuning method (default ``ours``):
``python tools/agnostic_table.py [--method joint] docs/bench/model_agnostic/*.json``."""

import argparse
import json
import statistics

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--method", default="ours")
parser.add_argument("files", nargs="+")
args = parser.parse_args()

rows = {}
for f in args.files:
    for r in json.load(open(f))["records"]:
        rows.setdefault((r["model"], r["sampler"], r["nfe"]), []).append(r)
print(
    f"| model | sampler | NFE | untuned FD / traj | 500-NFE ref FD | `{args.method}` FD | gap closed | traj (each seed) "
    "| traj lower on every seed | identity |"
)
print("| --- | --- | ---: | --- | ---: | ---: | ---: | --- | --- | ---: |")
for (m, s, n), rs in sorted(rows.items()):
    base = [r for r in rs if r["method"] == "untuned"][0]
    tuned = sorted((r for r in rs if r["method"] == args.method), key=lambda r: r["seed"])
    if not tuned:
        continue
    fd = [r["fd"] for r in tuned]
    gap = [r["gap_closed"] for r in tuned if r["gap_closed"] is not None]
    tr = [r["traj_err"] for r in tuned]

    def sd(v):
        return statistics.stdev(v) if len(v) > 1 else 0.0

    gaps = f"{100 * statistics.fmean(gap):.0f} % ± {100 * sd(gap):.0f}" if gap else "no gap"
    lower = "yes" if all(t < base["traj_err_untuned"] for t in tr) else "no"
    print(
        f"| `{m}` | {s} | {n} | {base['fd_untuned']:.4g} / {base['traj_err_untuned']:.4f} | {base['fd_reference']:.4g} "
        f"| {statistics.fmean(fd):.4g} ± {sd(fd):.2g} | {gaps} | {', '.join(f'{t:.4f}' for t in tr)} | {lower} "
        f"| {sum(bool(r.get('identity')) for r in tuned)} of {len(tuned)} |"
    )
