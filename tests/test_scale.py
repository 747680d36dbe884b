"""Scaling and surviving clusters on CPU (gloo): presets, FSDP2 against DDP, one checkpoint format that resumes in any
mode and process count, --resume=auto, resuming with new flags, signals, re-saves, train time across resumes."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch._dynamo.utils import counters

import runtime
import train_gpt2
import train_ngpt2
from test_train import ROOT, SCRIPTS, TINY, data, losses, run_script  # noqa: F401 (data is a fixture)
from tune import memory

STEPS = TINY + ["--num_iterations=6", "--device_batch_size=2", "--val_loss_every=3", "--grad_clip=0.05"]


def expected_params(name, L, d, m, V):
    """Parameter count written out from the architecture, independently of the model code."""
    attention = 3 * d * d + d * d  # qkv and output projection
    mlp = d * 2 * m + m * d  # SwiGLU: two input projections in one matrix, one output projection
    if name == "gpt2":
        return 2 * V * d + L * (attention + mlp + 2 * d) + d  # two RMSNorm gains per block, the final norm
    return 2 * V * d + V + L * (attention + mlp + d + 2 * m + 2 * d)  # s_z; s_qk, s_u, s_v, two alphas per block


@pytest.mark.parametrize("name", SCRIPTS)
def test_presets_build_on_meta_with_the_counts_the_planner_states(name, capsys):
    stated = {}
    for preset, (L, _, d, m) in SCRIPTS[name].PRESETS.items():
        memory.main([name, f"--preset={preset}", "--vocab_size=32768", "--gpu_gib=80"])
        stated[preset] = int(re.search(r"^memory: script:\S+ parameters:(\d+) ", capsys.readouterr().out, re.M).group(1))
        assert stated[preset] == expected_params(name, L, d, m or 4 * d, 32768), preset
    assert stated["0.5b"] > 0.45e9 and stated["1b"] > 0.95e9 and stated["13b"] > 12e9
    with pytest.raises(SystemExit) as exit_code:  # --help names the presets and the planner
        SCRIPTS[name].parse_args(["--help"])
    assert exit_code.value.code == 0
    assert f"presets: {', '.join(SCRIPTS[name].PRESETS)};" in capsys.readouterr().out


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


def run_dir(logs):
    """(log text, {step: checkpoint dir}) of the one run in logs, whatever its run id."""
    (log,) = logs.glob("*.txt")
    return log.read_text(), {int(p.name[-10:-4]): p for p in logs.glob(f"{log.stem}_step*.dcp")}


@pytest.fixture(scope="module")
def fsdp_ngpt(data, tmp_path_factory):
    """A 2-process FSDP2 nGPT run with no --run_id (rank 0 names it), keeping its checkpoints at steps 3 and 6."""
    logs = tmp_path_factory.mktemp("fsdp")
    out = run_script("ngpt2", STEPS + data + ["--fsdp=1", "--save_every=3", "--keep_checkpoints=1"], logs, nproc=2)
    return logs, out.stdout


@pytest.fixture(scope="module")
def ddp_ngpt(data, tmp_path_factory):
    logs = tmp_path_factory.mktemp("ddp")
    out = run_script("ngpt2", STEPS + data + ["--save_every=3", "--keep_checkpoints=1"], logs, nproc=2)
    return logs, out.stdout


def test_one_run_id_per_job_one_complete_checkpoint_per_step(fsdp_ngpt):
    logs, _ = fsdp_ngpt
    log, ckpts = run_dir(logs)
    assert sorted(ckpts) == [3, 6] and len(list(logs.iterdir())) == 3  # the log and two checkpoints, no .tmp left
    for path in ckpts.values():
        assert sorted(f.name for f in path.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                          "train_state.pt"]  # both processes' shards


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_fsdp_matches_ddp_over_two_processes(name, data, fsdp_ngpt, ddp_ngpt, tmp_path):
    args = STEPS + data  # grad_clip 0.05 clips every step: the sharded gradient norm must be the global one
    if name == "ngpt2":
        ddp, fsdp = ddp_ngpt[1], fsdp_ngpt[1]
    else:
        ddp = run_script(name, args, tmp_path, nproc=2).stdout
        fsdp = run_script(name, args + ["--fsdp=1"], tmp_path, nproc=2).stdout
    assert "mode:fsdp init:rank0_broadcast" in fsdp and "mode:ddp" in ddp  # and the same init: the losses below
    a, b = losses(ddp, "val_loss"), losses(fsdp, "val_loss")
    assert sorted(a) == sorted(b) == [0, 3, 6] and a[6] < a[0] - 0.02, (a, b)
    assert all(abs(a[s] - b[s]) < 2e-4 for s in a), (a, b)


@pytest.mark.slow
def test_fsdp_with_bf16_compute_matches_ddp(data, tmp_path):
    """bf16 matrices make the CPU runs compute in bf16 autocast: FSDP then gathers Linear weights in bf16 and
    reduces gradients in fp32 (MixedPrecisionPolicy), and must still match DDP."""
    args = STEPS + data + ["--param_dtype=bfloat16", "--learning_rate=1e-2"]
    ddp = losses(run_script("gpt2", args, tmp_path, nproc=2).stdout, "val_loss")
    fsdp = losses(run_script("gpt2", args + ["--fsdp=1"], tmp_path, nproc=2).stdout, "val_loss")
    assert sorted(ddp) == [0, 3, 6] and ddp[6] < ddp[0] and all(abs(ddp[s] - fsdp[s]) < 2e-3 for s in ddp), (ddp, fsdp)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # reading on one process is the point
def test_ngpt_matrices_unit_norm_along_their_dim_after_sharded_steps(data, fsdp_ngpt):
    hp = train_ngpt2.parse_args(STEPS + data)
    model = train_ngpt2.GPT(hp)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    dcp.load(dict(model=state), checkpoint_id=str(run_dir(fsdp_ngpt[0])[1][6]))  # no process group: 1 reader
    model.load_state_dict(state)
    for w, dim in model.normalized_matrices():  # dim 0 (output projections) is the one FSDP splits over processes
        norms = w.norm(dim=dim)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), (tuple(w.shape), dim, norms[:4])
    assert not torch.equal(state["blocks.0.mlp.proj.weight"], train_ngpt2.GPT(hp).blocks[0].mlp.proj.weight)


@pytest.mark.parametrize("saved_by, resumed_as", [("fsdp", "single"), ("fsdp", "ddp"), ("ddp", "fsdp")])
@pytest.mark.slow
def test_a_checkpoint_resumes_in_any_mode_and_process_count(saved_by, resumed_as, data, fsdp_ngpt, ddp_ngpt,
                                                            tmp_path):
    logs, full = {"fsdp": fsdp_ngpt, "ddp": ddp_ngpt}[saved_by]
    path = run_dir(logs)[1][3]
    args = STEPS + data + [f"--resume={path}", "--run_id=resumed"] + (["--fsdp=1"] if resumed_as == "fsdp" else [])
    resumed = run_script("ngpt2", args, tmp_path, nproc=1 if resumed_as == "single" else 2).stdout
    assert f"resumed_from:{path} at_step:3" in resumed and f"mode:{resumed_as}" in resumed
    a, b = losses(full, "train_loss"), losses(resumed, "train_loss")
    assert sorted(b) == [4, 5, 6] and all(abs(a[s] - b[s]) < 2e-4 for s in b), (a, b)
    assert abs(losses(full, "val_loss")[6] - losses(resumed, "val_loss")[6]) < 2e-4


def test_latest_checkpoint_is_the_highest_complete_step(tmp_path):
    latest = runtime.latest_checkpoint

    def save(name, complete=True):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "train_state.pt").write_bytes(b"x")
        return str(tmp_path / name)

    assert latest(str(tmp_path), "run") == ""
    ten = save("run_step000010.dcp")
    save("run_step000005.dcp")  # written later (a copy, a rerun), yet an earlier step: order is by step, not mtime
    save("other_step000090.dcp")  # another run's
    save("run_step000020.dcp.tmp", complete=False)  # a save cut short before its train_state.pt
    save("run_step000030.dcp", complete=False)
    save("run_step000040.dcp.old")  # a re-save's old copy, being deleted: never read
    assert latest(str(tmp_path), "run") == ten
    tmp = save("run_step000050.dcp.tmp")  # complete, stopped before its rename: a good checkpoint
    assert latest(str(tmp_path), "run") == tmp
    renamed = save("run_step000050.dcp")
    assert latest(str(tmp_path), "run") == renamed  # at one step, the renamed copy first


@pytest.mark.slow
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
    start = int(re.search(r"resumed_from:\S+cut_step\d+\.dcp at_step:(\d+)", resumed).group(1))
    assert start in (10, 20), start  # the last complete checkpoint (step 20's may have been written before the kill)
    a, b = losses(full, "train_loss"), losses(resumed, "train_loss")
    assert min(b) == start + 1 and b[40] == a[40], (a[40], b[40])
    assert losses(resumed, "val_loss")[40] == losses(full, "val_loss")[40]
    assert (tmp_path / "cut.txt").read_text().count("step:1/40 train_loss") == 1  # the log was continued, not replaced


def in_process(module, argv, monkeypatch):
    """main() in this process, signal handlers left as pytest has them; returns its exit code (0 if none)."""
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    try:
        module.main(argv)
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.mark.slow
def test_fsdp_compiles_each_block_with_no_graph_break_and_matches_eager(data, tmp_path, monkeypatch):
    """One gloo process, in this process (dynamo's counters are per process): each block one FSDP unit, its forward
    one graph shared by all blocks (another for validation's no-grad mode), FSDP's hooks left outside it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    for name, value in processes.items():
        monkeypatch.setenv(name, str(value))
    args = TINY + data + ["--n_layer=3", "--num_iterations=4", "--val_loss_every=0", "--fsdp=1",
                          f"--log_dir={tmp_path}"]
    torch._dynamo.reset()
    counters.clear()
    assert in_process(train_ngpt2, args + ["--compile=1", "--run_id=compiled"], monkeypatch) == 0
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] in (1, 2), dict(counters["stats"])
    assert counters["stats"]["calls_captured"] > 0
    assert in_process(train_ngpt2, args + ["--compile=0", "--run_id=eager"], monkeypatch) == 0
    compiled, eager = [losses((tmp_path / f"{run}.txt").read_text(), "train_loss") for run in ("compiled", "eager")]
    assert sorted(compiled) == sorted(eager) == [1, 2, 3, 4] and all(abs(compiled[s] - eager[s]) < 1e-3 for s in eager)


@pytest.mark.slow
def test_resume_applies_the_new_flags_says_which_and_keeps_the_train_time(data, tmp_path):
    args = TINY + data + ["--num_iterations=8", "--val_loss_every=0", "--save_every=4", "--keep_checkpoints=1"]
    first = run_script("gpt2", args + ["--run_id=first"], tmp_path).stdout
    resume = f"--resume={tmp_path}/first_step000004.dcp"
    same = run_script("gpt2", args + [resume, "--run_id=same"], tmp_path).stdout
    other = run_script("gpt2", args + [resume, "--run_id=other", "--learning_rate=1e-2"], tmp_path).stdout
    assert "resume_changes: run_id:first->same\n" in same
    assert "resume_changes: run_id:first->other learning_rate:0.003->0.01\n" in other
    a, b, c = losses(first, "train_loss"), losses(same, "train_loss"), losses(other, "train_loss")
    assert sorted(b) == sorted(c) == [5, 6, 7, 8] and all(b[s] == a[s] for s in b), (a, b)
    assert all(abs(c[s] - a[s]) > 1e-3 for s in (6, 7, 8)), (a, c)  # the new lr is the one in use
    times = {log: [int(t) for t in re.findall(r"^step:(?:\d+)/8 train_loss:\S+ grad_norm:\S+ train_time:(\d+)ms",
                                              log, re.M)] for log in (first, same)}
    assert f"at_step:4 train_time:{times[first][3]}ms" in same
    assert times[first][3] < times[same][0] < times[same][-1]  # the clock goes on from the checkpoint's time


def test_a_signal_just_before_a_save_step_saves_that_step_once(data, tmp_path, monkeypatch):
    schedule = train_gpt2.lr_multiplier

    def signal_during_step_3(step, hp):  # SIGTERM arrives while step 3 trains: the next step is a save step
        if step == 3:
            runtime.stop_signal = signal.SIGTERM
        return schedule(step, hp)

    monkeypatch.setattr(train_gpt2, "lr_multiplier", signal_during_step_3)
    monkeypatch.setattr(runtime, "stop_signal", 0)
    code = in_process(train_gpt2, TINY + data + ["--num_iterations=8", "--val_loss_every=4", "--save_every=4",
                                                 "--run_id=sig", f"--log_dir={tmp_path}"], monkeypatch)
    assert code == 128 + signal.SIGTERM
    log = (tmp_path / "sig.txt").read_text()
    assert re.findall(r"^checkpoint:\S+ step:(\d+) reason:(.*)$", log, re.M) == [("4", "signal 15")]
    assert "step:4/8 val_loss" not in log  # the signal was seen before the validation, too
    assert sorted(p.name for p in tmp_path.glob("sig_step*")) == ["sig_step000004.dcp"]


def test_a_kill_during_a_re_save_leaves_a_complete_copy_that_resume_auto_continues(data, tmp_path, monkeypatch):
    args = TINY + data + ["--num_iterations=8", "--val_loss_every=0", "--save_every=4", "--keep_checkpoints=1",
                          "--run_id=re", f"--log_dir={tmp_path}", "--kernels=torch"]
    assert in_process(train_gpt2, args, monkeypatch) == 0
    full = (tmp_path / "re.txt").read_text()
    replace = os.replace

    def killed_after_moving_the_old_copy(src, dst):
        replace(src, dst)
        if str(dst).endswith(".old"):
            raise KeyboardInterrupt  # the process dies here: the old copy is aside, the new one not yet in place

    monkeypatch.setattr(os, "replace", killed_after_moving_the_old_copy)
    with pytest.raises(KeyboardInterrupt):  # from step 4 again: step 8 is saved a second time
        train_gpt2.main(args + [f"--resume={tmp_path}/re_step000004.dcp"])
    monkeypatch.setattr(os, "replace", replace)
    assert not (tmp_path / "re_step000008.dcp").exists() and (tmp_path / "re_step000008.dcp.tmp").is_dir()
    assert in_process(train_gpt2, args + ["--resume=auto"], monkeypatch) == 0
    log = (tmp_path / "re.txt").read_text()
    assert f"resumed_from:{tmp_path}/re_step000008.dcp at_step:8" in log  # its rename finished first
    assert losses(log, "val_loss")[8] == losses(full, "val_loss")[8]
    assert sorted(p.name for p in tmp_path.glob("re_step*")) == ["re_step000004.dcp", "re_step000008.dcp"]


def test_the_cuda_rng_saved_is_this_devices_so_a_machine_with_fewer_gpus_restores_it(data, tmp_path, monkeypatch):
    """CUDA faked on CPU (the run itself on --device=cpu): a process of an 8-GPU machine saves its own device's
    RNG state, not all 8 (set_rng_state_all with 8 states raises IndexError on a machine that sees one GPU)."""
    restored = []

    def one_gpu_set_all(states):
        if len(states) > 1:
            raise IndexError("list index out of range")

    # the run's own code (the script and runtime.py) sees CUDA, torch's own code (DCP's writer) does not
    monkeypatch.setattr(torch.cuda, "is_available",
                        lambda: sys._getframe(1).f_globals["__name__"] in ("train_gpt2", "runtime"))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([i], dtype=torch.uint8) for i in range(8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state.tolist()))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", one_gpu_set_all)
    args = TINY + data + ["--device=cpu", "--num_iterations=4", "--val_loss_every=0", "--save_every=2",
                          "--keep_checkpoints=1", "--run_id=rng", f"--log_dir={tmp_path}"]
    assert in_process(train_gpt2, args, monkeypatch) == 0
    state = torch.load(tmp_path / "rng_step000002.dcp" / "train_state.pt", weights_only=False)
    assert state["rng"]["cuda"].tolist() == [7]
    assert in_process(train_gpt2, args + [f"--resume={tmp_path}/rng_step000002.dcp"], monkeypatch) == 0
    assert restored == [[7]]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_the_eval_tools_read_an_fsdp_checkpoint(data, fsdp_ngpt, tmp_path):
    from evals import average, common
    logs, out = fsdp_ngpt
    ckpts = run_dir(logs)[1]
    loaded = common.Loaded(str(ckpts[6]), "cpu")  # one process reads both processes' shards
    batches = train_ngpt2.val_batches(loaded.hp, 0, 1, "cpu")
    val = torch.stack([torch.nn.functional.cross_entropy(loaded.logits(x).flatten(0, 1), y.flatten())
                       for x, y in batches]).mean().item()
    assert loaded.step == 6 and abs(val - losses(out, "val_loss")[6]) < 2e-4  # the run's own last val loss
    merged = average.main([str(ckpts[3]), str(ckpts[6]), "--out", str(tmp_path / "avg.dcp")])
    assert merged["averaged_steps"] == [3, 6] and common.Loaded(str(tmp_path / "avg.dcp"), "cpu").step == 6
