#!/usr/bin/env python3
"""Learning-rate x width sweep of train_gpt2.py and/or train_ngpt2.py: the muP transfer plot and the best lr per width.

python -m tune.sweep --lrs 1e-3 2e-3 4e-3 --widths 64 128 256 --head_dim=32 --num_iterations=150 ...
python -m tune.sweep --scripts ngpt2 --lrs 5e-3 1e-2 --widths 64 128 --out=logs/my_sweep --n_layer=4

Every argument this tool does not know (--name=value) goes to the training scripts unchanged. Each run writes
OUT/<script>_w<width>_lr<lr>.txt (the script's log) and .out (its console); OUT gets results.tsv, table.md and
sweep.png (final val loss vs lr, one line per width, one panel per script). On CUDA one run per GPU at a time
(CUDA_VISIBLE_DEVICES), on CPU one after another. A run that stops with a non-finite loss is 'diverged', any
other failure 'crashed'; both stay in the table and are marked on the plot. Runs already in OUT (ok or diverged)
are read back, not run again, so a stopped sweep continues where it left off (--rerun runs everything; --report
runs nothing and shows what OUT holds, missing runs as 'not run'). Runs go in the order given (widths, then lrs).
"""
import argparse
import os
import sys
import time

from tune import plots, runs


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
    cmd = [args.python, os.path.join(runs.ROOT, f"train_{script}.py")] + extra + [f"--n_embd={width}"]
    if args.head_dim:
        cmd.append(f"--n_head={width // args.head_dim}")
    return cmd + [f"--learning_rate={lr:g}", f"--log_dir={args.out}", f"--run_id={run_id(script, width, lr)}"]


def run_all(args, extra, jobs):
    """Runs jobs [(script, width, lr)], `slots` at a time; returns {job: (status, loss)}."""
    import torch
    from tqdm import tqdm
    gpus = torch.cuda.device_count()
    pool = runs.Pool(args.parallel or max(1, gpus), gpus)
    results, queue = {}, []
    for job in jobs:
        done = runs.outcome(args.out, run_id(*job))
        if not args.rerun and done[0] in ("ok", "diverged"):
            results[job] = done
        elif args.report:
            results[job] = ("not run", float("nan"))
        else:
            queue.append(job)
    if results:
        print(f"sweep: {len(results)} runs already in {args.out} read back (--rerun runs them again)")
    bar = tqdm(total=len(queue), desc="sweep", unit="run")
    try:
        while queue or pool.running:
            while queue and pool.free():
                job = queue.pop(0)
                pool.start(job, command(args, extra, *job), os.path.join(args.out, run_id(*job) + ".out"))
            for job in pool.wait():
                results[job] = runs.outcome(args.out, run_id(*job))
                bar.update(1)
                bar.write(f"run:{run_id(*job)} status:{results[job][0]} val_loss:{results[job][1]:.4f}")
    finally:
        pool.stop()
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
    panels = []
    for script in args.scripts:
        lines = [(f"width {width}", [(lr, *results[(script, width, lr)]) for lr in args.lrs], None)
                 for width in args.widths]
        panels.append((f"train_{script}.py", lines))
    plots.plot_lr(panels, path)


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
