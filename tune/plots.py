"""The plots tune/fair.py's report, tune/compare.py and tune/sweep.py share: val loss curves, eval metrics against
tokens, final loss against lr."""
import math
import os

import matplotlib
import numpy as np

from tune.curves import eval_names, eval_points

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)


def plot_val(groups, out_dir, prefix, target, kinds=("step", "tokens", "time")):
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


def plot_evals(groups, out_dir, prefix):
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


def plot_lr(panels, path):
    """Final val loss against lr, one panel per (title, lines); a line per (label, [(lr, status, loss)], chosen lr
    or None). Diverged and crashed runs are crosses at the top of their panel, the chosen lr a star."""
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
