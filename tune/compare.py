#!/usr/bin/env python3
"""Compare training logs: final val loss and speedups to a target loss, val loss plots, evaluation results.

python -m tune.compare logs/ab_20260101-120000 --markdown=table.md   # log files, or folders searched for *.txt
python -m tune.compare LOGS --baseline=ngpt --target=3.28 --out_dir=img --name=ab

Reads the logs of train_*.py (script:/hyperparameters:{json} lines, step:N/M key:value lines, and the
eval:NAME step:N tokens:N key:value lines that evals/ appends) and modded-nanogpt's (step lines only, grouped
by folder). A log cut short by a crash is fine. Runs with the same script and hyperparameters (apart from
IGNORED_KEYS) form a group whose seeds are repeats: curves are the mean over seeds, with a min..max band.
Evals: a table per eval name (each group at its latest evaluated step) and a plot of each metric vs tokens.
Speedup = tokens (or train_time) the baseline group needs to reach the target val loss / what a group needs,
interpolated linearly on the mean curves at their first crossing. Target: the baseline's final mean val loss.
"""
import argparse
import json
import math
import os
import re
import sys
from types import SimpleNamespace

import numpy as np

# Runs that differ only in these settings (repeats, bookkeeping, implementation) are one group.
IGNORED_KEYS = ["seed", "run_id", "log_dir", "resume", "save_every", "val_loss_every", "device", "compile", "kernels"]
STEP_RE = re.compile(r"step:(\d+)/(\d+)((?: \w+:\S+)*)")
EVAL_RE = re.compile(r"eval:(\w+) step:(\d+) tokens:(\d+)((?: \w+:\S+)*)")
# A log starts with the code of its run: each file under a SOURCE_HEADER line (before 2026-12: the script's source
# alone, no header), the last one ended by a line of 100 "=".
SOURCE_HEADER, SOURCE_END = "=" * 40 + " source:", "=" * 100
COLUMNS = ["group", "runs", "final val loss", "step_avg", "tokens/s", "tokens to target", "speedup (tokens)",
           "time to target", "speedup (time)"]


def number(text):
    """'12.5ms' -> 12.5, '45.1%' -> 45.1, 'cpu' -> None."""
    try:
        return float(text.rstrip("ms%"))
    except ValueError:
        return None


def fields(text):
    """' a:1 b:2.5ms c:x' -> {'a': 1.0, 'b': 2.5} (non-numeric values left out)."""
    pairs = (item.partition(":") for item in text.split())
    return {k: number(v) for k, _, v in pairs if number(v) is not None}


def parse_log(path):
    """One log file -> a run; run.total_steps is None if it has no step lines (not a training log)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")[:-1]   # the last line counts only once ended: a crash may have cut it short
    except OSError as e:
        sys.exit(f"error: cannot read {path} ({e.strerror}); pass training logs or folders of them")
    run = SimpleNamespace(path=path, script=None, hp=None, total_steps=None, step_avg_ms=None, tokens_per_s=None,
                          params=None, data_epoch=0,   # parameter count; loader wraps seen (data_epoch: lines)
                          val={},     # step -> (val_loss, train_time ms); a step logged again (resume) keeps the last
                          evals={})   # (name, settings, step) -> (tokens, {metric: value})
    in_source = False
    for line in lines:
        line = line.rstrip()
        if line.startswith(SOURCE_HEADER) or line == SOURCE_END:
            in_source = line != SOURCE_END
        elif in_source:  # code, which may hold look-alike lines
            continue
        elif line.startswith("script:"):
            run.script = line[len("script:"):]
        elif line.startswith("hyperparameters:{"):
            try:   # an older log's source, read as lines, may hold look-alike lines
                run.hp = json.loads(line[len("hyperparameters:"):])
            except ValueError:
                pass
        elif m := re.match(r"parameters:(\d+) ", line):
            run.params = int(m[1])
        elif m := re.match(r"data_epoch:(\d+) ", line):
            run.data_epoch = max(run.data_epoch, int(m[1]))
        elif m := STEP_RE.fullmatch(line):
            run.total_steps = int(m[2])
            f = fields(m[3])
            if math.isfinite(f.get("step_avg", math.nan)):
                run.step_avg_ms = f["step_avg"]
            if math.isfinite(f.get("tokens_per_s", math.nan)):
                run.tokens_per_s = f["tokens_per_s"]
            if "val_loss" in f:
                run.val[int(m[1])] = (f["val_loss"], f.get("train_time", math.nan))
        elif m := EVAL_RE.fullmatch(line):
            # integer values (ctx, n) say what was evaluated, the others are metrics
            raw = dict(item.partition(":")[::2] for item in m[4].split())
            settings = tuple((k, int(v)) for k, v in raw.items() if v.isdigit())
            metrics = {k: x for k, x in fields(m[4]).items() if not raw[k].isdigit()}
            run.evals[(m[1], settings, int(m[2]))] = (int(m[3]), metrics)
    return run


def load_runs(paths):
    """Files and folders -> the runs that have val losses, and notes about what was left out."""
    runs, notes = [], []
    for p in paths:
        if os.path.isfile(p):
            run = parse_log(p)
            if run.total_steps is None:
                sys.exit(f"error: {p} is not a training log (no step:N/M lines); pass logs of train_*.py or "
                         f"modded-nanogpt")
            runs.append(run)
            continue
        if not os.path.isdir(p):
            sys.exit(f"error: {p}: no such file or folder")
        found = [parse_log(os.path.join(root, name)) for root, _, names in sorted(os.walk(p))
                 for name in sorted(names) if name.endswith(".txt")]
        notes += [f"skipped {r.path}: not a training log" for r in found if r.total_steps is None]
        found = [r for r in found if r.total_steps is not None]
        if not found:
            sys.exit(f"error: {p}: no training logs (*.txt with step:N/M lines) in this folder")
        runs += found
    notes += [f"{r.path}: no val_loss lines yet; left out" for r in runs if not r.val]
    runs = [r for r in runs if r.val]
    if not runs:
        sys.exit("error: none of the logs has a val_loss line yet; wait for the first evaluation")
    return runs, notes


def mean_curve(runs):
    """At each val step of any run: mean/min/max over the runs' finite losses there, and the mean train_time (ms)."""
    rows = []
    for s in sorted(set().union(*[r.val for r in runs])):
        pts = np.array([r.val[s] for r in runs if s in r.val and math.isfinite(r.val[s][0])]).reshape(-1, 2)
        if len(pts):
            times = pts[np.isfinite(pts[:, 1]), 1]
            time_ms = times.mean() if len(times) else math.nan
            rows.append((s, pts[:, 0].mean(), pts[:, 0].min(), pts[:, 0].max(), time_ms))
    step, mean, lo, hi, time_ms = np.array(rows, dtype=float).reshape(-1, 5).T
    return SimpleNamespace(step=step, mean=mean, min=lo, max=hi, time_ms=time_ms)


def group_runs(runs, ignore=IGNORED_KEYS, tokens_per_step=None):
    """Groups in order of first appearance, labelled by script and the settings that tell apart groups of the same
    script (so a GPT vs nGPT A/B with one config each is labelled by script alone). modded-nanogpt logs have no
    settings: one group per folder (its records keep one experiment per folder)."""
    groups = {}
    for r in runs:
        if r.hp is None:
            key = (os.path.basename(os.path.dirname(os.path.abspath(r.path))), "{}")
        else:
            key = (r.script or "?", json.dumps({k: v for k, v in r.hp.items() if k not in ignore}, sort_keys=True))
        groups.setdefault(key, SimpleNamespace(script=key[0], cfg=json.loads(key[1]), runs=[])).runs.append(r)
    groups = list(groups.values())
    differ = set()
    for a in groups:
        for b in groups:
            if a.script == b.script:
                differ |= {k for k in a.cfg.keys() | b.cfg.keys() if a.cfg.get(k, a) != b.cfg.get(k, b)}
    for g in groups:
        g.label = " ".join([g.script] + [f"{k}={v}" for k, v in sorted(g.cfg.items()) if k in differ])
        hp = g.runs[0].hp or {}   # batch_size and sequence_length are part of the group key
        g.tokens_per_step = hp.get("batch_size", 0) * hp.get("sequence_length", 0) or tokens_per_step
        g.curve = mean_curve(g.runs)
        g.last = max(max(r.val) for r in g.runs)
        g.finals = np.array([r.val[g.last][0] for r in g.runs if g.last in r.val])
    return groups


def x_at_target(xs, losses, target):
    """First x (tokens or time) where the piecewise-linear curve reaches loss <= target; None if it never does."""
    pts = [(x, y) for x, y in zip(xs, losses) if math.isfinite(x) and math.isfinite(y)]
    for i, (x, y) in enumerate(pts):
        if y <= target:
            if i == 0:
                return x
            x0, y0 = pts[i - 1]
            return x0 + (y0 - target) / (y0 - y) * (x - x0)
    return None


def speedup(base_x, x):
    if x is None:
        return "not reached"
    if base_x is None:
        return "n/a (baseline: not reached or tokens unknown)"
    if x <= 0:
        return "inf"
    return f"{base_x / x:.3f}x"


def fmt_count(x):
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.4g}{unit}"
    return f"{x:.4g}"


def mean_std(values):
    a = np.asarray(values)
    return f"{a.mean():.4f}" + (f" ± {a.std(ddof=1):.4f}" if len(a) > 1 else "")


def summarize(groups, base, target):
    """One table row (a dict of strings) per group."""
    b = groups[base]
    b_tokens = None
    if b.tokens_per_step:
        b_tokens = x_at_target(b.curve.step * b.tokens_per_step, b.curve.mean, target)
    b_time = x_at_target(b.curve.time_ms, b.curve.mean, target)
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
               "tokens/s": fmt_count(np.mean(tokens_per_s)) if tokens_per_s else "-",
               "tokens to target": "n/a", "speedup (tokens)": "n/a (tokens/step unknown)"}
        if g.tokens_per_step:
            tokens = x_at_target(c.step * g.tokens_per_step, c.mean, target)
            row["tokens to target"] = "not reached" if tokens is None else fmt_count(tokens)
            row["speedup (tokens)"] = speedup(b_tokens, tokens)
        ms = x_at_target(c.time_ms, c.mean, target)
        row["time to target"] = "not reached"
        if ms is not None:
            row["time to target"] = f"{ms / 1000:.1f} s" if ms < 600e3 else f"{ms / 60e3:.1f} min"
        row["speedup (time)"] = speedup(b_time, ms)
        rows.append(row)
    return rows


def markdown(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def eval_names(groups):
    return list(dict.fromkeys(k[0] for g in groups for r in g.runs for k in r.evals))


def eval_points(g, name):
    """{settings: {step: [(tokens, metrics) of each run evaluated there]}} for one group and one eval."""
    out = {}
    for r in g.runs:
        for (n, settings, step), result in r.evals.items():
            if n == name:
                out.setdefault(settings, {}).setdefault(step, []).append(result)
    return out


def eval_table(groups, name):
    """Each group's results at its latest evaluated step (per setting such as ctx), mean ± std over seeds."""
    rows, columns = [], ["group", "runs", "step", "tokens"]
    for g in groups:
        for settings, by_step in eval_points(g, name).items():
            step = max(by_step)
            results = by_step[step]
            row = {"group": g.label, "runs": len(results), "step": step, "tokens": fmt_count(results[0][0])}
            row.update(settings)
            for k in dict.fromkeys(k for _, m in results for k in m):
                row[k] = mean_std([m[k] for _, m in results if k in m])
            columns += [k for k in row if k not in columns]
            rows.append(row)
    return markdown(rows, columns)


def plot_val(plt, groups, out_dir, prefix, target, kinds=("step", "tokens", "time")):
    """<out_dir>/<prefix>_val_vs_<kind>.png for each of kinds (step, tokens, time); returns (paths, notes)."""
    paths, notes = [], []
    xlabels = {"step": "training step", "tokens": "training tokens", "time": "training time (s)"}
    for kind in kinds:
        xlabel = xlabels[kind]
        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
        lo, hi = [target], [target]
        for i, g in enumerate(groups):
            c = g.curve
            if kind == "tokens" and not g.tokens_per_step:
                notes.append(f"tokens plot: skipped {g.label} (tokens per step unknown; pass --tokens_per_step)")
                continue
            x = {"step": c.step, "tokens": c.step * (g.tokens_per_step or 0), "time": c.time_ms / 1000}[kind]
            ok = np.isfinite(x)
            if not ok.any():
                continue
            ax.plot(x[ok], c.mean[ok], color=f"C{i % 10}", lw=1.6, label=f"{g.label} (n={len(g.runs)})")
            if len(g.runs) > 1:
                ax.fill_between(x[ok], c.min[ok], c.max[ok], color=f"C{i % 10}", alpha=0.2, lw=0)
            later = ok & (x > 0)   # the y range leaves out the loss at init, which would squash the rest
            hi.append(c.max[later if later.sum() >= 2 else ok].max())
            lo.append(c.min[ok].min())
        if len(hi) == 1:
            plt.close(fig)
            continue
        pad = 0.05 * (max(hi) - min(lo)) or 0.1
        ax.set_ylim(min(lo) - pad, max(hi) + pad)
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.4f}")
        ax.set(xlabel=xlabel, ylabel="validation loss (nats/token)",
               title=f"{prefix}: val loss vs {kind} (line: mean over seeds, band: min..max)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, f"{prefix}_val_vs_{kind}.png"))
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths, notes


def plot_evals(plt, groups, out_dir, prefix):
    """<out_dir>/<prefix>_eval_<name>.png: each metric vs the checkpoint's training tokens, mean over seeds."""
    paths = []
    for name in eval_names(groups):
        lines = [(g, s, by_step) for g in groups for s, by_step in eval_points(g, name).items()]
        results = [result for _, _, by_step in lines for res in by_step.values() for result in res]
        metrics = list(dict.fromkeys(k for _, m in results for k in m))
        settings = [s for _, s, _ in lines]   # in labels only where they vary (ctx of extrapolate, not n)
        shown = {k for s in settings for k, _ in s if len({dict(t).get(k) for t in settings}) > 1}
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), dpi=120, squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for i, (g, settings, by_step) in enumerate(lines):
                pts = [(res[0][0], np.mean([m[metric] for _, m in res if metric in m]))
                       for _, res in sorted(by_step.items()) if any(metric in m for _, m in res)]
                label = " ".join([g.label] + [f"{k}={v}" for k, v in settings if k in shown])
                if pts:
                    ax.plot(*zip(*pts), "o-", color=f"C{i % 10}", label=label)
            ax.set(xlabel="training tokens", ylabel=metric, title=f"{name} {metric}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{prefix}: {name} (mean over seeds)")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, f"{prefix}_eval_{name}.png"))
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


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

    runs, notes = load_runs(args.paths)
    groups = group_runs(runs, IGNORED_KEYS + args.ignore, args.tokens_per_step)
    base = pick_baseline(groups, args.baseline)
    target = args.target
    if target is None:
        target = float(groups[base].finals.mean())
    how = "--target" if args.target is not None else "baseline final mean val loss"
    header = f"baseline: {groups[base].label}; target val loss: {target:.4f} ({how})"
    table = markdown(summarize(groups, base, target), COLUMNS)
    evals = [(f"eval {name}: each group at its latest evaluated step, mean ± std over seeds", eval_table(groups, name))
             for name in eval_names(groups)]
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
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        os.makedirs(args.out_dir, exist_ok=True)
        paths, more = plot_val(plt, groups, args.out_dir, args.name, target)
        paths += plot_evals(plt, groups, args.out_dir, args.name)
        notes += more
        print("".join(f"wrote {path}\n" for path in paths), end="")
    print("".join(f"note: {n}\n" for n in dict.fromkeys(notes)), end="")


if __name__ == "__main__":
    main()
