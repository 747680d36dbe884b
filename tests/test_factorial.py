"""tune/scale.py in tune/fair.py's verdict: the 2x2 (architecture x optimizer) end to end on stand-in scripts
(tests/fair_standin.py) whose speeds are known, and the speedup against scale on synthetic loss-vs-FLOPs points
with a known multiplier trend."""
import json
import math

import numpy as np
import pytest

from tune import fair, scale, stats

# the built-in arms' names on the stand-in: nGPT learns 2x faster, Muon 1.5x faster under GPT-2, 1.2x under nGPT
STANDIN_ARMS = {"gpt2": ("tests/fair_standin.py", []), "gpt2_muon": ("tests/fair_standin.py", ["--optimizer=muon"]),
                "ngpt2": ("tests/fair_standin.py", ["--speed=2"]),
                "ngpt2_muon": ("tests/fair_standin.py", ["--speed=2", "--optimizer=muon", "--muon_gain=1.2"])}
KNOWN = {"architecture under AdamW": 2.0, "architecture under Muon": 2.4 / 1.5, "optimizer under GPT-2": 1.5,
         "optimizer under nGPT": 1.2}


@pytest.mark.slow
def test_the_2x2_end_to_end_gives_the_stand_ins_known_effects(tmp_path, monkeypatch):
    monkeypatch.setattr(fair, "ARMS", STANDIN_ARMS)
    status = fair.main([f"--out={tmp_path}", "--widths", "64", "--proxy_widths", "16,32", "--grid", "3", "--seeds",
                        "3", "--parallel", "2", "--n_embd=64", "--n_head=4"])
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert status == 0, verdict["invalid_reasons"]
    assert verdict["baselines"] == ["gpt2", "gpt2_muon"] and verdict["baseline"] == "gpt2_muon"
    table = verdict["factorial"]
    for name, known in KNOWN.items():
        e = table[name]
        assert e["speedup"] == pytest.approx(known, rel=0.1), name
        assert e["ci"][0] < e["speedup"] < e["ci"][1] and e["coverage"] >= 0.93 and not e["reversed"]
    inter = table["interaction"]
    assert inter["ratio"] == pytest.approx(0.8, rel=0.1)
    assert inter["ratio"] == pytest.approx(table["architecture under Muon"]["speedup"]
                                           / table["architecture under AdamW"]["speedup"])
    low, high = inter["ci"]
    assert low < inter["ratio"] < high and inter["coverage_at_least"] >= 0.9
    # Bonferroni: the ratio's interval is built from the 97.5% intervals, so it is wider than the 95% ones' quotient
    assert low < table["architecture under Muon"]["ci"][0] / table["architecture under AdamW"]["ci"][1]
    # the headline is nGPT with Muon against the strongest baseline, declared before the runs
    assert verdict["headline"].startswith("nGPT+Muon vs GPT-2+Muon (the strongest of gpt2, gpt2_muon here)")
    assert verdict["scale"]["16"] == {"fitted": False, "widths": [64], "reason": "one target width (64): a fit of "
                                      "loss against FLOPs needs several (--widths W1,W2,W3)"}
    md = (tmp_path / "verdict.md").read_text()
    assert "| optimizer under nGPT | ngpt2_muon over ngpt2 | 1." in md
    assert "| interaction (1 = the effects add) | architecture under Muon / under AdamW | 0." in md
    assert "Sequence length 16: no fit: one target width (64)" in md


@pytest.mark.slow
def test_a_slower_arm_is_a_speedup_below_one_read_at_its_own_loss(tmp_path, monkeypatch):
    slow = ["--speed=2", "--optimizer=muon", "--muon_gain=0.5"]     # Muon halves nGPT's speed
    monkeypatch.setattr(fair, "ARMS", dict(STANDIN_ARMS, ngpt2_muon=("tests/fair_standin.py", slow)))
    fair.main([f"--out={tmp_path}", "--widths", "64", "--proxy_widths", "32", "--grid", "3", "--seeds", "3",
               "--parallel", "2", "--n_embd=64", "--n_head=4"])
    e = json.loads((tmp_path / "verdict.json").read_text())["factorial"]["optimizer under nGPT"]
    assert e["reversed"] and e["speedup"] == pytest.approx(0.5, rel=0.1) and e["ci"][0] < 0.5 < e["ci"][1] < 1


def synthetic(slope, noise=0.0, seed=0):
    """blocks and FLOPs at widths 64, 128, 256: the baseline on L = 10 C^-0.1, the arm at the baseline's loss of
    m(N) C FLOPs with m = 2 (N / N_64)^slope, each mean loss times exp(noise x N(0, 1))."""
    rng = np.random.default_rng(seed)
    blocks, flops = {}, {}
    for w in (64, 128, 256):
        n = 12 * 4 * w * w
        c = 6 * n * 1e6
        m = 2 * (n / (12 * 4 * 64 * 64)) ** slope
        losses = {"base": 10 * c ** -0.1, "arm": 10 * (m * c) ** -0.1}
        blocks[(128, w)] = {"baseline": "base", "arms": {a: {"mean": loss * math.exp(noise * rng.standard_normal()),
                                                             "params": n} for a, loss in losses.items()}}
        flops.update({(a, 128, w): c for a in losses})
    return blocks, flops


def test_the_scale_fit_recovers_a_known_multiplier_trend():
    s = scale.scale(*synthetic(0.3))["128"]
    assert s["fitted"] and s["baseline"] == "base" and s["widths"] == [64, 128, 256]
    arm = s["arms"]["arm"]
    # C grows as N here, so the arm's loss falls as (N^0.3 C)^-0.1 = C^-0.13
    assert s["arms"]["base"]["fit"]["exponent"] == pytest.approx(-0.1)
    assert arm["fit"]["exponent"] == pytest.approx(-0.13)
    assert [arm["multiplier"][w] for w in ("64", "128", "256")] == pytest.approx([2, 2 * 4 ** 0.3, 2 * 16 ** 0.3])
    assert arm["trend"]["slope"] == pytest.approx(0.3) and arm["trend"]["df"] == 1
    assert arm["trend"]["ci"] == pytest.approx([0.3, 0.3], abs=1e-6)      # three points on a line: no scatter
    assert "multiplier" not in s["arms"]["base"]
    noisy = scale.scale(*synthetic(-0.2, noise=0.002, seed=1))["128"]["arms"]["arm"]["trend"]
    assert noisy["ci"][0] < -0.2 < noisy["ci"][1] and noisy["ci"][1] - noisy["ci"][0] > 0.01
    assert noisy["slope"] == pytest.approx(-0.2, abs=0.15)


def test_two_widths_fit_without_an_interval_and_one_width_cannot_fit():
    blocks, flops = synthetic(0.3)
    two = {k: v for k, v in blocks.items() if k[1] != 256}
    trend = scale.scale(two, flops)["128"]["arms"]["arm"]["trend"]
    assert trend["slope"] == pytest.approx(0.3) and trend["ci"] is None and trend["df"] == 0
    one = scale.scale({(128, 64): blocks[(128, 64)]}, flops)["128"]
    assert not one["fitted"] and "needs several (--widths W1,W2,W3)" in one["reason"]


@pytest.mark.slow
def test_several_widths_fit_loss_against_flops_and_plot_it(tmp_path):
    # wider runs end lower (floor_exp); the stand-in logs a GPT's parameter count at each width (--params=0)
    status = fair.main([f"--out={tmp_path}", "--arms", "slow,fast", "--arm", "slow=tests/fair_standin.py:",
                        "--arm", "fast=tests/fair_standin.py:--speed=2", "--baseline", "slow", "--widths", "32,64,128",
                        "--grid", "3", "--seeds", "2", "--parallel", "2", "--n_embd=64", "--n_head=4", "--params=0",
                        "--floor_exp=0.5"])
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert status == 0, verdict["invalid_reasons"]
    s = verdict["scale"]["16"]
    assert s["fitted"] and s["baseline"] == "slow" and s["widths"] == [32, 64, 128]
    points = s["arms"]["slow"]["points"]
    assert [p["params"] for p in points] == [12 * 2 * w * w + 256 * w for w in (32, 64, 128)]
    assert [p["flops"] for p in points] == [(6 * 12 * 2 * w * w + 6 * 2 * w * 16) * 4 * 16 * 40 for w in (32, 64, 128)]
    fast = s["arms"]["fast"]
    assert all(m > 1 for m in fast["multiplier"].values()) and fast["trend"]["df"] == 1
    low, high = fast["trend"]["ci"]
    assert low < fast["trend"]["slope"] < high
    assert (tmp_path / "L16_loss_vs_flops.png").stat().st_size > 0
    assert "![loss vs FLOPs](L16_loss_vs_flops.png)" in (tmp_path / "verdict.md").read_text()


def test_the_interactions_97_5_intervals_are_self_checked_at_that_level(monkeypatch):
    # the levels tried start at 0.975 and must cover 0.955 (FLOOR moved up by as much as the level): 0.95 does not
    seen = []

    def coverage(*args):
        seen.append(args[6])
        return np.array([0.95, 0.96, 0.97, 0.99])
    monkeypatch.setattr(stats, "coverage", coverage)
    steps = np.arange(0, 41, 5.0)
    rng = np.random.default_rng(0)
    base = (3 + 7 / (1 + steps / 10) + 0.01 * rng.standard_normal((3, 9)), np.tile(steps, (3, 1)))
    arm = (3 + 7 / (1 + 2 * steps / 10) + 0.01 * rng.standard_normal((3, 9)), np.tile(steps, (3, 1)))
    checked = stats.self_check(base, arm, level=scale.BONFERRONI)
    assert seen == [(0.975, 0.99, 0.995, 0.999)] and checked.interval.level == 0.99 and checked.holds
    assert checked.interval == stats.inversion(base, arm, 0.99)
    assert checked.widened_by == "test level 0.99 (0.95 at 0.975)"


def test_a_baseline_whose_loss_does_not_fall_gives_no_multiplier():
    blocks, flops = synthetic(0.3)
    for w in (64, 128, 256):
        blocks[(128, w)]["arms"]["base"]["mean"] = 3.0
    s = scale.scale(blocks, flops)["128"]
    assert not s["fitted"] and s["reason"] == "the baseline base's loss does not fall with FLOPs across the widths"
    assert "multiplier" not in s["arms"]["arm"]
