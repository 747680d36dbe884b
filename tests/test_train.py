"""Behaviour of the two training scripts on CPU: models, loader, schedules, CLI, DDP, checkpoints."""
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import ops
import train_gpt2
import train_ngpt2
from conftest import write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = {"gpt2": train_gpt2, "ngpt2": train_ngpt2}
TINY = ["--vocab_size=256", "--n_layer=2", "--n_head=2", "--n_embd=64", "--mup_base_width=64", "--sequence_length=32",
        "--batch_size=8", "--device_batch_size=4", "--val_tokens=1024", "--warmup_iters=2", "--warmdown_iters=4",
        "--learning_rate=3e-3", "--save_every=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A learnable toy stream: a fixed 40-token motif, rotated per repeat, ids below 200."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    motif = rng.integers(0, 200, size=40)
    stream = np.concatenate([np.roll(motif, rng.integers(0, 40)) for _ in range(1000)])
    write_shard(root / "toy_val_000000.bin", stream[:4096])
    write_shard(root / "toy_train_000001.bin", stream[4096:24096])
    write_shard(root / "toy_train_000002.bin", stream[24096:])
    return [f"--input_bin={root}/toy_train_*.bin", f"--input_val_bin={root}/toy_val_*.bin"]


def hp_for(module, *extra):
    return module.parse_args(TINY + ["--num_iterations=8", "--kernels=torch"] + list(extra))


def run_script(name, args, tmp_path, nproc=1, check=True):
    cmd = [sys.executable, os.path.join(ROOT, f"train_{name}.py")]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", cmd[1]]
    out = subprocess.run(cmd + list(args) + [f"--log_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def losses(text, kind):
    return {int(s): float(v) for s, v in re.findall(rf"^step:(\d+)/\d+ {kind}:([\d.naif]+)", text, re.M)}


# ---------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", SCRIPTS)
def test_init_loss_near_log_vocab(name):
    torch.manual_seed(0)
    hp = hp_for(SCRIPTS[name])
    model = SCRIPTS[name].GPT(hp)
    idx = torch.randint(0, hp.vocab_size, (4, 32))
    loss = model(idx, torch.randint(0, hp.vocab_size, (4, 32))).item()
    assert abs(loss - math.log(hp.vocab_size)) < 0.1, loss


def test_ngpt_scalers_at_init_equal_the_papers():
    hp = hp_for(train_ngpt2)
    model = train_ngpt2.GPT(hp)
    block = model.blocks[0]
    for value, scaler in [(0.05, block.alpha_attn), (0.05, block.alpha_mlp), (1.0, block.attn.s_qk),
                          (1.0, block.mlp.s_u), (1.0, block.mlp.s_v), (1.0, model.s_z)]:
        assert torch.allclose(scaler(), torch.full_like(scaler(), value)), scaler
    # the stored parameter is the scale (1/sqrt(d) for alpha, s_qk and s_z), not the effective value
    assert torch.allclose(block.alpha_attn.weight, torch.full((64,), 64 ** -0.5))
    assert torch.allclose(model.s_z.weight, torch.full((256,), 64 ** -0.5))
    assert block.attn.s_qk.weight.numel() == 64 and train_ngpt2.GPT(
        hp_for(train_ngpt2, "--sqk_per_head=0")).blocks[0].attn.s_qk.weight.numel() == 32


def assert_unit_vectors(model):
    for w, dim in model.normalized_matrices():
        norms = w.float().norm(dim=dim)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), (w.shape, dim)


def test_ngpt_matrices_unit_norm_after_a_step_and_hidden_on_sphere():
    torch.manual_seed(0)
    hp = hp_for(train_ngpt2)
    model = train_ngpt2.GPT(hp)
    assert_unit_vectors(model)
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-2)
    idx = torch.randint(0, 256, (2, 32))
    model(idx, idx).backward()
    opt.step()
    w, _ = model.normalized_matrices()[2]
    assert not torch.allclose(w.norm(dim=1), torch.ones(w.shape[0]), atol=1e-5)  # the step left the sphere...
    model.post_step()
    assert_unit_vectors(model)  # ...and post_step brought every matrix back
    hidden = []
    for block in model.blocks:
        block.register_forward_hook(lambda mod, args, out: hidden.append(out))
    model(idx, idx)
    for h in hidden:
        assert torch.allclose(h.norm(dim=-1), torch.ones(h.shape[:-1]), atol=1e-5)


@pytest.mark.parametrize("name", SCRIPTS)
def test_mup_at_base_width_equals_standard_parametrization(name):
    module = SCRIPTS[name]
    idx = torch.randint(0, 256, (2, 32))
    models = []
    for base in ("64", "0"):
        torch.manual_seed(0)
        models.append(module.GPT(hp_for(module, f"--mup_base_width={base}")))
    assert models[0](idx, idx).item() == models[1](idx, idx).item()
    assert [g["lr"] for g in models[0].param_groups()] == [g["lr"] for g in models[1].param_groups()]
    torch.manual_seed(0)
    wide = module.GPT(hp_for(module, "--mup_base_width=32"))  # width 64 is 2x the base
    want = [3e-3 / 2, 3e-3, 3e-3]  # hidden matrices lr / ratio (GPT: muP's Adam rule)
    if name == "ngpt2":  # unit rows and 1/sqrt(d)-scaled scalers lr / sqrt(ratio), s_u and s_v lr (see param_groups)
        want = [3e-3 / 2, 3e-3 / math.sqrt(2), 3e-3 / math.sqrt(2), 3e-3]
    assert [g["lr"] for g in wide.param_groups()] == want
    if name == "gpt2":  # hidden init std shrinks by sqrt(2); embeddings keep theirs
        std = wide.blocks[0].attn.qkv.weight.std().item()
        assert abs(std - 0.02 / math.sqrt(2)) < 0.001, std


@pytest.mark.parametrize("name", SCRIPTS)
def test_chunked_loss_equals_the_full_logits_loss_and_gradient_and_keeps_no_logits(name, monkeypatch):
    module = SCRIPTS[name]
    torch.manual_seed(0)
    vocab = 384  # no other width of the model: a saved tensor of this width holds logits
    model = module.GPT(hp_for(module, "--mup_base_width=32", f"--vocab_size={vocab}"))  # GPT-2 divides logits by 2
    idx, targets = torch.randint(0, vocab, (2, 4, 32))
    full = torch.nn.functional.cross_entropy(model(idx).float().flatten(0, 1), targets.flatten())
    full_grads = torch.autograd.grad(full, list(model.parameters()))
    assert model(idx, targets).item() == full.item()  # 128 rows: one chunk, the same computation
    monkeypatch.setattr(ops, "LOSS_CHUNK", 10 * vocab)  # 10 rows a chunk: 13 chunks, the last of 8 rows
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        chunked = model(idx, targets)
    logits = [shape for shape in saved if shape[-1] == vocab and shape.numel() > vocab]
    assert not logits, logits  # no chunk's logits kept for the backward pass, let alone all rows'
    grads = torch.autograd.grad(chunked, list(model.parameters()))
    assert abs(chunked.item() - full.item()) < 1e-6, (chunked.item(), full.item())
    for (param, _), a, b in zip(model.named_parameters(), grads, full_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8), (param, (a - b).abs().max())
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(idx, targets)  # the chunks' checkpoints compile into the model's graph
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


# ---------------------------------------------------------------------------- schedules
def test_wsd_schedule_shape():
    hp = train_gpt2.parse_args(["--num_iterations=100", "--warmup_iters=10", "--warmdown_iters=20"])
    lr = [train_gpt2.lr_multiplier(s, hp) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == 1.0 and lr[50] == 1.0 and lr[80] == 1.0
    assert lr[90] == pytest.approx(0.5) and lr[99] == pytest.approx(0.05)
    hp.cooldown_shape, hp.final_lr_frac = "1-sqrt", 0.1
    assert train_gpt2.lr_multiplier(85, hp) == pytest.approx(1 - 0.9 * math.sqrt(0.25))
    assert train_gpt2.lr_multiplier(100, hp) == pytest.approx(0.1)


def test_cosine_schedule_shape():
    hp = train_gpt2.parse_args(["--schedule=cosine", "--num_iterations=110", "--warmup_iters=10",
                                "--final_lr_frac=0.1"])
    assert train_gpt2.lr_multiplier(4, hp) == pytest.approx(0.5)
    assert train_gpt2.lr_multiplier(10, hp) == pytest.approx(1.0)
    assert train_gpt2.lr_multiplier(60, hp) == pytest.approx(0.55)
    assert train_gpt2.lr_multiplier(110, hp) == pytest.approx(0.1)


# ---------------------------------------------------------------------------- data loader
def test_shard_round_trip_both_versions(tmp_path):
    tokens = np.arange(70000) % 70000
    write_shard(tmp_path / "a.bin", tokens % 65536, version=1)
    write_shard(tmp_path / "b.bin", tokens, version=2)
    assert np.array_equal(train_gpt2.read_shard(str(tmp_path / "a.bin")), tokens % 65536)
    assert np.array_equal(train_gpt2.read_shard(str(tmp_path / "b.bin")), tokens)


def test_ranks_read_disjoint_data_covering_the_stream(tmp_path):
    write_shard(tmp_path / "s_train_000001.bin", np.arange(1000))
    seen = []
    for rank in range(2):
        loader = train_gpt2.DataLoader(str(tmp_path / "s_train_*.bin"), 2, 8, rank, 2, 1000)
        seen.append(torch.cat([loader.next_batch("cpu")[0].flatten() for _ in range(3)]))
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert sorted(torch.cat(seen).tolist()) == list(range(96))


def two_shard_loader(tmp_path, rank=0, world=1):
    """Batches of 2 x 10 tokens from two 100-token shards holding 0..99 and 100..199."""
    write_shard(tmp_path / "s_train_000001.bin", np.arange(100))
    write_shard(tmp_path / "s_train_000002.bin", np.arange(100, 200))
    return train_gpt2.DataLoader(str(tmp_path / "s_train_*.bin"), 2, 10, rank, world, 1000)


def test_loader_state_round_trip_crosses_shards(tmp_path):
    loader = two_shard_loader(tmp_path)
    for _ in range(4):
        loader.next_batch("cpu")
    state = loader.state()
    expected = [loader.next_batch("cpu")[0] for _ in range(6)]
    fresh = two_shard_loader(tmp_path)
    fresh.load_state(state)
    assert all(torch.equal(a, fresh.next_batch("cpu")[0]) for a in expected)
    assert expected[0].min() >= 100  # 4 batches of 20 tokens leave no room for a fifth in a 100-token shard


def test_a_position_saved_with_fewer_processes_never_gives_a_short_slice(tmp_path):
    one = two_shard_loader(tmp_path)
    for _ in range(3):
        one.next_batch("cpu")
    state = one.state()  # offset 60: one more 20-token window fits for one process, not for two
    for rank in range(2):
        two = two_shard_loader(tmp_path, rank, 2)
        two.load_state(state)
        x, y = two.next_batch("cpu")
        assert x.shape == y.shape == (2, 10) and x.min() >= 100  # the second shard's window, whole


def test_token_ids_are_checked_when_a_shard_is_opened_not_all_at_start(tmp_path):
    write_shard(tmp_path / "s_train_000001.bin", np.arange(100) % 50)
    write_shard(tmp_path / "s_train_000002.bin", np.append(np.arange(99) % 50, 300))
    loader = train_gpt2.DataLoader(str(tmp_path / "s_train_*.bin"), 2, 10, 0, 1, 256)  # no scan of shard 2 yet
    for _ in range(4):
        loader.next_batch("cpu")
    with pytest.raises(SystemExit, match=r"s_train_000002.bin: token id 300 >= --vocab_size=256"):
        loader.next_batch("cpu")


@pytest.mark.parametrize("case, message", [
    ("missing", "no files match"), ("magic", "not a token shard"), ("truncated", "truncated"),
    ("small", "fewer than one batch"), ("vocab", "token id 300 >= --vocab_size=256"), ("version", "unknown shard version")])
def test_bad_shards_give_one_line_errors(tmp_path, case, message):
    path = tmp_path / "bad_train_000001.bin"
    tokens = np.arange(2000) % 200
    if case == "magic":
        write_shard(path, tokens, magic=1234)
    elif case == "truncated":
        write_shard(path, tokens)
        os.truncate(path, os.path.getsize(path) - 10)
    elif case == "small":
        write_shard(path, tokens[:100])
    elif case == "vocab":
        write_shard(path, np.append(tokens, 300))
    elif case == "version":
        write_shard(path, tokens, version=7)
    with pytest.raises(SystemExit) as err:
        train_gpt2.DataLoader(str(tmp_path / "bad_train_*.bin"), 4, 32, 0, 1, 256)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert case == "missing" or str(path) in text


def test_val_tokens_must_divide_and_fit(data):
    hp = hp_for(train_gpt2, *data, "--val_tokens=1000")
    with pytest.raises(SystemExit, match="multiple of"):
        next(train_gpt2.val_batches(hp, 0, 1, "cpu"))
    hp = hp_for(train_gpt2, *data, "--val_tokens=8192")
    with pytest.raises(SystemExit, match="hold 4096 tokens"):
        next(train_gpt2.val_batches(hp, 0, 1, "cpu"))


def test_val_batches_cover_the_same_tokens_for_any_process_count(data):
    hp = hp_for(train_gpt2, *data, "--device_batch_size=2")
    one = torch.cat([x for x, _ in train_gpt2.val_batches(hp, 0, 1, "cpu")])
    two = [torch.cat([x for x, _ in train_gpt2.val_batches(hp, r, 2, "cpu")]) for r in range(2)]
    assert sorted(map(tuple, one.tolist())) == sorted(map(tuple, torch.cat(two).tolist()))


# ---------------------------------------------------------------------------- command line
@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_help_and_bad_flags(name, tmp_path):
    out = run_script(name, ["--help"], tmp_path)
    assert "--n_embd=768" in out.stdout and "model width" in out.stdout and "--learning_rate" in out.stdout
    for bad, message in [("--n_embed=3", "unknown hyperparameter --n_embed"), ("--n_layer=two", "expects a int"),
                         ("n_layer=2", "expected --name=value"), ("--schedule=linear", "--schedule must be one of")]:
        out = run_script(name, [bad], tmp_path, check=False)
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_batch_size_divisibility_names_the_fix(data, tmp_path):
    out = run_script("gpt2", TINY + data + ["--batch_size=6"], tmp_path, check=False)
    assert out.returncode != 0 and "change --batch_size or --device_batch_size" in out.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_few_steps_from_the_command_line_lower_val_loss(name, data, tmp_path):
    out = run_script(name, TINY + data + ["--num_iterations=30", "--val_loss_every=10", "--run_id=run"], tmp_path)
    val = losses(out.stdout, "val_loss")
    assert sorted(val) == [0, 10, 20, 30] and val[30] < val[0] - 0.5, val
    log = (tmp_path / "run.txt").read_text()
    assert log.startswith(f"{'=' * 40} source:train_{name}.py\n" + '"""One side of the GPT-2 vs nGPT A/B')
    assert "\n======================================== source:ops.py\n" in log  # and each repo module's it imports
    assert "hyperparameters:{" in log and "model_config:{" in log and "peak_memory:" in log
    step_line = r"^step:30/30 train_loss:\d+\.\d{4} grad_norm:\d+\.\d{4} train_time:\d+ms step_avg:\d+\.\d\dms"
    assert re.search(step_line + r" tokens_per_s:\d+$", log, re.M)
    assert "nan" not in log.split("model_config:")[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(data, tmp_path):
    args = TINY + data + ["--num_iterations=4", "--device_batch_size=2", "--val_loss_every=0"]
    one = losses(run_script("ngpt2", args, tmp_path).stdout, "val_loss")
    two = losses(run_script("ngpt2", args, tmp_path, nproc=2).stdout, "val_loss")
    assert one[0] == two[0] and abs(one[4] - two[4]) < 2e-4, (one, two)


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_signal_saves_and_resume_continues_exactly(name, data, tmp_path):
    args = TINY + data + ["--num_iterations=200", "--warmdown_iters=50", "--val_loss_every=0"]
    full = losses(run_script(name, args + ["--run_id=full"], tmp_path).stdout, "train_loss")
    cmd = [sys.executable, os.path.join(ROOT, f"train_{name}.py")] + args + ["--run_id=cut", f"--log_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("step:5/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    path, saved = re.search(r"checkpoint:(\S+) step:(\d+) reason:signal", out).groups()
    assert 5 <= int(saved) < 200 and f"--resume={path}" in out
    resumed = losses(run_script(name, args + [f"--resume={path}", "--run_id=resumed"], tmp_path).stdout, "train_loss")
    assert min(resumed) == int(saved) + 1 and max(resumed) == 200
    assert all(resumed[s] == full[s] for s in resumed), [(s, resumed[s], full[s]) for s in resumed if resumed[s] != full[s]]


def poison(monkeypatch, after_calls, loss_or_gradient):
    """From the given training forward call on, GPT-2's loss (or only its gradient) is NaN."""
    calls = {"n": 0}
    forward = train_gpt2.GPT.forward

    def poisoned(self, idx, targets):
        calls["n"] += self.training
        loss = forward(self, idx, targets)
        if calls["n"] <= after_calls:
            return loss
        if loss_or_gradient == "loss":
            return loss * float("nan")
        loss.register_hook(lambda grad: grad * float("nan"))  # a finite loss whose gradients are not
        return loss

    monkeypatch.setattr(train_gpt2.GPT, "forward", poisoned)


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_stops_with_the_last_good_state(what, data, tmp_path, monkeypatch):
    poison(monkeypatch, 6, what)
    with pytest.raises(SystemExit) as err:
        train_gpt2.main(TINY + data + ["--num_iterations=8", "--val_loss_every=0", "--run_id=nan",
                                       f"--log_dir={tmp_path}"])
    assert err.value.code == 1
    log = (tmp_path / "nan.txt").read_text()
    assert "at step 4;" in log and "step:4/8 train_loss" not in log  # two micro-batches per step: call 7 is step 4's
    assert ("train_loss is nan" in log) == (what == "loss") and "grad_norm nan" in log
    ckpt = tmp_path / "nan_step000003.dcp"
    assert torch.load(ckpt / "train_state.pt", weights_only=False)["step"] == 3
    model = train_gpt2.GPT(hp_for(train_gpt2, *data))
    weights = model.state_dict()
    dcp.load(dict(model=weights), checkpoint_id=str(ckpt), no_dist=True)
    assert all(torch.isfinite(w).all() for w in weights.values())  # saved before the optimizer took a NaN step


def test_one_host_sync_per_steady_state_step(data, tmp_path, monkeypatch):
    """The scripts' own reads of device values (torch's CPU-side ones, like AdamW's step count, are not syncs on a
    GPU) and CUDA synchronizes, between the starts of consecutive steps: the loss, signal and gradient norm, once."""
    syncs, at_step_start = [], {}

    def counted(name, method):
        def wrapper(*args, **kwargs):
            if sys._getframe(1).f_globals["__name__"] in ("train_gpt2", "runtime", "kernels"):
                syncs.append(name)
            return method(*args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.cuda, "synchronize", counted("synchronize", torch.cuda.synchronize))
    schedule = train_gpt2.lr_multiplier

    def step_start(step, hp):  # once per parameter group at each step's start, before its forward pass
        at_step_start.setdefault(step, len(syncs))
        return schedule(step, hp)

    monkeypatch.setattr(train_gpt2, "lr_multiplier", step_start)
    train_gpt2.main(TINY + data + ["--num_iterations=8", "--val_loss_every=0", f"--log_dir={tmp_path}"])
    assert np.diff(list(at_step_start.values())).tolist() == [1] * 7 and "tolist" in syncs, (at_step_start, syncs)


def test_out_of_memory_names_the_flags_to_change(data, tmp_path, monkeypatch):
    def out_of_memory(self, idx, targets=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_gpt2.GPT, "forward", out_of_memory)
    with pytest.raises(SystemExit) as err:
        train_gpt2.main(TINY + data + ["--num_iterations=8", "--val_loss_every=0", f"--log_dir={tmp_path}"])
    message = str(err.value)
    assert message.startswith("error: out of GPU memory at device_batch_size=4") and "\n" not in message
    assert "--activation_checkpointing=1" in message and "python -m tune.memory" in message


# ---------------------------------------------------------------------------- the diff stays the model
def sections(path):
    """Split a script at its banners; the Hyperparameters dataclass is cut at its model marker line."""
    text = open(path).read()
    parts = re.split(r"^(# =+ .*)$", text, flags=re.M)
    named = {"preamble": parts[0]}
    named.update({parts[i].split()[-1]: parts[i + 1] for i in range(1, len(parts), 2)})
    marker = "    # model (the lines below differ between train_gpt2.py and train_ngpt2.py)\n"
    shared_hp, model_hp = named["hyperparameters"].split(marker)
    named["hyperparameters"] = shared_hp + marker + model_hp[model_hp.index("\n\n"):]
    return parts[1::2], named


def test_scripts_identical_outside_the_model():
    banners_a, a = sections(os.path.join(ROOT, "train_gpt2.py"))
    banners_b, b = sections(os.path.join(ROOT, "train_ngpt2.py"))
    assert banners_a == banners_b and [s.split()[-1] for s in banners_a] == [
        "hyperparameters", "model", "loader", "schedule", "loop"]
    for name in a:
        if name != "model":
            assert a[name] == b[name], f"section {name!r} differs between the two scripts"
    assert a["model"] != b["model"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_bfloat16_parameter_storage_trains(name, data, tmp_path):
    args = TINY + data + ["--num_iterations=10", "--val_loss_every=0", "--param_dtype=bfloat16", "--save_every=10",
                          "--learning_rate=1e-2", "--run_id=bf16"]
    val = losses(run_script(name, args, tmp_path).stdout, "val_loss")
    assert val[10] < val[0], val
    saved = dcp.FileSystemReader(str(tmp_path / "bf16_step000010.dcp")).read_metadata().state_dict_metadata
    weights = {k: v.properties for k, v in saved.items() if k.startswith("model.")}
    assert {v.dtype for k, v in weights.items() if len(saved[k].size) == 2} == {torch.bfloat16}  # matrices in bf16..
    assert {v.dtype for k, v in weights.items() if len(saved[k].size) == 1} == {torch.float32}  # ..vectors in fp32


@pytest.mark.slow
def test_resume_with_another_model_size_is_a_clear_error(data, tmp_path):
    run_script("gpt2", TINY + data + ["--num_iterations=4", "--save_every=4", "--run_id=small"], tmp_path)
    out = run_script("gpt2", TINY + data + ["--num_iterations=8", "--n_embd=32",
                                            f"--resume={tmp_path}/small_step000004.dcp"], tmp_path, check=False)
    assert out.returncode != 0 and "does not fit this model" in out.stderr and "'n_embd': 64" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr


@pytest.mark.slow
def test_compiled_run_warms_up_untimed_and_matches_eager(data, tmp_path):
    args = TINY + data + ["--num_iterations=4", "--val_loss_every=0"]
    eager = run_script("ngpt2", args + ["--compile=0"], tmp_path).stdout
    compiled = run_script("ngpt2", args + ["--compile=1"], tmp_path).stdout
    assert "compile_warmup:" in compiled and "compile_warmup:" not in eager
    a, b = losses(eager, "train_loss"), losses(compiled, "train_loss")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]  # the warm-up steps left no trace in the step count...
    assert all(abs(a[s] - b[s]) < 1e-3 for s in a), (a, b)  # ...nor in the weights, optimizer or data position
