"""Scaling features on CPU (gloo): presets, FSDP2 against DDP, sharded checkpoints, --resume=auto, memory estimate."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

import train_gpt2
import train_ngpt2
from test_train import ROOT, SCRIPTS, TINY, data, losses, run_script  # noqa: F401 (data is a fixture)

STEPS = TINY + ["--num_iterations=6", "--device_batch_size=2", "--val_loss_every=3", "--grad_clip=0.05"]


def expected_params(name, L, d, m, V):
    """Parameter count written out from the architecture, independently of the model code."""
    attention = 3 * d * d + d * d  # qkv and output projection
    mlp = d * 2 * m + m * d  # SwiGLU: two input projections in one matrix, one output projection
    if name == "gpt2":
        return 2 * V * d + L * (attention + mlp + 2 * d) + d  # two RMSNorm gains per block, the final norm
    return 2 * V * d + V + L * (attention + mlp + d + 2 * m + 2 * d)  # s_z; s_qk, s_u, s_v, two alphas per block


@pytest.mark.parametrize("name", SCRIPTS)
def test_presets_build_on_meta_with_the_counts_help_states(name, capsys):
    with pytest.raises(SystemExit) as exit_code:
        SCRIPTS[name].parse_args(["--help", "--vocab_size=32768"])
    assert exit_code.value.code == 0
    out = capsys.readouterr().out
    stated = {m[0]: int(m[1].replace(",", "")) for m in re.findall(r"^  (\S+) +\(.*\) +[\d.]+M parameters \(([\d,]+)\)",
                                                                  out, re.M)}
    assert sorted(stated) == sorted(SCRIPTS[name].PRESETS)
    for preset, (L, _, d, m) in SCRIPTS[name].PRESETS.items():
        assert stated[preset] == expected_params(name, L, d, m or 4 * d, 32768), preset
    assert stated["0.5b"] > 0.45e9 and stated["1b"] > 0.95e9 and stated["13b"] > 12e9


def test_explicit_flags_win_over_the_preset_in_any_order():
    for argv in (["--preset=1b", "--n_layer=2"], ["--n_layer=2", "--preset=1b"]):
        hp = train_gpt2.parse_args(argv)
        assert (hp.n_layer, hp.n_head, hp.n_embd, hp.mlp_hidden) == (2, 20, 1280, 5120)
    assert train_gpt2.parse_args(["--preset=8b"]).mlp_hidden == 14336
    for argv, message in [(["--preset=2b"], "--preset must be one of"), (["--resume=auto"], "--run_id"),
                          (["--fsdp=2"], "--fsdp must be one of")]:
        with pytest.raises(SystemExit, match=message):
            train_gpt2.parse_args(argv)
    with pytest.raises(SystemExit, match="run under torchrun or use --fsdp=0"):
        train_gpt2.main(["--fsdp=1"])


@pytest.fixture(scope="module")
def fsdp_ngpt(data, tmp_path_factory):
    """A 2-process FSDP2 nGPT run that keeps its sharded checkpoints at steps 3 and 6."""
    logs = tmp_path_factory.mktemp("fsdp")
    out = run_script("ngpt2", STEPS + data + ["--fsdp=1", "--save_every=3", "--keep_checkpoints=1", "--run_id=fsdp"],
                     logs, nproc=2)
    return logs, out.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_fsdp_matches_ddp_over_two_processes(name, data, fsdp_ngpt, tmp_path):
    args = STEPS + data  # grad_clip 0.05 clips every step: the sharded gradient norm must be the global one
    ddp = run_script(name, args, tmp_path, nproc=2).stdout
    fsdp = fsdp_ngpt[1] if name == "ngpt2" else run_script(name, args + ["--fsdp=1"], tmp_path, nproc=2).stdout
    assert "mode:fsdp init:rank0_broadcast" in fsdp and "mode:ddp" in ddp  # and the same init: the losses below
    a, b = losses(ddp, "val_loss"), losses(fsdp, "val_loss")
    assert sorted(a) == sorted(b) == [0, 3, 6] and a[6] < a[0] - 0.02, (a, b)
    assert all(abs(a[s] - b[s]) < 2e-4 for s in a), (a, b)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # reading on one process is the point
def test_ngpt_matrices_unit_norm_along_their_dim_after_sharded_steps(data, fsdp_ngpt):
    hp = train_ngpt2.parse_args(STEPS + data)
    model = train_ngpt2.GPT(hp)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    dcp.load(dict(model=state), checkpoint_id=str(fsdp_ngpt[0] / "fsdp_step000006.dcp"))  # no process group: 1 reader
    model.load_state_dict(state)
    for w, dim in model.normalized_matrices():  # dim 0 (output projections) is the one FSDP splits over processes
        norms = w.norm(dim=dim)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), (tuple(w.shape), dim, norms[:4])
    assert not torch.equal(state["blocks.0.mlp.proj.weight"], train_ngpt2.GPT(hp).blocks[0].mlp.proj.weight)


@pytest.mark.parametrize("nproc", [1, 2])
def test_sharded_checkpoint_resumes_on_one_and_two_processes(nproc, data, fsdp_ngpt, tmp_path):
    logs, full = fsdp_ngpt
    args = STEPS + data + [f"--resume={logs}/fsdp_step000003.dcp", "--run_id=resumed"]
    resumed = run_script("ngpt2", args + (["--fsdp=1"] if nproc == 2 else []), tmp_path, nproc=nproc).stdout
    assert f"resumed_from:{logs}/fsdp_step000003.dcp at_step:3" in resumed
    a, b = losses(full, "train_loss"), losses(resumed, "train_loss")
    assert sorted(b) == [4, 5, 6] and all(abs(a[s] - b[s]) < 2e-4 for s in b), (a, b)
    assert abs(losses(full, "val_loss")[6] - losses(resumed, "val_loss")[6]) < 2e-4


def test_latest_checkpoint_skips_half_written_saves(tmp_path):
    latest = train_gpt2.latest_checkpoint
    assert latest(str(tmp_path), "run") == ""
    (tmp_path / "run_step000010.dcp").mkdir()
    (tmp_path / "run_step000010.dcp" / "train_state.pt").write_bytes(b"x")
    (tmp_path / "other.pt").write_bytes(b"x")  # another run's
    assert latest(str(tmp_path), "run") == str(tmp_path / "run_step000010.dcp")
    (tmp_path / "run_step000020.dcp.tmp").mkdir()  # a save cut short before its rename
    (tmp_path / "run_step000030.dcp").mkdir()  # shards but no train_state.pt: not complete
    (tmp_path / "run.pt.tmp").write_bytes(b"x")
    assert latest(str(tmp_path), "run") == str(tmp_path / "run_step000010.dcp")
    (tmp_path / "run.pt").write_bytes(b"x")
    assert latest(str(tmp_path), "run") == str(tmp_path / "run.pt")


def test_resume_auto_after_sigkill_ends_like_an_uninterrupted_run(data, tmp_path):
    args = TINY + data + ["--num_iterations=40", "--warmdown_iters=10", "--val_loss_every=0", "--save_every=10",
                          "--resume=auto"]
    full = run_script("gpt2", args + ["--run_id=full"], tmp_path).stdout  # no checkpoint yet: a fresh start
    assert "resumed_from" not in full
    cmd = [sys.executable, os.path.join(ROOT, "train_gpt2.py")] + args + ["--run_id=cut", f"--log_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("step:15/"):
            proc.send_signal(signal.SIGKILL)  # no handler runs: whatever was on disk is what there is
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (tmp_path / "cut_step000050.dcp").mkdir()  # a newer save that never finished: skipped
    resumed = run_script("gpt2", args + ["--run_id=cut"], tmp_path).stdout
    start = int(re.search(r"resumed_from:\S+cut\.pt at_step:(\d+)", resumed).group(1))
    assert start in (10, 20), start  # the last complete checkpoint (step 20's may have been written before the kill)
    a, b = losses(full, "train_loss"), losses(resumed, "train_loss")
    assert min(b) == start + 1 and b[40] == a[40], (a[40], b[40])
    assert losses(resumed, "val_loss")[40] == losses(full, "val_loss")[40]
    assert (tmp_path / "cut.txt").read_text().count("step:1/40 train_loss") == 1  # the log was continued, not replaced


def test_memory_estimate_within_25_percent_of_measured_cpu_memory(data, tmp_path):
    """Peak RSS of a small model minus that of a tiny one, against the difference of their estimates."""
    small = ["--vocab_size=8192", "--n_layer=4", "--n_head=4", "--n_embd=256", "--mup_base_width=256",
             "--sequence_length=256", "--batch_size=8", "--device_batch_size=8", "--val_tokens=2048",
             "--num_iterations=2", "--warmup_iters=0", "--warmdown_iters=1", "--save_every=0", "--kernels=torch"]
    tiny = small + ["--n_layer=1", "--n_embd=32", "--n_head=2", "--vocab_size=256", "--mlp_hidden=32"]
    measured, estimated = [], []
    for argv in (small, tiny):
        out = run_script("gpt2", argv + data, tmp_path).stdout
        assert re.search(r"^memory_estimate: weights:[\d.]+MiB .* total:[\d.]+MiB", out, re.M)
        measured.append(float(re.search(r"peak_memory:(\d+)MiB", out).group(1)) * 2**20)
        estimated.append(train_gpt2.memory_estimate(train_gpt2.parse_args(argv), 1, False)["total"])
    m, e = measured[0] - measured[1], estimated[0] - estimated[1]
    assert e > 200 * 2**20 and abs(e - m) < 0.25 * m, (m / 2**20, e / 2**20)
