"""tune/fair.py: the statistics on hand-made logs (at 3, 8 and 9 seeds), the one-line
errors, the plan's cost, and the whole protocol on stand-in scripts (tests/fair_standin.py) that write the log
format from a formula: an extended confirmation, record runs, a failed audit, and a SIGKILL then the same command."""
import json
import math
import os
import re
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


# ------------------------------------------------------------------------- the statistics' wiring
# (tests/test_stats.py measures the interval's coverage, the record estimate and the fixed sequence)

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
    for key in ("tokens_speedup_ci", "time_speedup_ci"):  # an end the data do not bound is open (None)
        low, high = v[key]
        assert (low is None or low < 1.0) and (high is None or high > 1.0)
    assert v["p_value"] > 0.5


def test_clearly_separated_arms_interval_excludes_one(tmp_path):
    base = arm_logs(tmp_path, "b", [-0.02, 0.0, 0.03])
    arm = arm_logs(tmp_path, "a", [-0.02, 0.0, 0.03], speed=2.0)
    v = analysis.versus(base, arm)
    assert 1.0 < v["tokens_speedup_ci"][0] <= v["tokens_speedup"] <= v["tokens_speedup_ci"][1]
    assert v["time_speedup_ci"][0] > 1.0
    assert v["p_value"] < 0.01 and v["final_loss_diff"] < 0


@pytest.mark.parametrize("n", [8, 9])
def test_8_and_9_seeds_give_a_speedup_and_an_interval(tmp_path, n):
    offsets = np.random.default_rng(n).normal(0, 0.02, (2, n))
    v = analysis.versus(arm_logs(tmp_path, "b", offsets[0]), arm_logs(tmp_path, "a", offsets[1], speed=1.5))
    assert v["n"] == [n, n] and v["tokens_speedup"] is not None and v["time_speedup"] is not None
    assert v["tokens_speedup_ci"][0] < v["tokens_speedup"] < v["tokens_speedup_ci"][1]
    assert v["time_speedup_ci"][0] < v["time_speedup"] < v["time_speedup_ci"][1]
    assert v["baseline_tokens_to_target"] == 40 * 4 * 32      # the baseline reaches its own target at its end


def test_the_next_run_is_of_the_arm_with_fewest_going_and_never_beside_itself_over_the_cap():
    queue = [Run(arm, 16, 64, 0, s, 4) for s in range(3) for arm in ("a", "a", "b")]
    assert runs.pick(queue, [], cap=1) == 0                                 # nothing going: the first
    assert runs.pick(queue, [queue[0]], cap=1) == 2                         # a going: the first b
    assert runs.pick([r for r in queue if r.arm == "a"], [queue[0]], cap=1) is None   # only a left: the slot waits
    assert runs.pick(queue, [queue[0], queue[2]], cap=2) == 0               # a and b going, cap 2: the first


def test_lockstep_holds_an_arm_at_a_later_stage_until_the_others_reach_it():
    def gen(name, stages):
        for stage in stages:
            yield stage, [f"{name}-{stage}"]
    rounds = list(runs.lockstep([gen("a", ["choose", "seeds"]), gen("b", ["choose", "choose", "seeds"])],
                                ["choose", "seeds"]))
    assert rounds == [[("choose", "a-choose"), ("choose", "b-choose")], [("choose", "b-choose")],
                      [("seeds", "a-seeds"), ("seeds", "b-seeds")]]


def test_overlap_shares_from_the_consoles(tmp_path):
    plan = SimpleNamespace(logs=str(tmp_path), arms={"a": 0, "b": 0}, run_id=lambda run: f"{run.arm}{run.seed}")
    times = {Run("a", 16, 64, 0, 0, 4): [(0, 10)], Run("b", 16, 64, 0, 0, 4): [(5, 15)],
             Run("a", 16, 64, 0, 1, 4): [(12, 20)]}
    for run, spans in times.items():
        (tmp_path / f"{run.arm}{run.seed}.out").write_text("".join(f"started:{s}\nended:{e}\nexit:0\n"
                                                                    for s, e in spans))
    results = {run: Outcome("ok", 3.0) for run in times}
    shares = analysis.overlap(plan, results, {run: {"seeds"} for run in times}, ["seeds"])["seeds"]
    assert shares["a"] == {"a": 0.0, "b": 8 / 18, "alone": 10 / 18, "seconds": 18, "untimed": 0}
    assert shares["b"] == {"a": 8 / 10, "b": 0.0, "alone": 2 / 10, "seconds": 10, "untimed": 0}


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
    (["--arms", "ngpt2,ng2", "--arm", "ng2=train_ngpt2.py:"], "no --baseline given and none of gpt2, gpt2_qk, "),
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
    assert "arms gpt2, gpt2_muon, ngpt2, ngpt2_muon (baseline: the strongest of gpt2, gpt2_muon)" in text
    assert "proxy widths 16, 32" in text
    assert "  search   112-160 runs" in text and "GPU-hours" in text
    assert "length 16: batch 2 x 16 = 32 tokens per step (micro-batch 2)" in text
    assert "length 32: batch 1 x 32 = 32 tokens per step (micro-batch 1)" in text   # the same tokens per step
    fair.main([f"--out={tmp_path / 'out'}", "--dry_run", "--sequence_lengths", "16,32", "--same_batch"] + TINY)
    assert "length 32: batch 2 x 32 = 64 tokens per step" in capsys.readouterr().out
    assert fair.main([f"--out={tmp_path / 'out'}", "--dry_run"]) == 0       # the scripts' defaults: GPU-hours
    total = capsys.readouterr().out.split("\n  total    ")[1]
    assert total.startswith("96-144 runs, 240B-360B tokens, ") and " GPU-hours; logs in " in total
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


@pytest.mark.slow
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
    assert v["tokens_interval_method"] == "test inversion" and v["n"] == [3, 3]
    assert v["tokens_speedup_ci"][0] < v["tokens_speedup"] < v["tokens_speedup_ci"][1]
    assert v["tokens_coverage"] >= 0.93 and v["tokens_coverage_draws"] == 1000 and v["tokens_coverage_holds"]
    assert "coverage 0.9" in v["tokens_interval_text"] and "on this verdict's noise, 1000 draws" in \
        v["tokens_interval_text"]
    # record lengths fixed before any record run: 0.8x, 1x, 1.25x the mean curve's crossing (20.x steps)
    assert v["record_lengths"] == [17, 21, 26] and v["record_seeds"] == [5, 6, 7] and v["record_paired"]
    attempts = v["confirmed_attempts"]      # longest first, stopping at the first that fails
    assert [a["steps"] for a in attempts] == [26, 21] and attempts[0]["rejected"] and not attempts[1]["rejected"]
    assert v["confirmed_steps"] == 26 and v["confirmed_p"] == attempts[0]["p_sequence"] < 0.01
    assert v["confirmed_speedup_lower_bound"] == pytest.approx(40 / 26)
    low, high = v["record_steps_to_target_ci"]
    assert 21 < low <= v["record_steps_to_target"] <= high < 26      # between the lengths that bracket the target
    assert v["record_speedup"] == pytest.approx(40 / v["record_steps_to_target"])
    assert verdict["headline"].startswith("fast vs slow (the strongest of slow here) at width 64, sequence length 16")
    assert f"its record runs reach it in {v['record_steps_to_target']:.0f} steps" in verdict["headline"]
    assert "at least 1.54x fewer tokens, a lower bound set by the test's power" in verdict["headline"]
    record = (tmp_path / "whole" / "logs" / "fast_L16_w64_lr0.0025_s5_n26.txt").read_text()
    assert '"num_iterations": 26, "warmup_iters": 3, "warmdown_iters": 5' in record and '"data_seed": 5' in record
    rerun = (tmp_path / "whole" / "logs" / "slow_L16_w64_lr0.01_s5.txt").read_text()   # the paired partner
    assert '"num_iterations": 40' in rerun and '"data_seed": 5' in rerun
    # no arm ran beside itself (2 slots, 2 arms: one run of each at a time), and each ran beside the other
    for stage, arms in verdict["overlap"].items():
        for arm, share in arms.items():
            other = "slow" if arm == "fast" else "fast"
            assert share["untimed"] == 0 and share[arm] == 0.0 <= share[other], (stage, arm, share)
    assert verdict["overlap"]["seeds"]["fast"]["slow"] > 0.5 and verdict["overlap"]["record"]["slow"]["fast"] > 0.5
    assert "Measured share of each arm's run time beside each arm" in verdict["method"]["time"]
    assert (tmp_path / "whole" / "verdict.md").read_text().startswith("# Fair A/B verdict\n\nfast vs slow")

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
    # the same verdict, apart from the measured overlap of this machine's schedule (wall-clock times)
    assert without_timing(second) == without_timing(verdict)
    md = [re.sub(TIMING, "", p.read_text().replace(str(p.parent), "OUT")) for p in
          (tmp_path / "whole" / "verdict.md", tmp_path / "killed" / "verdict.md")]
    assert md[0] == md[1]


TIMING = r"Measured share of each arm's run time beside each arm.*?The record stage's time ratio"


def without_timing(verdict):
    return {**verdict, "command": None, "overlap": None,
            "method": {**verdict["method"], "time": re.sub(TIMING, "", verdict["method"]["time"])}}


@pytest.mark.slow
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
    assert md.startswith("NO VERDICT: the audit failed") and "Provisional headline: big vs slow" in md
    assert "- sequence length 16, width 64: parameter counts within 1% of slow's" in md
    assert "NO VERDICT: 1 failed check(s)" in output
