"""What tune/fair.py's plan costs, per stage and in total: runs, tokens, training FLOPs and GPU-hours at an assumed
MFU of a GPU's dense bf16 peak (tune/README.md, Cost)."""
import math

import numpy as np

from tune.curves import fmt_count


def planned_runs(plan):
    """{stage: (fewest, most) runs of one arm at one sequence length, {width: share of them}}."""
    p, w = len(plan.proxies), len(plan.widths)
    at_proxies = {x: 1 / p for x in plan.proxies}
    at_targets = {x: 1 / w for x in plan.widths}
    return {"search": ((plan.grid + 2) * p, (plan.grid + plan.MAX_EXTEND + 2) * p, at_proxies),
            "confirm": (3 * w, (3 + plan.MAX_EXTEND + 2) * w, at_targets),
            "choose": (2 * (plan.CHOOSE - 1) * w, 3 * (plan.CHOOSE - 1) * w, at_targets),
            "seeds": (plan.seeds * w, plan.seeds * w, at_targets),
            "record": (0, (3 + 1) * plan.seeds * w, at_targets)}


def plan_text(plan, flops):
    """The plan and its cost per stage and in total, as fair.py prints it first; flops: {(arm, length, width):
    training FLOPs of one full-length run, None when unknown}."""
    per = planned_runs(plan)
    gpu_s = plan.peak * plan.mfu

    def span(lo, hi, text):
        return text(lo) if text(lo) == text(hi) else f"{text(lo)}-{text(hi)}"

    def cost(runs_lo, runs_hi, tokens_lo, tokens_hi, f_lo, f_hi):
        text = (f"{span(runs_lo, runs_hi, lambda x: f'{x:.0f}')} runs, "
                f"{span(tokens_lo, tokens_hi, fmt_count)} tokens")
        if not np.isfinite(f_lo):
            return text + ", FLOPs and GPU-hours unknown (an arm's parameter count is unknown before its first log)"
        return (text + f", {span(f_lo, f_hi, lambda x: f'{x:.3g}')} FLOPs, "
                f"{span(f_lo / gpu_s / 3600, f_hi / gpu_s / 3600, lambda x: f'{x:.3g}')} GPU-hours")
    lines = [f"fair A/B: arms {', '.join(plan.arms)} (baseline: the strongest of {', '.join(plan.baselines)}); "
             f"sequence lengths {', '.join(map(str, plan.lengths))}; target widths {', '.join(map(str, plan.widths))}; "
             f"proxy widths {', '.join(map(str, plan.proxies))} (head_dim {plan.head_dim}, mup_base_width "
             f"{plan.ref}); lr chosen on seeds 0-{plan.CHOOSE - 1}, evaluation seeds {plan.eval_seeds[0]}-"
             f"{plan.eval_seeds[-1]}, record seeds {plan.record_seeds[0]}-{plan.record_seeds[-1]}; "
             f"{plan.steps} steps per run"]
    for length in plan.lengths:
        batch, device = plan.batch[length]
        lines.append(f"  length {length}: batch {batch} x {length} = {batch * length} tokens per step "
                     f"(micro-batch {device}), {fmt_count(batch * length * plan.steps)} tokens per run")
    lines.append(f"  cost at MFU {plan.mfu:g} of one {plan.gpu} ({plan.peak / 1e12:.0f} dense bf16 TFLOPS), an "
                 f"assumption (--mfu, --gpu); FLOPs = 6 x parameters but the input embedding x tokens + attention "
                 f"(tune/memory.py)")
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
            lines.append(f"  record   at most {cost(*row[[1, 1, 3, 3, 5, 5]])} (3 lengths shorter than full "
                         f"runs and the baseline's full-length reruns beside them; up to {plan.MAX_EXTEND} more "
                         f"lengths while they do not bracket the target; whether an arm has record runs depends on "
                         f"its crossing, so not in the total)")
            continue
        total += row
        lines.append(f"  {stage:<8} " + cost(*row))
    lines.append("  total    " + cost(*total) + f"; logs in {plan.logs}")
    return "\n".join(lines)
