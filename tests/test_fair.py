"""tune/fair.py: the lr search on synthetic loss surfaces (a fake runner), the statistics on hand-made logs, the
one-line errors, and an end-to-end run of two arms at micro scale that is killed, continued and read back."""
import json
import math
import os
import signal
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import write_shard
from records import compare
from tune import fair, runs

TINY = ["--vocab_size=128", "--n_layer=1", "--n_embd=64", "--n_head=4", "--sequence_length=16", "--batch_size=2",
        "--device_batch_size=2", "--num_iterations=4", "--warmup_iters=0", "--warmdown_iters=1", "--val_tokens=32"]


# ------------------------------------------------------------------------- the search, with a fake runner

class FakePool:
    """Stands in for runs.Pool: a run 'finishes' at once with the loss the surface gives its (arm, width, lr)."""

    def __init__(self, surface, done):
        self.surface = surface
        self.done = done   # run id -> (status, loss), what runs.outcome reads back
        self.running = {}
        self.slots = 1
        self.started = []

    def free(self):
        return not self.running

    def start(self, key, cmd, console):
        arm, _, width, _, _ = key
        lr = float([a for a in cmd if a.startswith("--learning_rate=")][-1].partition("=")[2])
        self.running[key] = self.surface(arm, width, lr)
        self.started.append(key)

    def wait(self):
        keys = list(self.running)
        for key in keys:
            self.done[fair.run_id(self.plan, key)] = self.running.pop(key)
        return keys

    def stop(self):
        pass


def search(monkeypatch, tmp_path, surface, extra=()):
    plan = fair.parse([f"--out={tmp_path}", "--arms", "gpt2,ngpt2", "--baseline=gpt2", "--widths", "64",
                       "--proxy_widths", "16,32", "--seeds", "2"] + TINY + list(extra))
    done = {}
    pool = FakePool(surface, done)
    pool.plan = plan
    monkeypatch.setattr(runs, "Pool", lambda slots, gpus: pool)
    monkeypatch.setattr(runs, "outcome", lambda log_dir, name: done.get(name, ("not run", math.nan)))
    results, found, stages = fair.run_protocol(plan)
    return plan, results, found, pool


def bowl(best_k):
    """A loss surface with its minimum best_k(arm, width) half-steps (factors of sqrt 2) from the arm's default."""
    def surface(arm, width, lr):
        k = 2 * math.log2(lr / {"gpt2": 6e-4, "ngpt2": 1.5e-3}[arm])
        return "ok", 3.0 + 0.01 * (k - best_k(arm, width)) ** 2
    return surface


def ks_tried(results, arm, width):
    return sorted(k for (a, _, w, k, s) in results if (a, w, s) == (arm, width, 0))


def test_search_finds_an_interior_optimum_and_refines_it(monkeypatch, tmp_path):
    plan, results, found, pool = search(monkeypatch, tmp_path, bowl(lambda arm, width: 1.4))
    for arm in ("gpt2", "ngpt2"):
        f = found[(arm, 16)]
        # grid -4..4 (factor 2 = 2 half-steps): best 2, no extension; refined at 1 and 3: 1 is nearer 1.4
        assert ks_tried(results, arm, 16) == [-4, -2, 0, 1, 2, 3, 4]
        assert f.bests == {16: 1, 32: 1} and f.bracketed == {16: True, 32: True}
        assert f.chosen == {64: 1} and math.isclose(fair.lr_of(plan, arm, 1), plan.center[arm] * 2 ** 0.5)
        assert ks_tried(results, arm, 64) == [-1, 1, 3]                     # confirmation: lr/2, lr, 2lr
        assert (arm, 16, 64, 1, 1) in results                              # seed 1 at the chosen lr
    assert len(pool.started) == len(set(pool.started)) == len(results)    # no run twice


def test_search_extends_past_an_edge_up_to_three_times(monkeypatch, tmp_path):
    plan, results, found, _ = search(monkeypatch, tmp_path, bowl(lambda arm, width: 8.6 if arm == "gpt2" else 30))
    f = found[("gpt2", 16)]
    assert ks_tried(results, "gpt2", 16) == [-4, -2, 0, 2, 4, 6, 7, 8, 9, 10]   # 6, 8, 10; 8 inside; 7, 9
    assert f.bests[16] == 9 and f.bracketed[16]
    g = found[("ngpt2", 16)]
    assert ks_tried(results, "ngpt2", 16) == [-4, -2, 0, 2, 4, 6, 8, 9, 10, 11]  # 3 extensions, still at the edge
    assert g.bests[16] == 11 and not g.bracketed[16]
    checks = {c["check"]: c for c in fair.audit(plan, 16, 64, found, results, {"gpt2": [], "ngpt2": []})}
    bracket = checks["every arm's optimum bracketed (worse neighbours on both sides) at each proxy width"]
    assert not bracket["pass"] and "ngpt2 0.0679 at width 16 (NOT bracketed)" in bracket["detail"]


def test_diverged_runs_rank_last_and_stay_in_the_table(monkeypatch, tmp_path):
    def surface(arm, width, lr):   # lower loss at higher lr, up to where it diverges (gpt2) / crashes (ngpt2)
        center = {"gpt2": 6e-4, "ngpt2": 1.5e-3}[arm]
        if lr > 1.5 * center:
            return ("diverged" if arm == "gpt2" else "crashed"), math.nan
        return "ok", 3.0 - lr / center
    plan, results, found, _ = search(monkeypatch, tmp_path, surface)
    for arm, status in (("gpt2", "diverged"), ("ngpt2", "crashed")):
        assert found[(arm, 16)].bests[16] == 1     # the sqrt(2) step above the default, the largest that finished
        assert results[(arm, 16, 16, 4, 0)][0] == status and found[(arm, 16)].bracketed[16]
    fair.write_search(plan, results, {k: {"search"} for k in results})
    rows = [line.split("\t") for line in (tmp_path / "search.tsv").read_text().splitlines()]
    assert rows[0] == ["arm", "sequence_length", "width", "lr", "val_loss", "log", "stage"]
    assert ["gpt2", "16", "16", "0.0024", "diverged", "logs/gpt2_L16_w16_lr0.0024_s0.txt", "search"] in rows
    assert sum(row[4] == "crashed" for row in rows) >= 3


def test_all_diverged_searches_lower_learning_rates():
    results = {("a", 16, 16, k, 0): ("diverged", math.nan) for k in (-2, 0, 2)}
    results[("a", 16, 16, 4, 0)] = ("ok", 9.0)
    assert fair.best_k(results, "a", 16, 16, [-2, 0, 2]) == -2    # lowest lr first among failures
    assert fair.best_k(results, "a", 16, 16, [-2, 0, 2, 4]) == 4  # any finished run beats every failure


def test_an_optimum_that_moves_between_proxies_is_flagged(monkeypatch, tmp_path):
    plan, results, found, _ = search(monkeypatch, tmp_path, bowl(lambda arm, width: 0 if arm == "gpt2" or width < 32
                                                                 else 4))
    assert found[("ngpt2", 16)].bests == {16: 0, 32: 4}
    assert found[("ngpt2", 16)].picked == 4                        # the largest proxy's best is confirmed
    checks = {c["check"]: c for c in fair.audit(plan, 16, 64, found, results, {"gpt2": [], "ngpt2": []})}
    transfer = checks["every arm's optimum transferred (proxies within 2x, confirmation not at an edge)"]
    assert not transfer["pass"] and "ngpt2: proxies 0.0015 / 0.006 (MOVED more than 2x)" in transfer["detail"]
    assert "gpt2: proxies 0.0006 / 0.0006, confirmed 0.0006 at width 64;" in transfer["detail"]


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
    return compare.parse_log(str(path))


def arm_logs(tmp_path, name, offsets, **kw):
    return [write_log(tmp_path / f"{name}{i}.txt", i, offset=o, **kw) for i, o in enumerate(offsets)]


PLAN = SimpleNamespace(resamples=1000)


def test_tokens_to_target_speedup_equals_a_hand_computation(tmp_path):
    base = arm_logs(tmp_path, "b", [-0.01, 0.0, 0.01])
    arm = arm_logs(tmp_path, "a", [0.0, 0.0, 0.0], speed=1.5, ms=120)
    v = fair.versus(PLAN, base, arm)
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
    v = fair.versus(PLAN, base, arm)
    assert v["tokens_speedup"] == pytest.approx(1.0)
    for key in ("tokens_speedup_ci", "time_speedup_ci"):
        low, high = v[key]
        assert low < 1.0 < high
    assert v["p_value"] > 0.5


def test_clearly_separated_arms_interval_excludes_one(tmp_path):
    base = arm_logs(tmp_path, "b", [-0.02, 0.0, 0.03])
    arm = arm_logs(tmp_path, "a", [-0.02, 0.0, 0.03], speed=2.0)
    v = fair.versus(PLAN, base, arm)
    assert 1.0 < v["tokens_speedup_ci"][0] <= v["tokens_speedup"] <= v["tokens_speedup_ci"][1]
    assert v["time_speedup_ci"][0] > 1.0
    assert v["p_value"] < 0.01 and v["final_loss_diff"] < 0


def test_an_arm_that_never_reaches_the_target_says_so(tmp_path):
    base = arm_logs(tmp_path, "b", [-0.01, 0.0, 0.01])
    arm = arm_logs(tmp_path, "a", [0.0, 0.01], speed=0.25)
    v = fair.versus(PLAN, base, arm)
    assert not v["reached"] and v["tokens_speedup"] is None and v["tokens_speedup_ci"] is None
    assert v["gap_at_end"] == pytest.approx(np.mean([round(loss_at(40, 0.25) + o, 4) for o in (0.0, 0.01)])
                                            - v["target"])
    plan = SimpleNamespace(arms={"gpt2_qk": 0, "ngpt2": 0}, baseline="gpt2_qk", lengths=[32], widths=[64])
    text = fair.headline(plan, {(32, 64): {"vs_baseline": {"ngpt2": v}}})
    assert text.startswith(f"nGPT did not reach GPT-2+QK-norm's final val loss ({v['target']:.3f}) at width 64")
    assert f"it ended {v['gap_at_end']:+.3f} from it" in text


# ------------------------------------------------------------------------- errors, before anything runs

@pytest.mark.parametrize("argv, message", [
    (["--arms", "gpt2,gpt5"], "unknown arm 'gpt5'"),
    (["--seed=1"], "fair.py sets --seed"),
    (["--bogus"], "expected --name=value"),
    (["--n_layr=2"], "unknown hyperparameter --n_layr"),
    (["--arms", "gpt2"], "an A/B needs at least two arms"),
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
    assert "arms gpt2, gpt2_qk, ngpt2 (baseline gpt2_qk)" in text and "proxy widths 16, 32" in text
    assert "  search   ngpt2          14-20" in text
    assert "length 16: batch 2 x 16 = 32 tokens per step (micro-batch 2)" in text
    assert "length 32: batch 1 x 32 = 32 tokens per step (micro-batch 1)" in text   # the same tokens per step
    fair.main([f"--out={tmp_path / 'out'}", "--dry_run", "--sequence_lengths", "16,32", "--same_batch"] + TINY)
    assert "length 32: batch 2 x 32 = 64 tokens per step" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- end to end, two arms, micro scale

def test_end_to_end_killed_run_continues_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    stream = np.arange(20000) * 7 % 97
    write_shard(tmp_path / "s_train_000001.bin", stream)
    write_shard(tmp_path / "s_val_000000.bin", stream[:2000])
    out = tmp_path / "fair"
    argv = [f"--out={out}", "--arms", "gpt2_qk", "--arm", "ng=train_ngpt2.py:--learning_rate=0.2 --alpha_init=0.1",
            "--widths", "32", "--proxy_widths", "32", "--grid", "3", "--seeds", "2", "--parallel", "2",
            "--resamples", "200", f"--input_bin={tmp_path}/s_train_*.bin", f"--input_val_bin={tmp_path}/s_val_*.bin",
            "--vocab_size=128", "--n_layer=1", "--n_embd=32", "--n_head=2", "--sequence_length=16", "--batch_size=2",
            "--device_batch_size=2", "--val_tokens=64", "--num_iterations=40", "--warmup_iters=0",
            "--warmdown_iters=10", "--val_loss_every=10", "--save_every=5", "--learning_rate=1.2e-2"]
    plan = fair.parse(argv)
    first = ("gpt2_qk", 16, 32, 0, 0)
    name = fair.run_id(plan, first)
    log = out / "logs" / f"{name}.txt"
    os.makedirs(log.parent)
    with open(log.with_suffix(".out"), "w") as console:   # the first run, killed after its step-5 checkpoint
        proc = subprocess.Popen(fair.command(plan, first), stdout=console, stderr=subprocess.STDOUT)
        while proc.poll() is None and "reason:save_every" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert runs.outcome(str(log.parent), name)[0] == "killed", "the run ended before it could be killed"

    fair.main(argv)
    text = log.read_text()
    assert "resumed_from:" in text and text.count("step:1/40 train_loss:") == 1   # continued, not started again
    assert runs.outcome(str(log.parent), name)[0] == "ok"
    verdict = json.loads((out / "verdict.json").read_text())
    assert set(verdict["arms"]) == {"gpt2_qk", "ng"} and len(verdict["arms"]["ng"]["final_val_loss"]) == 2
    assert set(verdict["vs_baseline"]) == {"ng"}
    v = verdict["vs_baseline"]["ng"]
    assert {"tokens_speedup", "tokens_speedup_ci", "time_speedup", "time_speedup_ci", "p_value"} <= set(v)
    assert [c["check"] for c in verdict["audit"]][:2] == [
        "every arm's optimum bracketed (worse neighbours on both sides) at each proxy width",
        "every arm's optimum transferred (proxies within 2x, confirmation not at an edge)"]
    md = (out / "verdict.md").read_text()
    assert verdict["headline"] in md and "Fairness audit:" in md and "PASS every arm saw the same tokens" in md
    for png in ("L16_W32_val_vs_tokens.png", "lr_search.png", "speedup_vs_params.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "search.tsv").read_text().splitlines()
    assert len(rows) - 1 == len({row.split("\t")[5] for row in rows[1:]}) >= 2 * 5   # 3 grid + 2 refine per arm

    logs = sorted((out / "logs").glob("*.txt"))
    before = {p: p.stat().st_mtime_ns for p in logs}
    monkeypatch.setattr(runs.Pool, "start", lambda *a: pytest.fail("a rerun of the same command trained a run"))
    (out / "verdict.md").unlink()
    fair.main(argv)
    assert sorted((out / "logs").glob("*.txt")) == logs and all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert verdict["headline"] in (out / "verdict.md").read_text()
