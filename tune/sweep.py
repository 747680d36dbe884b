#!/usr/bin/env python3
"""Learning-rate x width sweep of train_gpt2.py and/or train_ngpt2.py: the muP transfer plot and the best lr per width.

python tune/sweep.py --lrs 1e-3 2e-3 4e-3 --widths 64 128 256 --head_dim=32 --num_iterations=150 ...
python tune/sweep.py --scripts ngpt2 --lrs 5e-3 1e-2 --widths 64 128 --out=logs/my_sweep --n_layer=4

Every argument this tool does not know (--name=value) goes to the training scripts unchanged. Each run writes
OUT/<script>_w<width>_lr<lr>.txt (the script's log) and .out (its console); OUT gets results.tsv, table.md and
sweep.png (final val loss vs lr, one line per width, one panel per script). On CUDA one run per GPU at a time
(CUDA_VISIBLE_DEVICES), on CPU one after another. A run that stops with a non-finite loss is 'diverged', any
other failure 'crashed'; both stay in the table and are marked on the plot. Runs already in OUT (ok or diverged)
are read back, not run again, so a stopped sweep continues where it left off (--rerun runs everything; --report
runs nothing and shows what OUT holds, missing runs as 'not run'). Runs go in the order given (widths, then lrs).
"""
import argparse
import math
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL_RE = re.compile(r"^step:(\d+)/(\d+) val_loss:(\S+)", re.M)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--scripts", nargs="+", default=["gpt2", "ngpt2"], choices=["gpt2", "ngpt2"])
    ap.add_argument("--lrs", nargs="+", type=float, required=True, help="peak learning rates (--learning_rate)")
    ap.add_argument("--widths", nargs="+", type=int, required=True, help="model widths (--n_embd)")
    ap.add_argument("--head_dim", type=int, default=0, help="sets --n_head=width/head_dim (0: leave n_head alone)")
    ap.add_argument("--out", default="", help="folder for logs, table and plot (default logs/sweep_<time>)")
    ap.add_argument("--parallel", type=int, default=0, help="runs at a time (default: one per GPU, 1 on CPU)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the runs")
    ap.add_argument("--rerun", action="store_true", help="run again the runs OUT already holds")
    ap.add_argument("--report", action="store_true", help="run nothing: table and plot of the runs OUT holds")
    args, extra = ap.parse_known_args(argv)
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            sys.exit(f"error: expected --name=value for the training scripts, got {arg!r}")
    for width in args.widths:
        if args.head_dim and width % args.head_dim:
            sys.exit(f"error: width {width} is not a multiple of --head_dim={args.head_dim}")
    args.out = os.path.abspath(args.out or os.path.join("logs", time.strftime("sweep_%Y%m%d-%H%M%S")))
    return args, extra


def run_id(script, width, lr):
    return f"{script}_w{width}_lr{lr:g}"


def command(args, extra, script, width, lr):
    cmd = [args.python, os.path.join(ROOT, f"train_{script}.py")] + extra + [f"--n_embd={width}"]
    if args.head_dim:
        cmd.append(f"--n_head={width // args.head_dim}")
    return cmd + [f"--learning_rate={lr:g}", f"--log_dir={args.out}", f"--run_id={run_id(script, width, lr)}"]


def outcome(out_dir, name, returncode):
    """(status, final val loss or nan): ok, diverged (non-finite loss) or crashed (any other failure)."""
    log = ""
    for suffix in (".txt", ".out"):
        path = os.path.join(out_dir, name + suffix)
        if os.path.exists(path):
            log += open(path, errors="replace").read()
    finals = [float(v) for step, total, v in FINAL_RE.findall(log) if step == total]
    if returncode == 0 and finals and math.isfinite(finals[-1]):
        return "ok", finals[-1]
    if "error: train_loss is" in log or (finals and not math.isfinite(finals[-1])):
        return "diverged", float("nan")
    return "crashed", float("nan")


def run_all(args, extra, jobs):
    """Runs jobs [(script, width, lr)], `slots` at a time; returns {job: (status, loss)}."""
    import torch
    from tqdm import tqdm
    gpus = torch.cuda.device_count()
    slots = args.parallel or max(1, gpus)
    results, running, queue = {}, {}, []
    for job in jobs:
        done = outcome(args.out, run_id(*job), 0)
        if not args.rerun and os.path.exists(os.path.join(args.out, run_id(*job) + ".txt")) and done[0] != "crashed":
            results[job] = done
        elif args.report:
            results[job] = ("not run", float("nan"))
        else:
            queue.append(job)
    if results:
        print(f"sweep: {len(results)} runs already in {args.out} read back (--rerun runs them again)")
    bar = tqdm(total=len(queue), desc="sweep", unit="run")
    while queue or running:
        while queue and len(running) < slots:
            job = queue.pop(0)
            slot = next(s for s in range(slots) if s not in {s for s, _ in running.values()})
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            console = open(os.path.join(args.out, run_id(*job) + ".out"), "w")
            proc = subprocess.Popen(command(args, extra, *job), stdout=console, stderr=subprocess.STDOUT, env=env,
                                    cwd=ROOT)
            running[proc] = (slot, job)
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            _, job = running.pop(proc)
            results[job] = outcome(args.out, run_id(*job), proc.returncode)
            bar.update(1)
            bar.write(f"run:{run_id(*job)} status:{results[job][0]} val_loss:{results[job][1]:.4f}")
    bar.close()
    return results


def table(args, results):
    """Markdown: a row per (script, width) with each lr's final val loss, and the best lr per width."""
    lrs = sorted(args.lrs)
    head = "| script | width | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr | best val loss |"
    lines = [head, "|---" * (len(lrs) + 4) + "|"]
    for script in args.scripts:
        for width in args.widths:
            cells = []
            for lr in lrs:
                status, loss = results[(script, width, lr)]
                cells.append(f"{loss:.4f}" if status == "ok" else status)
            done = [(results[(script, width, lr)][1], lr) for lr in lrs if results[(script, width, lr)][0] == "ok"]
            best = f"{min(done)[1]:g} | {min(done)[0]:.4f}" if done else "none | -"
            lines.append(f"| {script} | {width} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def plot(args, results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.scripts), figsize=(5.5 * len(args.scripts), 4), squeeze=False)
    for ax, script in zip(axes[0], args.scripts):
        finite = [loss for (s, _, _), (status, loss) in results.items() if s == script and status == "ok"]
        top = max(finite) if finite else 1.0
        for width in args.widths:
            rows = [(lr, *results[(script, width, lr)]) for lr in sorted(args.lrs)]
            line, = ax.plot([lr for lr, status, _ in rows if status == "ok"],
                            [loss for _, status, loss in rows if status == "ok"], "o-", label=f"width {width}")
            failed = [lr for lr, status, _ in rows if status in ("diverged", "crashed")]  # at the top, as crosses
            ax.plot(failed, [top] * len(failed), "x", color=line.get_color(), markersize=10)
        ax.set_xscale("log")
        ax.set_xticks(sorted(args.lrs), [f"{lr:g}" for lr in sorted(args.lrs)], minor=False)
        ax.minorticks_off()
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final val loss")
        ax.set_title(f"train_{script}.py (x: diverged or crashed)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    jobs = [(script, width, lr) for script in args.scripts for width in args.widths for lr in args.lrs]
    print(f"sweep: {len(jobs)} runs into {args.out}; extra arguments: {' '.join(extra) or 'none'}")
    results = run_all(args, extra, jobs)
    with open(os.path.join(args.out, "results.tsv"), "w") as f:
        f.write("script\twidth\tlr\tstatus\tval_loss\n")
        for script, width, lr in jobs:
            status, loss = results[(script, width, lr)]
            f.write(f"{script}\t{width}\t{lr:g}\t{status}\t{loss:.4f}\n")
    text = table(args, results)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    plot(args, results, os.path.join(args.out, "sweep.png"))
    print(text)
    print(f"table: {os.path.join(args.out, 'table.md')} plot: {os.path.join(args.out, 'sweep.png')}")


if __name__ == "__main__":
    main()
