"""tune/fair.py: the interval's coverage on simulated seed curves, the statistics on hand-made logs, the one-line
errors, the plan's cost, and the whole protocol on stand-in scripts (tests/fair_standin.py) that write the log
format from a formula: an extended confirmation, record runs, a failed audit, and a SIGKILL then the same command."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tune import analysis, curves, fair, report, runs, stats
from tune.runs import Outcome, Run

TINY = ["--vocab_size=128", "--n_layer=1", "--n_embd=64", "--n_head=4", "--sequence_length=16", "--batch_size=2",
        "--device_batch_size=2", "--num_iterations=4", "--warmup_iters=0", "--warmdown_iters=1", "--val_tokens=32"]


# ------------------------------------------------------------------------- coverage of the 95% interval

# The first tiny record (records/2026-12-01_tiny_cpu_fair_ab, length 128, width 128): mean val loss every 25 of
# 150 steps of GPT-2+QK-norm and nGPT, and the seed-to-seed sd at each point; seed deviations correlate 0.9
# between points, and a seed's step time varies 4% (both as measured in its logs).
STEPS = np.arange(0, 151, 25)
BASE = np.array([7.65, 6.716, 6.15, 6.054, 5.872, 5.732, 5.666])
ARM = np.array([7.636, 6.21, 5.655, 5.607, 5.382, 5.224, 5.134])
SD_BASE = np.array([0.006, 0.008, 0.007, 0.044, 0.03, 0.03, 0.033])
SD_ARM = np.array([0.006, 0.016, 0.016, 0.011, 0.018, 0.007, 0.009])


def seed_curves(rng, mean, sd, n, ms, axis):
    z = 0.9 * rng.standard_normal((n, 1)) + math.sqrt(1 - 0.9 ** 2) * rng.standard_normal((n, len(mean)))
    xs = np.tile(STEPS * 512.0, (n, 1)) if axis == "tokens" else STEPS * ms * (1 + 0.04 * rng.standard_normal((n, 1)))
    return mean + sd * z, xs


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("axis", ["tokens", "time"])
def test_the_95_percent_interval_covers_the_true_speedup(n, axis):
    # the true speedup: the statistic on the noise-free curves (3.03x in tokens, 2.53x in time at 100 vs 120 ms)
    true = stats.speedup(seed_curves(np.random.default_rng(0), BASE, 0 * SD_BASE, 1, 100, axis),
                         seed_curves(np.random.default_rng(0), ARM, 0 * SD_ARM, 1, 120, axis))
    rng = np.random.default_rng(1)
    draws = 1500
    hits = 0
    for _ in range(draws):
        base, arm = seed_curves(rng, BASE, SD_BASE, n, 100, axis), seed_curves(rng, ARM, SD_ARM, n, 120, axis)
        ci = stats.jackknife_t(base, arm)
        hits += ci is not None and ci[0] <= true <= ci[1]
    print(f"coverage {axis} n={n}: {hits / draws:.3f}")
    assert 0.93 <= hits / draws <= 0.98


def test_one_sided_record_test():
    assert stats.below([3.0, 3.01, 2.99], [3.2, 3.21, 3.19]) < 0.01
    assert stats.below([3.2, 3.21, 3.19], [3.0, 3.01, 2.99]) > 0.99
    assert stats.below([3.0], [3.1, 3.2]) is None


# ------------------------------------------------------------------------- the search, with a fake runner

class FakePool:
    """Stands in for runs.Pool: a run 'finishes' at once with the loss the surface gives its (arm, width, lr)."""

    def __init__(self, surface, done):
        self.surface = surface
        self.done = done   # run id -> (status, loss), what runs.outcome reads back
        self.running = {}
        self.slots = 1
        self.started = []
        self.seeded = False  # True: the surface takes the run's seed too

    def free(self):
        return not self.running

    def start(self, key, cmd, console):
        lr = float([a for a in cmd if a.startswith("--learning_rate=")][-1].partition("=")[2])
        self.running[key] = self.surface(key.arm, key.width, lr, *[key.seed] if self.seeded else ())
        self.started.append(key)

    def wait(self):
        keys = list(self.running)
        for key in keys:
            self.done[self.plan.run_id(key)] = self.running.pop(key)
        return keys

    def stop(self):
        pass


def search(monkeypatch, tmp_path, surface, extra=(), seeded=False):
    """The protocol up to the evaluation seeds (record runs need logs, which a fake run does not write)."""
    plan = fair.parse([f"--out={tmp_path}", "--arms", "gpt2,ngpt2", "--baseline=gpt2", "--widths", "64",
                       "--proxy_widths", "16,32", "--seeds", "2"] + TINY + list(extra))
    done = {}
    pool = FakePool(surface, done)
    pool.plan = plan
    pool.seeded = seeded
    monkeypatch.setattr(runs, "Pool", lambda slots, gpus: pool)
    monkeypatch.setattr(runs, "outcome", lambda log_dir, name: Outcome(*done.get(name, ("not run", math.nan))))
    monkeypatch.setattr(fair, "record_protocol", lambda *args: iter(()))
    results, found, stages = fair.run_protocol(plan)
    return plan, results, found, pool


def bowl(best_k):
    """A loss surface with its minimum best_k(arm, width) half-steps (factors of sqrt 2) from the arm's default."""
    def surface(arm, width, lr):
        k = 2 * math.log2(lr / {"gpt2": 6e-4, "ngpt2": 1.5e-3}[arm])
        return "ok", 3.0 + 0.01 * (k - best_k(arm, width)) ** 2
    return surface


def ks_tried(results, arm, width, seed=0):
    return sorted(run.k for run in results if (run.arm, run.width, run.seed) == (arm, width, seed))


def test_search_confirm_choose_and_seeds_on_an_interior_optimum(monkeypatch, tmp_path):
    plan, results, found, pool = search(monkeypatch, tmp_path, bowl(lambda arm, width: 1.4))
    for arm in ("gpt2", "ngpt2"):
        f = found[(arm, 16)]
        # grid -4..4 (factor 2 = 2 half-steps): best 2, no extension; refined at 1 and 3: 1 is nearer 1.4
        assert ks_tried(results, arm, 16) == [-4, -2, 0, 1, 2, 3, 4]
        assert f.bests == {16: 1, 32: 1} and f.bracketed == {16: True, 32: True}
        assert ks_tried(results, arm, 64) == [-1, 0, 1, 2, 3]       # lr/2, lr, 2lr, then sqrt(2) around the best
        assert f.confirmed == {64: True} and f.near == {64: [0, 1, 2]}
        assert ks_tried(results, arm, 64, seed=1) == [0, 1, 2]       # the second choosing seed near the optimum
        assert f.chosen == {64: 1} and math.isclose(plan.lr(arm, 1), plan.center[arm] * 2 ** 0.5)
    assert len(pool.started) == len(set(pool.started)) == len(results)    # no run twice
    # the evaluation seeds (2 and 3: not the choosing ones), started alternating arms and seeds
    assert pool.started[-4:] == [Run(arm, 16, 64, 1, s, 4) for s in (2, 3) for arm in ("gpt2", "ngpt2")]


def test_a_choice_at_an_end_of_its_candidates_is_extended_on_both_choosing_seeds(monkeypatch, tmp_path):
    # seed 0's optimum is at k=1.4 (candidates 0, 1, 2 around its best), seed 1's far above: the mean of the two
    # is lowest at k=3.7, so the choice sits at the candidates' top end until k=3, 4 and 5 are added on both seeds
    def surface(arm, width, lr, seed):
        k = 2 * math.log2(lr / {"gpt2": 6e-4, "ngpt2": 1.5e-3}[arm])
        return "ok", 3.0 + 0.01 * (k - (1.4 if seed == 0 or width != 64 else 6.0)) ** 2
    plan, results, found, pool = search(monkeypatch, tmp_path, surface, seeded=True)
    for arm in ("gpt2", "ngpt2"):
        f = found[(arm, 16)]
        assert f.near == {64: [0, 1, 2, 3, 4, 5]} and f.chosen == {64: 4}
        assert ks_tried(results, arm, 64, seed=1) == [0, 1, 2, 3, 4, 5]
        assert ks_tried(results, arm, 64) == [-1, 0, 1, 2, 3, 4, 5]
    assert len(pool.started) == len(set(pool.started)) == len(results)    # no run twice


def test_lockstep_interleaves_the_arms_runs():
    def gen(name, sizes):
        for n in sizes:
            yield "stage", [f"{name}{i}" for i in range(n)]
    batches = list(runs.lockstep([gen("a", [3, 1]), gen("b", [2])]))
    assert batches == [[("stage", k) for k in ["a0", "b0", "a1", "b1", "a2"]], [("stage", "a0")]]


def test_search_extends_past_an_edge_up_to_three_times(monkeypatch, tmp_path):
    plan, results, found, _ = search(monkeypatch, tmp_path, bowl(lambda arm, width: 8.6 if arm == "gpt2" else 30))
    f = found[("gpt2", 16)]
    assert ks_tried(results, "gpt2", 16) == [-4, -2, 0, 2, 4, 6, 7, 8, 9, 10]   # 6, 8, 10; 8 inside; 7, 9
    assert f.bests[16] == 9 and f.bracketed[16]
    g = found[("ngpt2", 16)]
    assert ks_tried(results, "ngpt2", 16) == [-4, -2, 0, 2, 4, 6, 8, 9, 10, 11]  # 3 extensions, still at the edge
    assert g.bests[16] == 11 and not g.bracketed[16]
    checks = {c["check"]: c for c in analysis.audit(plan, 16, 64, found, results, {"gpt2": [], "ngpt2": []})}
    bracket = checks["every arm's optimum bracketed (worse neighbours on both sides) at each proxy width"]
    assert not bracket["pass"] and "ngpt2 0.0679 at width 16 (NOT bracketed)" in bracket["detail"]


def test_a_confirmation_at_an_edge_is_extended_until_bracketed(monkeypatch, tmp_path):
    # the optimum at the target width is 4x (4 half-steps) below the proxies'
    plan, results, found, _ = search(monkeypatch, tmp_path, bowl(lambda arm, width: -4 if width == 64 else 0))
    f = found[("gpt2", 16)]
    assert f.picked == 0 and ks_tried(results, "gpt2", 64) == [-6, -5, -4, -3, -2, 0, 2]  # -2, -4 edges; refined
    assert f.confirmed == {64: True} and f.chosen == {64: -4}
    checks = {c["check"]: c for c in analysis.audit(plan, 16, 64, found, results, {"gpt2": [], "ngpt2": []})}
    transfer = checks["every arm's optimum transferred (proxies within 2x) and bracketed at the target width"]
    assert transfer["pass"] and "(extended past an edge of lr/2, lr, 2lr)" in transfer["detail"]


def test_diverged_runs_rank_last_and_stay_in_the_table(monkeypatch, tmp_path):
    def surface(arm, width, lr):   # lower loss at higher lr, up to where it diverges (gpt2) / crashes (ngpt2)
        center = {"gpt2": 6e-4, "ngpt2": 1.5e-3}[arm]
        if lr > 1.5 * center:
            return ("diverged" if arm == "gpt2" else "crashed"), math.nan
        return "ok", 3.0 - lr / center
    plan, results, found, _ = search(monkeypatch, tmp_path, surface)
    for arm, status in (("gpt2", "diverged"), ("ngpt2", "crashed")):
        assert found[(arm, 16)].bests[16] == 1     # the sqrt(2) step above the default, the largest that finished
        assert results[Run(arm, 16, 16, 4, 0, 4)].status == status and found[(arm, 16)].bracketed[16]
    report.write_search(plan, results, {k: {"search"} for k in results})
    rows = [line.split("\t") for line in (tmp_path / "search.tsv").read_text().splitlines()]
    assert rows[0] == ["arm", "sequence_length", "width", "lr", "seed", "val_loss", "log", "stage"]
    assert ["gpt2", "16", "16", "0.0024", "0", "diverged", "logs/gpt2_L16_w16_lr0.0024_s0.txt", "search"] in rows
    assert sum(row[5] == "crashed" for row in rows) >= 3


def test_all_diverged_searches_lower_learning_rates():
    results = {Run("a", 16, 16, k, 0, 4): Outcome("diverged", math.nan) for k in (-2, 0, 2)}
    results[Run("a", 16, 16, 4, 0, 4)] = Outcome("ok", 9.0)
    assert analysis.best_k(results, "a", 16, 16, [-2, 0, 2], 4) == -2    # lowest lr first among failures
    assert analysis.best_k(results, "a", 16, 16, [-2, 0, 2, 4], 4) == 4  # any finished run beats every failure


def test_an_optimum_that_moves_between_proxies_is_flagged(monkeypatch, tmp_path):
    plan, results, found, _ = search(monkeypatch, tmp_path, bowl(lambda arm, width: 0 if arm == "gpt2" or width < 32
                                                                 else 4))
    assert found[("ngpt2", 16)].bests == {16: 0, 32: 4}
    assert found[("ngpt2", 16)].picked == 4                        # the largest proxy's best is confirmed
    checks = {c["check"]: c for c in analysis.audit(plan, 16, 64, found, results, {"gpt2": [], "ngpt2": []})}
    transfer = checks["every arm's optimum transferred (proxies within 2x) and bracketed at the target width"]
    assert not transfer["pass"] and "ngpt2: proxies 0.0015 / 0.006 (MOVED more than 2x)" in transfer["detail"]
    assert "gpt2: proxies 0.0006 / 0.0006, best 0.0006 at width 64 among 5 lrs, chosen 0.0006" in transfer["detail"]


# ------------------------------------------------------------------------- the statistics, on hand-made logs

def loss_at(step, speed):
    return 3.0 + 7.0 / (1.0 + speed * step / 10.0)


def write_log(path, seed, speed=1.0, offset=0.0, n=40, every=5, ms=100, params=1000):
    hp = dict(input_bin="train_*.bin", input_val_bin="val_*.bin", val_tokens=256, batch_size=4, sequence_length=32,
              num_iterations=n, seed=seed)
    lines = ["script:train_gpt2.py", f"parameters:{params} non_embedding_parameters:10 (0.0M)",
             "hyperparameters:" + json.dumps(hp)]
    for s in range(0, n + 1, every):
        lines.append(f"step:{s}/{n} val_loss:{loss_at(s, speed) + offset:.4f} train_time:{s * ms}ms "
                     f"step_avg:{ms}.00ms")
    lines.append(f"step:{n}/{n} train_loss:3.0 train_time:{n * ms}ms step_avg:{ms}.00ms tokens_per_s:1280")
    path.write_text("\n".join(lines) + "\n")
    return curves.parse_log(str(path))


def arm_logs(tmp_path, name, offsets, **kw):
    return [write_log(tmp_path / f"{name}{i}.txt", i, offset=o, **kw) for i, o in enumerate(offsets)]


def test_tokens_to_target_speedup_equals_a_hand_computation(tmp_path):
    base = arm_logs(tmp_path, "b", [-0.01, 0.0, 0.01])
    arm = arm_logs(tmp_path, "a", [0.0, 0.0, 0.0], speed=1.5, ms=120)
    v = analysis.versus(base, arm)
    target = np.mean([round(loss_at(40, 1.0) + o, 4) for o in (-0.01, 0.0, 0.01)])
    y25, y30 = round(loss_at(25, 1.5), 4), round(loss_at(30, 1.5), 4)     # the arm crosses between val steps
    step = 25 + (y25 - target) / (y25 - y30) * 5
    assert v["target"] == pytest.approx(target)
    assert v["tokens_to_target"] == pytest.approx(step * 4 * 32)
    assert v["tokens_speedup"] == pytest.approx(40 / step)
    assert v["time_speedup"] == pytest.approx(40 * 100 / (step * 120))
    assert v["reached"] and v["n"] == [3, 3]


def test_identical_arms_interval_contains_one_and_p_is_large(tmp_path):
    base = arm_logs(tmp_path, "b", [-0.02, 0.0, 0.03])
    arm = arm_logs(tmp_path, "a", [-0.02, 0.0, 0.03])
    v = analysis.versus(base, arm)
    assert v["tokens_speedup"] == pytest.approx(1.0)
    for key in ("tokens_speedup_ci", "time_speedup_ci"):  # a leave-one-out target below the arm's end: no interval
        assert v[key] is None or v[key][0] < 1.0 < v[key][1]
    assert v["p_value"] > 0.5


def test_clearly_separated_arms_interval_excludes_one(tmp_path):
    base = arm_logs(tmp_path, "b", [-0.02, 0.0, 0.03])
    arm = arm_logs(tmp_path, "a", [-0.02, 0.0, 0.03], speed=2.0)
    v = analysis.versus(base, arm)
    assert 1.0 < v["tokens_speedup_ci"][0] <= v["tokens_speedup"] <= v["tokens_speedup_ci"][1]
    assert v["time_speedup_ci"][0] > 1.0
    assert v["p_value"] < 0.01 and v["final_loss_diff"] < 0


def test_an_arm_that_never_reaches_the_target_says_so(tmp_path):
    base = arm_logs(tmp_path, "b", [-0.01, 0.0, 0.01])
    arm = arm_logs(tmp_path, "a", [0.0, 0.01], speed=0.25)
    v = analysis.versus(base, arm)
    assert not v["reached"] and v["tokens_speedup"] is None and v["tokens_speedup_ci"] is None
    assert v["gap_at_end"] == pytest.approx(np.mean([round(loss_at(40, 0.25) + o, 4) for o in (0.0, 0.01)])
                                            - v["target"])
    plan = SimpleNamespace(arms={"gpt2_qk": 0, "ngpt2": 0}, baselines=["gpt2_qk"], lengths=[32], widths=[64])
    text = report.headline(plan, {(32, 64): {"baseline": "gpt2_qk", "vs_baseline": {"ngpt2": v}}})
    assert text.startswith(f"nGPT did not reach the final val loss of GPT-2+QK-norm (the strongest of gpt2_qk here) "
                           f"({v['target']:.3f}) at width 64")
    assert f"it ended {v['gap_at_end']:+.3f} from it" in text


# ------------------------------------------------------------------------- errors, before anything runs

@pytest.mark.parametrize("argv, message", [
    (["--arms", "gpt2,gpt5"], "unknown arm 'gpt5'"),
    (["--seed=1"], "fair.py sets --seed"),
    (["--bogus"], "expected --name=value"),
    (["--n_layr=2"], "unknown hyperparameter --n_layr"),
    (["--arms", "gpt2"], "an A/B needs at least two arms"),
    (["--arms", "gpt2,ngpt2", "--baseline=gpt2_qk"], "--baseline gpt2_qk is not one of the arms"),
    (["--arms", "ngpt2,ng2", "--arm", "ng2=train_ngpt2.py:"], "no --baseline given and neither gpt2 nor gpt2_qk"),
    (["--mfu=2"], "--mfu is a fraction"),
    (["--gpu=TPU"], "no peak TFLOPS known"),
    (["--seeds", "1"], "--seeds must be >= 2"),
    (["--arms", "gpt2", "--arm", "gpt2=train_gpt2.py"], "an arm named gpt2 is already in the comparison"),
    (["--arm", "bad"], "--arm expects NAME=SCRIPT:FLAGS"),
    (["--widths", "40"], "width 40 is not a multiple of the target's head_dim 16"),
    (["--seeds", "x"], "argument --seeds: invalid int value"),
])
def test_bad_input_is_a_one_line_error_before_anything_runs(tmp_path, argv, message):
    with pytest.raises(SystemExit) as e:
        fair.main([f"--out={tmp_path / 'out'}"] + argv + TINY)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and "\n" not in e.value.code
    assert message in e.value.code
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_plan(tmp_path, capsys):
    fair.main([f"--out={tmp_path / 'out'}", "--dry_run", "--sequence_lengths", "16,32"] + TINY)
    text = capsys.readouterr().out
    assert "arms gpt2, gpt2_qk, ngpt2 (baseline: the strongest of gpt2, gpt2_qk)" in text
    assert "proxy widths 16, 32" in text
    assert "  search   84-120 runs" in text and "GPU-hours" in text
    assert "length 16: batch 2 x 16 = 32 tokens per step (micro-batch 2)" in text
    assert "length 32: batch 1 x 32 = 32 tokens per step (micro-batch 1)" in text   # the same tokens per step
    fair.main([f"--out={tmp_path / 'out'}", "--dry_run", "--sequence_lengths", "16,32", "--same_batch"] + TINY)
    assert "length 32: batch 2 x 32 = 64 tokens per step" in capsys.readouterr().out
    assert fair.main([f"--out={tmp_path / 'out'}", "--dry_run"]) == 0       # the scripts' defaults: GPU-hours
    total = capsys.readouterr().out.split("\n  total    ")[1]
    assert total.startswith("72-108 runs, 180B-270B tokens, ") and " GPU-hours; logs in " in total
    fair.main([f"--out={tmp_path / 'out'}", "--dry_run"] + STANDIN)   # a script's parameters: only from its logs
    assert "FLOPs and GPU-hours unknown (an arm's parameter count is unknown before its first log)" in \
        capsys.readouterr().out
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- the whole protocol, stand-in scripts

STANDIN = ["--arms", "slow,fast", "--baseline", "slow", "--arm", "slow=tests/fair_standin.py:",
           "--arm", "fast=tests/fair_standin.py:--speed=2 --ms=12 --opt_shift=64", "--widths", "64",
           "--proxy_widths", "16,32", "--grid", "3", "--seeds", "3", "--parallel", "2", "--n_embd=64", "--n_head=4"]


def fair_cli(out, extra=(), ledger=None):
    env = dict(os.environ, FAIR_LEDGER=str(ledger or out.parent / f"{out.name}.ledger"))
    return subprocess.Popen([sys.executable, "-m", "tune.fair", f"--out={out}"] + STANDIN + list(extra), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=fair.ROOT)


def test_whole_protocol_extends_confirms_records_and_survives_sigkill(tmp_path):
    whole = fair_cli(tmp_path / "whole")
    output = whole.communicate()[0]
    assert whole.returncode == 0, output
    verdict = json.loads((tmp_path / "whole" / "verdict.json").read_text())
    assert verdict["valid"] and verdict["invalid_reasons"] == [] and verdict["baseline"] == "slow"
    transfer = verdict["audit"][1]
    assert transfer["pass"] and "fast: proxies 0.01 / 0.01, best 0.0025 at width 64 among 7 lrs (extended past an " \
                                "edge of lr/2, lr, 2lr)" in transfer["detail"]       # 0.005 edge, 0.0025, refined
    assert verdict["arms"]["fast"]["lr"] == pytest.approx(0.0025) and verdict["arms"]["fast"]["seeds"] == [2, 3, 4]
    data = verdict["audit"][4]
    assert data["pass"] and "between seeds varied: init and data order (data_seed = seed)" in data["detail"]
    v = verdict["vs_baseline"]["fast"]
    assert v["interval_method"].startswith("95% jackknife-t") and v["n"] == [3, 3]
    assert v["tokens_speedup_ci"][0] < v["tokens_speedup"] < v["tokens_speedup_ci"][1]
    attempts = v["confirmed_attempts"]
    assert [a["steps"] for a in attempts] == [21, 27] and attempts[0]["p"] > 0.01 > attempts[1]["p"]  # 21 * 1.25
    assert v["confirmed_steps"] == 27 and v["confirmed_p"] == attempts[1]["p"]
    assert v["confirmed_speedup"] == pytest.approx(40 / 27)
    assert verdict["headline"].startswith("fast reached the final val loss of slow") and "27 steps" in \
        verdict["headline"] and "conservative" in verdict["headline"]
    record = (tmp_path / "whole" / "logs" / "fast_L16_w64_lr0.0025_s5_n27.txt").read_text()
    assert '"num_iterations": 27, "warmup_iters": 3, "warmdown_iters": 5' in record and '"data_seed": 5' in record
    assert (tmp_path / "whole" / "verdict.md").read_text().startswith("# Fair A/B verdict\n\nfast reached")

    # the same command, SIGKILLed after some runs, then again: the same verdict, no finished run trained twice
    ledger = tmp_path / "killed.ledger"
    killed = fair_cli(tmp_path / "killed", ledger=ledger)
    while killed.poll() is None and len(ledger.read_text().split() if ledger.exists() else []) < 20:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    time.sleep(0.3)  # a run it started finishes on its own
    assert not (tmp_path / "killed" / "verdict.json").exists()
    again = fair_cli(tmp_path / "killed", ledger=ledger)
    assert again.wait() == 0
    ran = ledger.read_text().split()
    assert len(ran) == len(set(ran)) == len((tmp_path / "whole.ledger").read_text().split())
    second = json.loads((tmp_path / "killed" / "verdict.json").read_text())
    assert {**second, "command": None} == {**verdict, "command": None}
    md = [p.read_text().replace(str(p.parent), "OUT") for p in (tmp_path / "whole" / "verdict.md",
                                                                tmp_path / "killed" / "verdict.md")]
    assert md[0] == md[1]


def test_a_failed_audit_gives_no_verdict_and_exit_status_3(tmp_path):
    out = tmp_path / "unfair"
    proc = fair_cli(out, ["--arm", "big=tests/fair_standin.py:--speed=2 --params=2000", "--arms", "slow,big"])
    output = proc.communicate()[0]
    assert proc.returncode == 3, output
    verdict = json.loads((out / "verdict.json").read_text())
    assert not verdict["valid"] and verdict["headline"].startswith("NO VERDICT")
    assert verdict["invalid_reasons"] == ["sequence length 16, width 64: parameter counts within 1% of slow's: "
                                          "slow 1,000 (+0.00%), big 2,000 (+100.00%)"]
    md = (out / "verdict.md").read_text()
    assert md.startswith("NO VERDICT: the audit failed") and "Provisional headline: big reached" in md
    assert "- sequence length 16, width 64: parameter counts within 1% of slow's" in md
    assert "NO VERDICT: 1 failed check(s)" in output
