#!/usr/bin/env python3
"""The fair A/B in one command: a learning-rate search per arm, a transfer check, seeds, and a verdict with
confidence intervals that audits its own fairness.

python tune/fair.py --out logs/fair                           # gpt2, gpt2_qk, ngpt2 at the scripts' own defaults
python tune/fair.py --out logs/fair --dry_run                 # the plan only
python tune/fair.py --out logs/fair --arms gpt2_qk,ngpt2 --seeds 5 --num_iterations=2000 --preset=350m
python tune/fair.py --out logs/fair --arm ngpt2_bf16=train_ngpt2.py:--param_dtype=bfloat16
python tune/fair.py --out logs/scale --widths 384,768 --sequence_lengths 1024,4096

Every unknown --name=value goes to every run (arm flags after it), so the target is the scripts' own defaults
unless it says otherwise. For each arm and sequence length:
  search    at each proxy width (default: a quarter and a half of the largest target width, the target's head_dim)
            with --mup_base_width at the largest target width, so the value searched is the target's
            --learning_rate, at the target's steps, batch, schedule and data: a factor-2 grid of --grid learning
            rates around the arm's default, one factor-2 step more past the edge that holds the best (up to 3
            times), then a factor sqrt(2) on both sides of the best. Diverged and crashed runs rank below every
            finished one (among themselves, lower lr first) and stay in the table.
  transfer  the proxies' best learning rates must agree within 2x; the largest proxy's best is confirmed at each
            target width at lr/2, lr and 2*lr (seed 0) and the best of the three is kept. An optimum that moved
            between proxies, or a confirmation that picked an edge, is flagged in the audit.
  seeds     seeds 1..N-1 at the chosen lr of each target width (seed 0 is the confirmation run).
Tokens per step stay those of the target (batch_size * sequence_length, the scripts' defaults or your flags) at
every one of --sequence_lengths, batch_size and device_batch_size scaled to fit, unless --same_batch.

OUT gets logs/<arm>_L<length>_w<width>_lr<lr>_s<seed>.txt (+ .out, the console), search.tsv (one row per search
or confirmation run), verdict.md, verdict.json and the plots: L<len>_W<width>_val_vs_tokens.png (mean over seeds,
min..max band), lr_search.png (final val loss against lr per arm, sequence length and width, chosen lr starred)
and speedup_vs_params.png (speedup in tokens and time with 95% intervals against parameter count, a line per
arm and sequence length). verdict.json holds arms.NAME.{lr, final_val_loss (one per seed), ...},
vs_baseline.NAME.{tokens_speedup, tokens_speedup_ci, time_speedup, time_speedup_ci, p_value, ...} and audit
[{check, pass, detail}], under json["<sequence_length>"]["<width>"] when there are several targets. Speedup =
the baseline's tokens (or train_time) to reach its own final mean val loss / the arm's, read off the mean-over-seeds
curves by linear interpolation at the first crossing (records/compare.py); its interval is a percentile bootstrap
that resamples each arm's seeds (scipy.stats.bootstrap); the final-loss p-value is Welch's t-test.

Runs have fixed ids and --resume=auto: the same command again reads finished (also diverged and crashed) runs back
and continues killed ones (give --save_every=N for checkpoints to continue from; delete a crashed run's .txt to run
it again). One run at a time on CPU, one per GPU at a time on CUDA.
"""
import argparse
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import sys
import time
from types import SimpleNamespace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from records import compare  # noqa: E402  (log parser, mean curves, interpolation, val-loss plot)
from tune import runs  # noqa: E402  (the runner shared with tune/sweep.py)

ARMS = {"gpt2": ("train_gpt2.py", []), "gpt2_qk": ("train_gpt2.py", ["--qk_norm=1"]), "ngpt2": ("train_ngpt2.py", [])}
TITLES = {"gpt2": "GPT-2", "gpt2_qk": "GPT-2+QK-norm", "ngpt2": "nGPT"}
SET_HERE = ["seed", "run_id", "log_dir", "resume", "mup_base_width"]  # per run, by this tool
MAX_EXTEND = 3
FINAL = ("ok", "diverged", "crashed")  # outcomes read back; killed runs continue
SCRIPTS = {}  # script file -> its module


class Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.exit(f"error: {message} (tune/fair.py --help lists the options)")


def int_list(text):
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return [int(x) for x in text.split(",")]


def load_script(script):
    """The training script as a module (imported once), for its parse_args."""
    if script not in SCRIPTS:
        spec = importlib.util.spec_from_file_location("fair_" + re.sub(r"\W", "_", script), os.path.join(ROOT, script))
        SCRIPTS[script] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(SCRIPTS[script])
    return SCRIPTS[script]


def script_hp(plan, arm, flags, what):
    """The arm's script parses its flags (a bad one is its one-line error, named with the arm)."""
    try:
        return load_script(plan.arms[arm][0]).parse_args(flags)
    except SystemExit as e:
        sys.exit(f"error: arm {arm} ({what}): {str(e.code).removeprefix('error: ')}")


def parse(argv):
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--out", required=True, help="folder for the runs, the verdict and the plots")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)} (default all)")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=SCRIPT:FLAGS",
                    help="one more arm, e.g. ngpt2_bf16=train_ngpt2.py:--param_dtype=bfloat16 (flags space-separated)")
    ap.add_argument("--baseline", default="gpt2_qk", help="the arm the others are measured against (default gpt2_qk)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per arm at its chosen lr (default 3)")
    ap.add_argument("--widths", type=int_list, help="target widths W1,W2,... (default: the target's n_embd)")
    ap.add_argument("--sequence_lengths", type=int_list, help="L1,L2,... (default: the target's sequence_length)")
    ap.add_argument("--proxy_widths", type=int_list, help="search widths (default: largest target width /4 and /2)")
    ap.add_argument("--same_batch", action="store_true",
                    help="keep batch_size sequences at every sequence length (default: the same tokens per step)")
    ap.add_argument("--grid", type=int, default=5, help="learning rates in the first factor-2 grid (odd; default 5)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per interval (default 2000)")
    ap.add_argument("--parallel", type=int, default=0, help="runs at a time (default: one per GPU, 1 on CPU)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the runs")
    ap.add_argument("--dry_run", action="store_true", help="print the plan and exit")
    args, extra = ap.parse_known_args(argv)
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            sys.exit(f"error: expected --name=value for the training scripts, got {arg!r} (tune/fair.py --help)")
        if arg[2:].partition("=")[0] in SET_HERE:
            sys.exit(f"error: {arg}: fair.py sets --{arg[2:].partition('=')[0]} for every run (seeds: --seeds N)")
    if args.seeds < 1 or args.grid < 1 or args.grid % 2 == 0 or args.resamples < 1:
        sys.exit("error: --seeds and --resamples must be >= 1 and --grid an odd number >= 1")
    arms = {}
    for name in args.arms.split(","):
        if name not in ARMS:
            sys.exit(f"error: unknown arm {name!r}; known: {', '.join(ARMS)} (add one with --arm NAME=SCRIPT:FLAGS)")
        arms[name] = ARMS[name]
    for spec in args.arm:
        name, eq, rest = spec.partition("=")
        script, _, flags = rest.partition(":")
        if not eq or not re.fullmatch(r"[\w.-]+", name) or not script.endswith(".py"):
            sys.exit(f"error: --arm expects NAME=SCRIPT:FLAGS, e.g. ngpt2_bf16=train_ngpt2.py:--param_dtype=bfloat16, "
                     f"got {spec!r}")
        if not os.path.isfile(os.path.join(ROOT, script)):
            sys.exit(f"error: --arm {spec}: no script {script} in {ROOT}")
        if name in arms:
            sys.exit(f"error: --arm {spec}: an arm named {name} is already in the comparison")
        arms[name] = (script, flags.split())
    if len(arms) < 2:
        sys.exit("error: an A/B needs at least two arms; add one with --arms or --arm")
    if args.baseline not in arms:
        sys.exit(f"error: --baseline {args.baseline} is not one of the arms ({', '.join(arms)})")

    plan = SimpleNamespace(arms=arms, baseline=args.baseline, seeds=args.seeds, grid=args.grid, extra=extra,
                           out=os.path.abspath(args.out), python=args.python, resamples=args.resamples,
                           parallel=args.parallel, dry_run=args.dry_run)
    plan.logs = os.path.join(plan.out, "logs")
    target = {arm: script_hp(plan, arm, extra + arms[arm][1], "its target") for arm in arms}
    hp = target[args.baseline]
    plan.center = {arm: target[arm].learning_rate for arm in arms}
    plan.steps = hp.num_iterations
    plan.widths = args.widths or [hp.n_embd]
    plan.lengths = args.sequence_lengths or [hp.sequence_length]
    plan.head_dim = hp.n_embd // hp.n_head
    plan.ref = max(plan.widths)
    plan.proxies = args.proxy_widths or [plan.ref // 4, plan.ref // 2]
    for width in plan.widths + plan.proxies:
        if width < plan.head_dim or width % plan.head_dim:
            sys.exit(f"error: width {width} is not a multiple of the target's head_dim {plan.head_dim} "
                     f"(n_embd {hp.n_embd} / n_head {hp.n_head}); change --widths, --proxy_widths or --n_head")
    plan.batch = {}
    tokens = hp.batch_size * hp.sequence_length
    device_tokens = hp.device_batch_size * hp.sequence_length
    for length in plan.lengths:
        plan.batch[length] = (hp.batch_size, hp.device_batch_size)
        if not args.same_batch:  # equal tokens per step at every length
            batch = tokens // length
            device = max(1, min(batch, device_tokens // length))
            if tokens % length or batch % device:
                sys.exit(f"error: {tokens} tokens per step (batch_size * sequence_length) do not split into "
                         f"sequences of {length} and micro-batches of {device}; change --batch_size, "
                         f"--device_batch_size or --sequence_lengths, or pass --same_batch")
            plan.batch[length] = (batch, device)
    for arm in arms:  # every run's flags checked by its script before anything runs
        for length in plan.lengths:
            for width in plan.proxies + plan.widths:
                script_hp(plan, arm, command(plan, (arm, length, width, 0, 0))[2:], f"width {width}, length {length}")
    return plan


def lr_of(plan, arm, k):
    """The lr k half-steps (factors of sqrt 2) from the arm's default: integers keep the run ids exact."""
    return plan.center[arm] * 2 ** (k / 2)


def run_id(plan, key):
    arm, length, width, k, seed = key
    return f"{arm}_L{length}_w{width}_lr{lr_of(plan, arm, k):.4g}_s{seed}"


def command(plan, key):
    arm, length, width, k, seed = key
    script, flags = plan.arms[arm]
    batch, device = plan.batch[length]
    return [plan.python, os.path.join(ROOT, script)] + plan.extra + flags + [
        f"--n_embd={width}", f"--n_head={width // plan.head_dim}", f"--sequence_length={length}",
        f"--batch_size={batch}", f"--device_batch_size={device}", f"--mup_base_width={plan.ref}",
        f"--learning_rate={lr_of(plan, arm, k):.6g}", f"--seed={seed}", f"--log_dir={plan.logs}",
        f"--run_id={run_id(plan, key)}", "--resume=auto"]


def rank(result, k):
    status, loss = result
    if status == "ok":
        return (0, loss)
    return (1, k)


def best_k(results, arm, length, width, ks):
    return min(ks, key=lambda k: rank(results[(arm, length, width, k, 0)], k))


def protocol(plan, arm, length, results, found):
    """One arm at one sequence length, stage by stage: yields (stage, run keys) and finds the results of those runs
    in `results` when it continues; what it chose goes to found[(arm, length)]."""
    half = plan.grid // 2
    ks = {w: list(range(-2 * half, 2 * half + 1, 2)) for w in plan.proxies}
    yield "search", [(arm, length, w, k, 0) for w in plan.proxies for k in ks[w]]
    for _ in range(MAX_EXTEND):
        more = []
        for w in plan.proxies:
            best = best_k(results, arm, length, w, ks[w])
            if best == min(ks[w]):
                more.append((w, best - 2))
            elif best == max(ks[w]):
                more.append((w, best + 2))
        if not more:
            break
        for w, k in more:
            ks[w].append(k)
        yield "search", [(arm, length, w, k, 0) for w, k in more]
    bracketed = {}
    refine = []
    for w in plan.proxies:
        best = best_k(results, arm, length, w, ks[w])
        bracketed[w] = min(ks[w]) < best < max(ks[w]) and results[(arm, length, w, best, 0)][0] == "ok"
        refine += [(w, best + d) for d in (-1, 1) if best + d not in ks[w]]
    for w, k in refine:
        ks[w].append(k)
    yield "search", [(arm, length, w, k, 0) for w, k in refine]
    bests = {w: best_k(results, arm, length, w, ks[w]) for w in plan.proxies}
    picked = bests[max(plan.proxies)]
    confirm = [picked - 2, picked, picked + 2]
    yield "confirm", [(arm, length, w, k, 0) for w in plan.widths for k in confirm]
    chosen = {w: best_k(results, arm, length, w, confirm) for w in plan.widths}
    yield "seeds", [(arm, length, w, chosen[w], s) for w in plan.widths for s in range(1, plan.seeds)]
    found[(arm, length)] = SimpleNamespace(ks=ks, bracketed=bracketed, bests=bests, picked=picked, chosen=chosen)


def planned_runs(plan):
    """(fewest, most) runs of one arm at one sequence length per stage."""
    p, w = len(plan.proxies), len(plan.widths)
    return {"search": ((plan.grid + 2) * p, (plan.grid + MAX_EXTEND + 2) * p), "confirm": (3 * w, 3 * w),
            "seeds": ((plan.seeds - 1) * w, (plan.seeds - 1) * w)}


def plan_text(plan):
    per = planned_runs(plan)
    lines = [f"fair A/B: arms {', '.join(plan.arms)} (baseline {plan.baseline}); sequence lengths "
             f"{', '.join(map(str, plan.lengths))}; target widths {', '.join(map(str, plan.widths))}; proxy widths "
             f"{', '.join(map(str, plan.proxies))} (head_dim {plan.head_dim}, mup_base_width {plan.ref}); "
             f"{plan.seeds} seeds; {plan.steps} steps per run",
             f"  {'stage':<8} {'arm':<14} {'runs per length':<16} what"]
    for arm in plan.arms:
        what = {"search": f"{plan.grid} lrs x {len(plan.proxies)} proxy widths around {plan.center[arm]:.3g} (factor "
                          f"2), up to {MAX_EXTEND} more past an edge, then 2 at sqrt(2) around the best, per width",
                "confirm": "lr/2, lr, 2*lr at each target width, seed 0 (a run the search already did is reused)",
                "seeds": f"seeds 1..{plan.seeds - 1} at the chosen lr of each target width"}
        for stage, (lo, hi) in per.items():
            count = str(lo) if lo == hi else f"{lo}-{hi}"
            lines.append(f"  {stage:<8} {arm:<14} {count:<16} {what[stage]}")
    lo = sum(lo for lo, _ in per.values()) * len(plan.arms) * len(plan.lengths)
    hi = sum(hi for _, hi in per.values()) * len(plan.arms) * len(plan.lengths)
    for length in plan.lengths:
        batch, device = plan.batch[length]
        lines.append(f"  length {length}: batch {batch} x {length} = {batch * length} tokens per step "
                     f"(micro-batch {device}), {compare.fmt_count(batch * length * plan.steps)} tokens per run")
    tokens = [plan.batch[length][0] * length * plan.steps for length in plan.lengths]
    lines.append(f"  total: {lo}-{hi} runs, about {compare.fmt_count(lo * np.mean(tokens))}-"
                 f"{compare.fmt_count(hi * np.mean(tokens))} training tokens; logs in {plan.logs}")
    return "\n".join(lines)


def run_protocol(plan):
    """Every arm's protocol at every sequence length, stages started as soon as the previous one ends; returns
    (results {key: (status, loss)}, found, stages {key: set of stage names})."""
    import torch
    from tqdm import tqdm
    gpus = torch.cuda.device_count()
    pool = runs.Pool(plan.parallel or max(1, gpus), gpus)
    results, found, stages, queue, waiting = {}, {}, {}, [], {}
    gens = {(arm, length): protocol(plan, arm, length, results, found) for arm in plan.arms for length in plan.lengths}
    planned = sum(lo for lo, _ in planned_runs(plan).values()) * len(gens)
    bar = tqdm(total=planned, desc="fair", unit="run")
    counts = dict(read_back=0, trained=0)
    started = {}

    def advance(g):
        while True:  # a stage whose runs are all known already is passed at once
            try:
                stage, keys = next(gens[g])
            except StopIteration:
                waiting.pop(g, None)
                return
            waiting[g] = keys
            for key in keys:
                stages.setdefault(key, set()).add(stage)
                if key in results or key in queue or key in started:
                    continue
                result = runs.outcome(plan.logs, run_id(plan, key))
                if result[0] in FINAL:
                    results[key] = result
                    counts["read_back"] += 1
                    bar.update(1)
                else:
                    queue.append(key)
            if not all(key in results for key in keys):
                return

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(
        f"error: stopped by signal {signum}; the same command continues where this stopped"))
    try:
        for g in gens:
            advance(g)
        while waiting:
            bar.total = max(bar.total, len(results) + len(queue) + len(started))
            bar.refresh()
            while queue and pool.free():
                key = queue.pop(0)
                started[key] = time.time()
                pool.start(key, command(plan, key), os.path.join(plan.logs, run_id(plan, key) + ".out"))
            if not pool.running:
                break
            for key in pool.wait():
                results[key] = runs.outcome(plan.logs, run_id(plan, key))
                wall = time.time() - started.pop(key)
                counts["trained"] += 1
                bar.update(1)
                bar.write(f"run:{run_id(plan, key)} status:{results[key][0]} val_loss:{results[key][1]:.4f}")
                if counts["trained"] == 1:
                    left = bar.total - len(results)
                    bar.write(f"estimate: the first run took {wall:.0f}s; about {wall * left / pool.slots / 60:.0f} "
                              f"min for the ~{left} planned runs left (runs at the smaller widths are quicker)")
            for g in list(waiting):
                if all(key in results for key in waiting[g]):
                    advance(g)
    finally:
        pool.stop()
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    print(f"fair: {counts['trained']} runs trained, {counts['read_back']} read back from {plan.logs}")
    return results, found, stages


def final_loss(run):
    return run.val[run.total_steps][0]


def to_target(base, arm, axis):
    """(baseline x, arm x or None, target) where x is tokens or train_time (ms) at which each mean-over-seeds
    curve first reaches the baseline's final mean val loss."""
    target = float(np.mean([final_loss(r) for r in base]))
    xs = []
    for group in (base, arm):
        curve = compare.mean_curve(group)
        x = curve.step * group[0].hp["batch_size"] * group[0].hp["sequence_length"]
        if axis == "time":
            x = curve.time_ms
        xs.append(compare.x_at_target(x, curve.mean, target))
    return xs[0], xs[1], target


def speedup(base, arm, axis):
    """Baseline's x to target / the arm's; 0 where the arm never reaches it (so a resample that misses ranks
    lowest)."""
    base_x, arm_x, _ = to_target(base, arm, axis)
    if arm_x is None or base_x is None:
        return 0.0
    if arm_x == 0:
        return math.inf
    return base_x / arm_x


def interval(plan, base, arm, axis):
    """95% percentile bootstrap of the speedup, each arm's seeds resampled on their own; None below 2 seeds."""
    import scipy.stats
    if len(base) < 2 or len(arm) < 2:
        return None

    def statistic(base_i, arm_i):
        return speedup([base[int(i)] for i in base_i], [arm[int(i)] for i in arm_i], axis)
    res = scipy.stats.bootstrap((np.arange(len(base)), np.arange(len(arm))), statistic, n_resamples=plan.resamples,
                                vectorized=False, paired=False, method="percentile", rng=np.random.default_rng(0))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def versus(plan, base, arm):
    """One arm against the baseline: tokens and time to the target with speedups and intervals, the final loss
    difference and Welch's t-test p-value."""
    import scipy.stats
    base_final = [final_loss(r) for r in base]
    arm_final = [final_loss(r) for r in arm]
    out = {"n": [len(base), len(arm)]}
    for axis in ("tokens", "time"):
        base_x, arm_x, target = to_target(base, arm, axis)
        out["target"] = target
        out[f"{axis}_to_target"] = arm_x
        out[f"baseline_{axis}_to_target"] = base_x
        out[f"{axis}_speedup"] = None
        out[f"{axis}_speedup_ci"] = None
        if arm_x is not None and base_x is not None:
            out[f"{axis}_speedup"] = speedup(base, arm, axis)
            out[f"{axis}_speedup_ci"] = interval(plan, base, arm, axis)
    out["reached"] = out["tokens_to_target"] is not None
    out["gap_at_end"] = float(np.mean(arm_final)) - out["target"]
    out["final_loss_diff"] = out["gap_at_end"]
    out["p_value"] = None
    if len(base) > 1 and len(arm) > 1:
        p = scipy.stats.ttest_ind(arm_final, base_final, equal_var=False).pvalue
        out["p_value"] = float(p) if math.isfinite(p) else None
    return out


def audit(plan, length, width, found, results, chosen_runs):
    """The fairness checks of one target: [{check, pass, detail}]."""
    checks = []

    def check(name, ok, detail):
        checks.append({"check": name, "pass": bool(ok), "detail": detail})
    parts = [f"{arm} {lr_of(plan, arm, found[(arm, length)].bests[w]):.3g} at width {w}"
             + ("" if found[(arm, length)].bracketed[w] else " (NOT bracketed)")
             for arm in plan.arms for w in plan.proxies]
    check("every arm's optimum bracketed (worse neighbours on both sides) at each proxy width",
          all(f.bracketed[w] for (arm, L), f in found.items() if L == length for w in plan.proxies), "; ".join(parts))
    parts, ok = [], True
    for arm in plan.arms:
        f = found[(arm, length)]
        spread = max(f.bests.values()) - min(f.bests.values())  # half-steps: 2 = a factor 2
        edge = f.chosen[width] != f.picked
        ok = ok and spread <= 2 and not edge
        parts.append(f"{arm}: proxies {' / '.join(f'{lr_of(plan, arm, k):.3g}' for k in f.bests.values())}"
                     + (" (MOVED more than 2x)" if spread > 2 else "")
                     + f", confirmed {lr_of(plan, arm, f.chosen[width]):.3g} at width {width}"
                     + (" (AN EDGE of lr/2, lr, 2lr)" if edge else ""))
    if len(plan.proxies) < 2:
        ok = False
        parts.insert(0, "one proxy width: agreement across widths not checked")
    check("every arm's optimum transferred (proxies within 2x, confirmation not at an edge)", ok, "; ".join(parts))
    bad = [f"{run_id(plan, key)}: {results[key][0]}" for arm in plan.arms
           for key in seed_keys(plan, found, arm, length, width) if results[key][0] != "ok"]
    check("no chosen run diverged or crashed", not bad, "; ".join(bad) or f"all {plan.seeds} seeds of every arm ok")
    logs = {arm: chosen_runs[arm] for arm in plan.arms if chosen_runs[arm]}

    def same(fields):
        """(one setting for every arm's runs, {arm: its settings})"""
        values = {arm: {tuple(r.hp[f] for f in fields) for r in rs} for arm, rs in logs.items()}
        return len(set().union(*values.values())) == 1, values

    def show(values, text):
        return "; ".join(f"{arm}: {', '.join(text(*v) for v in sorted(vs))}" for arm, vs in values.items())
    ok, values = same(["batch_size", "sequence_length"])
    check("every arm saw the same tokens per step", ok, show(values, lambda b, s: f"{b} x {s} = {b * s}"))
    ok, values = same(["input_bin", "batch_size", "sequence_length", "num_iterations"])
    check("every arm saw the same data order (same shards, batch, length and steps: the order depends on nothing "
          "else)", ok, show(values, lambda data, b, s, n: f"{data}, {b} x {s}, {n} steps"))
    ok, values = same(["input_val_bin", "val_tokens"])
    check("every arm was validated on the same tokens", ok, show(values, lambda data, n: f"first {n} tokens of {data}"))
    epochs = {arm: max(r.data_epoch for r in rs) for arm, rs in logs.items()}
    wrapped = [arm for arm, e in epochs.items() if e]
    check("no arm's loader wrapped (data_epoch) unless all did", len(wrapped) in (0, len(epochs)),
          f"wrapped: {', '.join(f'{a} (epoch {epochs[a]})' for a in wrapped)}" if wrapped else "no loader wrapped")
    params = {arm: rs[0].params for arm, rs in logs.items()}
    base = params.get(plan.baseline)
    if base and all(params.values()):
        worst = max(abs(p - base) / base for p in params.values())
        check("parameter counts within 1% of the baseline's", worst < 0.01,
              ", ".join(f"{arm} {p:,} ({100 * (p - base) / base:+.2f}%)" for arm, p in params.items()))
    return checks


def seed_keys(plan, found, arm, length, width):
    return [(arm, length, width, found[(arm, length)].chosen[width], s) for s in range(plan.seeds)]


def analyze(plan, results, found):
    """{(length, width): {arms, vs_baseline, audit}} and the parsed chosen runs {(length, width): {arm: [runs]}}."""
    blocks, chosen = {}, {}
    for length in plan.lengths:
        for width in plan.widths:
            arms, runs_of = {}, {}
            for arm in plan.arms:
                f = found[(arm, length)]
                keys = seed_keys(plan, found, arm, length, width)
                runs_of[arm] = [compare.parse_log(os.path.join(plan.logs, run_id(plan, k) + ".txt"))
                                for k in keys if results[k][0] == "ok"]
                finals = [results[k][1] if results[k][0] == "ok" else None for k in keys]
                ok = [x for x in finals if x is not None]
                rs = runs_of[arm]
                arms[arm] = {"lr": lr_of(plan, arm, f.chosen[width]),
                             "proxy_best_lr": {str(w): lr_of(plan, arm, k) for w, k in f.bests.items()},
                             "final_val_loss": finals, "status": [results[k][0] for k in keys],
                             "mean": float(np.mean(ok)) if ok else None,
                             "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
                             "step_avg_ms": float(np.mean([r.step_avg_ms for r in rs])) if rs else None,
                             "tokens_per_s": float(np.mean([r.tokens_per_s for r in rs])) if rs else None,
                             "params": rs[0].params if rs else None}
            vs = {}
            for arm in plan.arms:
                if arm != plan.baseline and runs_of[arm] and runs_of[plan.baseline]:
                    vs[arm] = versus(plan, runs_of[plan.baseline], runs_of[arm])
            blocks[(length, width)] = {"arms": arms, "vs_baseline": vs,
                                       "audit": audit(plan, length, width, found, results, runs_of)}
            chosen[(length, width)] = runs_of
    return blocks, chosen


def title(arm):
    return TITLES.get(arm, arm)


def ratio(x, ci):
    """'1.61x [1.45-1.80]' (the interval is left out when there is none; n.r.: some resamples never reach the
    target)."""
    if x is None:
        return "not reached"
    text = f"{x:.2f}x"
    if ci:
        low = f"{ci[0]:.2f}" if ci[0] > 0 else "n.r."
        text += f" [{low}-{ci[1]:.2f}]"
    return text


def headline(plan, blocks):
    """One sentence about the main arm (nGPT when it is in the A/B) at the largest target."""
    others = [arm for arm in plan.arms if arm != plan.baseline]
    arm = "ngpt2" if "ngpt2" in others else others[0]
    length, width = max(plan.lengths), max(plan.widths)
    v = blocks[(length, width)]["vs_baseline"].get(arm)
    where = f"at width {width}, sequence length {length}"
    if v is None:
        return f"{title(arm)} vs {title(plan.baseline)} {where}: no finished runs to compare (see the audit)."
    n = f"{v['n'][0]} and {v['n'][1]} seeds" if v["n"][0] != v["n"][1] else f"{v['n'][0]} seeds each"
    if not v["reached"]:
        return (f"{title(arm)} did not reach {title(plan.baseline)}'s final val loss ({v['target']:.3f}) {where}: "
                f"it ended {v['gap_at_end']:+.3f} from it ({n}).")

    def fraction(axis, what):
        """'0.62x its tokens (95% CI 0.55-0.70, 3 seeds each)': the arm's share of the baseline's, the inverse of
        the speedup"""
        if not v[f"{axis}_speedup"]:
            return f"an unknown share of {what}"
        text = f"{1 / v[f'{axis}_speedup']:.2f}x {what}"
        ci = v[f"{axis}_speedup_ci"]
        if ci:
            high = f"{1 / ci[0]:.2f}" if ci[0] > 0 else "never"
            text += f" (95% CI {1 / ci[1]:.2f}-{high}, {n})"
        return text
    return (f"{title(arm)} reached {title(plan.baseline)}'s final val loss ({v['target']:.3f}) in "
            f"{fraction('tokens', 'its tokens')} and {fraction('time', 'its training time')}, {where}.")


def markdown(plan, blocks, head, command_line):
    lines = ["# Fair A/B verdict", "", head, "", f"Command: `{command_line}`", "",
             f"Method: each arm at its own lr (searched at proxy widths {', '.join(map(str, plan.proxies))} with "
             f"mup_base_width {plan.ref}, confirmed at each target width), {plan.seeds} seeds. Target: the "
             f"baseline's ({plan.baseline}) final mean val loss. Speedup = baseline tokens (or train_time) to the "
             f"target / the arm's, on mean-over-seeds curves, linear interpolation at the first crossing; the "
             f"fraction in the headline is its inverse. [low-high]: 95% percentile bootstrap, "
             f"{plan.resamples} resamples of each arm's seeds (scipy.stats.bootstrap; a resample that never reaches "
             f"the target counts as 0, shown as n.r.). p: Welch's t-test on the final val losses "
             f"(scipy.stats.ttest_ind, equal_var=False).", ""]
    for (length, width), block in blocks.items():
        params = block["arms"][plan.baseline]["params"]
        lines += [f"## Sequence length {length}, width {width}"
                  + (f" ({compare.fmt_count(params)} parameters, {plan.baseline})" if params else ""), "",
                  "| arm | lr | best lr at proxy widths | final val loss (mean ± std) | seeds | step_avg | tokens/s "
                  "| parameters |", "|---|---|---|---|---|---|---|---|"]
        for arm, a in block["arms"].items():
            loss = "-" if a["mean"] is None else f"{a['mean']:.4f}" + (f" ± {a['std']:.4f}" if a["std"] else "")
            seeds = ", ".join(f"{x:.4f}" if x is not None else s for x, s in zip(a["final_val_loss"], a["status"]))
            lines.append(f"| {arm} | {a['lr']:.3g} | {' / '.join(f'{x:.3g}' for x in a['proxy_best_lr'].values())} "
                         f"| {loss} | {seeds} | "
                         + (f"{a['step_avg_ms']:.1f} ms | {compare.fmt_count(a['tokens_per_s'])} | {a['params']:,} |"
                            if a["step_avg_ms"] else "- | - | - |"))
        lines += ["", f"| vs {plan.baseline} | n | tokens to target | speedup (tokens) [95% CI] | time to target "
                  "| speedup (time) [95% CI] | final loss diff | p (Welch) |", "|---|---|---|---|---|---|---|---|"]
        for arm, v in block["vs_baseline"].items():
            tokens = compare.fmt_count(v["tokens_to_target"]) if v["reached"] else "not reached"
            time_s = f"{v['time_to_target'] / 1000:.1f} s" if v["time_to_target"] is not None else "not reached"
            p = f"{v['p_value']:.3g}" if v["p_value"] is not None else "n/a"
            tokens_speedup = ratio(v["tokens_speedup"], v["tokens_speedup_ci"])
            if not v["reached"]:
                tokens_speedup = f"not reached: ended {v['gap_at_end']:+.4f} from the target"
            lines.append(f"| {arm} | {v['n'][0]}+{v['n'][1]} | {tokens} | {tokens_speedup} | {time_s} | "
                         f"{ratio(v['time_speedup'], v['time_speedup_ci'])} | {v['final_loss_diff']:+.4f} | {p} |")
        lines += ["", f"Target val loss {next(iter(block['vs_baseline'].values()))['target']:.4f}."
                  if block["vs_baseline"] else "", "", "Fairness audit:", ""]
        lines += [f"- {'PASS' if c['pass'] else 'FAIL'} {c['check']}: {c['detail']}" for c in block["audit"]]
        lines += ["", f"![val loss vs tokens](L{length}_W{width}_val_vs_tokens.png)", ""]
    if len(blocks) > 1:
        lines += ["## Speedup against size", "", "| arm | sequence length | width | parameters | speedup (tokens) "
                  "[95% CI] | speedup (time) [95% CI] |", "|---|---|---|---|---|---|"]
        for (length, width), block in blocks.items():
            for arm, v in block["vs_baseline"].items():
                params = block["arms"][arm]["params"]
                lines.append(f"| {arm} | {length} | {width} | {compare.fmt_count(params)} | "
                             f"{ratio(v['tokens_speedup'], v['tokens_speedup_ci'])} | "
                             f"{ratio(v['time_speedup'], v['time_speedup_ci'])} |")
        lines.append("")
    lines += ["![speedup vs parameters](speedup_vs_params.png)", "", "![lr search](lr_search.png)", ""]
    return "\n".join(lines)


def plots(plan, results, found, blocks, chosen):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for (length, width), block in blocks.items():
        groups = [SimpleNamespace(label=f"{arm} lr {block['arms'][arm]['lr']:.3g}", runs=rs,
                                  curve=compare.mean_curve(rs), tokens_per_step=rs[0].hp["batch_size"] * length)
                  for arm, rs in chosen[(length, width)].items() if rs]
        if block["vs_baseline"]:
            target = next(iter(block["vs_baseline"].values()))["target"]
            paths += compare.plot_val(plt, groups, plan.out, f"L{length}_W{width}", target, kinds=("tokens",))[0]
    panels = []
    for arm in plan.arms:
        for length in plan.lengths:
            f = found[(arm, length)]
            lines = []
            for w in sorted(set(plan.proxies + plan.widths)):
                points = [(lr_of(plan, arm, k), *res) for (a, L, ww, k, s), res in results.items()
                          if (a, L, ww, s) == (arm, length, w, 0)]
                pick = f.bests.get(w, f.chosen.get(w))
                lines.append((f"width {w}" + (" (target)" if w in plan.widths else ""), points,
                              lr_of(plan, arm, pick)))
            panels.append((f"{arm}, sequence length {length}", lines))
    paths.append(os.path.join(plan.out, "lr_search.png"))
    runs.plot_lr(panels, paths[-1])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), squeeze=False)
    for ax, axis in zip(axes[0], ("tokens", "time")):
        i = 0
        for arm in plan.arms:
            for length in plan.lengths:
                pts = [(block["arms"][arm]["params"], v[f"{axis}_speedup"], v[f"{axis}_speedup_ci"])
                       for (L, w), block in blocks.items() for a, v in block["vs_baseline"].items()
                       if (a, L) == (arm, length) and v[f"{axis}_speedup"] is not None]
                if not pts:
                    continue
                x, y, ci = zip(*sorted(pts))
                low = [v - c[0] if c else 0 for v, c in zip(y, ci)]
                high = [c[1] - v if c else 0 for v, c in zip(y, ci)]
                ax.errorbar(x, y, yerr=[low, high], fmt="o-", capsize=4, color=f"C{i}",
                            label=f"{arm}, sequence length {length}")
                i += 1
        ax.axhline(1.0, color="gray", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set(xlabel="parameters", ylabel=f"speedup in {axis} vs {plan.baseline}",
               title=f"speedup in {'train_time' if axis == 'time' else 'tokens'} (95% bootstrap CI)")
        ax.grid(alpha=0.3)
        if i:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no arm reached the target", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    paths.append(os.path.join(plan.out, "speedup_vs_params.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_search(plan, results, stages):
    path = os.path.join(plan.out, "search.tsv")
    with open(path, "w") as f:
        f.write("arm\tsequence_length\twidth\tlr\tval_loss\tlog\tstage\n")
        for key in sorted(k for k in results if stages[k] & {"search", "confirm"}):
            arm, length, width, k, _ = key
            status, loss = results[key]
            value = f"{loss:.4f}" if status == "ok" else status
            stage = "+".join(sorted(stages[key] & {"search", "confirm"}))
            f.write(f"{arm}\t{length}\t{width}\t{lr_of(plan, arm, k):.4g}\t{value}\t"
                    f"logs/{run_id(plan, key)}.txt\t{stage}\n")
    return path


def verdict_json(plan, blocks, head, command_line):
    out = {"command": command_line, "headline": head, "baseline": plan.baseline, "seeds": plan.seeds,
           "method": {"interval": f"95% percentile bootstrap, {plan.resamples} resamples of each arm's seeds",
                      "p_value": "Welch's t-test on final val losses"},
           "sequence_lengths": plan.lengths, "widths": plan.widths, "proxy_widths": plan.proxies}
    if len(blocks) == 1:
        out.update(next(iter(blocks.values())))
        return out
    for (length, width), block in blocks.items():
        out.setdefault(str(length), {})[str(width)] = block
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    plan = parse(argv)
    print(plan_text(plan), flush=True)
    if plan.dry_run:
        return
    os.makedirs(plan.logs, exist_ok=True)
    results, found, stages = run_protocol(plan)
    blocks, chosen = analyze(plan, results, found)
    command_line = shlex.join(["tune/fair.py"] + argv)
    head = headline(plan, blocks)
    paths = [write_search(plan, results, stages)]
    paths += plots(plan, results, found, blocks, chosen)
    with open(os.path.join(plan.out, "verdict.json"), "w") as f:
        json.dump(verdict_json(plan, blocks, head, command_line), f, indent=1)
    with open(os.path.join(plan.out, "verdict.md"), "w") as f:
        f.write(markdown(plan, blocks, head, command_line))
    failed = sum(not c["pass"] for block in blocks.values() for c in block["audit"])
    print(head)
    print(f"audit: {failed} check(s) failed" if failed else "audit: every check passed")
    print(f"verdict: {os.path.join(plan.out, 'verdict.md')} (and verdict.json, search.tsv, "
          f"{', '.join(os.path.basename(p) for p in paths[1:])})")


if __name__ == "__main__":
    main()
