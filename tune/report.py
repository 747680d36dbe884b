"""What tune/fair.py writes: verdict.md, verdict.json, search.tsv and every plot (the val curves, the lr search, the
speedup against size and the loss against FLOPs); the plots it shares with tune/compare.py and tune/sweep.py are in
tune/plots.py."""
import json
import os

import matplotlib
import numpy as np

from tune import scale, stats
from tune.curves import Group, fmt_count, mean_curve
from tune.plots import plot_lr, plot_val

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)

TITLES = {"gpt2": "GPT-2", "gpt2_qk": "GPT-2+QK-norm", "gpt2_muon": "GPT-2+Muon", "ngpt2": "nGPT",
          "ngpt2_muon": "nGPT+Muon"}


def title(arm):
    return TITLES.get(arm, arm)


def ratio(v, axis):
    """'1.90x [1.20-2.40] (test inversion, n=5+5; coverage 0.96 on this verdict's noise, 1000 draws)': the speedup
    with its interval and the interval's coverage measured on this verdict's own noise."""
    if v[f"{axis}_speedup"] is None:
        return "not reached"
    return v[f"{axis}_interval_text"] or f"{v[f'{axis}_speedup']:.2f}x [n/a] (n={v['n'][0]}+{v['n'][1]})"


def steps_text(x, ci):
    """'77 steps [70-86]'; an end the record lengths do not bound is 'n/a'."""
    ends = ["n/a" if e is None else f"{e:.0f}" for e in ci or (None, None)]
    return f"{x:.0f} steps [{ends[0]}-{ends[1]}]"


def main_arm(plan, base):
    """The arm the headline is about, declared before any run: nGPT with Muon when it is in the A/B and not a
    baseline (the field's optimizer on both sides), else nGPT, else the first other arm."""
    others = [arm for arm in plan.arms if arm not in plan.baselines] or [a for a in plan.arms if a != base]
    return next((a for a in ("ngpt2_muon", "ngpt2") if a in others), others[0])


def headline(plan, blocks):
    """About the main arm (main_arm: nGPT+Muon, else nGPT) at the largest target: the steps to the
    baseline's loss estimated from its record runs, with its interval, the confirmed length (a lower bound) and the
    curve estimate beside them."""
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
    curve = f"Read off the mean curves: {ratio(v, 'tokens')} in tokens, {ratio(v, 'time')} in training time."
    if v["record_method"] is None:
        why = (f"its record runs at {', '.join(map(str, v['record_lengths']))} steps and the baseline's reruns did "
               f"not finish on 2 or more seeds" if v["record_lengths"] else
               f"no record runs (its mean curve does not cross it before step {plan.steps})")
        return (f"{title(arm)} reached the final val loss of {against} ({v['target']:.3f}) {where} on its mean "
                f"curve; {why}. {curve}")
    if v["record_steps_to_target"] is None:
        estimate = (f"its record runs at {', '.join(map(str, v['record_lengths']))} steps do not bracket the "
                    f"baseline's loss, so they give no estimate")
    else:
        ci = v["record_speedup_ci"]
        ends = ["n/a" if e is None else f"{e:.2f}" for e in ci]
        estimate = (f"its record runs reach it in {steps_text(v['record_steps_to_target'], v['record_steps_to_target_ci'])}"
                    f" instead of {plan.steps}: {v['record_speedup']:.2f}x [{ends[0]}-{ends[1]}] fewer tokens and "
                    f"{v['record_time_speedup']:.2f}x less training time ({v['record_method']}, "
                    f"n={len(v['record_seeds'])}+{len(v['record_seeds'])})")
    if v["confirmed_steps"] is None:
        confirmed = (f"no record length confirmed it (longest first, {v['record_test']} p < {plan.RECORD_P})")
    else:
        confirmed = (f"confirmed at {v['confirmed_steps']} steps ({v['record_test']}, longest first, p "
                     f"{v['confirmed_p']:.2g} < {plan.RECORD_P}): at least {v['confirmed_speedup_lower_bound']:.2f}x "
                     f"fewer tokens, a lower bound set by the test's power, not an estimate")
    return (f"{title(arm)} vs {against} {where}, target {v['target']:.3f}: {estimate}; {confirmed}. Its lr was "
            f"tuned for {plan.steps} steps. {curve}")


def shares_text(plan, overlap, stage):
    """'gpt2 beside gpt2 0.00, ngpt2 0.61, alone 0.39; ...': what ran beside each arm's runs of a stage."""
    parts = []
    for arm, sh in overlap.get(stage, {}).items():
        if not sh["seconds"]:
            parts.append(f"{arm} not timed ({sh['untimed']} runs without started:/ended: console lines)")
            continue
        parts.append(f"{arm} beside " + ", ".join(f"{b} {sh[b]:.2f}" for b in plan.arms) + f", alone {sh['alone']:.2f}"
                     + (f" ({sh['untimed']} runs untimed)" if sh["untimed"] else ""))
    return "; ".join(parts) or "no runs"


def method_text(plan, overlap, correlation):
    """How the verdict was reached, with this plan's numbers and the measured overlap (verdict.md and verdict.json's
    method)."""
    shared = (f"The {len(plan.lengths) * len(plan.widths)} targets are not replications: at a seed every target reads "
              "the same data order" + (" and, with the same tokens per step, the same tokens at every step"
                                        if len(plan.lengths) > 1 and len({b * L for L, (b, _) in plan.batch.items()})
                                        == 1 else "") + ", so their results are correlated (the per-seed final "
              "losses' correlation across targets is under each arm's targets below); read them as one experiment "
              "at several sizes. " if len(plan.lengths) * len(plan.widths) > 1 else "")
    return (f"Method: each arm at its own lr, searched at proxy widths {', '.join(map(str, plan.proxies))} with "
            f"mup_base_width {plan.ref}, confirmed at each target width (extended past an edge up to "
            f"{plan.MAX_EXTEND} times) and chosen on the mean of seeds 0-{plan.CHOOSE - 1}; evaluated on {plan.seeds} "
            f"other seeds ({plan.eval_seeds[0]}-{plan.eval_seeds[-1]}). Baseline: at each target the one of "
            f"{', '.join(plan.baselines)} with the lowest mean final val loss; target: its final mean val loss. "
            f"Speedup = baseline tokens (or train_time) to the target / the arm's, on mean-over-seeds curves, linear "
            f"interpolation at the first crossing. [low-high]: 95% {stats.INVERSION} (tune/stats.py): Welch's test "
            f"of the arm's seeds' interpolated losses at each x against the baseline's finals, inverted; each "
            f"interval's coverage measured on {stats.DRAWS} simulated draws with the per-point sd and correlation "
            f"of this verdict's own logs per arm, at its seed counts, and the test's level raised until it covers "
            f"at least {stats.FLOOR} (else it says it does not hold). p: Welch's t-test on the final val losses "
            f"(two-sided). Record runs: an arm whose mean curve crosses the target at step x < {plan.steps} is "
            f"trained again at lengths fixed before any record run, {plan.SHORTER:g}x, 1x and {plan.LONGER:g}x x "
            f"(rounded up, at most {plan.steps - 1}; warmup and cooldown scaled), on seeds "
            f"{plan.record_seeds[0]}-{plan.record_seeds[-1]}, and the baseline is trained again at full length on "
            f"the same seeds in the same batch; one length more past an end (up to {plan.MAX_EXTEND}) while they do "
            f"not bracket the baseline's loss. Estimate: the steps at which the record runs reach the baseline "
            f"reruns' mean final loss, each seed's final loss interpolated linearly in log steps between attempted "
            f"lengths, with a test-inversion interval. Confirmation: the lengths tested in a fixed sequence, "
            f"longest first, each at p < {plan.RECORD_P}, stopping at the first that fails (the family's error "
            f"rate stays {plan.RECORD_P}); the test is paired (one-sided paired t) where both arms read a seed's "
            f"data order (data_seed = seed), else one-sided Welch. baseline steps / confirmed steps is a lower bound "
            f"set by the test's power, not an estimate. {shared}"
            f"Time: train_time from each run's log (the training loop's own clock, validation left out); "
            f"{plan.parallel or 'one per GPU or 1 on CPU'} runs at a time, each next run the first queued one of "
            f"the arm with the fewest runs going, never more than slots / arms (rounded up) of one arm at once, so "
            f"no run sits beside its own arm more than beside another. Measured share of each arm's run time "
            f"beside each arm (from the runs' started:/ended: console lines): evaluation runs: "
            f"{shares_text(plan, overlap, 'seeds')}; record stage: {shares_text(plan, overlap, 'record')}. The "
            f"record stage's time ratio is the baseline reruns' train_time over the record runs' time to the "
            f"target, both from that stage. It assumes the arms ran on the same kind of machine: on a shared CPU "
            f"step times vary between runs (the interval carries that noise), on a dedicated GPU node much less.")


def interval(x, ci):
    """'1.90x [1.36-2.64]'; an open end is n/a."""
    ends = ["n/a" if e is None else f"{e:.2f}" for e in ci]
    return "-" if x is None else f"{x:.2f}x [{ends[0]}-{ends[1]}]"


def factorial_lines(table):
    """The 2x2 of one target (tune/scale.py's factorial) as a markdown table."""
    lines = ["2x2: speedup in tokens of the arm over the other on the mean curves, 95% test inversion with its "
             "coverage; a slower arm's speedup is 1 / the other's over it, read at its own final loss. Interaction "
             "interval: the two architecture effects' intervals at 97.5%, ends divided (Bonferroni: covers at least "
             "95% whatever their dependence; tune/scale.py).", "",
             "| effect | arm over | speedup [95% interval] | coverage on this verdict's noise |", "|---|---|---|---|"]
    for name, _, _ in scale.EFFECTS:
        e = table[name]
        if "speedup" not in e:
            lines.append(f"| {name} | {e['arm']} over {e['over']} | fewer than 2 seeds | - |")
            continue
        note = " (slower: read at its own final loss)" if e["reversed"] else ""
        lines.append(f"| {name} | {e['arm']} over {e['over']} | {interval(e['speedup'], e['ci'])}{note} | "
                     f"{e['coverage']:.2f}" + ("" if e["holds"] else " (does not hold)") + " |")
    i = table["interaction"]
    lines.append(f"| interaction (1 = the effects add) | architecture under Muon / under AdamW | "
                 f"{interval(i['ratio'], i['ci'])} | " + ("-" if i["coverage_at_least"] is None else
                                                         f"at least {i['coverage_at_least']:.2f} (Bonferroni)") + " |")
    return lines + [""]


def scale_lines(trend):
    """The speedup against scale (tune/scale.py's scale), per sequence length."""
    lines = ["## Speedup against scale (compute multiplier over the baseline's loss-vs-FLOPs fit)", ""]
    for length, s in trend.items():
        if not s["fitted"]:
            lines += [f"Sequence length {length}: no fit: {s['reason']}.", ""]
            continue
        n = len(s["widths"])
        lines += [f"Sequence length {length}, baseline {s['baseline']}: log L = a + b log C per arm by least squares "
                  f"over widths {', '.join(map(str, s['widths']))}: {n} points each, {n - 2} degrees of freedom, no "
                  f"loss floor assumed; a multiplier at a loss below the baseline's lowest extrapolates its line. "
                  f"Trend: t interval on {n - 2} df, assuming independent normal scatter about a straight trend "
                  f"(the targets share data and one baseline fit, so it is optimistic).", "",
                  "| arm | exponent b | multiplier at each width | trend: slope of log multiplier on log parameters "
                  "[95% t interval] |", "|---|---|---|---|"]
        for arm, a in s["arms"].items():
            if "fit" not in a:
                lines.append(f"| {arm} | {a['reason']} | - | - |")
                continue
            t = a.get("trend")
            mult = ", ".join(f"{m:.2f}x at {w}" for w, m in a["multiplier"].items()) if t else "(the baseline)"
            slope = "-" if not t else f"{t['slope']:+.2f} " + (
                f"[{t['ci'][0]:+.2f} to {t['ci'][1]:+.2f}], {t['df']} df" if t["ci"] else "(no interval: 2 widths)")
            lines.append(f"| {arm} | {a['fit']['exponent']:.3f} | {mult} | {slope} |")
        lines += ["", f"![loss vs FLOPs](L{length}_loss_vs_flops.png)", ""]
    return lines


def markdown(plan, blocks, head, reasons, command_line, overlap, correlation, trend):
    """verdict.md: the headline (NO VERDICT and the failed checks first when the audit failed), the method, and per
    target the arms, every pair, the record runs and the audit."""
    if reasons:
        lines = ["NO VERDICT: the audit failed; the numbers below are provisional.", ""] + [f"- {r}" for r in reasons]
        lines += ["", "# Fair A/B (provisional)", "", f"Provisional headline: {head}", ""]
    else:
        lines = ["# Fair A/B verdict", "", head, ""]
    lines += [f"Command: `{command_line}`", "", method_text(plan, overlap, correlation), ""]
    for (length, width), block in blocks.items():
        base = block["baseline"]
        params = block["arms"][base]["params"] if base else None
        lines += [f"## Sequence length {length}, width {width}"
                  + (f" ({fmt_count(params)} parameters, {base})" if params else ""), "",
                  f"Baseline: {base} (lowest mean final val loss of {', '.join(plan.baselines)}).", "",
                  "| arm | lr | best lr at proxy widths | final val loss (mean ± std) | seeds | step_avg | tokens/s "
                  "| parameters |", "|---|---|---|---|---|---|---|---|"]
        for arm, a in block["arms"].items():
            loss = "-" if a["mean"] is None else f"{a['mean']:.4f}" + (f" ± {a['std']:.4f}" if a["std"] else "")
            seeds = ", ".join(f"{x:.4f}" if x is not None else s for x, s in zip(a["final_val_loss"], a["status"]))
            lines.append(f"| {arm} | {a['lr']:.3g} | {' / '.join(f'{x:.3g}' for x in a['proxy_best_lr'].values())} "
                         f"| {loss} | {seeds} | "
                         + (f"{a['step_avg_ms']:.1f} ms | {fmt_count(a['tokens_per_s'])} | "
                            + (f"{a['params']:,} |" if a["params"] else "unknown |") if a["step_avg_ms"] else
                            "- | - | - |"))
        for b, pair in block["pairs"].items():
            lines += ["", f"| vs {b} | tokens to target | speedup (tokens) [95% interval] | time to target "
                      "| speedup (time) [95% interval] | final loss diff | p (Welch) |", "|---|---|---|---|---|---|---|"]
            for arm, v in pair.items():
                tokens = fmt_count(v["tokens_to_target"]) if v["reached"] else "not reached"
                time_s = f"{v['time_to_target'] / 1000:.1f} s" if v["time_to_target"] is not None else "not reached"
                p = f"{v['p_value']:.3g}" if v["p_value"] is not None else "n/a"
                tokens_speedup = ratio(v, "tokens")
                if not v["reached"]:
                    tokens_speedup = f"not reached: ended {v['gap_at_end']:+.4f} from the target"
                lines.append(f"| {arm} | {tokens} | {tokens_speedup} | {time_s} | {ratio(v, 'time')} | "
                             f"{v['final_loss_diff']:+.4f} | {p} |")
            if pair:
                lines += ["", f"Target val loss {next(iter(pair.values()))['target']:.4f} ({b}'s final mean)."]
        lines += [""] + (factorial_lines(block["factorial"]) if block.get("factorial") else [])
        lines += [f"Record runs against {base} (rerun at full length on the record seeds):", ""]
        for arm, v in block["vs_baseline"].items():
            tried = "; ".join(f"{a['steps']} steps: mean final {a['mean_final_val_loss']:.4f}, p "
                              + (f"{a['p']:.3g}" if a["p"] is not None else "n/a") + f", in sequence "
                              f"{a['p_sequence']:.3g}" for a in v["confirmed_attempts"])
            if v["record_method"] is None:
                lines.append(f"- {arm}: " + (f"record runs at {', '.join(map(str, v['record_lengths']))} steps did "
                                             f"not finish on 2 or more seeds with the baseline's reruns"
                                             if v["record_lengths"] else
                                             "no record run (its mean curve does not cross the target earlier)"))
                continue
            estimate = ("no estimate (the record lengths do not bracket the target)"
                        if v["record_steps_to_target"] is None else
                        f"estimate {steps_text(v['record_steps_to_target'], v['record_steps_to_target_ci'])}: "
                        f"{v['record_speedup']:.2f}x in tokens, {v['record_time_speedup']:.2f}x in time "
                        f"({v['record_method']})")
            confirmed = (f"confirmed at {v['confirmed_steps']} steps (at least "
                         f"{v['confirmed_speedup_lower_bound']:.2f}x in tokens, a lower bound; "
                         f"{v['confirmed_time_speedup']:.2f}x in time)" if v["confirmed_steps"] else "not confirmed")
            lines.append(f"- {arm}: {estimate}; {confirmed}; lengths {', '.join(map(str, v['record_lengths']))}; "
                         f"{v['record_test']}, longest first: {tried}")
        lines += ["", "Fairness audit:", ""]
        lines += [f"- {'PASS' if c['pass'] else 'FAIL'} {c['check']}: {c['detail']}" for c in block["audit"]]
        lines += ["", f"![val loss vs tokens](L{length}_W{width}_val_vs_tokens.png)", ""]
    if len(blocks) > 1:
        lines += ["## Speedup against size (against each target's baseline; the targets share data, see the method)",
                  "", "| arm | sequence length | width | baseline | parameters | speedup (tokens) [95% interval] "
                  "| speedup (time) [95% interval] | record estimate (steps) | confirmed (steps) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for (length, width), block in blocks.items():
            for arm, v in block["vs_baseline"].items():
                params = block["arms"][arm]["params"]
                lines.append(f"| {arm} | {length} | {width} | {block['baseline']} | "
                             f"{fmt_count(params) if params else 'unknown'} | "
                             f"{ratio(v, 'tokens')} | {ratio(v, 'time')} | "
                             + (f"{steps_text(v['record_steps_to_target'], v['record_steps_to_target_ci'])} | "
                                if v["record_steps_to_target"] else "- | ")
                             + (f"{v['confirmed_steps']} |" if v["confirmed_steps"] else "- |"))
        lines.append("")
    lines += scale_lines(trend)
    lines += ["![speedup vs parameters](speedup_vs_params.png)", "", "![lr search](lr_search.png)", ""]
    return "\n".join(lines)


def plots(plan, results, found, blocks, chosen):
    """The val curves of each target, the lr search and the speedup against size; returns their paths."""
    paths = []
    for (length, width), block in blocks.items():
        groups = [Group(label=f"{arm} lr {block['arms'][arm]['lr']:.3g}", runs=rs, curve=mean_curve(rs),
                        tokens_per_step=rs[0].hp["batch_size"] * length)
                  for arm, rs in chosen[(length, width)].items() if rs]
        if block["vs_baseline"]:
            target = next(iter(block["vs_baseline"].values()))["target"]
            paths += plot_val(groups, plan.out, f"L{length}_W{width}", target, kinds=("tokens",))[0]
    panels = []
    for arm in plan.arms:
        for length in plan.lengths:
            f = found[(arm, length)]
            lines = []
            for w in sorted(set(plan.proxies + plan.widths)):
                points = [(plan.lr(arm, k), res.status, res.loss) for (a, L, ww, k, s, n), res in results.items()
                          if (a, L, ww, s, n) == (arm, length, w, 0, plan.steps)]
                pick = f.bests.get(w, f.chosen.get(w))
                lines.append((f"width {w}" + (" (target)" if w in plan.widths else ""), points,
                              plan.lr(arm, pick)))
            panels.append((f"{arm}, sequence length {length}", lines))
    paths.append(os.path.join(plan.out, "lr_search.png"))
    plot_lr(panels, paths[-1])
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
               title=f"speedup in {'train_time' if axis == 'time' else 'tokens'} (95% {stats.INVERSION})")
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


def plot_scale(out, trend):
    """<out>/L<length>_loss_vs_flops.png: each arm's mean final loss at each width against its training FLOPs, with
    its fitted line (log-log); returns the paths."""
    paths = []
    for length, s in trend.items():
        if not s["fitted"]:
            continue
        fig, ax = plt.subplots(figsize=(7, 5))
        for i, (arm, a) in enumerate(s["arms"].items()):
            if "fit" not in a:
                continue
            c = np.array([p["flops"] for p in a["points"]])
            ax.plot(c, [p["loss"] for p in a["points"]], "o", color=f"C{i}", label=arm)
            line = np.geomspace(c.min() / 2, c.max() * 2)
            ax.plot(line, np.exp(a["fit"]["log_L0"]) * line ** a["fit"]["exponent"], "-", color=f"C{i}", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="training FLOPs (flops_per_token x tokens)",
               ylabel="final val loss (mean over seeds)", title=f"sequence length {length}: loss vs FLOPs, fit "
                                                                f"log L = a + b log C")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # 3.5, not 3.5 x 10^0
            axis(plt.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(out, f"L{length}_loss_vs_flops.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def write_search(plan, results, stages):
    """search.tsv: every run of the search, confirm and choose stages, one line each."""
    path = os.path.join(plan.out, "search.tsv")
    tuning = {"search", "confirm", "choose"}
    with open(path, "w") as f:
        f.write("arm\tsequence_length\twidth\tlr\tseed\tval_loss\tlog\tstage\n")
        for run in sorted(r for r in results if stages[r] & tuning):
            status, loss = results[run].status, results[run].loss
            value = f"{loss:.4f}" if status == "ok" else status
            f.write(f"{run.arm}\t{run.length}\t{run.width}\t{plan.lr(run.arm, run.k):.4g}\t{run.seed}\t{value}\t"
                    f"logs/{plan.run_id(run)}.txt\t{'+'.join(sorted(stages[run] & tuning))}\n")
    return path


def verdict_json(plan, blocks, head, reasons, command_line, overlap, correlation, trend):
    """verdict.json's content: one target's block at the top level, several keyed by length and width."""
    out = {"valid": not reasons, "invalid_reasons": reasons, "headline": head if not reasons else
           "NO VERDICT: the audit failed (invalid_reasons); provisional: " + head,
           "command": command_line, "baselines": plan.baselines, "seeds": plan.seeds,
           "seeds_used": {"choose": list(plan.choose_seeds), "evaluate": list(plan.eval_seeds),
                          "record": list(plan.record_seeds)},
           "method": {"interval": f"95% {stats.INVERSION}, coverage measured on this verdict's own noise "
                                  f"({stats.DRAWS} draws), the level raised below {stats.FLOOR}",
                      "p_value": "Welch's t-test on final val losses (two-sided)",
                      "record": f"lengths {plan.SHORTER:g}x, 1x, {plan.LONGER:g}x the crossing fixed in advance, "
                                f"tested longest first at p < {plan.RECORD_P} (fixed sequence), paired where both "
                                f"arms read a seed's data order; estimate by test inversion over log steps",
                      "time": method_text(plan, overlap, correlation),
                      "factorial_and_scale": scale.__doc__.split("\n\n", 1)[1].strip()},
           "overlap": overlap, "targets_correlation": correlation, "scale": trend,
           "sequence_lengths": plan.lengths, "widths": plan.widths, "proxy_widths": plan.proxies}
    if len(blocks) == 1:
        out.update(next(iter(blocks.values())))
        return out
    for (length, width), block in blocks.items():
        out.setdefault(str(length), {})[str(width)] = block
    return out


def write(plan, results, found, stages, blocks, chosen, head, reasons, command_line, overlap, correlation, trend):
    """Every file of the verdict in plan.out; returns the paths of search.tsv and the plots."""
    paths = [write_search(plan, results, stages)]
    paths += plots(plan, results, found, blocks, chosen) + plot_scale(plan.out, trend)
    with open(os.path.join(plan.out, "verdict.json"), "w") as f:
        json.dump(verdict_json(plan, blocks, head, reasons, command_line, overlap, correlation, trend), f, indent=1)
    with open(os.path.join(plan.out, "verdict.md"), "w") as f:
        f.write(markdown(plan, blocks, head, reasons, command_line, overlap, correlation, trend))
    return paths
