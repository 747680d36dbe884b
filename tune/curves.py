"""Training logs read into runs, runs grouped by configuration, mean-over-seeds curves and the first crossing of a
target loss: what tune/compare.py tables and tune/fair.py measures.

Reads the logs of train_*.py (script:/hyperparameters:{json} lines, step:N/M key:value lines, and the
eval:NAME step:N tokens:N key:value lines that evals/ appends) and modded-nanogpt's (step lines only, grouped
by folder). A log cut short by a crash is fine. Runs with the same script and hyperparameters (apart from
IGNORED_KEYS) form a group whose seeds are repeats: curves are the mean over seeds, with a min..max band.
"""
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np

# Runs that differ only in these settings (repeats, bookkeeping, implementation) are one group.
IGNORED_KEYS = ["seed", "run_id", "log_dir", "resume", "save_every", "val_loss_every", "device", "compile", "kernels"]
STEP_RE = re.compile(r"step:(\d+)/(\d+)((?: \w+:\S+)*)")
EVAL_RE = re.compile(r"eval:(\w+) step:(\d+) tokens:(\d+)((?: \w+:\S+)*)")
# A log starts with the code of its run: each file under a SOURCE_HEADER line, the last one ended by a line of 100
# "=". The logs in records/2026-11-25_* hold the script's source alone, with no header (read as lines, see below).
SOURCE_HEADER, SOURCE_END = "=" * 40 + " source:", "=" * 100


@dataclass
class Log:
    """One training log; total_steps is None if it has no step lines (not a training log)."""
    path: str
    script: str | None = None
    hp: dict | None = None
    total_steps: int | None = None
    step_avg_ms: float | None = None
    tokens_per_s: float | None = None
    params: int | None = None   # the parameter count the script logged
    data_epoch: int = 0         # the loader's wraps seen (data_epoch: lines)
    val: dict = field(default_factory=dict)    # step -> (val_loss, train_time ms); a resumed run keeps its last
    evals: dict = field(default_factory=dict)  # (name, settings, step) -> (tokens, {metric: value})


@dataclass
class Curve:
    """A group's val loss at each val step: mean/min/max over its runs, and the mean train_time (ms)."""
    step: np.ndarray
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    time_ms: np.ndarray


@dataclass
class Group:
    """Runs of one configuration (repeats over seeds) and their mean curve."""
    label: str
    runs: list
    curve: Curve
    tokens_per_step: int | None
    script: str = ""
    cfg: dict = field(default_factory=dict)
    last: int = 0                 # the latest val step of any run
    finals: np.ndarray = None     # val losses at that step, of the runs that logged it


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
    """One log file -> a Log."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")[:-1]   # the last line counts only once ended: a crash may have cut it short
    except OSError as e:
        sys.exit(f"error: cannot read {path} ({e.strerror}); pass training logs or folders of them")
    run = Log(path)
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
            try:   # a source without a header, read as lines, may hold a look-alike line
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
    return Curve(*np.array(rows, dtype=float).reshape(-1, 5).T)


def group_runs(runs, ignore=IGNORED_KEYS, tokens_per_step=None):
    """Groups in order of first appearance, labelled by script and the settings that tell apart groups of the same
    script (so a GPT vs nGPT A/B with one config each is labelled by script alone). modded-nanogpt logs have no
    settings: one group per folder (its records keep one experiment per folder)."""
    by_key = {}
    for r in runs:
        if r.hp is None:
            key = (os.path.basename(os.path.dirname(os.path.abspath(r.path))), "{}")
        else:
            key = (r.script or "?", json.dumps({k: v for k, v in r.hp.items() if k not in ignore}, sort_keys=True))
        by_key.setdefault(key, []).append(r)
    configs = [(script, json.loads(cfg)) for script, cfg in by_key]
    differ = set()
    for script_a, a in configs:
        for script_b, b in configs:
            if script_a == script_b:
                differ |= {k for k in a.keys() | b.keys() if a.get(k, a) != b.get(k, b)}
    groups = []
    for (script, cfg), rs in zip(configs, by_key.values()):
        hp = rs[0].hp or {}   # batch_size and sequence_length are part of the group key
        last = max(max(r.val) for r in rs)
        groups.append(Group(label=" ".join([script] + [f"{k}={v}" for k, v in sorted(cfg.items()) if k in differ]),
                            runs=rs, curve=mean_curve(rs), script=script, cfg=cfg, last=last,
                            tokens_per_step=hp.get("batch_size", 0) * hp.get("sequence_length", 0) or tokens_per_step,
                            finals=np.array([r.val[last][0] for r in rs if last in r.val])))
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


def fmt_count(x):
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.4g}{unit}"
    return f"{x:.4g}"


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
