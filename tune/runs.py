"""Training runs for the tuning tools (sweep.py, fair.py): started as subprocesses, one per GPU at a time on CUDA
(CUDA_VISIBLE_DEVICES), one at a time on CPU; their outcome read back from the logs with tune/curves.py's
parser; fair.py's protocols driven stage by stage over them.

Each run writes its script's log <log_dir>/<run_id>.txt and its console <log_dir>/<run_id>.out, which ends with an
exit:<code> line once the process has ended. So a run whose log stops early and whose console has no exit line
was killed (it continues with --resume=auto), and one with a non-zero exit that is not a non-finite loss crashed.
The console also holds a started: and an ended: line (wall-clock seconds) for each time the run was trained, so
which runs ran beside which can be measured from the folder alone, after a restart too.
"""
import ctypes
import math
import os
import re
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import torch
from tqdm import tqdm

from tune import curves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_PREFIX = "exit:"
START_PREFIX, END_PREFIX = "started:", "ended:"  # wall-clock seconds (time.time()) in the console, for the overlap
FINAL = ("ok", "diverged", "crashed")  # outcomes read back; killed runs continue


class Run(NamedTuple):
    """One run of tune/fair.py: an arm at a sequence length and width, its lr k half-steps (factors of sqrt 2) from
    the arm's default (integers keep run ids exact), a seed, and its steps (fewer than the target's: a record run)."""
    arm: str
    length: int
    width: int
    k: int
    seed: int
    steps: int


class Outcome(NamedTuple):
    status: str   # ok, diverged, crashed, killed or not run
    loss: float   # the final val loss; nan unless ok


def read(path):
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()


def outcome(log_dir, name):
    """The Outcome of run `name`: ok, diverged (non-finite loss), crashed (any other failure), killed (a log that
    stops early, process gone without an exit line) or not run (no log)."""
    log_path = os.path.join(log_dir, name + ".txt")
    if not os.path.exists(log_path):
        return Outcome("not run", math.nan)
    run = curves.parse_log(log_path)
    final = run.val.get(run.total_steps, (math.nan,))[0] if run.total_steps else math.nan
    console = read(os.path.join(log_dir, name + ".out"))
    exits = [line for line in console.splitlines() if line.startswith(EXIT_PREFIX)]
    if math.isfinite(final) and (not exits or exits[-1] == EXIT_PREFIX + "0"):
        return Outcome("ok", final)
    nonfinite = re.search(r"^error: train_loss is", read(log_path) + console, re.M)  # a line, not the source's
    if nonfinite or (run.total_steps in run.val and not math.isfinite(final)):
        return Outcome("diverged", math.nan)
    if exits and exits[-1] != EXIT_PREFIX + "0":
        return Outcome("crashed", math.nan)
    return Outcome("killed", math.nan)


def spans(log_dir, name):
    """[(start, end)] wall-clock seconds of each time run `name` was trained to its end (its console's started: and
    ended: lines); a start without an end (killed, or finished after the tool died) is left out."""
    out, start = [], None
    for line in read(os.path.join(log_dir, name + ".out")).splitlines():
        if line.startswith(START_PREFIX):
            start = float(line[len(START_PREFIX):])
        elif line.startswith(END_PREFIX) and start is not None:
            out.append((start, float(line[len(END_PREFIX):])))
            start = None
    return out


def end_with_parent():
    """In a run's process, before it starts: SIGTERM when the tool that started it dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so it saves and exits as on Pool.stop and never trains on beside the same run started again."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class Pool:
    """Runs commands, `slots` at a time; on CUDA the run in slot i sees GPU i % gpus."""

    def __init__(self, slots, gpus):
        self.slots = slots
        self.gpus = gpus
        self.running = {}  # Popen -> (slot, key, console file)

    def free(self):
        return len(self.running) < self.slots

    def start(self, key, cmd, console_path):
        slot = min(set(range(self.slots)) - {s for s, _, _ in self.running.values()})
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        console = open(console_path, "a")
        console.write(f"{START_PREFIX}{time.time():.3f}\n")
        console.flush()
        proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                preexec_fn=end_with_parent if sys.platform == "linux" else None)
        self.running[proc] = (slot, key, console)

    def wait(self):
        """Blocks until a run ends; returns the keys of those that ended. Each console gets its exit:<code> line."""
        while True:
            ended = [p for p in self.running if p.poll() is not None]
            if ended:
                break
            time.sleep(0.1)
        keys = []
        for proc in ended:
            _, key, console = self.running.pop(proc)
            console.write(f"\n{END_PREFIX}{time.time():.3f}\n{EXIT_PREFIX}{proc.returncode}\n")
            console.close()
            keys.append(key)
        return keys

    def stop(self):
        """SIGTERM to every run (the scripts save a checkpoint and exit), then wait for them."""
        for proc in self.running:
            proc.terminate()
        for proc, (_, _, console) in self.running.items():
            proc.wait()
            console.close()
        self.running = {}


def pick(queue, going, cap):
    """The index of the next queued run to start, or None to leave the slot free: the first run of the arm with the
    fewest runs going, among arms with fewer than `cap` going (cap = slots / arms, rounded up), so a run sits beside
    its own arm no more often than beside another; with nothing going, the first run."""
    if not going:
        return 0 if queue else None
    counts = {}
    for run in going:
        counts[run.arm] = counts.get(run.arm, 0) + 1
    allowed = [i for i, run in enumerate(queue) if counts.get(run.arm, 0) < cap]
    return min(allowed, key=lambda i: (counts.get(queue[i].arm, 0), i)) if allowed else None


def lockstep(protocols, order=()):
    """Runs generators of (stage, runs) side by side: each round yields the next runs of every live one whose next
    stage comes first in `order` (the others wait for it, so every arm's runs of a stage run in the same period and
    beside each other), interleaved one of each in turn, so no arm's runs cluster in one period of machine load."""
    live = {g: next(g, None) for g in protocols}
    live = {g: step for g, step in live.items() if step}
    while live:
        rank = {g: order.index(stage) if stage in order else 0 for g, (stage, _) in live.items()}
        ready = [g for g in live if rank[g] == min(rank.values())]
        batches = [live[g] for g in ready]
        yield [(stage, runs[i]) for i in range(max(len(r) for _, r in batches)) for stage, runs in batches
               if i < len(runs)]
        for g in ready:
            live[g] = next(g, None)
        live = {g: step for g, step in live.items() if step}


def drive(plan, protocols, results, planned):
    """Runs what the protocols ask for, each protocol's next runs started as soon as its previous ones ended: a
    protocol yields lists of (stage, run) and continues once every one of those runs has its Outcome in `results`
    (read back from plan.logs when a finished log is there, else trained). Returns {run: set of stage names}."""
    gpus = torch.cuda.device_count()
    pool = Pool(plan.parallel or max(1, gpus), gpus)
    cap = math.ceil(pool.slots / len(plan.arms))
    stages, queue, waiting, started = {}, [], {}, {}
    bar = tqdm(total=planned, desc="fair", unit="run")
    counts = dict(read_back=0, trained=0)

    def advance(g):
        while True:  # a stage whose runs are all known already is passed at once
            try:
                batch = next(protocols[g])
            except StopIteration:
                waiting.pop(g, None)
                return
            waiting[g] = [run for _, run in batch]
            for stage, run in batch:
                stages.setdefault(run, set()).add(stage)
                if run in results or run in queue or run in started:
                    continue
                result = outcome(plan.logs, plan.run_id(run))
                if result.status in FINAL:
                    results[run] = result
                    counts["read_back"] += 1
                    bar.update(1)
                else:
                    queue.append(run)
            if not all(run in results for run in waiting[g]):
                return

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(
        f"error: stopped by signal {signum}; the same command continues where this stopped"))
    try:
        for g in protocols:
            advance(g)
        while waiting:
            bar.total = max(bar.total, len(results) + len(queue) + len(started))
            bar.refresh()
            while queue and pool.free():
                i = pick(queue, list(started), cap)
                if i is None:
                    break
                run = queue.pop(i)
                started[run] = time.time()
                pool.start(run, plan.command(run), os.path.join(plan.logs, plan.run_id(run) + ".out"))
            if not pool.running:
                break
            for run in pool.wait():
                results[run] = outcome(plan.logs, plan.run_id(run))
                wall = time.time() - started.pop(run)
                counts["trained"] += 1
                bar.update(1)
                bar.write(f"run:{plan.run_id(run)} status:{results[run].status} val_loss:{results[run].loss:.4f}")
                if counts["trained"] == 1:
                    left = bar.total - len(results)
                    bar.write(f"estimate: the first run took {wall:.0f}s; about {wall * left / pool.slots / 60:.0f} "
                              f"min for the ~{left} planned runs left (runs at the smaller widths are quicker)")
            for g in list(waiting):
                if all(run in results for run in waiting[g]):
                    advance(g)
    finally:
        pool.stop()
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    print(f"fair: {counts['trained']} runs trained, {counts['read_back']} read back from {plan.logs}")
    return stages
