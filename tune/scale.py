"""The 2x2 and the trend of tune/fair.py's verdict: the factorial table (architecture x optimizer) at each target and
the speedup against scale across target widths. tune/README.md says what each assumes; tune/report.py writes them.

Factorial: with the arms gpt2, gpt2_muon, ngpt2 and ngpt2_muon, four speedups on the mean-over-seeds curves in
tokens (tune/stats.py: "speedup of A over B" = B's tokens to reach B's final mean loss / A's), each with its
self-checked test-inversion interval: the architecture under each optimizer and the optimizer under each
architecture. An A slower than B never reaches B's final loss: its speedup is then 1 / (B's over A), read at A's
final loss, with the interval's ends inverted. The interaction is the ratio of the two architecture effects (1 when
they add in log speedup). Its interval: each architecture effect's interval at 97.5% (coverage self-checked at that
level), and the ratio's ends are the quotients of their ends (low / high and high / low): the pair of true effects
lies in the box with probability at least 1 - 0.025 - 0.025 = 0.95 whatever the two estimates' dependence
(Bonferroni; the arms at a seed read the same data order, so they are not independent), so the ratio's interval
covers at least 95%, at least c1 + c2 - 1 on this verdict's noise (c: each interval's measured coverage). It is
conservative: a narrower interval (a bootstrap over seeds of the log ratio) would rest on the normal quantiles that
covered ~80% at 3-5 seeds (tune/stats.py).

Scale: each arm's mean final val loss at each target width against its training FLOPs (tune/memory.py's
flops_per_token x tokens), fitted as a power law without a floor, log L = a + b log C (least squares on the 2 or 3
widths a tiny record has: a line through 2 points is exact, 3 points leave 1 degree of freedom; a floor a + b C^-c
needs a fourth). The compute multiplier of an arm at a width is the FLOPs the baseline's fit needs to reach the
arm's loss over the arm's FLOPs; reaching a loss below the baseline's lowest extrapolates its line past its largest
width. The trend is the least-squares slope of log multiplier against log parameters, with the regression's 95%
t interval on n - 2 degrees of freedom (none at 2 widths; t = 12.7 at 3): it assumes the multiplier is a power of
the size with independent normal scatter, which the shared data order and the one baseline fit under every
multiplier make optimistic.
"""
import math
from typing import NamedTuple

import numpy as np
import scipy.stats

from tune import analysis, stats

# (effect, the arm, over which arm): the 2x2's four effects
EFFECTS = [("architecture under AdamW", "ngpt2", "gpt2"), ("architecture under Muon", "ngpt2_muon", "gpt2_muon"),
           ("optimizer under GPT-2", "gpt2_muon", "gpt2"), ("optimizer under nGPT", "ngpt2_muon", "ngpt2")]
FOUR = {"gpt2", "gpt2_muon", "ngpt2", "ngpt2_muon"}
BONFERRONI = 0.975  # each architecture effect's level in the interaction's interval: 2 x 0.025 = 0.05


class Effect(NamedTuple):
    speedup: float
    ci: list            # [low, high], None for an end the data do not bound
    coverage: float     # measured on this verdict's noise at the interval's level
    holds: bool
    level: float
    reversed: bool      # the arm is slower: 1 / (the other's speedup over it), at the arm's own final loss


def effect(base, arm, level=stats.LEVEL):
    """The speedup of arm over base (their parsed evaluation runs) in tokens with its self-checked interval; None
    below 2 seeds."""
    b, a = analysis.seed_curves(base, "tokens"), analysis.seed_curves(arm, "tokens")
    reverse = stats.speedup(b, a) is None
    checked = stats.self_check(a, b, level=level) if reverse else stats.self_check(b, a, level=level)
    if checked is None:
        return None
    s, low, high = checked.interval.speedup, checked.interval.low, checked.interval.high
    if reverse:
        s, low, high = 1 / s, None if high is None else 1 / high, None if low is None else 1 / low
    return Effect(s, [low, high], checked.coverage, checked.holds, checked.interval.level, reverse)


def factorial(runs_of):
    """The 2x2 at one target from its evaluation runs {arm: [parsed runs]}: {effect: Effect as a dict} and the
    interaction; None unless all four arms ran."""
    if not FOUR <= set(runs_of) or not all(runs_of[a] for a in FOUR):
        return None
    out = {name: {"arm": arm, "over": over, **(e._asdict() if (e := effect(runs_of[over], runs_of[arm])) else {})}
           for name, arm, over in EFFECTS}
    adamw, muon = (effect(runs_of[over], runs_of[arm], BONFERRONI) for _, arm, over in EFFECTS[:2])
    inter = {"ratio": None, "ci": [None, None], "coverage_at_least": None,
             "method": "architecture effect under Muon / under AdamW; interval from the two at 97.5% (Bonferroni)"}
    if adamw and muon and "speedup" in out[EFFECTS[0][0]] and "speedup" in out[EFFECTS[1][0]]:
        (a_low, a_high), (m_low, m_high) = adamw.ci, muon.ci
        inter.update(ratio=out[EFFECTS[1][0]]["speedup"] / out[EFFECTS[0][0]]["speedup"],
                     ci=[m_low / a_high if m_low and a_high else None, m_high / a_low if m_high and a_low else None],
                     coverage_at_least=adamw.coverage + muon.coverage - 1)
    out["interaction"] = inter
    return out


# ------------------------------------------------------------------------------------------- speedup vs scale

class Fit(NamedTuple):
    a: float  # log L = a + b log C
    b: float


def fit(flops, losses):
    """Least-squares line of log loss on log FLOPs over the widths."""
    b, a = np.polyfit(np.log(flops), np.log(losses), 1)
    return Fit(float(a), float(b))


def flops_to(f, loss):
    """The FLOPs at which the fitted line reaches loss."""
    return math.exp((math.log(loss) - f.a) / f.b)


def trend(params, multipliers):
    """Slope of log multiplier against log parameters with its 95% t interval (n - 2 df; None below 3 points)."""
    x, y = np.log(params), np.log(multipliers)
    slope, intercept = np.polyfit(x, y, 1)
    out = {"slope": float(slope), "ci": None, "df": len(x) - 2, "points": len(x)}
    if len(x) > 2:
        residual = y - (intercept + slope * x)
        se = math.sqrt(residual @ residual / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean())))
        t = scipy.stats.t.ppf(0.975, len(x) - 2)
        out["ci"] = [float(slope - t * se), float(slope + t * se)]
    return out


def scale_fit(widths, points, baseline):
    """The target widths (ascending), points {arm: [(width, params, flops, mean final loss)]} at one sequence length
    and the baseline the multipliers are over: each arm's fit, its multiplier over the baseline at each width and
    the trend, or why not."""
    if len(widths) < 2:
        return {"fitted": False, "reason": f"one target width ({widths[0]}): a fit of loss against FLOPs needs "
                                           f"several (--widths W1,W2,W3)", "widths": widths}
    fits, arms = {}, {}
    for arm, pts in points.items():
        if len(pts) < 2 or any(p[2] is None or p[3] is None for p in pts):
            arms[arm] = {"reason": "fewer than 2 widths with a finished run and a known FLOPs count"}
            continue
        fits[arm] = fit([p[2] for p in pts], [p[3] for p in pts])
        arms[arm] = {"fit": {"log_L0": fits[arm].a, "exponent": fits[arm].b},
                     "points": [{"width": w, "params": n, "flops": c, "loss": loss} for w, n, c, loss in pts]}
    out = {"fitted": True, "baseline": baseline, "widths": widths, "arms": arms}
    falls = baseline in fits and all(np.diff([p[3] for p in sorted(points[baseline], key=lambda p: p[2])]) < 0)
    if not falls:
        why = "does not fall with FLOPs across the widths" if baseline in fits else "has fewer than 2 widths to fit"
        out.update(fitted=False, reason=f"the baseline {baseline}'s loss {why}")
        return out
    for arm in fits:
        if arm == baseline:
            continue
        mult = [flops_to(fits[baseline], loss) / c for _, _, c, loss in points[arm]]
        arms[arm]["multiplier"] = {str(p[0]): m for p, m in zip(points[arm], mult)}
        arms[arm]["trend"] = trend([p[1] for p in points[arm]], mult)
    return out


def scale(blocks, flops):
    """{sequence length: scale_fit} over the target widths, blocks {(length, width): analysis block}, flops {(arm,
    length, width): one full run's FLOPs or None}; the baseline is the one of the largest width's target."""
    out = {}
    for length in sorted({L for L, _ in blocks}):
        widths = sorted(w for L, w in blocks if L == length)
        top = blocks[(length, widths[-1])]
        points = {arm: [(w, blocks[(length, w)]["arms"][arm]["params"], flops.get((arm, length, w)),
                         blocks[(length, w)]["arms"][arm]["mean"]) for w in widths
                        if blocks[(length, w)]["arms"][arm]["mean"] is not None
                        and blocks[(length, w)]["arms"][arm]["params"]] for arm in top["arms"]}
        out[str(length)] = scale_fit(widths, points, top["baseline"])
    return out
