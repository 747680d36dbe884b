"""The statistics of tune/fair.py: speedup to a target loss on mean-over-seeds curves, its 95% interval with a
coverage self-check on the verdict's own noise, and what the record runs estimate and confirm.

Speedup = the baseline's x (tokens or train_time) to reach its own final mean val loss / the arm's, each read off
the mean-over-seeds curve by linear interpolation at the first crossing. The target is the last point of the
baseline's mean curve itself, so the baseline always reaches it (to_target).

Interval: test inversion. At each x on a fine grid, Welch's t-test of the arm's seeds' losses at x (each seed's own
curve interpolated linearly at x) against the baseline's final losses; the arm's x to the target lies in the set of
x the test does not reject at 95%, and the speedup's interval is the baseline's x over the ends of that set (its
hull). Why this and not the jackknife-t on the log speedup:
- The first-crossing statistic has a kink at every validation point: between two of them the crossing is a ratio
  of linear functions of the seed means, and its slope jumps where it passes one. A crossing just past a validation
  point (the tiny record's nGPT at 79 of 150 steps, val every 25) makes leave-one-out values fall on both sides
  of the kink, and their spread varies far more than the scaled chi-square that Welch's df assumes: on the record's
  own noise the jackknife-t covered 0.83-0.90, and more seeds did not fix it.
- The inverted test needs no smoothness. At the true crossing x*, each seed's interpolated loss has mean exactly the
  target (the interpolation is linear in the seed's losses, and x* is where the interpolated true curve meets the
  target), so the interval contains x* exactly when Welch's test at x* accepts: its coverage is Welch's, wherever
  x* sits between validation points and however a seed's deviations correlate across steps.
- The target's own noise (the baseline's finals) enters the test as the second sample, so no separate term is
  needed; the baseline's x to the target is its mean curve's (its last point: in tokens fixed).
- For time each seed's curve is interpolated on its own train_time axis at every point of a common grid over the
  range all seeds cover. The baseline's time to its target is then a mean over its seeds too: by the delta method
  its log's standard error times the arm's slope at x is added to Welch's variance (with the baseline's df). At the
  first record's noise (4% step-time spread) the interval covered 0.91 at 5+5 without this term, 0.95 with it.
- A bootstrap would use normal quantiles and shrink the spread by sqrt((n-1)/n): at 3-5 seeds it covered about 80%.
An end of the hull that reaches the end of the data is open (None): the data do not bound the speedup there.

Coverage self-check (self_check): the interval's coverage is measured on the verdict's own noise. Per arm it
measures the seed-to-seed sd at each validation point, the correlation of a seed's deviations between neighbouring
points (simulated as AR(1) over the points) and the seed-to-seed sd of log train_time; it simulates seed curves
with that noise around the observed mean curves, at the verdict's seed counts, whose true speedup is the one of
the mean curves, and counts how often the interval holds it. Below FLOOR the test's level is raised through LEVELS
until the simulated coverage holds, or the check says it does not.

Record runs (record_runs): the arm trained again at several lengths on the same record seeds. Each record seed's
final loss is a curve over the attempted lengths, linear in log steps between them; the same test inversion over
log steps gives the steps at which the arm reaches the target, with an interval, interpolated between attempted
lengths and never extrapolated past them. This and not a regression of loss on log steps over all lengths: it
assumes a straight line only between neighbouring lengths, as the curve estimate does between validation points.
The confirmation tests the attempted lengths in a fixed sequence, longest first, stopping at the first that fails:
each test at the full alpha, yet the family-wise error stays alpha (a length is only tested when every longer one
was rejected), where trying lengths shortest first until one passes would spend alpha once per attempt. When the
baseline was rerun on the record seeds (each arm then reads the same data order at a seed), the test is paired.
"""
import math
import sys
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.stats

LEVEL = 0.95
FLOOR = 0.93  # the least simulated coverage of a 95% interval that is accepted without widening it
LEVELS = (0.95, 0.975, 0.99, 0.995, 0.999)  # the test levels tried, in order, until the simulated coverage holds
POINTS = 512  # grid points over x for the test inversion: the ends are interpolated between them
DRAWS = 1000
RECORD_ALPHA = 0.01  # modded-nanogpt's bar for a record
INVERSION = "test inversion"


# ------------------------------------------------------------------------- point estimate

class Crossing(NamedTuple):
    base_x: float | None  # the baseline's x to the target (None: never reached)
    arm_x: float | None
    target: float  # the last point of the baseline's mean curve


def first_crossing(xs, losses, target):
    """First x where each piecewise-linear curve reaches loss <= target, nan where it never does. xs, losses:
    (..., points), target: (...); a curve already at the target at its first point crosses there."""
    hit = losses <= target[..., None]
    i = hit.argmax(-1)[..., None]
    j = np.maximum(i - 1, 0)
    x0, x1 = np.take_along_axis(xs, j, -1)[..., 0], np.take_along_axis(xs, i, -1)[..., 0]
    y0, y1 = np.take_along_axis(losses, j, -1)[..., 0], np.take_along_axis(losses, i, -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(i[..., 0] == 0, x1, x0 + (y0 - target) / (y0 - y1) * (x1 - x0))
    return np.where(hit.any(-1), x, np.nan)


def _number(x):
    return None if not np.isfinite(x) else float(x)


def to_target(base, arm):
    """Crossing(base_x, arm_x, target): base and arm are (losses, xs) arrays of shape (seeds, val points); the target
    is the last point of the baseline's mean curve, each x where a mean-over-seeds curve first reaches it."""
    base_curve = base[0].mean(0)
    # The target is taken from the mean curve itself: a separate mean of the final column (base[0][:, -1].mean())
    # sums in another order at >= 8 seeds, can land one ulp below the curve's last point, and the baseline would
    # then miss its own target.
    target = base_curve[-1]
    base_x = first_crossing(base[1].mean(0), base_curve, np.array(target))
    arm_x = first_crossing(arm[1].mean(0), arm[0].mean(0), np.array(target))
    return Crossing(_number(base_x), _number(arm_x), float(target))


def speedup(base, arm):
    """Baseline x to target / the arm's; None when the arm never reaches it."""
    base_x, arm_x, _ = to_target(base, arm)
    if base_x is None or arm_x is None:
        return None
    return math.inf if arm_x == 0 else base_x / arm_x


# ------------------------------------------------------------------------- test inversion

def _grid(xs, points):
    """(draws, points) evenly spaced over the x range every seed's curve covers; xs: (draws, seeds, val points)."""
    lo, hi = xs[..., 0].max(-1), xs[..., -1].min(-1)
    return lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, points)


def _interpolate(xs, losses, grid):
    """Each seed's piecewise-linear curve at every grid x: xs, losses (draws, seeds, K), grid (draws, G) -> (draws,
    seeds, G)."""
    k = xs.shape[-1]
    if k == 1:
        return np.broadcast_to(losses, losses.shape[:2] + grid.shape[-1:])
    i = np.zeros(xs.shape[:2] + grid.shape[-1:], dtype=np.intp)
    for j in range(1, k - 1):  # the segment of each grid x: K is a handful of val points, the grid is long
        i += grid[:, None, :] >= xs[:, :, j, None]
    x0, x1 = np.take_along_axis(xs, i, -1), np.take_along_axis(xs, i + 1, -1)
    y0, y1 = np.take_along_axis(losses, i, -1), np.take_along_axis(losses, i + 1, -1)
    return y0 + (grid[:, None, :] - x0) / (x1 - x0) * (y1 - y0)


class Test(NamedTuple):
    """The t-test of the arm against the baseline at each grid x: (draws, G) each."""
    diff: np.ndarray  # the arm's mean loss - the baseline's
    se: np.ndarray
    df: np.ndarray


def _t_test(values, base, paired, shift=None):
    """values (draws, n, G) the arm at each grid x, base (draws, m): Welch's two-sample t-test, or the paired t-test
    on the seed-by-seed differences. shift (draws, G, optional): the sd of the arm's mean loss that comes from where
    x itself lies (the baseline's time to its target is a mean over its m seeds), added to Welch's variance with
    m - 1 degrees of freedom."""
    n, m = values.shape[1], base.shape[1]
    if paired:
        d = values - base[:, :, None]
        return Test(d.mean(1), np.sqrt(d.var(1, ddof=1) / n), np.full(d.shape[::2], n - 1.0))
    va, vb = values.var(1, ddof=1) / n, np.broadcast_to(base.var(1, ddof=1)[:, None] / m, values.shape[::2])
    vx = np.zeros_like(va) if shift is None else shift ** 2
    denominator = va ** 2 / (n - 1) + (vb ** 2 + vx ** 2) / (m - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denominator > 0, (va + vb + vx) ** 2 / denominator, np.inf)
    return Test(values.mean(1) - base.mean(1)[:, None], np.sqrt(va + vb + vx), df)


def _ends(grid, test, levels):
    """(low, high) x of the hull of the grid x the two-sided test accepts at each level, each end interpolated
    linearly in diff -/+ t_crit * se between the grid points around it: low where the arm stops being significantly
    above the target (-inf: not above at the first x; the last x when above at every x), high where it last is not
    significantly below it (inf: not below at the last x; the first x when below at every x). grid (draws, G), test
    fields (draws, G) -> (levels, draws) each."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(test.se > 0, test.diff / test.se, np.sign(test.diff) * np.inf)
    upper = scipy.stats.t.sf(t, test.df)  # the one-sided p that the arm lies above, once for every level
    rows, g = np.arange(len(grid)), grid.shape[-1]

    def cross(k0, k1, sign, alpha):  # where diff + sign * t_crit * se falls through 0 between grid points k0, k1
        f0, f1 = (test.diff[rows, k] + sign * scipy.stats.t.ppf(1 - alpha / 2, test.df[rows, k]) * test.se[rows, k]
                  for k in (k0, k1))
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.clip(np.where(f0 != f1, f0 / (f0 - f1), 0.0), 0, 1)
        return grid[rows, k0] + w * (grid[rows, k1] - grid[rows, k0])

    lows, highs = [], []
    for level in levels:
        alpha = 1 - level
        accepted = upper >= alpha / 2  # not significantly above
        i = accepted.argmax(-1)
        low = np.where(i == 0, -np.inf, cross(np.maximum(i - 1, 0), i, -1, alpha))
        low = np.where(accepted.any(-1), low, grid[:, -1])
        accepted = (1 - upper >= alpha / 2)[:, ::-1]  # not significantly below
        k = g - 1 - accepted.argmax(-1)
        high = np.where(k == g - 1, np.inf, cross(k, np.minimum(k + 1, g - 1), 1, alpha))
        high = np.where(accepted.any(-1), high, grid[:, 0])
        lows.append(np.minimum(low, high))
        highs.append(np.maximum(low, high))
    return np.array(lows), np.array(highs)


def _slope(grid, curve):
    """d curve / d x along each row of grid (draws, G), by differences between neighbouring grid points."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(np.gradient(curve, axis=-1) / np.gradient(grid, axis=-1))


def _invert(base_losses, base_xs, arm_losses, arm_xs, levels, points=POINTS):
    """Batched over draws: the baseline's x to its target (draws,), the arm's (draws,) on the mean curves, and the
    ends of the arm's x to the target accepted at each level ((levels, draws) each). Arrays: (draws, seeds, points)."""
    base_curve = base_losses.mean(1)
    target = base_curve[:, -1]
    base_x = first_crossing(base_xs.mean(1), base_curve, target)
    arm_x = first_crossing(arm_xs.mean(1), arm_losses.mean(1), target)
    grid = _grid(arm_xs, points)
    values = _interpolate(arm_xs, arm_losses, grid)
    # In train_time the baseline's time to its target is itself a mean over its seeds: an error of e in its log
    # moves the x the arm must be compared at by x * e, and the arm's loss there by slope * x * e (delta method).
    # In tokens every seed's x is the same and this is 0.
    log_sd = np.log(base_xs[:, :, -1]).std(1, ddof=1) / math.sqrt(base_xs.shape[1])
    shift = _slope(grid, values.mean(1)) * grid * log_sd[:, None]
    test = _t_test(values, base_losses[:, :, -1], False, shift)
    low, high = _ends(grid, test, levels)
    return base_x, arm_x, low, high


@dataclass
class Speedup:
    """The speedup of an arm over the baseline to the target, with its interval (low/high None: not bounded by the
    data on that side) and how it was made."""
    speedup: float | None  # baseline x / arm x on the mean curves; None when the arm's mean curve never reaches it
    low: float | None
    high: float | None
    base_x: float | None
    arm_x: float | None
    arm_x_ci: tuple  # (low, high) of the arm's x to the target, None for an open end
    target: float
    level: float  # the level of the inverted test (raised above 0.95 when the coverage self-check widened it)
    method: str
    n: tuple  # (baseline seeds, arm seeds)

    def text(self, extra=""):
        """'1.90x [1.36-2.64] (test inversion, n=5+5)', extra inside the parentheses after n."""
        value = "not reached" if self.speedup is None else f"{self.speedup:.2f}x"
        ends = ["n/a" if e is None else "inf" if e == math.inf else f"{e:.2f}" for e in (self.low, self.high)]
        return f"{value} [{ends[0]}-{ends[1]}] ({self.method}, n={self.n[0]}+{self.n[1]}{extra})"


def inversion(base, arm, level=LEVEL, points=POINTS):
    """Speedup with its test-inversion interval at level: base and arm are (losses, xs) arrays of shape (seeds, val
    points), xs in tokens (the same for every seed) or train_time (each seed its own). None below 2 seeds in an arm."""
    n, m = len(base[0]), len(arm[0])
    if n < 2 or m < 2:
        return None
    crossing = to_target(base, arm)
    _, _, low, high = _invert(*(np.asarray(a, dtype=float)[None] for a in (*base, *arm)), [level], points)
    low, high = float(low[0, 0]), float(high[0, 0])
    base_x = crossing.base_x
    open_low, open_high = high == math.inf, low <= 0
    return Speedup(
        speedup=speedup(base, arm), base_x=base_x, arm_x=crossing.arm_x, target=crossing.target,
        low=None if open_low or base_x is None else base_x / high,
        high=None if open_high or base_x is None else base_x / low,
        arm_x_ci=(None if open_high else low, None if open_low else high),
        level=level, method=INVERSION if level == LEVEL else f"{INVERSION} at level {level}", n=(n, m))


# ------------------------------------------------------------------------- coverage self-check

class Noise(NamedTuple):
    """An arm's seed curves summarized for simulation."""
    mean: np.ndarray  # the mean-over-seeds loss at each val point
    xs: np.ndarray  # the mean x at each val point
    sd: np.ndarray  # the seed-to-seed sd of the loss at each val point
    rho: float  # the correlation of a seed's deviations between neighbouring val points (simulated as AR(1))
    x_sd: float  # the seed-to-seed sd of log x at the last point (train_time; 0 for tokens)


def measure_noise(losses, xs):
    """Noise of one arm's (losses, xs), each (seeds, val points)."""
    losses, xs = np.asarray(losses, dtype=float), np.asarray(xs, dtype=float)
    sd = losses.std(0, ddof=1)
    z = np.where(sd > 0, (losses - losses.mean(0)) / np.where(sd > 0, sd, 1), 0)
    pairs = (sd[:-1] > 0) & (sd[1:] > 0)
    a, b = z[:, :-1][:, pairs].ravel(), z[:, 1:][:, pairs].ravel()
    rho = float(np.clip((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()), -0.99, 0.99)) if a.size else 0.0
    return Noise(losses.mean(0), xs.mean(0), sd, rho, float(np.log(xs[:, -1]).std(ddof=1)) if xs[0, -1] > 0 else 0.0)


def simulate(noise, seeds, draws, rng):
    """(losses, xs) of draws x seeds simulated curves: (draws, seeds, val points) each."""
    k = len(noise.mean)
    e = rng.standard_normal((draws, seeds, k))
    z = np.empty_like(e)
    z[..., 0] = e[..., 0]
    for j in range(1, k):
        z[..., j] = noise.rho * z[..., j - 1] + math.sqrt(1 - noise.rho ** 2) * e[..., j]
    scale = np.exp(noise.x_sd * rng.standard_normal((draws, seeds, 1)))
    return noise.mean + noise.sd * z, noise.xs * scale


def coverage(base_noise, arm_noise, n, m, draws=DRAWS, seed=0, levels=(LEVEL,), points=POINTS):
    """Measured coverage of the test-inversion interval at each level, on draws simulated curves of n baseline and m
    arm seeds with the given noise; the true speedup is the one of the noise-free mean curves. (levels,) array."""
    rng = np.random.default_rng(seed)
    true = speedup((base_noise.mean[None], base_noise.xs[None]), (arm_noise.mean[None], arm_noise.xs[None]))
    base, arm = simulate(base_noise, n, draws, rng), simulate(arm_noise, m, draws, rng)
    base_x, _, low, high = _invert(*base, *arm, levels, points)
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = (base_x / high <= true) & (np.where(low > 0, base_x / low, np.inf) >= true)
    return hit.mean(-1)


@dataclass
class Checked:
    """An interval with its coverage measured on the verdict's own noise."""
    interval: Speedup  # at the level that held (or the highest tried, when none did)
    coverage: float  # simulated coverage at interval.level
    draws: int
    widened_by: str | None  # e.g. 'test level 0.99 (0.91 at 0.95)'; None when the 95% interval held
    holds: bool  # coverage >= FLOOR
    noise: tuple  # (baseline Noise, arm Noise)

    def text(self):
        """'1.90x [1.36-2.64] (test inversion, n=5+5; coverage 0.95 on this verdict's noise, 1000 draws)'."""
        held = "" if self.holds else f", below {FLOOR}: the interval does not hold its level"
        return self.interval.text(f"; coverage {self.coverage:.2f} on this verdict's noise, {self.draws} draws{held}")


def self_check(base, arm, draws=DRAWS, seed=0, points=POINTS, level=LEVEL):
    """The interval of inversion(base, arm) with its coverage measured by coverage() on each arm's own noise
    (measure_noise), at these seed counts; the level is raised through LEVELS (from `level`, one of them) until the
    coverage is >= FLOOR (FLOOR + level - LEVEL above 95%). None below 2 seeds in an arm or when the arm's mean curve
    never reaches the target."""
    n, m = len(base[0]), len(arm[0])
    if n < 2 or m < 2 or speedup(base, arm) is None:
        return None
    noise = (measure_noise(*base), measure_noise(*arm))
    levels, floor = LEVELS[LEVELS.index(level):], FLOOR + level - LEVEL
    covered = coverage(*noise, n, m, draws, seed, levels, points)
    i = next((i for i, c in enumerate(covered) if c >= floor), len(levels) - 1)
    widened = f"test level {levels[i]} ({covered[0]:.2f} at {level})" if i else None
    return Checked(inversion(base, arm, levels[i], points), float(covered[i]), draws, widened,
                   bool(covered[i] >= floor), noise)


# ------------------------------------------------------------------------- record runs

class Attempt(NamedTuple):
    steps: int
    mean_final_val_loss: float
    p: float  # the one-sided test at this length alone
    p_sequence: float  # the fixed-sequence p: the largest p of this and every longer length
    rejected: bool  # p_sequence < alpha


@dataclass
class RecordRuns:
    """What the record runs estimate (steps to the target, interpolated between attempted lengths) and confirm (the
    shortest length of the fixed sequence, longest first, whose test rejected)."""
    record_steps_to_target: float | None  # None when the attempted lengths do not bracket the target
    record_steps_to_target_ci: tuple  # (low, high) steps, None for an end the attempted lengths do not bound
    confirmed_steps: int | None
    confirmed_p: float | None  # its fixed-sequence p
    sequence: list  # the Attempts tested, longest first, up to the first that failed
    test: str
    method: str
    n: tuple  # (baseline runs, record seeds)
    level: float

    def text(self):
        """'77 steps [70-86] (test inversion over record lengths, n=5+5)'."""
        value = "n/a" if self.record_steps_to_target is None else f"{self.record_steps_to_target:.0f} steps"
        ends = ["n/a" if e is None else f"{e:.0f}" for e in self.record_steps_to_target_ci]
        return f"{value} [{ends[0]}-{ends[1]}] ({self.method}, n={self.n[0]}+{self.n[1]})"


def below(arm_finals, base_finals):
    """One-sided Welch t-test p-value that the arm's final losses lie below the baseline's (None below 2 each)."""
    if len(arm_finals) < 2 or len(base_finals) < 2:
        return None
    p = scipy.stats.ttest_ind(arm_finals, base_finals, equal_var=False, alternative="less").pvalue
    return float(p) if math.isfinite(p) else None


def below_paired(arm_finals, base_finals):
    """One-sided paired t-test p-value that the arm's final losses lie below the baseline's on the same seeds (same
    order); None below 2 pairs."""
    if len(arm_finals) < 2 or len(arm_finals) != len(base_finals):
        return None
    p = scipy.stats.ttest_rel(arm_finals, base_finals, alternative="less").pvalue
    return float(p) if math.isfinite(p) else None


def record_runs(steps, finals, base_finals, paired=False, alpha=RECORD_ALPHA, level=LEVEL, points=POINTS):
    """The record runs of one arm: steps (k,) the attempted lengths, finals (k, seeds) the final val losses at each
    (the same record seeds, in the same order, at every length), base_finals the baseline's final val losses (the
    target is their mean); paired: base_finals are the baseline's runs on the same record seeds in the same order."""
    steps = np.asarray(steps, dtype=float)
    finals, base_finals = np.asarray(finals, dtype=float), np.asarray(base_finals, dtype=float)
    order = np.argsort(steps)
    steps, finals = steps[order], finals[order]
    m, n = finals.shape[1], len(base_finals)
    if paired and m != n:
        sys.exit(f"error: a paired record test needs the baseline's runs on the same {m} record seeds, got {n}")
    test = "one-sided paired t-test (the baseline rerun on the record seeds)" if paired else "one-sided Welch t-test"
    sequence, running = [], 0.0
    for i in range(len(steps) - 1, -1, -1):  # longest first
        p = (below_paired if paired else below)(finals[i], base_finals)
        running = max(running, 1.0 if p is None else p)
        sequence.append(Attempt(int(steps[i]), float(finals[i].mean()), p, running, running < alpha))
        if running >= alpha:
            break
    confirmed = [a for a in sequence if a.rejected]
    target = base_finals.mean()
    x = np.log(steps)
    mean = finals.mean(1)
    estimate = first_crossing(x, mean, np.array(target)) if mean[0] > target else np.nan
    low, high = -np.inf, np.inf  # open at both ends below 2 runs on a side
    if m >= 2 and n >= 2:
        xs = np.broadcast_to(x, (m, len(x)))[None]
        grid = _grid(xs, points)
        at_x = _t_test(_interpolate(xs, finals.T[None], grid), base_finals[None], paired)
        low, high = (float(e[0, 0]) for e in _ends(grid, at_x, [level]))
    return RecordRuns(
        record_steps_to_target=_number(np.exp(estimate)),
        record_steps_to_target_ci=(None if low == -np.inf else float(np.exp(low)),
                                   None if high == np.inf else float(np.exp(high))),
        confirmed_steps=confirmed[-1].steps if confirmed else None,
        confirmed_p=confirmed[-1].p_sequence if confirmed else None, sequence=sequence, test=test,
        method=f"{INVERSION} over record lengths, {'paired t' if paired else 'Welch'}", n=(n, m), level=level)
