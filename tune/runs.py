"""Training runs for the tuning tools (sweep.py, fair.py): started as subprocesses, one per GPU at a time on CUDA
(CUDA_VISIBLE_DEVICES), one at a time on CPU; their outcome read back from the logs with tune/compare.py's
parser; the final-val-loss-against-lr plot.

Each run writes its script's log <log_dir>/<run_id>.txt and its console <log_dir>/<run_id>.out, which ends with an
exit:<code> line once the process has ended. So a run whose log stops early and whose console has no exit line
was killed (it continues with --resume=auto), and one with a non-zero exit that is not a non-finite loss crashed.
"""
import ctypes
import math
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tune import compare

EXIT_PREFIX = "exit:"


def read(path):
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()


def outcome(log_dir, name):
    """(status, final val loss or nan) of run `name`: ok, diverged (non-finite loss), crashed (any other failure),
    killed (a log that stops early, process gone without an exit line) or not run (no log)."""
    log_path = os.path.join(log_dir, name + ".txt")
    if not os.path.exists(log_path):
        return "not run", math.nan
    run = compare.parse_log(log_path)
    final = run.val.get(run.total_steps, (math.nan,))[0] if run.total_steps else math.nan
    console = read(os.path.join(log_dir, name + ".out"))
    exits = [line for line in console.splitlines() if line.startswith(EXIT_PREFIX)]
    if math.isfinite(final) and (not exits or exits[-1] == EXIT_PREFIX + "0"):
        return "ok", final
    nonfinite = re.search(r"^error: train_loss is", read(log_path) + console, re.M)  # a line, not the source's
    if nonfinite or (run.total_steps in run.val and not math.isfinite(final)):
        return "diverged", math.nan
    if exits and exits[-1] != EXIT_PREFIX + "0":
        return "crashed", math.nan
    return "killed", math.nan


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
            console.write(f"\n{EXIT_PREFIX}{proc.returncode}\n")
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


def plot_lr(panels, path):
    """Final val loss against lr, one panel per (title, lines); a line per (label, [(lr, status, loss)], chosen lr
    or None). Diverged and crashed runs are crosses at the top of their panel, the chosen lr a star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, lines) in zip(axes.flat, panels):
        finite = [loss for _, points, _ in lines for _, status, loss in points if status == "ok"]
        top = max(finite) if finite else 1.0
        lrs = sorted({lr for _, points, _ in lines for lr, _, _ in points})
        for label, points, chosen in lines:
            points = sorted(points)
            ok = [(lr, loss) for lr, status, loss in points if status == "ok"]
            line, = ax.plot([lr for lr, _ in ok], [loss for _, loss in ok], "o-", label=label)
            failed = [lr for lr, status, _ in points if status in ("diverged", "crashed")]
            ax.plot(failed, [top] * len(failed), "x", color=line.get_color(), markersize=10)
            mark = [(lr, loss) for lr, loss in ok if chosen is not None and math.isclose(lr, chosen)]
            if mark:
                ax.plot(*mark[0], "*", color=line.get_color(), markersize=16, markeredgecolor="black")
        ax.set_xscale("log")
        if len(lrs) <= 12:
            ax.set_xticks(lrs, [f"{lr:.3g}" for lr in lrs], minor=False, rotation=45)
        ax.minorticks_off()
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final val loss")
        ax.set_title(f"{title} (x: diverged or crashed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
