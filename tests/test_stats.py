"""tune/stats.py: the target from the mean curve at 8 and 9 seeds, the test-inversion interval against a hand
computation and its coverage at record-like and fixed noise, the coverage self-check and its widening, and the
record runs' estimate, fixed-sequence confirmation and paired test."""
import math

import numpy as np
import pytest
import scipy.stats

from tune import stats

# The tiny record (records/2026-12-01_tiny_cpu_fair_verdict, length 128, width 128): mean val loss every 25 of 150
# steps of GPT-2 (the baseline) and nGPT over seeds 2-6. nGPT crosses GPT-2's final mean at step 79, just past a
# validation point (1.90x in tokens).
STEPS = np.arange(0, 151, 25.0)
BASE = np.array([7.650, 6.328, 6.120, 5.953, 5.742, 5.628, 5.518])
ARM = np.array([7.631, 6.303, 5.790, 5.556, 5.327, 5.300, 5.086])
# Record-like noise, as measured in its logs: seed-to-seed sd rising to ~0.25 mid-run and ~0.07 at the end.
SD_BASE = np.array([0.006, 0.05, 0.08, 0.12, 0.07, 0.09, 0.07])
SD_ARM = np.array([0.003, 0.07, 0.1, 0.25, 0.15, 0.12, 0.07])
# The first tiny record (records/2026-12-01_tiny_cpu_fair_ab): one data order, 3-25x less noise.
FIRST_BASE = np.array([7.65, 6.716, 6.15, 6.054, 5.872, 5.732, 5.666])
FIRST_ARM = np.array([7.636, 6.21, 5.655, 5.607, 5.382, 5.224, 5.134])
FIRST_SD_BASE = np.array([0.006, 0.008, 0.007, 0.044, 0.03, 0.03, 0.033])
FIRST_SD_ARM = np.array([0.006, 0.016, 0.016, 0.011, 0.018, 0.007, 0.009])


def seed_curves(rng, mean, sd, n, ms, axis, rho=0.9):
    """n seed curves whose deviations correlate rho between any two val points; time: a seed's step time varies 4%."""
    z = math.sqrt(rho) * rng.standard_normal((n, 1)) + math.sqrt(1 - rho) * rng.standard_normal((n, len(mean)))
    xs = np.tile(STEPS * 512, (n, 1)) if axis == "tokens" else STEPS * ms * (1 + 0.04 * rng.standard_normal((n, 1)))
    return mean + sd * z, xs


def covers(s, true):
    return s is not None and (s.low is None or s.low <= true) and (s.high is None or true <= s.high)


# ------------------------------------------------------------------------- the target and the point estimate

@pytest.mark.parametrize("n", [8, 9])
def test_the_baseline_reaches_its_own_target_at_8_and_9_seeds(n):
    rng = np.random.default_rng(n)
    off_by_an_ulp = 0
    for _ in range(200):
        base, arm = seed_curves(rng, BASE, SD_BASE, n, 100, "tokens"), seed_curves(rng, ARM, SD_ARM, n, 120, "tokens")
        off_by_an_ulp += base[0][:, -1].mean() != base[0].mean(0)[-1]  # the two sums the old target confused
        crossing = stats.to_target(base, arm)
        assert crossing.base_x is not None and crossing.arm_x is not None
        s = stats.inversion(base, arm)
        assert s.speedup == pytest.approx(crossing.base_x / crossing.arm_x)
        assert s.low is not None and s.high is not None and s.low <= s.speedup <= s.high
    assert off_by_an_ulp > 0  # the draws include the case that made the speedup None


def test_first_crossing_is_linear_interpolation_at_the_first_point_below():
    xs = np.array([0.0, 10.0, 20.0, 30.0])
    losses = np.array([5.0, 4.0, 3.0, 2.5])
    assert stats.first_crossing(xs, losses, np.array(3.5)) == pytest.approx(15.0)
    assert stats.first_crossing(xs, losses, np.array(5.0)) == 0.0
    assert np.isnan(stats.first_crossing(xs, losses, np.array(2.0)))
    batch = stats.first_crossing(np.stack([xs, 2 * xs]), np.stack([losses, losses]), np.array([3.5, 2.75]))
    assert batch == pytest.approx([15.0, 50.0])


# ------------------------------------------------------------------------- the interval

def test_the_interval_ends_where_welchs_test_starts_to_reject():
    # every arm seed's curve is a line of the same slope, so Welch's se and df are the same at every x and the ends
    # are the two x where the arm's mean is the target -/+ t_crit * se
    xs = np.tile(np.array([0.0, 100.0, 200.0]), (4, 1))
    offsets = np.array([0.0, 0.05, -0.04, 0.02])
    arm = (6.0 - 0.01 * xs + offsets[:, None], xs)
    base_finals = np.array([5.0, 5.03, 4.98])
    base = (np.stack([base_finals + 1.0, base_finals + 0.5, base_finals], 1), xs[:3])
    va, vb = offsets.var(ddof=1) / 4, base_finals.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)
    half = scipy.stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    # the arm's mean line 6 + mean(offsets) - 0.01 x meets target -/+ half
    x = [(6.0 + offsets.mean() - (base_finals.mean() + sign * half)) / 0.01 for sign in (1, -1)]
    s = stats.inversion(base, arm)
    assert s.arm_x_ci == pytest.approx(x, rel=1e-6)
    assert (s.low, s.high) == pytest.approx((200 / x[1], 200 / x[0]), rel=1e-6)
    assert s.text() == f"{s.speedup:.2f}x [{s.low:.2f}-{s.high:.2f}] (test inversion, n=3+4)"


def test_identical_arms_contain_one_and_separated_arms_exclude_it():
    rng = np.random.default_rng(0)
    base = seed_curves(rng, BASE, SD_BASE, 5, 100, "tokens")
    same = stats.inversion(base, (base[0] + 0.0, base[1]))
    # open below: at its last point the arm is not told from the target, so no slowdown is excluded
    assert same.speedup == pytest.approx(1.0) and same.low is None and same.high > 1.0
    faster = stats.inversion(base, seed_curves(rng, FIRST_ARM - 0.3, FIRST_SD_ARM, 5, 100, "tokens"))
    assert 1.0 < faster.low <= faster.speedup <= faster.high


def test_an_arm_that_never_reaches_the_target_has_no_speedup_and_an_open_interval():
    rng = np.random.default_rng(0)
    base = seed_curves(rng, BASE, SD_BASE, 5, 100, "tokens")
    s = stats.inversion(base, seed_curves(rng, BASE + 0.5, SD_BASE, 5, 100, "tokens"))
    assert s.speedup is None and s.arm_x is None and s.low is None
    assert s.text().startswith("not reached [n/a-")
    assert stats.inversion((base[0][:1], base[1][:1]), base) is None


@pytest.mark.parametrize("axis", ["tokens", "time"])
def test_the_interval_covers_095_at_record_like_noise(axis):
    # n = 5+5 as in the record, where the jackknife-t covered 0.89-0.90 on this noise (tokens and time)
    true = stats.speedup((BASE[None], STEPS[None] * (512 if axis == "tokens" else 100)),
                         (ARM[None], STEPS[None] * (512 if axis == "tokens" else 120)))
    rng = np.random.default_rng(1)
    draws = 1000
    hits = sum(covers(stats.inversion(seed_curves(rng, BASE, SD_BASE, 5, 100, axis),
                                      seed_curves(rng, ARM, SD_ARM, 5, 120, axis)), true) for _ in range(draws))
    print(f"coverage {axis} at record-like noise, n=5+5: {hits / draws:.3f}")
    assert 0.93 <= hits / draws <= 0.97


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("x_sd", [0.0, 0.04])
def test_the_interval_covers_095_at_the_first_records_noise(n, x_sd):
    # x_sd 0: tokens; 0.04: train_time, each seed's step time varying 4% as in the first record
    base = stats.Noise(FIRST_BASE, STEPS * 100, FIRST_SD_BASE, 0.9, x_sd)
    arm = stats.Noise(FIRST_ARM, STEPS * 120, FIRST_SD_ARM, 0.9, x_sd)
    covered = stats.coverage(base, arm, n, n, draws=2000, seed=n)[0]
    print(f"coverage at the first record's noise, n={n}+{n}, x_sd {x_sd}: {covered:.3f}")
    assert 0.93 <= covered <= 0.98


# ------------------------------------------------------------------------- the coverage self-check

def test_measure_noise_recovers_the_simulated_noise():
    truth = stats.Noise(ARM, STEPS * 120, SD_ARM, 0.8, 0.05)
    losses, xs = stats.simulate(truth, 4000, 1, np.random.default_rng(0))
    noise = stats.measure_noise(losses[0], xs[0])
    assert noise.sd == pytest.approx(SD_ARM, rel=0.05)
    assert noise.rho == pytest.approx(0.8, abs=0.02) and noise.x_sd == pytest.approx(0.05, rel=0.05)
    assert noise.mean == pytest.approx(ARM, abs=0.01)


def test_self_check_on_record_like_curves_holds_and_says_so():
    rng = np.random.default_rng(2)
    base, arm = seed_curves(rng, BASE, SD_BASE, 5, 100, "tokens"), seed_curves(rng, ARM, SD_ARM, 5, 120, "tokens")
    checked = stats.self_check(base, arm)
    print(checked.text())
    assert checked.holds and checked.widened_by is None and checked.draws == 1000
    assert 0.93 <= checked.coverage <= 0.97
    assert checked.interval == stats.inversion(base, arm)
    assert checked.text().endswith(f"(test inversion, n=5+5; coverage {checked.coverage:.2f} on this verdict's "
                                   f"noise, 1000 draws)")


@pytest.mark.parametrize("covered, level, holds", [([0.90, 0.92, 0.94, 0.96, 0.99], 0.99, True),
                                                    ([0.80, 0.82, 0.85, 0.88, 0.90], 0.999, False)])
def test_self_check_raises_the_level_until_the_coverage_holds_or_says_it_does_not(monkeypatch, covered, level, holds):
    monkeypatch.setattr(stats, "coverage", lambda *args, **kwargs: np.array(covered))
    rng = np.random.default_rng(3)
    base, arm = seed_curves(rng, BASE, SD_BASE, 5, 100, "tokens"), seed_curves(rng, ARM, SD_ARM, 5, 120, "tokens")
    checked = stats.self_check(base, arm)
    assert checked.interval == stats.inversion(base, arm, level) and checked.holds == holds
    assert checked.coverage == covered[stats.LEVELS.index(level)]
    assert checked.widened_by == f"test level {level} ({covered[0]:.2f} at 0.95)"
    narrow = stats.inversion(base, arm)
    assert checked.interval.low < narrow.low and checked.interval.high > narrow.high
    assert f"test inversion at level {level}" in checked.text()
    assert ("the interval does not hold its level" in checked.text()) == (not holds)


# ------------------------------------------------------------------------- record runs

LENGTHS = np.array([80, 100, 125])


def record_finals(rng, seeds, slope=0.6, at_100=5.40, sd=0.07, rho=0.9):
    """(lengths, seeds) final losses on a curve linear in log steps; a seed's deviations correlate rho across lengths
    (the same seed's data order at every length)."""
    mean = at_100 - slope * np.log(LENGTHS / 100)
    z = math.sqrt(rho) * rng.standard_normal(seeds) + math.sqrt(1 - rho) * rng.standard_normal((len(LENGTHS), seeds))
    return mean[:, None] + sd * z


def test_record_estimate_interpolates_each_seeds_finals_in_log_steps():
    finals = np.array([[5.60, 5.605, 5.595], [5.45, 5.455, 5.445], [5.30, 5.305, 5.295]])
    base = np.array([5.50, 5.505, 5.495])
    r = stats.record_runs([100, 80, 125], finals[[1, 0, 2]], base)  # any order of attempted lengths
    # the mean falls from 5.60 at 80 to 5.45 at 100 steps: 5.50 is reached 2/3 of the way in log steps
    assert r.record_steps_to_target == pytest.approx(math.exp(math.log(80) + 2 / 3 * math.log(100 / 80)))
    low, high = r.record_steps_to_target_ci
    assert 80 < low < r.record_steps_to_target < high < 125
    assert [a.steps for a in r.sequence] == [125, 100, 80] and r.confirmed_steps == 100
    assert r.sequence[-1].rejected is False and r.confirmed_p == max(a.p for a in r.sequence[:2])
    assert r.text() == f"{r.record_steps_to_target:.0f} steps [{low:.0f}-{high:.0f}] (test inversion over record " \
                       f"lengths, Welch, n=3+3)"


def test_record_estimate_below_the_shortest_length_is_not_extrapolated():
    finals = np.array([[5.40, 5.42, 5.38], [5.30, 5.31, 5.29]])
    r = stats.record_runs([80, 100], finals, np.array([5.50, 5.52, 5.48]))
    assert r.record_steps_to_target is None and r.record_steps_to_target_ci[0] is None
    assert r.record_steps_to_target_ci[1] is not None and r.record_steps_to_target_ci[1] <= 80
    assert r.confirmed_steps == 80


def test_record_interval_covers_the_true_steps_to_target():
    rng = np.random.default_rng(4)
    true = 100 * math.exp((5.40 - 5.45) / 0.6)  # where the curve meets the baseline's true final 5.45
    draws, hits = 1000, 0
    for _ in range(draws):
        r = stats.record_runs(LENGTHS, record_finals(rng, 5), 5.45 + 0.07 * rng.standard_normal(5))
        low, high = r.record_steps_to_target_ci
        hits += (low is None or low <= true) and (high is None or true <= high)
    print(f"record interval coverage, n=5+5: {hits / draws:.3f}")
    assert 0.93 <= hits / draws <= 0.97


@pytest.mark.slow
def test_longest_first_holds_the_level_where_shortest_first_does_not():
    # no length reaches below the target: every rejection is an error
    rng = np.random.default_rng(5)
    draws, sequence, shortest_first = 3000, 0, 0
    for _ in range(draws):
        finals = record_finals(rng, 5, slope=0.0, at_100=5.45, rho=0.3)
        base = 5.45 + 0.07 * rng.standard_normal(5)
        sequence += stats.record_runs(LENGTHS, finals, base).confirmed_steps is not None
        shortest_first += any(stats.below(f, base) < stats.RECORD_ALPHA for f in finals)
    print(f"family-wise error: longest first {sequence / draws:.4f}, shortest first {shortest_first / draws:.4f}")
    assert sequence / draws <= 0.016
    assert shortest_first / draws > sequence / draws


def test_paired_record_test_is_scipys_ttest_rel_and_uses_the_shared_data_order():
    rng = np.random.default_rng(6)
    order = 0.1 * rng.standard_normal(5)  # what a seed's data order does to both arms
    base = 5.50 + order + 0.01 * rng.standard_normal(5)
    finals = np.stack([5.47 + order + 0.01 * rng.standard_normal(5)])
    paired = stats.record_runs([100], finals, base, paired=True)
    welch = stats.record_runs([100], finals, base)
    p = scipy.stats.ttest_rel(finals[0], base, alternative="less").pvalue
    assert paired.sequence[0].p == pytest.approx(p) and p < 0.01 < welch.sequence[0].p
    assert paired.confirmed_steps == 100 and welch.confirmed_steps is None
    assert paired.test.startswith("one-sided paired t-test") and paired.method.endswith("paired t")
    with pytest.raises(SystemExit, match="error: a paired record test needs the baseline's runs on the same 5"):
        stats.record_runs([100], finals, base[:4], paired=True)
