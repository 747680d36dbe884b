"""The numbers of tune/fair.py's verdict, from its runs' outcomes and logs: which lr is best, the strongest baseline,
each arm's speedup against it with its interval and p-value, the record runs' result and the fairness audit.
tune/README.md says what each means; tune/stats.py computes the statistics."""
import math
import os

import numpy as np
import scipy.stats

from tune import curves, runs, stats
from tune.runs import Run


def rank(outcome, k):
    """Finished runs by loss, then failed runs (diverged, crashed) by lr, lowest first."""
    if outcome.status == "ok":
        return (0, outcome.loss)
    return (1, k)


def best_k(results, arm, length, width, ks, steps, seeds=(0,)):
    """The k of ks with the lowest mean final loss over seeds; failed runs rank below every finished one (among
    themselves, lower lr first)."""
    def score(k):
        ranks = [rank(results[Run(arm, length, width, k, s, steps)], k) for s in seeds]
        return max(r[0] for r in ranks), np.mean([r[1] for r in ranks])
    return min(ks, key=score)


def final_loss(run):
    return run.val[run.total_steps][0]


def eval_runs(plan, found, arm, length, width):
    """The evaluation runs of an arm at a target: its chosen lr on the evaluation seeds."""
    return [Run(arm, length, width, found[(arm, length)].chosen[width], s, plan.steps) for s in plan.eval_seeds]


def record_baseline(plan, found, base, length, width):
    """The baseline's reruns beside the record runs: its chosen lr at full length on the record seeds."""
    return [Run(base, length, width, found[(base, length)].chosen[width], s, plan.steps) for s in plan.record_seeds]


def load(plan, keys, results):
    """The parsed logs of the finished runs among keys."""
    return [curves.parse_log(os.path.join(plan.logs, plan.run_id(k) + ".txt")) for k in keys
            if results[k].status == "ok"]


def seed_curves(group, axis):
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
    """One arm against a baseline: tokens and time to the target with speedups and their test-inversion intervals,
    each with its coverage measured on these runs' own noise (tune/stats.py's self_check), the final loss
    difference and Welch's t-test p-value (two-sided)."""
    base_final = [final_loss(r) for r in base]
    arm_final = [final_loss(r) for r in arm]
    out = {"n": [len(base), len(arm)]}
    for axis in ("tokens", "time"):
        b, a = seed_curves(base, axis), seed_curves(arm, axis)
        base_x, arm_x, out["target"] = stats.to_target(b, a)
        out[f"{axis}_to_target"] = arm_x
        out[f"baseline_{axis}_to_target"] = base_x
        out[f"{axis}_speedup"] = stats.speedup(b, a)
        checked = stats.self_check(b, a)
        out[f"{axis}_speedup_ci"] = [checked.interval.low, checked.interval.high] if checked else None
        out[f"{axis}_coverage"] = checked.coverage if checked else None
        out[f"{axis}_coverage_draws"] = checked.draws if checked else None
        out[f"{axis}_coverage_holds"] = checked.holds if checked else None
        out[f"{axis}_widened_by"] = checked.widened_by if checked else None
        out[f"{axis}_interval_text"] = checked.text() if checked else None
        out[f"{axis}_interval_method"] = checked.interval.method if checked else None
    out["reached"] = out["tokens_to_target"] is not None
    out["gap_at_end"] = float(np.mean(arm_final)) - out["target"]
    out["final_loss_diff"] = out["gap_at_end"]
    out["p_value"] = None
    if len(base) > 1 and len(arm) > 1:
        p = scipy.stats.ttest_ind(arm_final, base_final, equal_var=False).pvalue
        out["p_value"] = float(p) if math.isfinite(p) else None
    return out


def record_result(plan, found, results, arm, length, width):
    """The record-run fields of vs_baseline: the estimate of the arm's steps (tokens, time) to the baseline's loss
    from the record runs themselves with its interval, the confirmed steps of the longest-first sequence (a lower
    bound on the speedup, set by the test's power) and every tested length."""
    rec = found[(arm, length)].record[width]
    out = {"record_steps_to_target": None, "record_steps_to_target_ci": None, "record_speedup": None,
           "record_speedup_ci": None, "record_tokens_to_target": None, "record_time_to_target": None,
           "record_time_speedup": None, "record_method": None, "record_test": None, "record_paired": rec.paired,
           "record_seeds": rec.seeds, "record_lengths": rec.lengths, "confirmed_steps": None, "confirmed_p": None,
           "confirmed_speedup_lower_bound": None, "confirmed_time_speedup": None, "confirmed_attempts": []}
    r = rec.result
    if r is None:
        return out
    chosen = found[(arm, length)].chosen[width]
    record = {n: load(plan, [Run(arm, length, width, chosen, s, n) for s in rec.seeds], results)
              for n in rec.lengths}
    reruns = load(plan, [k for k in record_baseline(plan, found, rec.baseline, length, width)
                         if k.seed in rec.seeds], results)
    base_time = float(np.mean([final_time(x) for x in reruns]))
    ms_per_step = float(np.mean([final_time(x) / n for n, rs in record.items() for x in rs]))
    tokens_per_step = plan.batch[length][0] * length
    low, high = r.record_steps_to_target_ci
    out.update(record_method=r.method, record_test=r.test,
               confirmed_attempts=[a._asdict() for a in r.sequence], confirmed_steps=r.confirmed_steps,
               confirmed_p=r.confirmed_p, record_steps_to_target_ci=[low, high],
               record_speedup_ci=[plan.steps / high if high else None, plan.steps / low if low else None])
    if r.record_steps_to_target:
        x = r.record_steps_to_target
        out.update(record_steps_to_target=x, record_speedup=plan.steps / x, record_tokens_to_target=x * tokens_per_step,
                   record_time_to_target=x * ms_per_step, record_time_speedup=base_time / (x * ms_per_step))
    if r.confirmed_steps:
        out["confirmed_speedup_lower_bound"] = plan.steps / r.confirmed_steps
        out["confirmed_time_speedup"] = base_time / float(np.mean([final_time(x) for x in record[r.confirmed_steps]]))
    return out


def final_time(run):
    """A run's train_time (ms) at its last step."""
    return run.val[run.total_steps][1]


def audit(plan, length, width, found, results, chosen_runs):
    """The fairness checks of one target: [{check, pass, detail}]."""
    checks = []

    def check(name, ok, detail):
        checks.append({"check": name, "pass": bool(ok), "detail": detail})
    parts = [f"{arm} {plan.lr(arm, found[(arm, length)].bests[w]):.3g} at width {w}"
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
        parts.append(f"{arm}: proxies {' / '.join(f'{plan.lr(arm, k):.3g}' for k in f.bests.values())}"
                     + (" (MOVED more than 2x)" if spread > 2 else "")
                     + f", best {plan.lr(arm, best):.3g} at width {width} among {len(f.confirm[width])} lrs"
                     + (" (extended past an edge of lr/2, lr, 2lr)" if extended else "")
                     + ("" if f.confirmed[width] else " (NOT bracketed)")
                     + f", chosen {plan.lr(arm, f.chosen[width]):.3g} on the mean of seeds 0-{plan.CHOOSE - 1}"
                     + f" among {len(f.near[width])} lrs" + ("" if chosen_inside else " (NOT bracketed)"))
    if len(plan.proxies) < 2:
        parts.insert(0, "one proxy width: agreement across widths not checked")
    check("every arm's optimum transferred (proxies within 2x) and bracketed at the target width", ok,
          "; ".join(parts))
    bad = [f"{plan.run_id(run)}: {results[run].status}" for arm in plan.arms
           for run in eval_runs(plan, found, arm, length, width) if results[run].status != "ok"]
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
                keys = eval_runs(plan, found, arm, length, width)
                runs_of[arm] = rs = load(plan, keys, results)
                finals = [results[k].loss if results[k].status == "ok" else None for k in keys]
                ok = [x for x in finals if x is not None]
                arms[arm] = {"lr": plan.lr(arm, f.chosen[width]),
                             "proxy_best_lr": {str(w): plan.lr(arm, k) for w, k in f.bests.items()},
                             "final_val_loss": finals, "seeds": [k.seed for k in keys],
                             "status": [results[k].status for k in keys],
                             "mean": float(np.mean(ok)) if ok else None,
                             "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else None,
                             "step_avg_ms": float(np.mean([r.step_avg_ms for r in rs])) if rs else None,
                             "tokens_per_s": float(np.mean([r.tokens_per_s for r in rs])) if rs else None,
                             "params": rs[0].params if rs else None}
            base = strongest(plan, runs_of)
            pairs = {b: {arm: versus(runs_of[b], runs_of[arm]) for arm in plan.arms if arm != b and runs_of[arm]}
                     for b in plan.baselines if runs_of[b]}
            vs = {arm: dict(v, **record_result(plan, found, results, arm, length, width))
                  for arm, v in pairs.get(base, {}).items()}
            blocks[(length, width)] = {"baseline": base, "arms": arms, "vs_baseline": vs, "pairs": pairs,
                                       "audit": audit(plan, length, width, found, results, runs_of)}
            chosen[(length, width)] = runs_of
    return blocks, chosen


def target_correlation(blocks):
    """{arm: {min, max}}: the correlation of an arm's per-seed final val losses (the same evaluation seeds) between
    every two targets; the targets share each seed's data order, so this says how far they are one experiment."""
    out = {}
    keys = list(blocks)
    for arm in next(iter(blocks.values()))["arms"] if blocks else []:
        values = []
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                pairs = [(x, y) for x, y in zip(blocks[a]["arms"][arm]["final_val_loss"],
                                                blocks[b]["arms"][arm]["final_val_loss"]) if None not in (x, y)]
                if len(pairs) > 2 and np.std([x for x, _ in pairs]) > 0 and np.std([y for _, y in pairs]) > 0:
                    values.append(float(np.corrcoef(np.array(pairs).T)[0, 1]))
        if values:
            out[arm] = {"min": min(values), "max": max(values)}
    return out


def covered(span, others):
    """Seconds of span (start, end) during which at least one of the spans `others` was going."""
    start, end = span
    parts = sorted((max(a, start), min(b, end)) for a, b in others if a < end and b > start)
    total, reach = 0.0, start
    for a, b in parts:
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def overlap(plan, results, stages, order):
    """What ran beside each arm's runs, per stage, from every run's started:/ended: console lines: {stage: {arm:
    {other arm or 'alone': the share of the arm's run time during which a run of it (or nothing else) was going},
    plus 'seconds' and 'untimed' (runs of the stage whose console has no times)}}, stages in `order`. A run counts in
    every stage that asked for it."""
    timed = {run: runs.spans(plan.logs, plan.run_id(run)) for run in results}
    flat = [(run, span) for run, spans in timed.items() for span in spans]
    out = {}
    for stage in order:
        for arm in plan.arms:
            mine = [run for run in results if run.arm == arm and stage in stages.get(run, ())]
            if not mine:
                continue
            seconds, beside = 0.0, dict.fromkeys(plan.arms, 0.0)
            alone = 0.0
            for run in mine:
                for span in timed[run]:
                    others = [(o, x) for o, x in flat if o != run]
                    seconds += span[1] - span[0]
                    alone += span[1] - span[0] - covered(span, [x for _, x in others])
                    for b in plan.arms:
                        beside[b] += covered(span, [x for o, x in others if o.arm == b])
            shares = {b: v / seconds if seconds else None for b, v in beside.items()}
            out.setdefault(stage, {})[arm] = dict(shares, alone=alone / seconds if seconds else None,
                                                  seconds=seconds, untimed=sum(not timed[r] for r in mine))
    return out


def invalid_reasons(blocks):
    """Why the verdict is not valid: every failed check, and each target without a baseline."""
    reasons = []
    for (length, width), block in blocks.items():
        where = f"sequence length {length}, width {width}"
        reasons += [f"{where}: {c['check']}: {c['detail']}" for c in block["audit"] if not c["pass"]]
        if block["baseline"] is None:
            reasons.append(f"{where}: no baseline arm finished an evaluation run")
    return reasons
