#!/usr/bin/env python3
"""The fair A/B in one command: each arm at its own best learning rate, evaluation seeds that took no part in choosing
it, record runs that estimate the steps to the strongest baseline's loss (beside that baseline rerun on their seeds)
and confirm a length, and a verdict whose 95% intervals carry their coverage on its own noise and which audits its
own fairness. tune/README.md describes the protocol, the verdict and the cost.

python -m tune.fair --out logs/fair                           # the 2x2: gpt2, gpt2_muon, ngpt2, ngpt2_muon
python -m tune.fair --out logs/fair --dry_run                 # the plan and what it costs, only
python -m tune.fair --out logs/fair --arms gpt2,ngpt2 --baseline gpt2 --seeds 8 --num_iterations=2000
python -m tune.fair --out logs/fair --arms ng,ng_bf16 --baseline ng --arm ng=train_ngpt2.py: \\
    --arm ng_bf16=train_ngpt2.py:--param_dtype=bfloat16
python -m tune.fair --out logs/scale --widths 384,768 --sequence_lengths 1024,4096

Every unknown --name=value goes to every run (arm flags after it), so the target is the scripts' own defaults
unless it says otherwise. The same command again reads finished runs back and continues killed ones. Exit status
0 with a verdict, 3 when the audit failed (verdict.md starts NO VERDICT; its numbers are provisional).
"""
import argparse
import importlib
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from tune import analysis, cost, memory, report, runs, scale, stats
from tune.curves import parse_log
from tune.runs import Run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = {"gpt2": ("train_gpt2.py", []), "gpt2_qk": ("train_gpt2.py", ["--qk_norm=1"]),
        "gpt2_muon": ("train_gpt2.py", ["--optimizer=muon"]), "ngpt2": ("train_ngpt2.py", []),
        "ngpt2_muon": ("train_ngpt2.py", ["--optimizer=muon"])}
DEFAULT_ARMS = ["gpt2", "gpt2_muon", "ngpt2", "ngpt2_muon"]  # the 2x2; tune/README.md says why not gpt2_qk
GPT_ARMS = ["gpt2", "gpt2_qk", "gpt2_muon"]  # the default baselines, those among the arms
STAGES = ["search", "confirm", "choose", "seeds", "record"]
SET_HERE = ["seed", "data_seed", "run_id", "log_dir", "resume", "mup_base_width"]  # per run, by this tool


@dataclass
class Plan:
    """What the command runs: the arms, the targets (sequence lengths x widths), the proxy widths of the search and
    how each run is shaped. A run's lr is k half-steps (factors of sqrt 2) from its arm's default (`center`)."""
    MAX_EXTEND: ClassVar[int] = 3      # steps past an end of the candidates, at most, before giving up
    CHOOSE: ClassVar[int] = 2          # seeds 0..CHOOSE-1 choose the lr; evaluation and record seeds come after
    RECORD_P: ClassVar[float] = 0.01   # modded-nanogpt's bar for a record
    LONGER: ClassVar[float] = 1.25     # record lengths: the crossing step, LONGER and SHORTER times it
    SHORTER: ClassVar[float] = 0.8

    arms: dict          # name -> (script, its flags)
    baselines: list
    seeds: int
    grid: int
    extra: list         # flags for every run
    out: str
    python: str
    parallel: int
    dry_run: bool
    mfu: float
    gpu: str
    peak: float         # the GPU's dense bf16 FLOPS
    target: dict        # arm -> its script's hyperparameters at the target
    center: dict        # arm -> its default lr
    data_seed: dict     # arm -> whether its script has a data_seed
    steps: int
    widths: list
    lengths: list
    head_dim: int
    ref: int            # mup_base_width: the largest target width
    proxies: list
    batch: dict         # sequence length -> (batch_size, device_batch_size)

    @property
    def logs(self):
        return os.path.join(self.out, "logs")

    @property
    def choose_seeds(self):
        return range(self.CHOOSE)

    @property
    def eval_seeds(self):
        return range(self.CHOOSE, self.CHOOSE + self.seeds)

    @property
    def record_seeds(self):
        return range(self.CHOOSE + self.seeds, self.CHOOSE + 2 * self.seeds)

    def lr(self, arm, k):
        return self.center[arm] * 2 ** (k / 2)

    def run_id(self, run):
        name = f"{run.arm}_L{run.length}_w{run.width}_lr{self.lr(run.arm, run.k):.4g}_s{run.seed}"
        return name if run.steps == self.steps else f"{name}_n{run.steps}"

    def command(self, run):
        """A run's command line; a record run (fewer steps than the target's) scales its warmup and cooldown in
        proportion."""
        script, flags = self.arms[run.arm]
        batch, device = self.batch[run.length]
        hp = self.target[run.arm]
        more = [f"--data_seed={run.seed}"] if self.data_seed[run.arm] else []
        if run.steps != self.steps:
            more += [f"--num_iterations={run.steps}"] + [
                f"--{name}={round(getattr(hp, name) * run.steps / self.steps)}"
                for name in ("warmup_iters", "warmdown_iters") if hasattr(hp, name)]
        return [self.python, os.path.join(ROOT, script)] + self.extra + flags + [
            f"--n_embd={run.width}", f"--n_head={run.width // self.head_dim}", f"--sequence_length={run.length}",
            f"--batch_size={batch}", f"--device_batch_size={device}", f"--mup_base_width={self.ref}",
            f"--learning_rate={self.lr(run.arm, run.k):.6g}", f"--seed={run.seed}", f"--log_dir={self.logs}",
            f"--run_id={self.run_id(run)}", "--resume=auto"] + more


@dataclass
class Record:
    """The record runs of one arm at one target: the lengths trained on the record seeds, the baseline rerun beside
    them, and what they estimate and confirm (tune/stats.py's record_runs)."""
    baseline: str | None
    lengths: list = field(default_factory=list)   # steps of each record length trained, shortest first
    seeds: list = field(default_factory=list)     # the record seeds whose every run finished
    paired: bool = False                          # both arms read a seed's data order: the test is paired
    result: stats.RecordRuns | None = None


@dataclass
class Tuning:
    """What the protocol found for one arm at one sequence length: the lrs tried (as k) and chosen, per width."""
    ks: dict          # proxy width -> ks searched (seed 0)
    bracketed: dict   # proxy width -> whether its best has worse runs on both sides
    bests: dict       # proxy width -> its best k
    picked: int       # the largest proxy's best, confirmed at the targets
    confirm: dict     # target width -> ks tried (seed 0)
    confirmed: dict   # target width -> whether its best is bracketed
    near: dict        # target width -> the candidates on the choosing seeds
    chosen: dict      # target width -> the chosen k
    record: dict      # target width -> Record


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


def script_hp(script, arm, flags, what):
    """The arm's script parses its flags (a bad one is its one-line error, named with the arm)."""
    try:
        return load_script(script).parse_args(flags)
    except SystemExit as e:
        sys.exit(f"error: arm {arm} ({what}): {str(e.code).removeprefix('error: ')}")


def parse(argv):
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--out", required=True, help="folder for the runs, the verdict and the plots")
    ap.add_argument("--arms", help=f"comma-separated, from {', '.join(ARMS)} and the --arm "
                    f"names (default: {', '.join(DEFAULT_ARMS)} and every --arm)")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=SCRIPT:FLAGS",
                    help="an arm of your own, e.g. ngpt2_bf16=train_ngpt2.py:--param_dtype=bfloat16 (flags "
                         "space-separated); the script needs a parse_args(argv) and the scripts' log lines")
    ap.add_argument("--baseline", default="",
                    help="arm or arms; each target's headline is against the one with the lowest mean final val loss "
                         f"(default: those of {', '.join(GPT_ARMS)} among the arms)")
    ap.add_argument("--seeds", type=int, default=5, help="evaluation seeds per arm, and record-run seeds (default 5)")
    ap.add_argument("--widths", type=int_list, help="target widths W1,W2,... (default: the target's n_embd)")
    ap.add_argument("--sequence_lengths", type=int_list, help="L1,L2,... (default: the target's sequence_length)")
    ap.add_argument("--proxy_widths", type=int_list, help="search widths (default: largest target width /4 and /2)")
    ap.add_argument("--same_batch", action="store_true",
                    help="keep batch_size sequences at every sequence length (default: the same tokens per step)")
    ap.add_argument("--grid", type=int, default=5, help="learning rates in the first factor-2 grid (odd; default 5)")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization assumed for GPU-hours (0.4)")
    ap.add_argument("--gpu", default="H100 SXM",
                    help="GPU whose dense bf16 peak prices the plan, from tune/memory.py's table (default H100 SXM)")
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
    names = args.arms.split(",") if args.arms else DEFAULT_ARMS + [a for a in known if a not in ARMS]
    arms = {}
    for name in names:
        if name not in known:
            sys.exit(f"error: unknown arm {name!r}; known: {', '.join(known)} (add one with --arm NAME=SCRIPT:FLAGS)")
        arms[name] = known[name]
    if len(arms) < 2:
        sys.exit("error: an A/B needs at least two arms; add one with --arms or --arm")
    baselines = args.baseline.split(",") if args.baseline else [b for b in GPT_ARMS if b in arms]
    if not baselines:
        sys.exit(f"error: no --baseline given and none of {', '.join(GPT_ARMS)} is among the arms; name one with "
                 f"--baseline")
    for name in baselines:
        if name not in arms:
            sys.exit(f"error: --baseline {name} is not one of the arms ({', '.join(arms)})")
    if len(baselines) == len(arms):
        sys.exit("error: every arm is a --baseline; leave at least one arm to measure against them")
    peak = memory.peak_flops(args.gpu)
    if not peak:
        sys.exit(f"error: --gpu {args.gpu!r}: no peak TFLOPS known for it; name one of tune/memory.py's PEAK_BF16_TFLOPS")

    target = {arm: script_hp(arms[arm][0], arm, extra + arms[arm][1], "its target") for arm in arms}
    hp = target[baselines[0]]
    if any(t.num_iterations != hp.num_iterations for t in target.values()):
        sys.exit("error: the arms train for different --num_iterations; a fair A/B gives every arm the same steps")
    widths = args.widths or [hp.n_embd]
    lengths = args.sequence_lengths or [hp.sequence_length]
    head_dim = hp.n_embd // hp.n_head
    proxies = args.proxy_widths or [max(widths) // 4, max(widths) // 2]
    for width in widths + proxies:
        if width < head_dim or width % head_dim:
            sys.exit(f"error: width {width} is not a multiple of the target's head_dim {head_dim} "
                     f"(n_embd {hp.n_embd} / n_head {hp.n_head}); change --widths, --proxy_widths or --n_head")
    batches = {}
    tokens = hp.batch_size * hp.sequence_length
    device_tokens = hp.device_batch_size * hp.sequence_length
    for length in lengths:
        batches[length] = (hp.batch_size, hp.device_batch_size)
        if not args.same_batch:  # equal tokens per step at every length
            batch = tokens // length
            device = max(1, min(batch, device_tokens // length))
            if tokens % length or batch % device:
                sys.exit(f"error: {tokens} tokens per step (batch_size * sequence_length) do not split into "
                         f"sequences of {length} and micro-batches of {device}; change --batch_size, "
                         f"--device_batch_size or --sequence_lengths, or pass --same_batch")
            batches[length] = (batch, device)
    plan = Plan(arms=arms, baselines=baselines, seeds=args.seeds, grid=args.grid, extra=extra,
                out=os.path.abspath(args.out), python=args.python, parallel=args.parallel, dry_run=args.dry_run,
                mfu=args.mfu, gpu=args.gpu, peak=peak, target=target,
                center={arm: target[arm].learning_rate for arm in arms},
                data_seed={arm: hasattr(target[arm], "data_seed") for arm in arms}, steps=hp.num_iterations,
                widths=widths, lengths=lengths, head_dim=head_dim, ref=max(widths), proxies=proxies, batch=batches)
    for arm in arms:  # every run's flags checked by its script before anything runs
        for length in lengths:
            for width in proxies + widths:
                run_hp(plan, Run(arm, length, width, 0, 0, plan.steps), f"width {width}, length {length}")
    return plan


def run_hp(plan, run, what):
    """A run's hyperparameters, as its script parses its command line."""
    return script_hp(plan.arms[run.arm][0], run.arm, plan.command(run)[2:], what)


# ------------------------------------------------------------------------------------------------ the stages
# Each protocol is a generator: it yields (stage, runs) and, when it continues, finds their outcomes in `results`
# (runs.drive fills it). So every arm's protocol advances in lockstep with the others' and no run waits for an
# unrelated one.

def bracket(plan, arm, length, ks, results, stage):
    """Seed-0 runs at {width: [k]}: up to MAX_EXTEND factor-2 steps past an edge that holds the best, then sqrt(2) on
    both sides of the best (yields (stage, runs); ks grows in place). Returns {width: best bracketed by worse runs}."""
    def best(w):
        return analysis.best_k(results, arm, length, w, ks[w], plan.steps)
    for _ in range(plan.MAX_EXTEND):
        more = [(w, best(w) + (-2 if best(w) == min(ks[w]) else 2)) for w in ks if best(w) in (min(ks[w]), max(ks[w]))]
        if not more:
            break
        for w, k in more:
            ks[w].append(k)
        yield stage, [Run(arm, length, w, k, 0, plan.steps) for w, k in more]
    bracketed = {w: min(ks[w]) < best(w) < max(ks[w]) and results[Run(arm, length, w, best(w), 0, plan.steps)].status
                 == "ok" for w in ks}
    refine = [(w, best(w) + d) for w in ks for d in (-1, 1) if best(w) + d not in ks[w]]
    for w, k in refine:
        ks[w].append(k)
    yield stage, [Run(arm, length, w, k, 0, plan.steps) for w, k in refine]
    return bracketed


def arm_protocol(plan, arm, length, results, found):
    """One arm at one sequence length: search, confirm, choose, seeds; what it chose goes to found[(arm, length)]."""
    half, n = plan.grid // 2, plan.steps
    ks = {w: list(range(-2 * half, 2 * half + 1, 2)) for w in plan.proxies}
    yield "search", [Run(arm, length, w, k, 0, n) for w in plan.proxies for k in ks[w]]
    bracketed = yield from bracket(plan, arm, length, ks, results, "search")
    bests = {w: analysis.best_k(results, arm, length, w, ks[w], n) for w in plan.proxies}
    picked = bests[max(plan.proxies)]
    confirm = {w: [picked - 2, picked, picked + 2] for w in plan.widths}
    yield "confirm", [Run(arm, length, w, k, 0, n) for w in plan.widths for k in confirm[w]]
    confirmed = yield from bracket(plan, arm, length, confirm, results, "confirm")
    near = {}
    for w in plan.widths:  # the best and its nearest tried neighbours, each on every choosing seed
        best, tried = analysis.best_k(results, arm, length, w, confirm[w], n), sorted(confirm[w])
        i = tried.index(best)
        near[w] = tried[max(0, i - 1):i + 2]
    yield "choose", [Run(arm, length, w, k, s, n) for s in plan.choose_seeds[1:] for w in plan.widths for k in near[w]]

    def choice(w):
        return analysis.best_k(results, arm, length, w, near[w], n, plan.choose_seeds)
    for _ in range(plan.MAX_EXTEND):  # a choice at an end of its candidates: one sqrt(2) step past it, on every seed
        more = [(w, choice(w) + (-1 if choice(w) == near[w][0] else 1)) for w in plan.widths
                if choice(w) in (near[w][0], near[w][-1])]
        if not more:
            break
        for w, k in more:
            near[w] = sorted(near[w] + [k])
        yield "choose", [Run(arm, length, w, k, s, n) for s in plan.choose_seeds for w, k in more]
    chosen = {w: choice(w) for w in plan.widths}
    yield "seeds", [Run(arm, length, w, chosen[w], s, n) for s in plan.eval_seeds for w in plan.widths]
    found[(arm, length)] = Tuning(ks=ks, bracketed=bracketed, bests=bests, picked=picked, confirm=confirm,
                                  confirmed=confirmed, near=near, chosen=chosen, record={})


def record_lengths(plan, crossing):
    """The record lengths fixed before any record run: the crossing step of the arm's mean curve and SHORTER and
    LONGER times it (rounded up), so they bracket it; capped one step short of the full length (a run as long as the
    baseline's would show a lower loss, not a speedup)."""
    return sorted({min(plan.steps - 1, max(1, math.ceil(crossing * f))) for f in (plan.SHORTER, 1, plan.LONGER)})


def record_protocol(plan, arm, length, width, results, found):
    """The record runs of one arm at one target. The strongest baseline is trained again at full length on the
    record seeds, in the same batch as the arm's runs at every record length: each record run gets a partner on its
    seed (the same data order: the test is paired) and the stage's time ratio is measured within it. The lengths are
    tested longest first (tune/stats.py's record_runs). While the shortest length's mean final still lies below the
    baseline's, or the longest's above it, one more length past that end (SHORTER or LONGER, up to MAX_EXTEND) so
    the lengths bracket the target for the estimate; a length added past either end keeps the order of the sequence
    (longest first) and so its level."""
    chosen = {a: analysis.load(plan, analysis.eval_runs(plan, found, a, length, width), results) for a in plan.arms}
    base = analysis.strongest(plan, chosen)
    f = found[(arm, length)]
    rec = f.record[width] = Record(baseline=base, paired=plan.data_seed[arm] and bool(base and plan.data_seed[base]))
    if base is None or arm == base or not chosen[arm]:
        return
    crossing = stats.to_target(analysis.seed_curves(chosen[base], "step"), analysis.seed_curves(chosen[arm], "step"))
    if crossing.arm_x is None or math.ceil(crossing.arm_x) >= plan.steps:
        return
    reruns = analysis.record_baseline(plan, found, base, length, width)
    lengths = record_lengths(plan, crossing.arm_x)
    batch = [run for s, rerun in zip(plan.record_seeds, reruns)
             for run in [rerun] + [Run(arm, length, width, f.chosen[width], s, n) for n in lengths]]
    for _ in range(plan.MAX_EXTEND + 1):
        yield "record", batch
        rec.lengths = sorted(set(rec.lengths) | {run.steps for run in batch if run.arm == arm})
        partner = dict(zip(plan.record_seeds, reruns))
        rec.seeds = [s for s in plan.record_seeds if results[partner[s]].status == "ok" and all(
            results[Run(arm, length, width, f.chosen[width], s, n)].status == "ok" for n in rec.lengths)]
        if len(rec.seeds) < 2:
            return
        finals = [[results[Run(arm, length, width, f.chosen[width], s, n)].loss for s in rec.seeds]
                  for n in rec.lengths]
        base_finals = [results[partner[s]].loss for s in rec.seeds]
        rec.result = stats.record_runs(rec.lengths, finals, base_finals, paired=rec.paired, alpha=plan.RECORD_P)
        target = float(np.mean(base_finals))
        more = []
        if np.mean(finals[0]) <= target and rec.lengths[0] > 1:
            more.append(max(1, math.floor(rec.lengths[0] * plan.SHORTER)))
        if np.mean(finals[-1]) > target and rec.lengths[-1] < plan.steps - 1:
            more.append(min(plan.steps - 1, math.ceil(rec.lengths[-1] * plan.LONGER)))
        if not more:
            return
        batch = [Run(arm, length, width, f.chosen[width], s, n) for n in more for s in plan.record_seeds]


def protocol(plan, length, results, found):
    """Every arm at one sequence length: yields lists of (stage, run) to run, the arms' runs interleaved."""
    yield from runs.lockstep([arm_protocol(plan, arm, length, results, found) for arm in plan.arms], STAGES)
    yield from runs.lockstep([record_protocol(plan, arm, length, width, results, found)
                              for width in plan.widths for arm in plan.arms])


# ------------------------------------------------------------------------------------------ what it costs

def parameters(plan, arm, length, width):
    """The arm's parameter count at a width: from tune/memory.py when its script builds a GPT (the training scripts),
    else from a log of it in OUT, else None (unknown: its script is a black box)."""
    module = load_script(plan.arms[arm][0])
    if hasattr(module, "GPT"):
        return memory.parameters(module, run_hp(plan, Run(arm, length, width, 0, 0, plan.steps), f"width {width}"))
    for name in sorted(os.listdir(plan.logs)) if os.path.isdir(plan.logs) else []:
        if name.startswith(f"{arm}_L{length}_w{width}_") and name.endswith(".txt"):
            params = parse_log(os.path.join(plan.logs, name)).params
            if params:
                return params
    return None


def run_flops(plan, arm, length, width):
    """Training FLOPs of one full-length run (memory.flops_per_token: 6 x the parameters other than the input
    embedding, plus attention, per token), None when the parameter count or the shape is unknown."""
    params = parameters(plan, arm, length, width)
    hp = run_hp(plan, Run(arm, length, width, 0, 0, plan.steps), f"width {width}")
    if params is None or not all(hasattr(hp, x) for x in ("vocab_size", "n_embd", "n_layer", "sequence_length")):
        return None
    return memory.flops_per_token({"params": params}, hp) * plan.batch[length][0] * length * plan.steps


# ------------------------------------------------------------------------------------------------- the run

def run_protocol(plan):
    """Every sequence length's protocol, side by side; returns (results {run: Outcome}, found {(arm, length):
    Tuning}, stages {run: set of stage names})."""
    results, found = {}, {}
    protocols = {length: protocol(plan, length, results, found) for length in plan.lengths}
    planned = sum(lo for lo, _, _ in cost.planned_runs(plan).values()) * len(protocols) * len(plan.arms)
    stages = runs.drive(plan, protocols, results, planned)
    return results, found, stages


def main(argv=None):
    """Returns the exit status: 0 with a verdict, 3 when the audit failed (after writing every file)."""
    argv = sys.argv[1:] if argv is None else argv
    plan = parse(argv)
    flops = {(arm, length, w): run_flops(plan, arm, length, w) for arm in plan.arms for length in plan.lengths
             for w in set(plan.proxies + plan.widths)}
    print(cost.plan_text(plan, flops), flush=True)
    if plan.dry_run:
        return 0
    os.makedirs(plan.logs, exist_ok=True)
    results, found, stages = run_protocol(plan)
    blocks, chosen = analysis.analyze(plan, results, found)
    for key, block in blocks.items():
        block["factorial"] = scale.factorial(chosen[key])
    trend = scale.scale(blocks, {(arm, length, w): run_flops(plan, arm, length, w) for arm in plan.arms
                                 for length in plan.lengths for w in plan.widths})
    head = report.headline(plan, blocks)
    reasons = analysis.invalid_reasons(blocks)
    command_line = shlex.join(["python", "-m", "tune.fair"] + argv)
    overlap, correlation = analysis.overlap(plan, results, stages, STAGES), analysis.target_correlation(blocks)
    paths = report.write(plan, results, found, stages, blocks, chosen, head, reasons, command_line, overlap,
                         correlation, trend)
    print(f"NO VERDICT: {len(reasons)} failed check(s); provisional: {head}" if reasons else head)
    print(f"verdict: {os.path.join(plan.out, 'verdict.md')} (and verdict.json, search.tsv, "
          f"{', '.join(os.path.basename(p) for p in paths[1:])})")
    return 3 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
