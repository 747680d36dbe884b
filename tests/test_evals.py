"""The eval tools (evals/) on tiny checkpoints of both scripts, trained here from the command line."""
import functools
import http.server
import json
import math
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from data import tiny
from evals import average, common, extrapolate, hellaswag, sample

NAMES = ["gpt2", "ngpt2"]
VOCAB = 512
TRAIN = [f"--vocab_size={VOCAB}", "--n_layer=2", "--n_head=2", "--n_embd=64", "--mup_base_width=64",
         "--sequence_length=32", "--batch_size=8", "--device_batch_size=8", "--val_tokens=1024", "--num_iterations=30",
         "--warmup_iters=3", "--warmdown_iters=10", "--learning_rate=3e-3", "--val_loss_every=0", "--save_every=15",
         "--keep_checkpoints=1", "--kernels=torch"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny corpus with a 512-token SentencePiece model trained on it: (folder, tokenizer spec)."""
    out = tmp_path_factory.mktemp("tiny")
    tiny.build(str(out), "spm", VOCAB, max_chars=200_000)
    return out, f"spm:{out}/tiny_spm{VOCAB}.model"


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """{name: (log dir, run id)}: 30 steps of each script, checkpoints at steps 15 and 30."""
    out = {}
    for name in NAMES:
        log_dir = tmp_path_factory.mktemp(name)
        cmd = [sys.executable, os.path.join(ROOT, f"train_{name}.py"), *TRAIN, f"--log_dir={log_dir}",
               f"--input_bin={corpus[0]}/tiny_train_*.bin", f"--input_val_bin={corpus[0]}/tiny_val_*.bin",
               f"--run_id={name}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        out[name] = (log_dir, name)
    return out


def ckpt(runs, name, step=30):
    log_dir, run_id = runs[name]
    return os.path.join(log_dir, f"{run_id}_step{step:06d}.dcp")


def log_text(runs, name):
    log_dir, run_id = runs[name]
    with open(os.path.join(log_dir, f"{run_id}.txt")) as f:
        return f.read()


def gpt2_or_skip():
    from data.encoders import Tokenizer
    try:
        return Tokenizer("gpt2")
    except SystemExit as exc:
        pytest.skip(f"no offline GPT-2 vocabulary for tiktoken (set TIKTOKEN_CACHE_DIR): {exc}")


# ---------------------------------------------------------------------------- loading, tokenizer
def test_every_tool_has_help(capsys):
    from evals import harness  # --help works without lm-eval
    for tool in [hellaswag, harness, extrapolate, sample, average]:
        with pytest.raises(SystemExit) as exc:
            tool.main(["--help"])
        assert exc.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_larger_than_the_vocab_is_a_one_line_error(runs, name, capsys):
    gpt2_or_skip()
    loaded = common.Loaded(ckpt(runs, name), "cpu")
    with pytest.raises(SystemExit) as exc:
        common.load_tokenizer("gpt2", loaded)
    message = str(exc.value)
    assert message.startswith("error: tokenizer gpt2 has 50257 tokens") and f"vocab_size {VOCAB}" in message
    assert "\n" not in message


def test_not_a_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"x")
    with pytest.raises(SystemExit, match=r"x.pt: not a checkpoint \(a <run_id>_step<N>.dcp directory"):
        common.Loaded(str(tmp_path / "x.pt"), "cpu")
    (tmp_path / "x.dcp").mkdir()
    torch.save({"weights": 1}, tmp_path / "x.dcp" / "train_state.pt")
    with pytest.raises(SystemExit, match="is not a checkpoint of train_gpt2.py or train_ngpt2.py"):
        common.Loaded(str(tmp_path / "x.dcp"), "cpu")


# ---------------------------------------------------------------------------- hellaswag
def made_up_items(corpus_text):
    """Items whose right ending is a passage of the training text and whose wrong ones are rare symbols (byte
    fallback tokens); each context + ending fits in the training length."""
    items = []
    for i in range(6):
        start = 2000 + 900 * i
        passage = " ".join(corpus_text[start:start + 100].split()[1:4])
        wrong = ["".join(chr(0x4E00 + (37 * i + 11 * j + k) % 2000) for k in range(6)) for j in range(3)]
        label = i % 4
        endings = wrong[:label] + [passage] + wrong[label:]
        items.append(dict(ctx=" ".join(corpus_text[start - 100:start].split()[-2:]), endings=endings, label=label))
    return items


def direct_scores(loaded, tok, item):
    """(total, count) per ending from one unbatched forward pass each."""
    ctx = tok.encode(item["ctx"])
    out = []
    for ending in item["endings"]:
        end = tok.encode(" " + ending)
        tokens = torch.tensor(ctx + end)
        assert len(tokens) <= 33  # fits the training length: nothing cut
        logprobs = F.log_softmax(loaded.model(tokens[None, :-1])[0].double(), dim=-1)
        targets = tokens[len(ctx):]
        out.append((logprobs[len(ctx) - 1:].gather(1, targets[:, None]).sum().item(), len(end)))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_hellaswag_picks_the_likely_ending_and_scores_equal_the_logits(runs, corpus, name, tmp_path, capsys):
    from pydoc_data.topics import topics
    loaded = common.Loaded(ckpt(runs, name), "cpu")
    tok = common.load_tokenizer(corpus[1], loaded)
    items = made_up_items("\n".join(topics[k] for k in sorted(topics)))
    scores = hellaswag.score_items(loaded, tok, items, batch_size=4)
    for item, item_scores in zip(items, scores):
        for (total, n), (want, want_n) in zip(item_scores, direct_scores(loaded, tok, item)):
            assert n == want_n and total == pytest.approx(want, abs=1e-3)
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    acc, acc_norm = hellaswag.main([ckpt(runs, name), "--data", str(data), "--tokenizer", corpus[1], "--device=cpu"])
    assert acc == 1.0 and acc_norm == 1.0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[-1] == f"hellaswag acc:1.0000 acc_norm:1.0000 n:{len(items)}"
    assert f"eval:hellaswag step:30 tokens:{30 * 8 * 32} acc:1.0000 acc_norm:1.0000 n:6" in log_text(runs, name)


def test_hellaswag_downloads_once_from_a_local_server(runs, corpus, tmp_path, capsys):
    served = tmp_path / "served"
    served.mkdir()
    item = dict(ctx="The function", endings=["returns a value.", "x", "y", "z"], label=0)
    (served / "hellaswag_val.jsonl").write_text(json.dumps(item) + "\n" + json.dumps(item) + "\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hellaswag_val.jsonl"
    cache = tmp_path / "cache" / "hellaswag_val.jsonl"
    args = [ckpt(runs, "gpt2"), "--data", str(cache), "--tokenizer", corpus[1], "--device=cpu"]
    try:
        hellaswag.main(args + ["--url", url])
    finally:
        server.shutdown()
        server.server_close()
    assert cache.read_bytes() == (served / "hellaswag_val.jsonl").read_bytes()
    hellaswag.main(args + ["--url", url])  # the server is gone: the cached file is read
    assert capsys.readouterr().out.strip().split("\n")[-1].endswith("n:2")
    with pytest.raises(SystemExit, match="could not download"):
        hellaswag.main(args[:2] + [str(tmp_path / "other.jsonl")] + args[3:] + ["--url", url])


# ---------------------------------------------------------------------------- extrapolation, bits per byte
@pytest.mark.parametrize("name", NAMES)
def test_extrapolation_at_the_training_length_equals_the_training_val_loss(runs, corpus, name, tmp_path, capsys):
    final = re.findall(r"^step:30/30 val_loss:([\d.]+)", log_text(runs, name), re.M)
    results = extrapolate.main([ckpt(runs, name), "--lengths=16,32,64", "--tokenizer", corpus[1], "--device=cpu",
                                f"--plot={tmp_path}/x.png"])
    rows = {ctx: loss for ctx, loss, _ in results[0][2]}
    assert f"{rows[32]:.4f}" == final[0]
    assert os.path.isfile(tmp_path / "x.png")
    out = capsys.readouterr().out
    assert re.search(r"^ctx:64 val_loss:[\d.]+ ppl:[\d.]+ bpb:[\d.]+$", out, re.M)
    assert re.search(r"^eval:extrapolate step:30 tokens:7680 ctx:32 val_loss:[\d.]+ ppl:[\d.]+ bpb:[\d.]+$",
                     log_text(runs, name), re.M)


def test_bits_per_byte_equals_a_hand_computation(runs, corpus, tmp_path):
    """Validation data of one known text repeated as documents: the bytes are known without decoding."""
    loaded = common.Loaded(ckpt(runs, "ngpt2"), "cpu")
    tok = common.load_tokenizer(corpus[1], loaded)
    text = "def f(x):\n    return x + 1  # é\n"
    doc = [tok.doc_start] + tok.encode(text)
    copies = 6
    write_shard(tmp_path / "v_val_000000.bin", doc * copies + [tok.doc_start])
    results = extrapolate.main([ckpt(runs, "ngpt2"), f"--lengths={len(doc)}", f"--val_bin={tmp_path}/v_val_*.bin",
                                f"--val_tokens={len(doc) * copies}", "--tokenizer", corpus[1], "--plot="])
    _, loss, bpb = results[0][2][0]
    n_bytes = copies * len(text.encode("utf-8"))  # the targets: every text once, and document starts (no bytes)
    assert bpb == pytest.approx(loss * len(doc) * copies / (n_bytes * math.log(2)), rel=1e-12)
    tokens = torch.tensor(doc * copies + [tok.doc_start])
    with torch.no_grad():
        want = loaded.model(tokens[:-1].view(copies, -1), tokens[1:].view(copies, -1)).item()
    assert loss == pytest.approx(want, rel=1e-6)


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", NAMES)
def test_sampling_is_deterministic_per_seed(runs, corpus, name, capsys):
    args = [ckpt(runs, name), "--prompt", "The ", "--max_new_tokens=12", "--temperature=1.0", "--tokenizer", corpus[1]]
    first = sample.main(args + ["--seed=3", "--num_samples=2"])
    again = sample.main(args + ["--seed=3"])
    other = sample.main(args + ["--seed=4"])
    assert first[0] == again[0] and first[1] == other[0] and first[0].startswith("The ")
    assert first[0] != first[1]  # 12 tokens at temperature 1 of a barely trained model: seeds differ
    assert "sample seed:3" in capsys.readouterr().out


def test_sampling_with_the_gpt2_tokenizer(tmp_path):
    """An untrained checkpoint with GPT-2's vocabulary, written here (training one would be slow)."""
    gpt2_or_skip()
    import runtime
    import train_gpt2
    hp = train_gpt2.parse_args(["--n_layer=1", "--n_head=2", "--n_embd=32", "--mup_base_width=32"])
    torch.manual_seed(0)
    path = tmp_path / "untrained.dcp"
    runtime.save_checkpoint(str(path), dict(model=train_gpt2.GPT(hp).state_dict()),
                            dict(step=0, hyperparameters=vars(hp), script="train_gpt2.py"), True)
    args = [str(path), "--prompt", "Hello, world", "--max_new_tokens=8", "--temperature=1.0"]
    assert sample.main(args + ["--seed=1"]) == sample.main(args + ["--seed=1"])
    assert sample.main(args + ["--seed=1"])[0].startswith("Hello, world")


# ---------------------------------------------------------------------------- averaging
@pytest.mark.parametrize("name", NAMES)
def test_averaging_a_checkpoint_with_itself_changes_nothing(runs, name, tmp_path, capsys):
    path = ckpt(runs, name)
    merged = average.main([path, path, "--out", str(tmp_path / "avg.dcp")])
    saved = common.Loaded(path, "cpu").model.state_dict()
    for key, tensor in saved.items():
        if name == "gpt2":
            assert torch.equal(merged["model"][key], tensor), key
        else:  # renormalizing unit vectors again moves them by rounding only
            torch.testing.assert_close(merged["model"][key], tensor, rtol=0, atol=1e-6)
    out = capsys.readouterr().out
    assert ("renormalized" in out) == (name == "ngpt2")


def test_averaged_ngpt_has_unit_norm_matrices_and_loads_in_the_tools(runs, corpus, tmp_path, capsys):
    out = tmp_path / "avg.dcp"
    average.main([ckpt(runs, "ngpt2", 15), ckpt(runs, "ngpt2", 30), "--out", str(out)])
    loaded = common.Loaded(str(out), "cpu")
    a = common.Loaded(ckpt(runs, "ngpt2", 15), "cpu").model.embed.weight
    b = common.Loaded(ckpt(runs, "ngpt2", 30), "cpu").model.embed.weight
    assert (a + b).div(2).norm(dim=1).sub(1).abs().max() > 1e-3  # the plain average is off the sphere
    for matrix, dim in loaded.model.normalized_matrices():
        torch.testing.assert_close(matrix.norm(dim=dim), torch.ones(matrix.shape[1 - dim]), rtol=0, atol=1e-5)
    assert "renormalized 10 matrices" in capsys.readouterr().out
    extrapolate.main([str(out), "--lengths=32", "--tokenizer", corpus[1], "--plot="])
    assert "eval:extrapolate_avg step:30" in capsys.readouterr().out


def test_resuming_an_averaged_checkpoint_is_a_one_line_error(runs, corpus, tmp_path):
    out = tmp_path / "avg.dcp"
    average.main([ckpt(runs, "gpt2", 15), ckpt(runs, "gpt2", 30), "--out", str(out)])
    cmd = [sys.executable, os.path.join(ROOT, "train_gpt2.py"), *TRAIN, f"--log_dir={tmp_path}", f"--resume={out}",
           f"--input_bin={corpus[0]}/tiny_train_*.bin", f"--input_val_bin={corpus[0]}/tiny_val_*.bin"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode != 0 and "holds weights only" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_averaging_two_runs_of_different_configs_is_a_clear_error(runs, tmp_path):
    with pytest.raises(SystemExit, match="error: .* was written by train_ngpt2.py"):
        average.main([ckpt(runs, "gpt2"), ckpt(runs, "ngpt2"), "--out", str(tmp_path / "x.dcp")])


# ---------------------------------------------------------------------------- lm-evaluation-harness
def test_harness_loglikelihood_equals_the_models_own_loss(runs, corpus, tmp_path, monkeypatch, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -r evals/requirements.txt)")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from evals import harness
    from lm_eval.api.instance import Instance
    loaded = common.Loaded(ckpt(runs, "ngpt2"), "cpu")
    tok = common.load_tokenizer(corpus[1], loaded)
    lm = harness.CheckpointLM(loaded, tok, batch_size=2)
    text = "The value of x is returned by the function."
    request = Instance("loglikelihood", {}, ("", text), 0)
    tokens = torch.tensor([tok.doc_start] + tok.encode(text))
    with torch.no_grad():
        own = loaded.model(tokens[None, :-1], tokens[None, 1:]).item() * (len(tokens) - 1)
    (ll, _), = lm.loglikelihood([request])
    assert ll == pytest.approx(-own, rel=1e-5)
    long_text = text * 8 + " x"  # longer than the training length (32): windows, the last one partial
    rolling, = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (long_text,), 0)])
    ids = tok.encode(long_text)
    assert len(ids) > 64 and len(ids) % 32
    stream = [tok.doc_start] + ids
    want = 0.0
    for start in range(0, len(ids), 32):  # each token predicted once, with up to 32 tokens before it as context
        n = min(32, len(ids) - start)
        seq = torch.tensor(stream[max(0, start + n - 32):start + n + 1])
        with torch.no_grad():
            logprobs = F.log_softmax(loaded.model(seq[None, :-1])[0].double(), dim=-1)
        want += logprobs[-n:].gather(1, seq[-n:, None]).sum().item()
    assert rolling == pytest.approx(want, rel=1e-5)

    items = tmp_path / "items.jsonl"
    rare = "".join(chr(0x4E00 + k) for k in range(8))  # 24 byte-fallback tokens
    item = dict(ctx="The function", endings=["returns a value.", rare], label=0)
    items.write_text((json.dumps(item) + "\n") * 3)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(
        f"task: tiny_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {items}\n"
        "validation_split: validation\noutput_type: multiple_choice\ndoc_to_text: '{{ctx}}'\n"
        "doc_to_choice: '{{endings}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n")
    results = harness.main([ckpt(runs, "ngpt2"), "--tasks=tiny_choice", f"--include_path={tasks}",
                            "--tokenizer", corpus[1]])
    assert results["results"]["tiny_choice"]["acc,none"] == 1.0
    out = capsys.readouterr().out
    assert "tiny_choice" in out and "|acc" in out.replace(" ", "")
    assert "eval:harness_tiny_choice step:30 tokens:7680 acc:1.0000 n:3" in log_text(runs, "ngpt2")
