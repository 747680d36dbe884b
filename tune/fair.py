#!/usr/bin/env python3
"""The fair A/B in one command: a learning-rate search per arm, a confirmation at each target width, evaluation
seeds, record runs that must reach the strongest baseline's loss in fewer steps, and a verdict with 95% intervals
that audits its own fairness and gives no headline when a check fails. tune/README.md describes the protocol.

python -m tune.fair --out logs/fair                           # gpt2, gpt2_qk, ngpt2 at the scripts' own defaults
python -m tune.fair --out logs/fair --dry_run                 # the plan and what it costs, only
python -m tune.fair --out logs/fair --arms gpt2,ngpt2 --baseline gpt2 --seeds 8 --num_iterations=2000
python -m tune.fair --out logs/fair --arms ng,ng_bf16 --baseline ng --arm ng=train_ngpt2.py: \\
    --arm ng_bf16=train_ngpt2.py:--param_dtype=bfloat16
python -m tune.fair --out logs/scale --widths 384,768 --sequence_lengths 1024,4096

Every unknown --name=value goes to every run (arm flags after it), so the target is the scripts' own defaults
unless it says otherwise. Stages per sequence length, every arm at once, each stage's runs started in an order
that alternates arms and seeds:
  search   proxy widths (default: a quarter and a half of the largest target width), seed 0, --mup_base_width at
           the largest target width: a factor-2 grid of --grid lrs around the arm's default, up to 3 more factor-2
           steps past an edge that holds the best, then sqrt(2) on both sides of the best.
  confirm  each target width, seed 0: lr/2, lr, 2lr around the largest proxy's best, extended and refined the same
           way when an edge holds the best.
  choose   seed 1 at the best and its tried neighbours; the lr with the lowest mean over seeds 0-1 is chosen, and
           a choice at an end of its candidates adds a sqrt(2) step past it on both seeds (up to 3 times).
  seeds    --seeds evaluation seeds (2..) at the chosen lr: they took no part in choosing it.
  record   each arm whose mean curve reaches the strongest baseline's final mean val loss in fewer steps, trained
           again for that many steps (schedule scaled) on --seeds fresh seeds; one-sided Welch p < 0.01 confirms it,
           else 25% longer, up to one step short of the full length.
Runs have fixed ids and --resume=auto: the same command again reads finished (also diverged and crashed) runs
back and continues killed ones (--save_every=N gives checkpoints to continue from). Exit status 0 with a verdict,
3 when the audit failed (verdict.md starts NO VERDICT; its numbers are provisional).
"""
import argparse
import importlib
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
from tune import compare
from tune import memory, runs, stats

ARMS = {"gpt2": ("train_gpt2.py", []), "gpt2_qk": ("train_gpt2.py", ["--qk_norm=1"]), "ngpt2": ("train_ngpt2.py", [])}
TITLES = {"gpt2": "GPT-2", "gpt2_qk": "GPT-2+QK-norm", "ngpt2": "nGPT"}
SET_HERE = ["seed", "data_seed", "run_id", "log_dir", "resume", "mup_base_width"]  # per run, by this tool
MAX_EXTEND = 3
CHOOSE = 2  # seeds 0..CHOOSE-1 choose the lr; evaluation and record seeds come after
RECORD_P = 0.01  # modded-nanogpt's bar for a record
LONGER = 1.25
FINAL = ("ok", "diverged", "crashed")  # outcomes read back; killed runs continue


class Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.exit(f"error: {message} (python -m tune.fair --help lists the options)")


def int_list(text):
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return [int(x) for x in text.split(",")]


def load_script(script):
    """The training script as a module (imported once), for its parse_args."""
    return importlib.import_module(os.path.splitext(script)[0].replace(os.sep, "."))


def script_hp(plan, arm, flags, what):
    """The arm's script parses its flags (a bad one is its one-line error, named with the arm)."""
    try:
        return load_script(plan.arms[arm][0]).parse_args(flags)
    except SystemExit as e:
        sys.exit(f"error: arm {arm} ({what}): {str(e.code).removeprefix('error: ')}")


def parse(argv):
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--out", required=True, help="folder for the runs, the verdict and the plots")
    ap.add_argument("--arms", help=f"comma-separated, from {', '.join(ARMS)} and the --arm "
                    "names (default: the built-in three and every --arm)")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=SCRIPT:FLAGS",
                    help="an arm of your own, e.g. ngpt2_bf16=train_ngpt2.py:--param_dtype=bfloat16 (flags "
                         "space-separated); the script needs a parse_args(argv) and the scripts' log lines")
    ap.add_argument("--baseline", default="",
                    help="arm or arms; each target's headline is against the one with the lowest mean final val loss "
                         "(default: those of gpt2, gpt2_qk among the arms)")
    ap.add_argument("--seeds", type=int, default=5, help="evaluation seeds per arm, and record-run seeds (default 5)")
    ap.add_argument("--widths", type=int_list, help="target widths W1,W2,... (default: the target's n_embd)")
    ap.add_argument("--sequence_lengths", type=int_list, help="L1,L2,... (default: the target's sequence_length)")
    ap.add_argument("--proxy_widths", type=int_list, help="search widths (default: largest target width /4 and /2)")
    ap.add_argument("--same_batch", action="store_true",
                    help="keep batch_size sequences at every sequence length (default: the same tokens per step)")
    ap.add_argument("--grid", type=int, default=5, help="learning rates in the first factor-2 grid (odd; default 5)")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization assumed for GPU-hours (0.4)")
    ap.add_argument("--gpu", default="H100 SXM",
                    help="GPU whose dense bf16 peak prices the plan, from bench.py's table (default H100 SXM)")
    ap.add_argument("--parallel", type=int, default=0, help="runs at a time (default: one per GPU, 1 on CPU)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the runs")
    ap.add_argument("--dry_run", action="store_true", help="print the plan and its cost and exit")
    args, extra = ap.parse_known_args(argv)
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            sys.exit(f"error: expected --name=value for the training scripts, got {arg!r} (python -m tune.fair --help)")
        if arg[2:].partition("=")[0] in SET_HERE:
            sys.exit(f"error: {arg}: fair.py sets --{arg[2:].partition('=')[0]} for every run (seeds: --seeds N)")
    if args.seeds < 2 or args.grid < 1 or args.grid % 2 == 0:
        sys.exit("error: --seeds must be >= 2 (an interval needs two) and --grid an odd number >= 1")
    if not 0 < args.mfu <= 1:
        sys.exit(f"error: --mfu is a fraction of the GPU's peak, in (0, 1], got {args.mfu}")
    known = dict(ARMS)
    for spec in args.arm:
        name, eq, rest = spec.partition("=")
        script, _, flags = rest.partition(":")
        if not eq or not re.fullmatch(r"[\w.-]+", name) or not script.endswith(".py"):
            sys.exit(f"error: --arm expects NAME=SCRIPT:FLAGS, e.g. ngpt2_bf16=train_ngpt2.py:--param_dtype=bfloat16, "
                     f"got {spec!r}")
        if not os.path.isfile(os.path.join(ROOT, script)):
            sys.exit(f"error: --arm {spec}: no script {script} in {ROOT}")
        if name in known:
            sys.exit(f"error: --arm {spec}: an arm named {name} is already in the comparison")
        known[name] = (script, flags.split())
    names = args.arms.split(",") if args.arms else list(known)
    arms = {}
    for name in names:
        if name not in known:
            sys.exit(f"error: unknown arm {name!r}; known: {', '.join(known)} (add one with --arm NAME=SCRIPT:FLAGS)")
        arms[name] = known[name]
    if len(arms) < 2:
        sys.exit("error: an A/B needs at least two arms; add one with --arms or --arm")
    baselines = args.baseline.split(",") if args.baseline else [b for b in ("gpt2", "gpt2_qk") if b in arms]
    if not baselines:
        sys.exit("error: no --baseline given and neither gpt2 nor gpt2_qk is among the arms; name one with --baseline")
    for name in baselines:
        if name not in arms:
            sys.exit(f"error: --baseline {name} is not one of the arms ({', '.join(arms)})")
    if len(baselines) == len(arms):
        sys.exit("error: every arm is a --baseline; leave at least one arm to measure against them")
    peak = memory.peak_flops(args.gpu)
    if not peak:
        sys.exit(f"error: --gpu {args.gpu!r}: no peak TFLOPS known for it; name one of bench.py's PEAK_BF16_TFLOPS")

    plan = SimpleNamespace(arms=arms, baselines=baselines, seeds=args.seeds, grid=args.grid, extra=extra,
                           out=os.path.abspath(args.out), python=args.python, parallel=args.parallel,
                           dry_run=args.dry_run, mfu=args.mfu, gpu=args.gpu, peak=peak)
    plan.logs = os.path.join(plan.out, "logs")
    target = {arm: script_hp(plan, arm, extra + arms[arm][1], "its target") for arm in arms}
    hp = target[baselines[0]]
    plan.target = target
    plan.center = {arm: target[arm].learning_rate for arm in arms}
    plan.data_seed = {arm: hasattr(target[arm], "data_seed") for arm in arms}
    plan.steps = hp.num_iterations
    if any(t.num_iterations != plan.steps for t in target.values()):
        sys.exit("error: the arms train for different --num_iterations; a fair A/B gives every arm the same steps")
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
                script_hp(plan, arm, command(plan, (arm, length, width, 0, 0, plan.steps))[2:],
                          f"width {width}, length {length}")
    return plan


def lr_of(plan, arm, k):
    """The lr k half-steps (factors of sqrt 2) from the arm's default: integers keep the run ids exact."""
    return plan.center[arm] * 2 ** (k / 2)


def run_id(plan, key):
    arm, length, width, k, seed, steps = key
    name = f"{arm}_L{length}_w{width}_lr{lr_of(plan, arm, k):.4g}_s{seed}"
    return name if steps == plan.steps else f"{name}_n{steps}"


def command(plan, key):
    """A run's command line; a record run (steps below the target's) scales its warmup and cooldown in proportion."""
    arm, length, width, k, seed, steps = key
    script, flags = plan.arms[arm]
    batch, device = plan.batch[length]
    hp = plan.target[arm]
    more = [f"--data_seed={seed}"] if plan.data_seed[arm] else []
    if steps != plan.steps:
        more += [f"--num_iterations={steps}"] + [f"--{name}={round(getattr(hp, name) * steps / plan.steps)}"
                                                 for name in ("warmup_iters", "warmdown_iters") if hasattr(hp, name)]
    return [plan.python, os.path.join(ROOT, script)] + plan.extra + flags + [
        f"--n_embd={width}", f"--n_head={width // plan.head_dim}", f"--sequence_length={length}",
        f"--batch_size={batch}", f"--device_batch_size={device}", f"--mup_base_width={plan.ref}",
        f"--learning_rate={lr_of(plan, arm, k):.6g}", f"--seed={seed}", f"--log_dir={plan.logs}",
        f"--run_id={run_id(plan, key)}", "--resume=auto"] + more


def rank(result, k):
    status, loss = result
    if status == "ok":
        return (0, loss)
    return (1, k)


def best_k(results, arm, length, width, ks, steps, seeds=(0,)):
    """The k of ks with the lowest mean final loss over seeds; failed runs rank below every finished one (among
    themselves, lower lr first)."""
    def score(k):
        ranks = [rank(results[(arm, length, width, k, s, steps)], k) for s in seeds]
        return max(r[0] for r in ranks), np.mean([r[1] for r in ranks])
    return min(ks, key=score)


def bracket(plan, arm, length, ks, results, stage):
    """Seed-0 runs at {width: [k]}: up to MAX_EXTEND factor-2 steps past an edge that holds the best, then sqrt(2) on
    both sides of the best (yields (stage, runs); ks grows in place). Returns {width: best bracketed by worse runs}."""
    def best(w):
        return best_k(results, arm, length, w, ks[w], plan.steps)
    for _ in range(MAX_EXTEND):
        more = [(w, best(w) + (-2 if best(w) == min(ks[w]) else 2)) for w in ks if best(w) in (min(ks[w]), max(ks[w]))]
        if not more:
            break
        for w, k in more:
            ks[w].append(k)
        yield stage, [(arm, length, w, k, 0, plan.steps) for w, k in more]
    bracketed = {w: min(ks[w]) < best(w) < max(ks[w]) and results[(arm, length, w, best(w), 0, plan.steps)][0] == "ok"
                 for w in ks}
    refine = [(w, best(w) + d) for w in ks for d in (-1, 1) if best(w) + d not in ks[w]]
    for w, k in refine:
        ks[w].append(k)
    yield stage, [(arm, length, w, k, 0, plan.steps) for w, k in refine]
    return bracketed


def arm_protocol(plan, arm, length, results, found):
    """One arm at one sequence length, stage by stage: yields (stage, run keys) and finds the results of those runs
    in `results` when it continues; what it chose goes to found[(arm, length)]."""
    half, n = plan.grid // 2, plan.steps
    ks = {w: list(range(-2 * half, 2 * half + 1, 2)) for w in plan.proxies}
    yield "search", [(arm, length, w, k, 0, n) for w in plan.proxies for k in ks[w]]
    bracketed = yield from bracket(plan, arm, length, ks, results, "search")
    bests = {w: best_k(results, arm, length, w, ks[w], n) for w in plan.proxies}
    picked = bests[max(plan.proxies)]
    confirm = {w: [picked - 2, picked, picked + 2] for w in plan.widths}
    yield "confirm", [(arm, length, w, k, 0, n) for w in plan.widths for k in confirm[w]]
    confirmed = yield from bracket(plan, arm, length, confirm, results, "confirm")
    near = {}
    for w in plan.widths:  # the best and its nearest tried neighbours, each on seeds 0..CHOOSE-1
        best, tried = best_k(results, arm, length, w, confirm[w], n), sorted(confirm[w])
        i = tried.index(best)
        near[w] = tried[max(0, i - 1):i + 2]
    yield "choose", [(arm, length, w, k, s, n) for s in range(1, CHOOSE) for w in plan.widths for k in near[w]]

    def choice(w):
        return best_k(results, arm, length, w, near[w], n, range(CHOOSE))
    for _ in range(MAX_EXTEND):  # a choice at an end of its candidates: one sqrt(2) step past it, on every seed
        more = [(w, choice(w) + (-1 if choice(w) == near[w][0] else 1)) for w in plan.widths
                if choice(w) in (near[w][0], near[w][-1])]
        if not more:
            break
        for w, k in more:
            near[w] = sorted(near[w] + [k])
        yield "choose", [(arm, length, w, k, s, n) for s in range(CHOOSE) for w, k in more]
    chosen = {w: choice(w) for w in plan.widths}
    yield "seeds", [(arm, length, w, chosen[w], s, n) for s in eval_seeds(plan) for w in plan.widths]
    found[(arm, length)] = SimpleNamespace(ks=ks, bracketed=bracketed, bests=bests, picked=picked, confirm=confirm,
                                           confirmed=confirmed, near=near, chosen=chosen, record={})


def eval_seeds(plan):
    return range(CHOOSE, CHOOSE + plan.seeds)


def record_seeds(plan):
    return range(CHOOSE + plan.seeds, CHOOSE + 2 * plan.seeds)


def record_protocol(plan, arm, length, width, results, found):
    """The record runs of one arm at one target: at the step where its mean curve reaches the strongest baseline's
    final mean val loss (rounded up), then 25% longer until one-sided Welch p < RECORD_P or one step short of the full
    length (a run as long as the baseline's would show a lower loss, not a speedup)."""
    chosen = {a: load(plan, seed_keys(plan, found, a, length, width), results) for a in plan.arms}
    base = strongest(plan, chosen)
    f = found[(arm, length)]
    f.record[width] = SimpleNamespace(baseline=base, attempts=[], confirmed=None)
    if base is None or arm == base or not chosen[arm]:
        return
    _, arm_x, _ = stats.to_target(curves(chosen[base], "step"), curves(chosen[arm], "step"))
    if arm_x is None or math.ceil(arm_x) >= plan.steps:  # a run as long as the baseline's shows no speedup
        return
    steps = max(1, math.ceil(arm_x))
    base_finals = [final_loss(r) for r in chosen[base]]
    while True:
        keys = [(arm, length, width, f.chosen[width], s, steps) for s in record_seeds(plan)]
        yield "record", keys
        finals = [results[k][1] for k in keys if results[k][0] == "ok"]
        p = stats.below(finals, base_finals) if len(finals) == len(keys) else None
        f.record[width].attempts.append({"steps": steps, "mean_final_val_loss": float(np.mean(finals)) if finals
                                         else None, "p": p})
        if p is not None and p < RECORD_P:
            f.record[width].confirmed = steps
            return
        if steps >= plan.steps - 1:
            return
        steps = min(plan.steps - 1, math.ceil(steps * LONGER))


def lockstep(gens):
    """Runs generators of (stage, keys) side by side: each round yields every live one's next keys, interleaved
    (one of each arm in turn), so no arm's runs cluster in one period of machine load."""
    live = {}
    for g in gens:
        live[g] = next(g, None)
    while any(live.values()):
        batches = [(stage, keys) for stage, keys in filter(None, live.values())]
        yield [(stage, keys[i]) for i in range(max(len(k) for _, k in batches)) for stage, keys in batches
               if i < len(keys)]
        live = {g: next(g, None) for g, step in live.items() if step}


def protocol(plan, length, results, found):
    """Every arm at one sequence length: yields lists of (stage, key) to run."""
    yield from lockstep([arm_protocol(plan, arm, length, results, found) for arm in plan.arms])
    yield from lockstep([record_protocol(plan, arm, length, width, results, found)
                         for width in plan.widths for arm in plan.arms])


def planned_runs(plan):
    """{stage: (fewest, most) runs of one arm at one sequence length, {width: share of them}}."""
    p, w = len(plan.proxies), len(plan.widths)
    at_proxies = {x: 1 / p for x in plan.proxies}
    at_targets = {x: 1 / w for x in plan.widths}
    return {"search": ((plan.grid + 2) * p, (plan.grid + MAX_EXTEND + 2) * p, at_proxies),
            "confirm": (3 * w, (3 + MAX_EXTEND + 2) * w, at_targets),
            "choose": (2 * (CHOOSE - 1) * w, 3 * (CHOOSE - 1) * w, at_targets),
            "seeds": (plan.seeds * w, plan.seeds * w, at_targets),
            "record": (0, plan.seeds * w, at_targets)}


def parameters(plan, arm, length, width):
    """The arm's parameter count at a width: the built-in arms' from tune/memory.py, any other arm's from a log of
    it in OUT, else None (unknown: its script is a black box)."""
    if arm in ARMS:
        from tune import memory
        hp = script_hp(plan, arm, command(plan, (arm, length, width, 0, 0, plan.steps))[2:], f"width {width}")
        return memory.parameters(load_script(plan.arms[arm][0]), hp)
    for name in sorted(os.listdir(plan.logs)) if os.path.isdir(plan.logs) else []:
        if name.startswith(f"{arm}_L{length}_w{width}_") and name.endswith(".txt"):
            params = compare.parse_log(os.path.join(plan.logs, name)).params
            if params:
                return params
    return None


def run_flops(plan, arm, length, width):
    """Training FLOPs of one full-length run (bench.flops_per_token: 6 x the parameters other than the input
    embedding, plus attention, per token), None when the parameter count or the shape is unknown."""
    params = parameters(plan, arm, length, width)
    hp = script_hp(plan, arm, command(plan, (arm, length, width, 0, 0, plan.steps))[2:], f"width {width}")
    if params is None or not all(hasattr(hp, x) for x in ("vocab_size", "n_embd", "n_layer", "sequence_length")):
        return None
    return memory.flops_per_token({"params": params}, hp) * plan.batch[length][0] * length * plan.steps


def plan_text(plan):
    per = planned_runs(plan)
    flops = {(arm, length, w): run_flops(plan, arm, length, w) for arm in plan.arms for length in plan.lengths
             for w in set(plan.proxies + plan.widths)}
    gpu_s = plan.peak * plan.mfu

    def span(lo, hi, text):
        return text(lo) if text(lo) == text(hi) else f"{text(lo)}-{text(hi)}"

    def cost(runs_lo, runs_hi, tokens_lo, tokens_hi, f_lo, f_hi):
        text = (f"{span(runs_lo, runs_hi, lambda x: f'{x:.0f}')} runs, "
                f"{span(tokens_lo, tokens_hi, compare.fmt_count)} tokens")
        if not np.isfinite(f_lo):
            return text + ", FLOPs and GPU-hours unknown (an arm's parameter count is unknown before its first log)"
        return (text + f", {span(f_lo, f_hi, lambda x: f'{x:.3g}')} FLOPs, "
                f"{span(f_lo / gpu_s / 3600, f_hi / gpu_s / 3600, lambda x: f'{x:.3g}')} GPU-hours")
    lines = [f"fair A/B: arms {', '.join(plan.arms)} (baseline: the strongest of {', '.join(plan.baselines)}); "
             f"sequence lengths {', '.join(map(str, plan.lengths))}; target widths {', '.join(map(str, plan.widths))}; "
             f"proxy widths {', '.join(map(str, plan.proxies))} (head_dim {plan.head_dim}, mup_base_width "
             f"{plan.ref}); lr chosen on seeds 0-{CHOOSE - 1}, evaluation seeds {eval_seeds(plan)[0]}-"
             f"{eval_seeds(plan)[-1]}, record seeds {record_seeds(plan)[0]}-{record_seeds(plan)[-1]}; "
             f"{plan.steps} steps per run"]
    for length in plan.lengths:
        batch, device = plan.batch[length]
        lines.append(f"  length {length}: batch {batch} x {length} = {batch * length} tokens per step "
                     f"(micro-batch {device}), {compare.fmt_count(batch * length * plan.steps)} tokens per run")
    lines.append(f"  cost at MFU {plan.mfu:g} of one {plan.gpu} ({plan.peak / 1e12:.0f} dense bf16 TFLOPS), an "
                 f"assumption (--mfu, --gpu); FLOPs = 6 x parameters but the input embedding x tokens + attention "
                 f"(bench.py)")
    total = np.zeros(6)
    for stage, (lo, hi, share) in per.items():
        row = np.zeros(6)
        for arm in plan.arms:
            for length in plan.lengths:
                tokens = plan.batch[length][0] * length * plan.steps
                f = sum(flops[(arm, length, w)] * s for w, s in share.items()) if all(
                    flops[(arm, length, w)] for w in share) else math.nan
                row += [lo, hi, lo * tokens, hi * tokens, lo * f, hi * f]
        if stage == "record":
            lines.append(f"  record   per attempt at most {cost(*row[[1, 1, 3, 3, 5, 5]])} (shorter than "
                         f"full runs; how many attempts depends on the crossings, so not in the total)")
            continue
        total += row
        lines.append(f"  {stage:<8} " + cost(*row))
    lines.append("  total    " + cost(*total) + f"; logs in {plan.logs}")
    return "\n".join(lines)


def run_protocol(plan):
    """Every sequence length's protocol, stages started as soon as the previous one ends, each stage's runs in the
    order the protocol gives (alternating arms and seeds); returns (results {key: (status, loss)}, found,
    stages {key: set of stage names})."""
    import torch
    from tqdm import tqdm
    gpus = torch.cuda.device_count()
    pool = runs.Pool(plan.parallel or max(1, gpus), gpus)
    results, found, stages, queue, waiting = {}, {}, {}, [], {}
    gens = {length: protocol(plan, length, results, found) for length in plan.lengths}
    planned = sum(lo for lo, _, _ in planned_runs(plan).values()) * len(gens) * len(plan.arms)
    bar = tqdm(total=planned, desc="fair", unit="run")
    counts = dict(read_back=0, trained=0)
    started = {}

    def advance(g):
        while True:  # a stage whose runs are all known already is passed at once
            try:
                batch = next(gens[g])
            except StopIteration:
                waiting.pop(g, None)
                return
            waiting[g] = [key for _, key in batch]
            for stage, key in batch:
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
            if not all(key in results for key in waiting[g]):
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


def seed_keys(plan, found, arm, length, width):
    return [(arm, length, width, found[(arm, length)].chosen[width], s, plan.steps) for s in eval_seeds(plan)]


def load(plan, keys, results):
    """The parsed logs of the finished runs among keys."""
    return [compare.parse_log(os.path.join(plan.logs, run_id(plan, k) + ".txt")) for k in keys if results[k][0] == "ok"]


def curves(group, axis):
    """(losses, xs) arrays (seeds x val points) of a group's runs at the val steps all of them logged; xs in steps,
    tokens or train_time (ms)."""
    steps = sorted(set.intersection(*[{s for s, (loss, _) in r.val.items() if math.isfinite(loss)} for r in group]))
    losses = np.array([[r.val[s][0] for s in steps] for r in group])
    xs = np.array([[r.val[s][1] if axis == "time" else s for s in steps] for r in group], dtype=float)
    if axis == "tokens":
        xs *= group[0].hp["batch_size"] * group[0].hp["sequence_length"]
    return losses, xs


def strongest(plan, chosen):
    """The baseline arm with the lowest mean final val loss at a target (None when no baseline finished a run)."""
    ran = [b for b in plan.baselines if chosen[b]]
    return min(ran, key=lambda b: np.mean([final_loss(r) for r in chosen[b]])) if ran else None


def versus(base, arm):
    """One arm against a baseline: tokens and time to the target with speedups and intervals, the final loss
    difference and Welch's t-test p-value (two-sided)."""
    import scipy.stats
    base_final = [final_loss(r) for r in base]
    arm_final = [final_loss(r) for r in arm]
    out = {"n": [len(base), len(arm)], "interval_method": f"95% {stats.METHOD}"}
    for axis in ("tokens", "time"):
        b, a = curves(base, axis), curves(arm, axis)
        base_x, arm_x, out["target"] = stats.to_target(b, a)
        out[f"{axis}_to_target"] = arm_x
        out[f"baseline_{axis}_to_target"] = base_x
        out[f"{axis}_speedup"] = stats.speedup(b, a)
        out[f"{axis}_speedup_ci"] = stats.jackknife_t(b, a) if out[f"{axis}_speedup"] else None
    out["reached"] = out["tokens_to_target"] is not None
    out["gap_at_end"] = float(np.mean(arm_final)) - out["target"]
    out["final_loss_diff"] = out["gap_at_end"]
    out["p_value"] = None
    if len(base) > 1 and len(arm) > 1:
        p = scipy.stats.ttest_ind(arm_final, base_final, equal_var=False).pvalue
        out["p_value"] = float(p) if math.isfinite(p) else None
    return out


def record_result(plan, found, results, arm, length, width, base_runs):
    """The record-run fields of vs_baseline: confirmed_steps, _p, _speedup (steps), _time_speedup, _attempts."""
    rec = found[(arm, length)].record[width]
    out = {"confirmed_steps": rec.confirmed, "confirmed_p": None, "confirmed_speedup": None,
           "confirmed_time_speedup": None, "confirmed_attempts": rec.attempts}
    if rec.confirmed:
        keys = [(arm, length, width, found[(arm, length)].chosen[width], s, rec.confirmed) for s in record_seeds(plan)]
        record = load(plan, keys, results)
        out["confirmed_p"] = rec.attempts[-1]["p"]
        out["confirmed_speedup"] = plan.steps / rec.confirmed
        out["confirmed_time_speedup"] = (np.mean([r.val[r.total_steps][1] for r in base_runs])
                                         / np.mean([r.val[r.total_steps][1] for r in record]))
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
    parts, ok = [], len(plan.proxies) > 1
    for arm in plan.arms:
        f = found[(arm, length)]
        spread = max(f.bests.values()) - min(f.bests.values())  # half-steps: 2 = a factor 2
        chosen_inside = f.near[width][0] < f.chosen[width] < f.near[width][-1]
        ok = ok and spread <= 2 and f.confirmed[width] and chosen_inside
        extended = min(f.confirm[width]) < f.picked - 2 or max(f.confirm[width]) > f.picked + 2
        best = best_k(results, arm, length, width, f.confirm[width], plan.steps)
        parts.append(f"{arm}: proxies {' / '.join(f'{lr_of(plan, arm, k):.3g}' for k in f.bests.values())}"
                     + (" (MOVED more than 2x)" if spread > 2 else "")
                     + f", best {lr_of(plan, arm, best):.3g} at width {width} among {len(f.confirm[width])} lrs"
                     + (" (extended past an edge of lr/2, lr, 2lr)" if extended else "")
                     + ("" if f.confirmed[width] else " (NOT bracketed)")
                     + f", chosen {lr_of(plan, arm, f.chosen[width]):.3g} on the mean of seeds 0-{CHOOSE - 1}"
                     + f" among {len(f.near[width])} lrs" + ("" if chosen_inside else " (NOT bracketed)"))
    if len(plan.proxies) < 2:
        parts.insert(0, "one proxy width: agreement across widths not checked")
    check("every arm's optimum transferred (proxies within 2x) and bracketed at the target width", ok,
          "; ".join(parts))
    bad = [f"{run_id(plan, key)}: {results[key][0]}" for arm in plan.arms
           for key in seed_keys(plan, found, arm, length, width) if results[key][0] != "ok"]
    check("no evaluation run diverged or crashed", not bad, "; ".join(bad) or f"all {plan.seeds} seeds of every arm ok")
    logs = {arm: chosen_runs[arm] for arm in plan.arms if chosen_runs[arm]}

    def same(fields):
        """(every arm's runs had the same settings, {arm: its settings})"""
        values = {arm: sorted({tuple(r.hp.get(f) for f in fields) for r in rs}) for arm, rs in logs.items()}
        return len({tuple(v) for v in values.values()}) == 1, values

    def show(values, text):
        return "; ".join(f"{arm}: {', '.join(text(*v) for v in vs)}" for arm, vs in values.items())
    ok, values = same(["batch_size", "sequence_length"])
    check("every arm saw the same tokens per step", ok, show(values, lambda b, s: f"{b} x {s} = {b * s}"))
    ok, values = same(["input_bin", "batch_size", "sequence_length", "num_iterations", "data_seed"])
    seeded = [arm for arm in logs if plan.data_seed[arm]]
    varied = ("init and data order (data_seed = seed)" if len(seeded) == len(logs) else
              f"init; data order for {', '.join(seeded) or 'no arm'} (the other scripts have no --data_seed)")
    order = {arm: sorted({f"{data}, {b} x {s}, {n} steps" for data, b, s, n, _ in vs}) for arm, vs in values.items()}
    check("every arm saw the same data order at each seed", ok,
          f"between seeds varied: {varied}; shared by every arm at a seed: shards, batch, length, steps and the data "
          f"order; " + "; ".join(f"{arm}: {' / '.join(order[arm])}, data_seed {', '.join(str(v[-1]) for v in vs)}"
                                 for arm, vs in values.items()))
    ok, values = same(["input_val_bin", "val_tokens"])
    check("every arm was validated on the same tokens", ok, show(values, lambda data, n: f"first {n} tokens of {data}"))
    epochs = {arm: max(r.data_epoch for r in rs) for arm, rs in logs.items()}
    wrapped = [arm for arm, e in epochs.items() if e]
    check("no arm's loader wrapped (data_epoch) unless all did", len(wrapped) in (0, len(epochs)),
          f"wrapped: {', '.join(f'{a} (epoch {epochs[a]})' for a in wrapped)}" if wrapped else "no loader wrapped")
    params = {arm: rs[0].params for arm, rs in logs.items()}
    base = params.get(plan.baselines[0])
    if base and all(params.values()):
        worst = max(abs(p - base) / base for p in params.values())
        check(f"parameter counts within 1% of {plan.baselines[0]}'s", worst < 0.01,
              ", ".join(f"{arm} {p:,} ({100 * (p - base) / base:+.2f}%)" for arm, p in params.items()))
    return checks


def analyze(plan, results, found):
    """{(length, width): {baseline, arms, vs_baseline, pairs, audit}} and the parsed evaluation runs
    {(length, width): {arm: [runs]}}."""
    blocks, chosen = {}, {}
    for length in plan.lengths:
        for width in plan.widths:
            arms, runs_of = {}, {}
            for arm in plan.arms:
                f = found[(arm, length)]
                keys = seed_keys(plan, found, arm, length, width)
                runs_of[arm] = rs = load(plan, keys, results)
                finals = [results[k][1] if results[k][0] == "ok" else None for k in keys]
                ok = [x for x in finals if x is not None]
                arms[arm] = {"lr": lr_of(plan, arm, f.chosen[width]),
                             "proxy_best_lr": {str(w): lr_of(plan, arm, k) for w, k in f.bests.items()},
                             "final_val_loss": finals, "seeds": [k[4] for k in keys],
                             "status": [results[k][0] for k in keys],
                             "mean": float(np.mean(ok)) if ok else None,
                             "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
                             "step_avg_ms": float(np.mean([r.step_avg_ms for r in rs])) if rs else None,
                             "tokens_per_s": float(np.mean([r.tokens_per_s for r in rs])) if rs else None,
                             "params": rs[0].params if rs else None}
            base = strongest(plan, runs_of)
            pairs = {b: {arm: versus(runs_of[b], runs_of[arm]) for arm in plan.arms if arm != b and runs_of[arm]}
                     for b in plan.baselines if runs_of[b]}
            vs = {arm: dict(v, **record_result(plan, found, results, arm, length, width, runs_of[base]))
                  for arm, v in pairs.get(base, {}).items()}
            blocks[(length, width)] = {"baseline": base, "arms": arms, "vs_baseline": vs, "pairs": pairs,
                                       "audit": audit(plan, length, width, found, results, runs_of)}
            chosen[(length, width)] = runs_of
    return blocks, chosen


def invalid_reasons(plan, blocks):
    reasons = []
    for (length, width), block in blocks.items():
        where = f"sequence length {length}, width {width}"
        reasons += [f"{where}: {c['check']}: {c['detail']}" for c in block["audit"] if not c["pass"]]
        if block["baseline"] is None:
            reasons.append(f"{where}: no baseline arm finished an evaluation run")
    return reasons


def title(arm):
    return TITLES.get(arm, arm)


def ratio(x, ci, n):
    """'1.61x [1.45-1.80] (jackknife-t, n=5+5)'; the interval is 'n/a' when a leave-one-out never reaches the
    target."""
    if x is None:
        return "not reached"
    interval = f"[{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "[n/a]"
    return f"{x:.2f}x {interval} (jackknife-t, n={n[0]}+{n[1]})"


def main_arm(plan, base):
    others = [arm for arm in plan.arms if arm not in plan.baselines] or [a for a in plan.arms if a != base]
    return "ngpt2" if "ngpt2" in others else others[0]


def headline(plan, blocks):
    """About the main arm (nGPT when it is in the A/B and not a baseline) at the largest target: the confirmed
    speedup of its record runs, with the curve estimate and its interval beside it."""
    length, width = max(plan.lengths), max(plan.widths)
    block = blocks[(length, width)]
    base = block["baseline"]
    where = f"at width {width}, sequence length {length}"
    if base is None:
        return f"No baseline arm finished an evaluation run {where} (see the audit)."
    arm = main_arm(plan, base)
    v = block["vs_baseline"].get(arm)
    against = f"{title(base)} (the strongest of {', '.join(plan.baselines)} here)"
    if v is None:
        return f"{title(arm)} vs {against} {where}: no finished runs to compare (see the audit)."
    if not v["reached"]:
        return (f"{title(arm)} did not reach the final val loss of {against} ({v['target']:.3f}) {where}: it ended "
                f"{v['gap_at_end']:+.3f} from it ({v['n'][1]} seeds).")
    curve = (f"Read off the mean curves: {ratio(v['tokens_speedup'], v['tokens_speedup_ci'], v['n'])} in tokens, "
             f"{ratio(v['time_speedup'], v['time_speedup_ci'], v['n'])} in training time.")
    if v["confirmed_steps"] is None:
        tried = ", ".join(f"{a['steps']} steps (p {a['p']:.3g})" if a["p"] is not None else f"{a['steps']} steps"
                          for a in v["confirmed_attempts"])
        return (f"{title(arm)} did not confirm a speedup over {against} {where}: no run shorter than "
                f"{plan.steps} steps reached its final val loss ({v['target']:.3f}) with one-sided Welch p < "
                f"{RECORD_P}" + (f" (tried {tried})" if tried else " (its mean curve does not cross it earlier)")
                + f". {curve}")
    return (f"{title(arm)} reached the final val loss of {against} ({v['target']:.3f}) in {v['confirmed_steps']} "
            f"steps instead of {plan.steps}, {where}: {v['confirmed_speedup']:.2f}x fewer tokens and "
            f"{v['confirmed_time_speedup']:.2f}x less training time, confirmed by {plan.seeds} runs of that length "
            f"(one-sided Welch p {v['confirmed_p']:.2g} < {RECORD_P}). Its lr was tuned for {plan.steps} steps, so "
            f"the confirmed figure is conservative. {curve}")


def method_text(plan):
    return (f"Method: each arm at its own lr, searched at proxy widths {', '.join(map(str, plan.proxies))} with "
            f"mup_base_width {plan.ref}, confirmed at each target width (extended past an edge up to {MAX_EXTEND} "
            f"times) and chosen on the mean of seeds 0-{CHOOSE - 1}; evaluated on {plan.seeds} other seeds "
            f"({eval_seeds(plan)[0]}-{eval_seeds(plan)[-1]}). Baseline: at each target the one of "
            f"{', '.join(plan.baselines)} with the lowest mean final val loss; target: its final mean val loss. "
            f"Speedup = baseline tokens (or train_time) to the target / the arm's, on mean-over-seeds curves, linear "
            f"interpolation at the first crossing. [low-high]: 95% {stats.METHOD} (tune/stats.py), n = seeds of the "
            f"baseline + the arm. p: Welch's t-test on the final val losses (two-sided). Record runs: an arm whose "
            f"mean curve crosses the target before step {plan.steps} is trained again for that many steps (warmup "
            f"and cooldown scaled) on seeds {record_seeds(plan)[0]}-{record_seeds(plan)[-1]}; confirmed when "
            f"one-sided Welch p < {RECORD_P} that its final val losses lie below the baseline's, else 25% longer, up "
            f"to one step short of the full length. Time: train_time from each run's log (the training loop's own "
            f"clock, validation left out); each stage's runs were started alternating arms and seeds, "
            f"{plan.parallel or 'one per GPU or'} {'at a time' if plan.parallel else '1 on CPU'}, so a busy period of "
            f"the machine falls on every arm alike; the record runs are a stage of their own, so their time ratio to "
            f"the baseline's evaluation runs is not interleaved and carries any change of load between the stages. "
            f"It assumes the arms ran on the same kind of machine under the same load: on a shared CPU step "
            f"times vary between runs (the interval carries that noise), on a dedicated GPU node much less.")


def markdown(plan, blocks, head, reasons, command_line):
    if reasons:
        lines = ["NO VERDICT: the audit failed; the numbers below are provisional.", ""] + [f"- {r}" for r in reasons]
        lines += ["", "# Fair A/B (provisional)", "", f"Provisional headline: {head}", ""]
    else:
        lines = ["# Fair A/B verdict", "", head, ""]
    lines += [f"Command: `{command_line}`", "", method_text(plan), ""]
    for (length, width), block in blocks.items():
        base = block["baseline"]
        params = block["arms"][base]["params"] if base else None
        lines += [f"## Sequence length {length}, width {width}"
                  + (f" ({compare.fmt_count(params)} parameters, {base})" if params else ""), "",
                  f"Baseline: {base} (lowest mean final val loss of {', '.join(plan.baselines)}).", "",
                  "| arm | lr | best lr at proxy widths | final val loss (mean ± std) | seeds | step_avg | tokens/s "
                  "| parameters |", "|---|---|---|---|---|---|---|---|"]
        for arm, a in block["arms"].items():
            loss = "-" if a["mean"] is None else f"{a['mean']:.4f}" + (f" ± {a['std']:.4f}" if a["std"] else "")
            seeds = ", ".join(f"{x:.4f}" if x is not None else s for x, s in zip(a["final_val_loss"], a["status"]))
            lines.append(f"| {arm} | {a['lr']:.3g} | {' / '.join(f'{x:.3g}' for x in a['proxy_best_lr'].values())} "
                         f"| {loss} | {seeds} | "
                         + (f"{a['step_avg_ms']:.1f} ms | {compare.fmt_count(a['tokens_per_s'])} | "
                            + (f"{a['params']:,} |" if a["params"] else "unknown |") if a["step_avg_ms"] else
                            "- | - | - |"))
        for b, pair in block["pairs"].items():
            lines += ["", f"| vs {b} | tokens to target | speedup (tokens) [95% CI] | time to target "
                      "| speedup (time) [95% CI] | final loss diff | p (Welch) |", "|---|---|---|---|---|---|---|"]
            for arm, v in pair.items():
                tokens = compare.fmt_count(v["tokens_to_target"]) if v["reached"] else "not reached"
                time_s = f"{v['time_to_target'] / 1000:.1f} s" if v["time_to_target"] is not None else "not reached"
                p = f"{v['p_value']:.3g}" if v["p_value"] is not None else "n/a"
                tokens_speedup = ratio(v["tokens_speedup"], v["tokens_speedup_ci"], v["n"])
                if not v["reached"]:
                    tokens_speedup = f"not reached: ended {v['gap_at_end']:+.4f} from the target"
                lines.append(f"| {arm} | {tokens} | {tokens_speedup} | {time_s} | "
                             f"{ratio(v['time_speedup'], v['time_speedup_ci'], v['n'])} | "
                             f"{v['final_loss_diff']:+.4f} | {p} |")
            if pair:
                lines += ["", f"Target val loss {next(iter(pair.values()))['target']:.4f} ({b}'s final mean)."]
        lines += ["", f"Record runs against {base}:", ""]
        for arm, v in block["vs_baseline"].items():
            tried = "; ".join(f"{a['steps']} steps: mean final {a['mean_final_val_loss']:.4f}, p "
                              + (f"{a['p']:.3g}" if a["p"] is not None else "n/a")
                              for a in v["confirmed_attempts"] if a["mean_final_val_loss"] is not None)
            if v["confirmed_steps"]:
                result = (f"confirmed at {v['confirmed_steps']} steps: {v['confirmed_speedup']:.2f}x in tokens, "
                          f"{v['confirmed_time_speedup']:.2f}x in time")
            else:
                result = ("not confirmed" if tried else
                          "no record run (its mean curve does not cross the target earlier)")
            lines.append(f"- {arm}: {result}" + (f" ({tried})" if tried else ""))
        lines += ["", "Fairness audit:", ""]
        lines += [f"- {'PASS' if c['pass'] else 'FAIL'} {c['check']}: {c['detail']}" for c in block["audit"]]
        lines += ["", f"![val loss vs tokens](L{length}_W{width}_val_vs_tokens.png)", ""]
    if len(blocks) > 1:
        lines += ["## Speedup against size (against each target's baseline)", "",
                  "| arm | sequence length | width | baseline | parameters | speedup (tokens) [95% CI] "
                  "| speedup (time) [95% CI] | confirmed (steps) |", "|---|---|---|---|---|---|---|---|"]
        for (length, width), block in blocks.items():
            for arm, v in block["vs_baseline"].items():
                params = block["arms"][arm]["params"]
                lines.append(f"| {arm} | {length} | {width} | {block['baseline']} | "
                             f"{compare.fmt_count(params) if params else 'unknown'} | "
                             f"{ratio(v['tokens_speedup'], v['tokens_speedup_ci'], v['n'])} | "
                             f"{ratio(v['time_speedup'], v['time_speedup_ci'], v['n'])} | "
                             + (f"{v['confirmed_speedup']:.2f}x |" if v["confirmed_steps"] else "- |"))
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
                points = [(lr_of(plan, arm, k), *res) for (a, L, ww, k, s, n), res in results.items()
                          if (a, L, ww, s, n) == (arm, length, w, 0, plan.steps)]
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
                pts = [(block["arms"][arm]["params"] or w, v[f"{axis}_speedup"], v[f"{axis}_speedup_ci"])
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
        ax.set(xlabel="parameters", ylabel=f"speedup in {axis} vs the strongest baseline",
               title=f"speedup in {'train_time' if axis == 'time' else 'tokens'} (95% jackknife-t)")
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
    tuning = {"search", "confirm", "choose"}
    with open(path, "w") as f:
        f.write("arm\tsequence_length\twidth\tlr\tseed\tval_loss\tlog\tstage\n")
        for key in sorted(k for k in results if stages[k] & tuning):
            arm, length, width, k, seed, _ = key
            status, loss = results[key]
            value = f"{loss:.4f}" if status == "ok" else status
            f.write(f"{arm}\t{length}\t{width}\t{lr_of(plan, arm, k):.4g}\t{seed}\t{value}\t"
                    f"logs/{run_id(plan, key)}.txt\t{'+'.join(sorted(stages[key] & tuning))}\n")
    return path


def verdict_json(plan, blocks, head, reasons, command_line):
    out = {"valid": not reasons, "invalid_reasons": reasons, "headline": head if not reasons else
           "NO VERDICT: the audit failed (invalid_reasons); provisional: " + head,
           "command": command_line, "baselines": plan.baselines, "seeds": plan.seeds,
           "seeds_used": {"choose": list(range(CHOOSE)), "evaluate": list(eval_seeds(plan)),
                          "record": list(record_seeds(plan))},
           "method": {"interval": f"95% {stats.METHOD}", "p_value": "Welch's t-test on final val losses (two-sided)",
                      "record": f"one-sided Welch t-test, p < {RECORD_P}", "time": method_text(plan)},
           "sequence_lengths": plan.lengths, "widths": plan.widths, "proxy_widths": plan.proxies}
    if len(blocks) == 1:
        out.update(next(iter(blocks.values())))
        return out
    for (length, width), block in blocks.items():
        out.setdefault(str(length), {})[str(width)] = block
    return out


def main(argv=None):
    """Returns the exit status: 0 with a verdict, 3 when the audit failed (after writing every file)."""
    argv = sys.argv[1:] if argv is None else argv
    plan = parse(argv)
    print(plan_text(plan), flush=True)
    if plan.dry_run:
        return 0
    os.makedirs(plan.logs, exist_ok=True)
    results, found, stages = run_protocol(plan)
    blocks, chosen = analyze(plan, results, found)
    command_line = shlex.join(["python", "-m", "tune.fair"] + argv)
    head = headline(plan, blocks)
    reasons = invalid_reasons(plan, blocks)
    paths = [write_search(plan, results, stages)]
    paths += plots(plan, results, found, blocks, chosen)
    with open(os.path.join(plan.out, "verdict.json"), "w") as f:
        json.dump(verdict_json(plan, blocks, head, reasons, command_line), f, indent=1)
    with open(os.path.join(plan.out, "verdict.md"), "w") as f:
        f.write(markdown(plan, blocks, head, reasons, command_line))
    print(f"NO VERDICT: {len(reasons)} failed check(s); provisional: {head}" if reasons else head)
    print(f"verdict: {os.path.join(plan.out, 'verdict.md')} (and verdict.json, search.tsv, "
          f"{', '.join(os.path.basename(p) for p in paths[1:])})")
    return 3 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
