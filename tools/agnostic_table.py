"""The model-agnostic page's results table from bench results files:
``python tools/agnostic_table.py docs/bench/model_agnostic/*.json``."""

import json
import statistics
import sys

rows = {}
for f in sys.argv[1:]:
    for r in json.load(open(f))["records"]:
        rows.setdefault((r["model"], r["sampler"], r["nfe"]), []).append(r)
print(
    "| model | sampler | NFE | untuned FD / traj | 500-NFE ref FD | `ours` FD | gap closed | traj (each seed) | traj lower on every seed | identity |"
)
print("| --- | --- | ---: | --- | ---: | ---: | ---: | --- | --- | ---: |")
for (m, s, n), rs in sorted(rows.items()):
    base = [r for r in rs if r["method"] == "untuned"][0]
    ours = [r for r in rs if r["method"] == "ours"]
    if not ours:
        continue
    fd = [r["fd"] for r in ours]
    gap = [r["gap_closed"] for r in ours if r["gap_closed"] is not None]
    tr = [r["traj_err"] for r in ours]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    gaps = f"{100 * statistics.fmean(gap):.0f} % ± {100 * sd(gap):.0f}" if gap else "no gap"
    print(
        f"| `{m}` | {s} | {n} | {base['fd_untuned']:.4g} / {base['traj_err_untuned']:.4f} | {base['fd_reference']:.4g} | {statistics.fmean(fd):.4g} ± {sd(fd):.2g} | {gaps} | "
        + ", ".join(f"{t:.4f}" for t in tr)
        + f" | {'yes' if all(t < base['traj_err_untuned'] for t in tr) else 'no'} | {sum(bool(r.get('identity')) for r in ours)} of {len(ours)} |"
    )
