#!/usr/bin/env python3
"""Compare training logs: final val loss and speedups to a target loss, val loss plots, evaluation results.

python -m tune.compare logs/ab_20260101-120000 --markdown=table.md   # log files, or folders searched for *.txt
python -m tune.compare LOGS --baseline=ngpt --target=3.28 --out_dir=img --name=ab

Reads the logs of train_*.py (script:/hyperparameters:{json} lines, step:N/M key:value lines, and the
eval:NAME step:N tokens:N key:value lines that evals/ appends) and modded-nanogpt's (step lines only, grouped
by folder); tune/curves.py says which runs are repeats over seeds. Curves are the mean over seeds, with a
min..max band. Evals: a table per eval name (each group at its latest evaluated step) and a plot of each metric
vs tokens.
Speedup = tokens (or train_time) the baseline group needs to reach the target val loss / what a group needs,
interpolated linearly on the mean curves at their first crossing. Target: the baseline's final mean val loss.
"""
import argparse
import os
import sys

import numpy as np

from tune import curves, plots

COLUMNS = ["group", "runs", "final val loss", "step_avg", "tokens/s", "tokens to target", "speedup (tokens)",
           "time to target", "speedup (time)"]


def speedup_text(base_x, x):
    """The speedup as table text: base_x / x, or why there is none."""
    if x is None:
        return "not reached"
    if base_x is None:
        return "n/a (baseline: not reached or tokens unknown)"
    if x <= 0:
        return "inf"
    return f"{base_x / x:.3f}x"


def mean_std(values):
    a = np.asarray(values)
    return f"{a.mean():.4f}" + (f" ± {a.std(ddof=1):.4f}" if len(a) > 1 else "")


def summarize(groups, base, target):
    """One table row (a dict of strings) per group."""
    b = groups[base]
    b_tokens = None
    if b.tokens_per_step:
        b_tokens = curves.x_at_target(b.curve.step * b.tokens_per_step, b.curve.mean, target)
    b_time = curves.x_at_target(b.curve.time_ms, b.curve.mean, target)
    rows = []
    for g in groups:
        c = g.curve
        seeds = [str(r.hp["seed"]) for r in g.runs if r.hp and r.hp.get("seed") is not None]
        runs = str(len(g.runs)) + (f" (seeds {','.join(seeds)})" if seeds else "")
        if len(g.finals) < len(g.runs):
            runs += f", {len(g.runs) - len(g.finals)} partial"
        total = max(r.total_steps for r in g.runs)
        if g.last < total:
            runs += f", stopped at {g.last}/{total}"
        step_avg = [r.step_avg_ms for r in g.runs if r.step_avg_ms is not None]
        tokens_per_s = [r.tokens_per_s for r in g.runs if r.tokens_per_s is not None]
        row = {"group": g.label, "runs": runs, "final val loss": mean_std(g.finals),
               "step_avg": f"{np.mean(step_avg):.1f} ms" if step_avg else "-",
               "tokens/s": curves.fmt_count(np.mean(tokens_per_s)) if tokens_per_s else "-",
               "tokens to target": "n/a", "speedup (tokens)": "n/a (tokens/step unknown)"}
        if g.tokens_per_step:
            tokens = curves.x_at_target(c.step * g.tokens_per_step, c.mean, target)
            row["tokens to target"] = "not reached" if tokens is None else curves.fmt_count(tokens)
            row["speedup (tokens)"] = speedup_text(b_tokens, tokens)
        ms = curves.x_at_target(c.time_ms, c.mean, target)
        row["time to target"] = "not reached"
        if ms is not None:
            row["time to target"] = f"{ms / 1000:.1f} s" if ms < 600e3 else f"{ms / 60e3:.1f} min"
        row["speedup (time)"] = speedup_text(b_time, ms)
        rows.append(row)
    return rows


def markdown(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def eval_table(groups, name):
    """Each group's results at its latest evaluated step (per setting such as ctx), mean ± std over seeds."""
    rows, columns = [], ["group", "runs", "step", "tokens"]
    for g in groups:
        for settings, by_step in curves.eval_points(g, name).items():
            step = max(by_step)
            results = by_step[step]
            row = {"group": g.label, "runs": len(results), "step": step, "tokens": curves.fmt_count(results[0][0])}
            row.update(settings)
            for k in dict.fromkeys(k for _, m in results for k in m):
                row[k] = mean_std([m[k] for _, m in results if k in m])
            columns += [k for k in row if k not in columns]
            rows.append(row)
    return markdown(rows, columns)


def pick_baseline(groups, sub):
    """The group labelled sub, else the first whose label, else whose log path, contains sub; the first if None."""
    if sub is None:
        return 0
    for match in (lambda g: g.label == sub, lambda g: sub in g.label, lambda g: any(sub in r.path for r in g.runs)):
        for i, g in enumerate(groups):
            if match(g):
                return i
    sys.exit(f"error: --baseline {sub!r} matches no group; groups: {', '.join(repr(g.label) for g in groups)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="LOG_OR_FOLDER", help="log files, or folders searched for *.txt")
    p.add_argument("--baseline", metavar="SUBSTRING", help="baseline group (default: the first group found)")
    p.add_argument("--target", type=float, metavar="X", help="target val loss (default: baseline's final mean)")
    p.add_argument("--tokens_per_step", type=int, metavar="N", help="for logs that do not say (modded-nanogpt's)")
    p.add_argument("--out_dir", default="img", help="folder for the plots (default: img)")
    p.add_argument("--name", default="ab", help="plot file prefix (default: ab)")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown to FILE")
    p.add_argument("--no_plot", action="store_true", help="only print the tables")
    p.add_argument("--ignore", action="append", default=[], metavar="KEY",
                   help="one more hyperparameter to ignore when grouping runs (repeatable)")
    args = p.parse_args(argv)
    if args.tokens_per_step is not None and args.tokens_per_step <= 0:
        sys.exit("error: --tokens_per_step must be a positive integer")

    runs, notes = curves.load_runs(args.paths)
    groups = curves.group_runs(runs, curves.IGNORED_KEYS + args.ignore, args.tokens_per_step)
    base = pick_baseline(groups, args.baseline)
    target = args.target
    if target is None:
        target = float(groups[base].finals.mean())
    how = "--target" if args.target is not None else "baseline final mean val loss"
    header = f"baseline: {groups[base].label}; target val loss: {target:.4f} ({how})"
    table = markdown(summarize(groups, base, target), COLUMNS)
    evals = [(f"eval {name}: each group at its latest evaluated step, mean ± std over seeds", eval_table(groups, name))
             for name in curves.eval_names(groups)]
    print(header)
    print(table, end="")
    for title, t in evals:
        print(f"\n{title}\n{t}", end="")
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table + "\n" + header[0].upper() + header[1:] + ".\n")
            f.writelines(f"\n{title[0].upper() + title[1:]}.\n\n{t}" for title, t in evals)
        print(f"wrote {args.markdown}")
    if not args.no_plot:
        os.makedirs(args.out_dir, exist_ok=True)
        paths, more = plots.plot_val(groups, args.out_dir, args.name, target)
        paths += plots.plot_evals(groups, args.out_dir, args.name)
        notes += more
        print("".join(f"wrote {path}\n" for path in paths), end="")
    print("".join(f"note: {n}\n" for n in dict.fromkeys(notes)), end="")


if __name__ == "__main__":
    main()
