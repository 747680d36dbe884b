"""The optimizers (optim.py): which parameters Muon takes, its lr rule across width, tiny Muon runs, Muon under DDP
and FSDP2 (2 gloo processes), checkpoints that resume Muon exactly, and a resume that switches optimizer."""
import math

import pytest
import torch

import optim
from test_train import SCRIPTS, TINY, data, hp_for, losses, run_script  # noqa: F401 (data is a fixture)
from test_tune import COORD_ARGS, FLAT
from tune import coord_check

MUON = ["--optimizer=muon", "--learning_rate=1e-3"]  # Muon's lr 1e-3 * 67: modded-nanogpt's 0.05 or so
TWO = TINY + ["--num_iterations=6", "--device_batch_size=2", "--val_loss_every=3"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_muon_takes_the_attention_and_mlp_matrices_at_one_lr_for_any_width(name):
    module = SCRIPTS[name]
    for width_args in (["--mup_base_width=64"], ["--mup_base_width=16"]):  # the base width, and 4x it
        hp = hp_for(module, *width_args, *MUON, "--weight_decay=0.1", "--muon_lr_ratio=50")
        model = module.GPT(hp)
        adamw, muon = optim.build_optimizers(model, hp)
        assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
        hidden = {id(p) for block in model.blocks for p in (block.attn.qkv.weight, block.attn.proj.weight,
                                                            block.mlp.fc.weight, block.mlp.proj.weight)}
        assert {id(p) for group in muon.param_groups for p in group["params"]} == hidden
        rest = {id(p) for p in model.parameters()} - hidden  # embedding, head, gains and scalers
        assert {id(p) for group in adamw.param_groups for p in group["params"]} == rest
        for group in muon.param_groups:  # lr not width-scaled: the orthogonal update's size is set by the shape
            assert group["lr"] == group["peak_lr"] == 1e-3 * 50 and group["adjust_lr_fn"] == "original"
            assert math.isclose(group["lr"] * group["weight_decay"], 1e-3 * 0.1)  # shrink per step as AdamW's
    (alone,) = optim.build_optimizers(model, hp_for(module, "--mup_base_width=16"))  # adamw: every group, as given
    assert [g["lr"] for g in alone.param_groups] == [g["lr"] for g in model.param_groups()]


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_coordinate_check_with_muon_is_flat_across_width(name):
    table = coord_check.coord_check(name, coord_check.parse(COORD_ARGS + ["--optimizer=muon", "--lr=1e-3"]))
    # what the update moves (at this small lr nGPT's logits stay near init, cosines of size 1/sqrt(width))
    for key in ("logits", "block1", "embed"):
        assert coord_check.spread(table, key, 1) < FLAT, (key, table)


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_tiny_muon_runs_learn_and_differ_from_adamw(name, data, tmp_path):
    args = TINY + data + ["--num_iterations=30", "--val_loss_every=10", "--learning_rate=1e-3"]
    muon = run_script(name, args + ["--optimizer=muon"], tmp_path).stdout
    adamw = run_script(name, args, tmp_path).stdout
    val = losses(muon, "val_loss")
    assert val[30] < val[0] - 0.5, val
    a, b = losses(adamw, "train_loss"), losses(muon, "train_loss")
    assert a[1] == b[1] and all(a[s] != b[s] for s in range(2, 31)), (a, b)  # the same first loss, then apart


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_muon_over_two_processes_ddp_and_fsdp_match_one(name, data, tmp_path):
    """DDP: each process orthogonalizes the same all-reduced gradient. FSDP2: Muon's Newton-Schulz runs on the
    sharded DTensor matrices, whose products gather what they need: each process keeps its shard of the update."""
    args = TWO + data + MUON
    one = run_script(name, args, tmp_path).stdout
    ddp = run_script(name, args, tmp_path, nproc=2).stdout
    fsdp = run_script(name, args + ["--fsdp=1"], tmp_path, nproc=2).stdout
    assert "mode:ddp" in ddp and "mode:fsdp" in fsdp
    a, b, c = losses(one, "val_loss"), losses(ddp, "val_loss"), losses(fsdp, "val_loss")
    assert sorted(a) == sorted(b) == sorted(c) == [0, 3, 6] and a[6] < a[0] - 0.1, (a, b, c)
    # torch.optim.Muon runs Newton-Schulz in bf16: a gradient summed in another order (DDP's all-reduce, FSDP's
    # sharded products) moves the update by bf16 rounding, a few 1e-4 in the loss after 6 steps
    assert all(abs(a[s] - b[s]) < 5e-4 and abs(b[s] - c[s]) < 2e-3 for s in a), (a, b, c)


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_a_muon_run_cut_and_resumed_gives_the_full_runs_losses(name, data, tmp_path):
    args = TWO + data + MUON + ["--save_every=3", "--keep_checkpoints=1"]
    full = losses(run_script(name, args + ["--run_id=full"], tmp_path).stdout, "train_loss")
    resumed = run_script(name, args + [f"--resume={tmp_path}/full_step000003.dcp", "--run_id=resumed"], tmp_path)
    b = losses(resumed.stdout, "train_loss")
    assert sorted(b) == [4, 5, 6] and all(full[s] == b[s] for s in b), (full, b)


@pytest.mark.slow
def test_a_muon_checkpoint_from_fsdp_resumes_on_one_process(data, tmp_path):
    args = TWO + data + MUON + ["--save_every=3", "--keep_checkpoints=1"]
    full = run_script("ngpt2", args + ["--fsdp=1", "--run_id=full"], tmp_path, nproc=2).stdout
    resumed = run_script("ngpt2", args + [f"--resume={tmp_path}/full_step000003.dcp", "--run_id=resumed"], tmp_path)
    a, b = losses(full, "train_loss"), losses(resumed.stdout, "train_loss")
    assert sorted(b) == [4, 5, 6] and all(abs(a[s] - b[s]) < 2e-4 for s in b), (a, b)


def test_a_resume_that_switches_optimizer_is_a_one_line_error(data, tmp_path):
    run_script("gpt2", TWO + data + ["--save_every=6", "--run_id=adamw"], tmp_path)
    out = run_script("gpt2", TWO + data + MUON + [f"--resume={tmp_path}/adamw_step000006.dcp"], tmp_path, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: --resume={tmp_path}/adamw_step000006.dcp was trained with --optimizer=adamw, this run has "
        f"--optimizer=muon; resume with --optimizer=adamw, or start a new run without --resume")
