"""The tuning tools and what they check: muP coordinate check, nGPT's per-group lr rule, QK-norm, the lr sweep,
the memory planner."""
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_gpt2
import train_ngpt2
from conftest import write_shard
from test_train import data, run_script  # noqa: F401 (data is a fixture)
from tune import coord_check, memory, runs, sweep

FLAT = 1.5  # max / min over a 4x width range; the old nGPT rule measured 2.8 on the logit change here
COORD_ARGS = ["--widths", "64", "128", "256", "--base_width=64", "--steps=8", "--seeds=1", "--batch=4", "--seq=32",
              "--out_dir="]


def old_ngpt_rule(monkeypatch):
    """nGPT's rule before this fix: only the hidden matrices' lr divided by the width ratio."""
    new_rule = train_ngpt2.GPT.param_groups

    def param_groups(self):
        groups = new_rule(self)
        for group in groups[1:]:
            group["lr"] = self.hp.learning_rate
        return groups
    monkeypatch.setattr(train_ngpt2.GPT, "param_groups", param_groups)


@pytest.mark.parametrize("name", ["gpt2", "ngpt2"])
def test_coordinate_check_is_flat_across_width(name):
    table = coord_check.coord_check(name, coord_check.parse(COORD_ARGS))
    for key, index in [("logits", 1), ("logits", 0), ("block1", 1), ("embed", 1)]:
        assert coord_check.spread(table, key, index) < FLAT, (key, index, table)


def test_coordinate_check_catches_the_old_ngpt_rule(monkeypatch):
    old_ngpt_rule(monkeypatch)
    table = coord_check.coord_check("ngpt2", coord_check.parse(COORD_ARGS))
    changes = [table[width]["logits"][1] for width in (64, 128, 256)]
    assert changes[0] < changes[1] < changes[2] and coord_check.spread(table, "logits", 1) > FLAT, table


def lr_and_decay(model):
    return {name: (group["lr"], group["weight_decay"]) for group in model.param_groups()
            for name, p in model.named_parameters() if any(p is q for q in group["params"])}


@pytest.mark.parametrize("module", [train_gpt2, train_ngpt2], ids=["gpt2", "ngpt2"])
def test_base_width_gives_every_parameter_the_lr_and_matrices_the_decay(module):
    hp = module.parse_args(["--n_embd=64", "--n_head=2", "--n_layer=2", "--vocab_size=256", "--mup_base_width=64",
                            "--learning_rate=3e-3", "--weight_decay=0.1"])
    model = module.GPT(hp)
    groups = lr_and_decay(model)
    assert sorted(groups) == sorted(name for name, _ in model.named_parameters())  # each parameter in one group
    for name, p in model.named_parameters():
        assert groups[name] == (3e-3, 0.1 if p.ndim == 2 else 0.0), name


def test_ngpt_rule_away_from_the_base_width():
    # width 4x the base: hidden matrices lr/4; unit rows and 1/sqrt(d)-scaled scalers lr/2; s_u, s_v lr
    hp = train_ngpt2.parse_args(["--n_embd=64", "--n_head=2", "--n_layer=2", "--vocab_size=256",
                                 "--mup_base_width=16", "--learning_rate=1e-2"])
    groups = lr_and_decay(train_ngpt2.GPT(hp))
    for name, (lr, _) in groups.items():
        if name.startswith("blocks.") and name.endswith(("qkv.weight", "proj.weight", "fc.weight")):
            want = 1e-2 / 4
        elif ".s_u." in name or ".s_v." in name:
            want = 1e-2
        else:  # embed, lm_head, s_qk, alpha_attn, alpha_mlp, s_z
            want = 1e-2 / 2
        assert math.isclose(lr, want), (name, lr, want)


def test_qk_norm_rows_are_unit_times_the_gains_which_move_lr_sqrt_d_per_step(monkeypatch):
    hp = train_gpt2.parse_args(["--n_embd=64", "--n_head=4", "--n_layer=1", "--vocab_size=128", "--qk_norm=1",
                                "--kernels=torch", "--mup_base_width=64", "--learning_rate=1e-3"])
    model = train_gpt2.GPT(hp)
    attn = model.blocks[0].attn
    assert torch.equal(attn.gains(), torch.ones(4, 16))
    gains = torch.linspace(0.5, 2.0, 64).view(4, 16)  # one per channel of each head
    attn.qk_gain.data = gains.flatten() / attn.qk_mult
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(train_gpt2.F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: seen.append((q, k)) or sdpa(q, k, v, **kw))
    idx = torch.randint(0, 128, (2, 16))
    loss = model(idx, idx)
    for t in seen[0]:  # (batch, head, time, head_dim): a unit row times sqrt(head_dim) and the head's gains
        unit = t / (gains[None, :, None, :] * math.sqrt(16))
        torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2, 4, 16), rtol=1e-4, atol=0)  # eps: hd * 1e-6
    groups = lr_and_decay(model)
    assert groups["blocks.0.attn.qk_gain"] == (hp.learning_rate, 0.0)  # a vector: no weight decay, lr unscaled
    # stored at 1/sqrt(d) (d = 64): Adam's first step moves each stored entry by lr, the gains in use by lr * 8
    optimizer = torch.optim.AdamW(model.param_groups(), betas=(0.9, 0.95), eps=1e-8)
    loss.backward()
    optimizer.step()
    moved = (attn.gains() - gains).abs().detach()
    torch.testing.assert_close(moved, torch.full((4, 16), 1e-3 * 8), rtol=1e-3, atol=0)
    plain = train_gpt2.GPT(train_gpt2.parse_args(["--n_embd=64", "--n_head=4", "--n_layer=1", "--vocab_size=128"]))
    assert "blocks.0.attn.qk_gain" not in dict(plain.named_parameters())  # default: the model as before


@pytest.mark.slow
def test_sweep_reports_table_plot_and_a_diverged_run(tmp_path):
    stream = np.arange(6000) * 7 % 97
    write_shard(tmp_path / "s_train_000001.bin", stream)
    write_shard(tmp_path / "s_val_000000.bin", stream[:1000])
    out = tmp_path / "sweep"
    argv = ["--scripts", "gpt2", "--lrs", "3e-3", "1e4", "--widths", "32", "64", "--head_dim=16", f"--out={out}",
            "--parallel=4", f"--input_bin={tmp_path}/s_train_*.bin", f"--input_val_bin={tmp_path}/s_val_*.bin",
            "--vocab_size=128", "--n_layer=1", "--sequence_length=16", "--batch_size=2", "--device_batch_size=2",
            "--val_tokens=32", "--num_iterations=4", "--warmup_iters=0", "--warmdown_iters=1", "--save_every=0",
            "--mup_base_width=32"]
    sweep.main(argv)
    rows = [line.split("\t") for line in (out / "results.tsv").read_text().splitlines()[1:]]
    status = {(width, lr): s for _, width, lr, s, _ in rows}
    assert status == {("32", "0.003"): "ok", ("64", "0.003"): "ok", ("32", "10000"): "diverged",
                      ("64", "10000"): "diverged"}
    table = (out / "table.md").read_text()
    assert "| gpt2 | 32 |" in table and "diverged" in table and "| 0.003 |" in table  # best lr per width
    assert (out / "sweep.png").stat().st_size > 0
    log = out / "gpt2_w64_lr0.003.txt"  # the script's own log
    (out / "results.tsv").unlink()
    before = log.stat().st_mtime_ns
    sweep.main(argv)  # again: every run is read back, none runs again
    assert log.stat().st_mtime_ns == before and (out / "results.tsv").read_text().count("diverged") == 2


def test_sweep_rejects_a_width_that_does_not_split_into_heads(tmp_path):
    with pytest.raises(SystemExit, match="error: width 40"):
        sweep.main(["--lrs", "1e-3", "--widths", "40", "--head_dim=16", f"--out={tmp_path}"])


@pytest.mark.slow
def test_memory_estimate_within_25_percent_of_measured_cpu_memory(data, tmp_path):
    """Peak RSS of a small model minus that of a tiny one, against the difference of the planner's estimates."""
    small = ["--vocab_size=8192", "--n_layer=4", "--n_head=4", "--n_embd=256", "--mup_base_width=256",
             "--sequence_length=256", "--batch_size=8", "--device_batch_size=8", "--val_tokens=2048",
             "--num_iterations=2", "--warmup_iters=0", "--warmdown_iters=1", "--save_every=0", "--kernels=torch"]
    tiny = small + ["--n_layer=1", "--n_embd=32", "--n_head=2", "--vocab_size=256", "--mlp_hidden=32"]
    measured, estimated = [], []
    for argv in (small, tiny):
        out = run_script("gpt2", argv + data, tmp_path).stdout
        measured.append(float(re.search(r"peak_memory:(\d+)MiB", out).group(1)) * 2**20)
        hp = train_gpt2.parse_args(argv + ["--device=cpu"])  # CPU: fp32 activations, no autocast
        estimated.append(memory.estimate(train_gpt2, hp, 1)["total"])
    m, e = measured[0] - measured[1], estimated[0] - estimated[1]
    assert e > 200 * 2**20 and abs(e - m) < 0.25 * m, (m / 2**20, e / 2**20)


@pytest.mark.parametrize("name", ["gpt2", "ngpt2"])
def test_the_default_speedrun_fits_an_80_gib_gpu(name, capsys):
    est = memory.main([name, "--gpu_gib=80"])
    assert "fits: yes" in capsys.readouterr().out and est["total"] <= memory.USABLE * 80 * 2**30


def test_memory_planner_names_the_flags_that_fit(capsys):
    # 1b with DDP on 8 GPUs of 80 GiB at 16 x 4096 tokens does not fit; a smaller micro-batch or recomputation does
    argv = ["ngpt2", "--preset=1b", "--sequence_length=4096", "--batch_size=128", "--device_batch_size=16",
            "--processes=8", "--gpu_gib=80"]
    est = memory.main(argv)
    out = capsys.readouterr().out
    assert "fits: no" in out and "--activation_checkpointing=1" in out
    batch = int(re.search(r"--device_batch_size=(\d+)", out).group(1))
    hp = train_ngpt2.parse_args(argv[1:5] + [f"--device_batch_size={batch}"])
    assert memory.estimate(train_ngpt2, hp, 8)["total"] <= memory.USABLE * 80 * 2**30 < est["total"]
    hp.device_batch_size *= 2  # the largest power-of-two micro-batch that fits: twice it does not
    assert memory.estimate(train_ngpt2, hp, 8)["total"] > memory.USABLE * 80 * 2**30
    assert est["buffers"] == est["weights"]  # DDP's gradient buckets
    fsdp = memory.main(argv + ["--fsdp=1"])  # sharded: weights, gradients and AdamW state divided over 8
    assert math.isclose(fsdp["weights"] * 8, est["weights"]) and fsdp["optimizer"] == 2 * fsdp["weights"]
    assert "fits:" in capsys.readouterr().out
def test_run_outcome_from_log_and_console(tmp_path):
    source = '    print0(f"error: train_loss is {loss}")\n'   # the log starts with the script's source
    cases = {"ok": (source + "step:4/4 val_loss:3.5 train_time:1ms\n", "exit:0\n"),
             "diverged": (source + "step:2/4 val_loss:3.5\nerror: train_loss is nan at step 3\n", "exit:1\n"),
             "crashed": (source + "step:2/4 val_loss:3.5\n", "Traceback ...\nexit:1\n"),
             "killed": (source + "step:2/4 val_loss:3.5\n", "")}
    for status, (log, console) in cases.items():
        (tmp_path / f"{status}.txt").write_text(log)
        (tmp_path / f"{status}.out").write_text(console)
        got = runs.outcome(str(tmp_path), status)
        assert got[0] == status and (got[1] == 3.5) == (status == "ok"), (status, got)
    assert runs.outcome(str(tmp_path), "missing")[0] == "not run"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_run_ends_when_the_tool_that_started_it_is_killed(tmp_path):
    # a tool (here a small python process) starts a run through runs.Pool and is SIGKILLed: the run must not go on
    # training beside the run the same command starts again
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    tool = (f"import sys, time; from tune import runs; "
            f"runs.Pool(1, 0).start('k', [sys.executable, '-c', {child!r}], {str(tmp_path / 'run.out')!r}); "
            f"time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", tool], cwd=runs.ROOT)
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if open(f"/proc/{pid}/stat").read().split()[2] == "Z":  # ended, not yet reaped by init
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the run went on after the tool that started it was killed")
