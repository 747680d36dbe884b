#!/usr/bin/env python3
"""Compare training logs: val-loss plots and a speedup table.

Usage:
  python records/compare.py LOG_OR_FOLDER [LOG_OR_FOLDER ...] [--baseline SUBSTRING]
      [--target X] [--tokens_per_step N] [--out_dir img] [--name ab] [--markdown FILE]
      [--band minmax|std] [--x_scale auto|log|linear] [--no_plot] [--ignore KEY]

Reads our training logs (script:/hyperparameters:{json} lines followed by step lines, see
DESIGN.md "Log format") and modded-nanogpt logs (step lines only). Folders are searched
recursively for *.txt logs. Runs are grouped by script + hyperparameters (ignoring seed, run_id
and other settings that do not change the experiment); the seeds of a group are repeats.

Outputs: <out_dir>/<name>_val_vs_{step,tokens,time}.png (mean over seeds, band over seeds) and a
table (stdout, and Markdown with --markdown) with final val loss, step_avg, tokens/s and the
sample-efficiency / wall-clock speedup to reach a target val loss relative to a baseline group.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np

# Hyperparameters that do not define the experiment (repeats / bookkeeping / implementation).
IGNORED_KEYS = ("seed", "run_id", "log_dir", "resume", "save_every", "val_loss_every",
                "device", "compile", "kernels")

_STEP_RE = re.compile(r"^step:(\d+)/(\d+)((?: [A-Za-z_][A-Za-z0-9_]*:\S+)*)\s*$")
_VALUE_RE = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+|nan|inf))([A-Za-z%]*)$",
                       re.IGNORECASE)
_UUID_RE = re.compile(r"[-_.]?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}$")
_SEED_RE = re.compile(r"(?:[-_.]?seed[-_=]?\d+|[-_.]s\d+)$", re.IGNORECASE)


class CompareError(Exception):
    """Bad input; main() turns it into a one-line error with exit code 2."""


# ----------------------------------------------------------------------------------------------
# Parsing

@dataclass
class Run:
    path: str
    script: str | None = None           # None: modded-nanogpt style log (no script line)
    hp: dict | None = None              # hyperparameters JSON, None if absent
    total_steps: int | None = None      # M of step:N/M
    val_steps: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    val_times_ms: list = field(default_factory=list)   # train_time at val steps (nan if absent)
    step_avg_ms: float | None = None    # last reported step_avg
    tokens_per_s: float | None = None   # last reported tokens_per_s (like step_avg: running)
    tokens_per_step: int | None = None  # batch_size * sequence_length, if known
    n_step_lines: int = 0

    @property
    def seed(self):
        return None if self.hp is None else self.hp.get("seed")

    @property
    def last_val_step(self):
        return self.val_steps[-1] if self.val_steps else None


def _parse_value(text):
    m = _VALUE_RE.match(text)
    return float(m.group(1)) if m else None


def parse_step_line(line):
    """'step:12/100 val_loss:4.1 train_time:30ms' -> (12, 100, {'val_loss': 4.1, ...}) or None."""
    m = _STEP_RE.match(line)
    if not m:
        return None
    fields = {}
    for item in m.group(3).split():
        key, _, raw = item.partition(":")
        val = _parse_value(raw)
        if val is not None:
            fields[key] = val
    return int(m.group(1)), int(m.group(2)), fields


def parse_log_text(text, path="<log>"):
    """Parse the text of one log. Raises CompareError if it has no step lines."""
    lines = text.split("\n")
    # The last element is '' when the file ends with a newline; otherwise it is a line cut short
    # by a crash (or still being written): ignore it either way.
    lines = lines[:-1]
    run = Run(path=path)
    vals = {}            # step -> (loss, train_time_ms); a repeated step (resume) keeps the last
    tps_values = []
    for raw in lines:
        line = raw.rstrip("\r")
        if line.startswith("script:"):
            name = line[len("script:"):].strip()
            if name and " " not in name:
                run.script = name
            continue
        if line.startswith("hyperparameters:{"):
            try:
                hp = json.loads(line[len("hyperparameters:"):])
            except ValueError:
                continue        # e.g. a line of the script's own source that looks similar
            if isinstance(hp, dict):
                run.hp = hp
            continue
        if not line.startswith("step:"):
            continue
        parsed = parse_step_line(line)
        if parsed is None:
            continue
        step, total, f = parsed
        run.n_step_lines += 1
        run.total_steps = total
        if "step_avg" in f and math.isfinite(f["step_avg"]):
            run.step_avg_ms = f["step_avg"]
        if "tokens_per_s" in f and math.isfinite(f["tokens_per_s"]):
            tps_values.append(f["tokens_per_s"])
        if "val_loss" in f:
            vals[step] = (f["val_loss"], f.get("train_time", float("nan")))
    if run.n_step_lines == 0:
        raise CompareError(f"{path}: not a training log (no 'step:N/M key:value' lines); "
                           f"expected a log written by train_*.py or modded-nanogpt")
    for step in sorted(vals):
        loss, t = vals[step]
        run.val_steps.append(step)
        run.val_losses.append(loss)
        run.val_times_ms.append(t)
    if tps_values:
        run.tokens_per_s = tps_values[-1]
    if run.hp is not None:
        bs, sl = run.hp.get("batch_size"), run.hp.get("sequence_length")
        if isinstance(bs, int) and isinstance(sl, int) and bs > 0 and sl > 0:
            run.tokens_per_step = bs * sl
    return run


def parse_log(path):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise CompareError(f"{path}: cannot read ({e.strerror})") from None
    return parse_log_text(text, path)


def collect_logs(paths):
    """Expand files/folders into (list of Run, list of notes)."""
    runs, notes = [], []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".txt")]
            if not found:
                raise CompareError(f"{p}: folder has no *.txt logs")
            n_before = len(runs)
            for fp in found:
                try:
                    runs.append(parse_log(fp))
                except CompareError as e:
                    notes.append(f"skipped {e}")
            if len(runs) == n_before:
                raise CompareError(f"{p}: folder has no training logs among its *.txt files")
        elif os.path.isfile(p):
            runs.append(parse_log(p))
        else:
            raise CompareError(f"{p}: no such file or folder")
    for r in runs:
        if not r.val_steps:
            notes.append(f"{r.path}: no val_loss lines yet; it is left out of curves and table")
    runs = [r for r in runs if r.val_steps]
    if not runs:
        raise CompareError("none of the logs has a val_loss line")
    return runs, notes


# ----------------------------------------------------------------------------------------------
# Grouping

def _stem_name(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    base = _UUID_RE.sub("", stem)
    base = _SEED_RE.sub("", base)
    if not base:     # file named only by a uuid/seed: the folder names the experiment
        base = os.path.basename(os.path.dirname(os.path.abspath(path))) or stem
    return base


def _jsonkey(v):
    return json.dumps(v, sort_keys=True)


def group_key(run, ignore=IGNORED_KEYS):
    if run.hp is None:
        return ("file", run.script or _stem_name(run.path))
    cfg = tuple(sorted((k, _jsonkey(v)) for k, v in run.hp.items() if k not in ignore))
    return ("hp", run.script or "?", cfg)


def _short(v, limit=40):
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."


@dataclass
class Group:
    key: tuple
    runs: list
    label: str = ""


def group_runs(runs, ignore=IGNORED_KEYS):
    """Group runs by script + config (first appearance order) and give each a short label."""
    groups = {}
    for r in runs:
        k = group_key(r, ignore)
        groups.setdefault(k, Group(k, [])).runs.append(r)
    groups = list(groups.values())
    # A key goes into the labels when it tells apart two groups of the same script. Settings that
    # differ only between scripts (each script's own defaults, nGPT-only fields) are part of what
    # the script name already says, so e.g. a plain GPT vs nGPT A/B is labelled by script alone.
    by_script = {}
    for g in groups:
        if g.key[0] == "hp":
            by_script.setdefault(g.key[1], []).append(dict(g.key[2]))
    differing = {script: {k for k in set().union(*cfgs)
                          if len({c.get(k, "<unset>") for c in cfgs}) > 1}
                 for script, cfgs in by_script.items()}
    # ... and a key that all scripts have is then shown for every group, for comparability
    all_cfgs = [c for cfgs in by_script.values() for c in cfgs]
    common = set.intersection(*[set(c) for c in all_cfgs]) if all_cfgs else set()
    shared = common & set().union(*differing.values())
    differing = {script: sorted(keys | shared) for script, keys in differing.items()}
    for g in groups:
        if g.key[0] == "file":
            g.label = g.key[1]
            continue
        cfg = dict(g.key[2])
        parts = [g.key[1]]
        for k in differing[g.key[1]]:
            parts.append(f"{k}={_short(json.loads(cfg[k]))}" if k in cfg else f"{k}=unset")
        g.label = " ".join(parts)
    seen = {}
    for g in groups:     # labels must be unique for the legend/table
        if g.label in seen:
            seen[g.label] += 1
            g.label = f"{g.label} #{seen[g.label]}"
        else:
            seen[g.label] = 1
    return groups


# ----------------------------------------------------------------------------------------------
# Curves and speedup (pure functions)

def mean_curve(runs):
    """Union of val steps; at each step mean/min/max/std over the runs that have it.
    Returns dict of numpy arrays: step, mean, min, max, std, n, time_ms (mean train_time)."""
    steps = sorted(set().union(*[r.val_steps for r in runs]))
    by_run = [dict(zip(r.val_steps, zip(r.val_losses, r.val_times_ms))) for r in runs]
    out = {k: [] for k in ("step", "mean", "min", "max", "std", "n", "time_ms")}
    for s in steps:
        ls, ts = [], []
        for d in by_run:
            if s in d and math.isfinite(d[s][0]):
                ls.append(d[s][0])
                ts.append(d[s][1])
        if not ls:
            continue
        a = np.asarray(ls)
        t = np.asarray(ts)
        t = t[np.isfinite(t)]
        out["step"].append(s)
        out["mean"].append(a.mean())
        out["min"].append(a.min())
        out["max"].append(a.max())
        out["std"].append(a.std(ddof=1) if len(a) > 1 else 0.0)
        out["n"].append(len(a))
        out["time_ms"].append(t.mean() if len(t) else float("nan"))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def tokens_to_reach(tokens, losses, target):
    """First x (tokens, or time) at which the piecewise-linear curve (tokens[i], losses[i])
    reaches loss <= target; None if it never does. Points with non-finite values are skipped."""
    pts = [(float(x), float(y)) for x, y in zip(tokens, losses)
           if math.isfinite(float(x)) and math.isfinite(float(y))]
    for i, (x, y) in enumerate(pts):
        if y <= target:
            if i == 0:
                return x
            x0, y0 = pts[i - 1]
            return x0 + (y0 - target) / (y0 - y) * (x - x0)
    return None


def speedup(base_tokens, base_losses, tokens, losses, target):
    """Tokens (or time) the baseline needs to reach target / what this curve needs.
    None if either curve never reaches the target."""
    tb = tokens_to_reach(base_tokens, base_losses, target)
    tg = tokens_to_reach(tokens, losses, target)
    if tb is None or tg is None:
        return None
    if tg <= 0:
        return 1.0 if tb <= 0 else float("inf")
    return tb / tg


# ----------------------------------------------------------------------------------------------
# Summary table

def _fmt_count(x):
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.4g}{unit}"
    return f"{x:.4g}"


def _fmt_secs(ms):
    s = ms / 1000.0
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"


def summarize(groups, baseline_idx=0, target=None, tokens_per_step=None):
    """Rows (list of dicts of strings) plus (target, notes). Pure apart from the inputs."""
    notes = []
    info = []
    for g in groups:
        c = mean_curve(g.runs)
        tps = {r.tokens_per_step or tokens_per_step for r in g.runs}
        tps = tps.pop() if len(tps) == 1 else None
        last = max(r.last_val_step for r in g.runs)
        finished = [r for r in g.runs if r.last_val_step == last]
        finals = np.asarray([r.val_losses[-1] for r in finished])
        total = max((r.total_steps or 0) for r in g.runs)
        info.append(dict(curve=c, tps=tps, finals=finals, last=last, total=total,
                         n_partial=len(g.runs) - len(finished)))
    base = info[baseline_idx]
    if target is None:
        target = float(base["finals"].mean())
    bc = base["curve"]
    b_tokens = bc["step"] * base["tps"] if base["tps"] else None
    b_tok_to = tokens_to_reach(b_tokens, bc["mean"], target) if b_tokens is not None else None
    b_time_to = tokens_to_reach(bc["time_ms"], bc["mean"], target)
    rows = []
    for g, d in zip(groups, info):
        c = d["curve"]
        seeds = [r.seed for r in g.runs if r.seed is not None]
        runs = str(len(g.runs))
        if seeds:
            runs += " (seeds " + ",".join(str(s) for s in seeds) + ")"
        if d["n_partial"]:
            runs += f", {d['n_partial']} partial"
        if d["total"] and d["last"] < d["total"]:
            runs += f", stopped at {d['last']}/{d['total']}"
        f = d["finals"]
        final = f"{f.mean():.4f}" + (f" ± {f.std(ddof=1):.4f}" if len(f) > 1 else "")
        sa = [r.step_avg_ms for r in g.runs if r.step_avg_ms is not None]
        tks = [r.tokens_per_s for r in g.runs if r.tokens_per_s is not None]
        row = {"group": g.label, "runs": runs, "final val loss": final,
               "step_avg": f"{np.mean(sa):.1f} ms" if sa else "-",
               "tokens/s": _fmt_count(float(np.mean(tks))) if tks else "-"}
        if d["tps"]:
            tt = tokens_to_reach(c["step"] * d["tps"], c["mean"], target)
            row["tokens to target"] = _fmt_count(tt) if tt is not None else "not reached"
            if tt is None:
                row["speedup (tokens)"] = "not reached"
            elif b_tok_to is None:
                row["speedup (tokens)"] = "n/a (baseline not reached)" if b_tokens is not None \
                    else "n/a (baseline tokens unknown)"
            else:
                row["speedup (tokens)"] = f"{b_tok_to / tt:.3f}x" if tt > 0 else "inf"
        else:
            row["tokens to target"] = "n/a"
            row["speedup (tokens)"] = "n/a (tokens/step unknown)"
            notes.append(f"{g.label}: tokens per step unknown (no batch_size/sequence_length); "
                         f"pass --tokens_per_step")
        tm = tokens_to_reach(c["time_ms"], c["mean"], target)
        if not np.isfinite(c["time_ms"]).any():
            row["time to target"] = row["speedup (time)"] = "n/a (no train_time)"
        elif tm is None:
            row["time to target"] = row["speedup (time)"] = "not reached"
        else:
            row["time to target"] = _fmt_secs(tm)
            if b_time_to is None:
                row["speedup (time)"] = "n/a (baseline not reached)"
            else:
                row["speedup (time)"] = f"{b_time_to / tm:.3f}x" if tm > 0 else "inf"
        rows.append(row)
    return rows, target, notes


COLUMNS = ["group", "runs", "final val loss", "step_avg", "tokens/s", "tokens to target",
           "speedup (tokens)", "time to target", "speedup (time)"]


def markdown_table(rows, columns=COLUMNS):
    def cell(s):
        return str(s).replace("|", "\\|")
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out) + "\n"


def _atomic_write_text(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Plots

def plot_groups(groups, out_dir, name, target=None, tokens_per_step=None, band="minmax",
                x_scale="auto"):
    """Write <out_dir>/<name>_val_vs_{step,tokens,time}.png. Returns (paths, notes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    curves = [(g, mean_curve(g.runs)) for g in groups]
    paths, notes = [], []
    axes = [("step", "step", "training step"),
            ("tokens", "tokens", "training tokens"),
            ("time", "time", "training time (s, train_time in the logs)")]
    for kind, title_x, xlabel in axes:
        series = []
        for i, (g, c) in enumerate(curves):
            if kind == "step":
                x = c["step"]
            elif kind == "tokens":
                tps = {r.tokens_per_step or tokens_per_step for r in g.runs}
                tps = tps.pop() if len(tps) == 1 else None
                if not tps:
                    notes.append(f"tokens plot: skipped {g.label} (tokens per step unknown; "
                                 f"pass --tokens_per_step)")
                    continue
                x = c["step"] * tps
            else:
                x = c["time_ms"] / 1000.0
            ok = np.isfinite(x) & np.isfinite(c["mean"])
            if not ok.any():
                if kind == "time":
                    notes.append(f"time plot: skipped {g.label} (no train_time)")
                continue
            series.append((i, g, c, x, ok))
        if not series:
            continue
        xs = np.concatenate([x[ok] for _, _, _, x, ok in series])
        pos = xs[xs > 0]
        log_x = x_scale == "log" or (x_scale == "auto" and len(pos) > 1
                                     and pos.max() / pos.min() >= 20)
        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
        top = []
        for i, g, c, x, ok in series:
            if log_x:
                ok = ok & (x > 0)
            if not ok.any():
                continue
            # y range: leave out the point at x=0 (the loss at init squashes the rest)
            later = ok & (x > 0)
            top.append(c["max"][later if later.sum() >= 2 else ok].max())
            if band == "std":
                lo, hi = c["mean"] - c["std"], c["mean"] + c["std"]
            else:
                lo, hi = c["min"], c["max"]
            n = len(g.runs)
            color = f"C{i % 10}"
            ax.plot(x[ok], c["mean"][ok], color=color, lw=1.6,
                    marker="." if ok.sum() < 40 else None, label=f"{g.label} (n={n})")
            if n > 1:
                ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.2, lw=0)
        if top:
            lo_y = min(float(np.nanmin(c["min"])) for _, _, c, _, _ in series)
            hi_y = max(top)
            if target is not None:
                lo_y, hi_y = min(lo_y, target), max(hi_y, target)
            pad = 0.05 * (hi_y - lo_y) if hi_y > lo_y else 0.1
            ax.set_ylim(lo_y - pad, hi_y + pad)
        if target is not None:
            ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.4f}")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel + (" (log scale)" if log_x else ""))
        ax.set_ylabel("validation loss (nats/token)")
        bandtxt = "min..max" if band == "minmax" else "mean±std"
        ax.set_title(f"{name}: val loss vs {title_x} (line: mean over seeds, band: {bandtxt})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}_val_vs_{kind}.png")
        tmp = path + ".tmp"
        fig.savefig(tmp, format="png")
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths, notes


# ----------------------------------------------------------------------------------------------
# CLI

def build_parser():
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare training logs (ours or modded-nanogpt's): plots + speedup table.")
    p.add_argument("paths", nargs="+", metavar="LOG_OR_FOLDER",
                   help="log files, or folders searched recursively for *.txt logs")
    p.add_argument("--baseline", default=None, metavar="SUBSTRING",
                   help="baseline group: first group whose label (or a run's path) contains this"
                        " (default: the first group)")
    p.add_argument("--target", type=float, default=None, metavar="X",
                   help="target val loss (default: the baseline's final mean val loss)")
    p.add_argument("--tokens_per_step", type=int, default=None, metavar="N",
                   help="tokens per step for logs that do not say (modded-nanogpt logs)")
    p.add_argument("--out_dir", default="img", metavar="DIR", help="folder for the plots (default img)")
    p.add_argument("--name", default="ab", help="plot file prefix (default ab)")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="also write the table as Markdown to FILE")
    p.add_argument("--band", choices=["minmax", "std"], default="minmax",
                   help="band over seeds: min..max (default) or mean±std")
    p.add_argument("--x_scale", choices=["auto", "log", "linear"], default="auto",
                   help="x axes: log when the data span >= 20x (auto, default), log or linear")
    p.add_argument("--no_plot", action="store_true", help="only print the table")
    p.add_argument("--ignore", action="append", default=[], metavar="KEY",
                   help="extra hyperparameter to ignore when grouping (repeatable)")
    return p


def _pick_baseline(groups, sub):
    if sub is None:
        return 0
    for i, g in enumerate(groups):
        if g.label == sub:
            return i
    for i, g in enumerate(groups):
        if sub in g.label:
            return i
    for i, g in enumerate(groups):
        if any(sub in r.path for r in g.runs):
            return i
    labels = ", ".join(repr(g.label) for g in groups)
    raise CompareError(f"--baseline {sub!r} matches no group (groups: {labels})")


def run_compare(args):
    if args.tokens_per_step is not None and args.tokens_per_step <= 0:
        raise CompareError("--tokens_per_step must be a positive integer")
    runs, notes = collect_logs(args.paths)
    groups = group_runs(runs, IGNORED_KEYS + tuple(args.ignore))
    bi = _pick_baseline(groups, args.baseline)
    rows, target, more = summarize(groups, bi, args.target, args.tokens_per_step)
    notes += more
    table = markdown_table(rows)
    how = "--target" if args.target is not None else "baseline final mean val loss"
    header = f"baseline: {groups[bi].label}; target val loss: {target:.4f} ({how})"
    print(header)
    print(table, end="")
    if args.markdown:
        _atomic_write_text(args.markdown, table + "\n" + header[0].upper() + header[1:] + ".\n")
        print(f"wrote {args.markdown}")
    if not args.no_plot:
        paths, pnotes = plot_groups(groups, args.out_dir, args.name, target,
                                    args.tokens_per_step, args.band, args.x_scale)
        notes += pnotes
        for p in paths:
            print(f"wrote {p}")
    for n in dict.fromkeys(notes):
        print(f"note: {n}")
    return rows


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run_compare(args)
    except CompareError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
