"""python -m evals.export on tiny checkpoints of both scripts: the folders load in transformers (GPT-2 as plain
Llama, nGPT with trust_remote_code), give the checkpoint's logits and greedy tokens, the errors, the Hub upload."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from data import tiny
from evals import average, common, export, harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 512
TRAIN = [f"--vocab_size={VOCAB}", "--n_layer=2", "--n_head=2", "--n_embd=64", "--mup_base_width=32",
         "--sequence_length=32", "--batch_size=8", "--device_batch_size=8", "--val_tokens=512", "--num_iterations=6",
         "--warmup_iters=0", "--warmdown_iters=2", "--learning_rate=3e-3", "--val_loss_every=3", "--save_every=6",
         "--kernels=torch"]
pytestmark = pytest.mark.skipif(export.transformers is None, reason="transformers is not installed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """({name: checkpoint path}, tokenizer spec): 6 steps of each script at width 64 (muP width_mult 2)."""
    corpus = tmp_path_factory.mktemp("tiny")
    tiny.build(str(corpus), "spm", VOCAB, max_chars=100_000)
    out = {}
    for name in ("gpt2", "ngpt2"):
        log_dir = tmp_path_factory.mktemp(name)
        cmd = [sys.executable, os.path.join(ROOT, f"train_{name}.py"), *TRAIN, f"--log_dir={log_dir}",
               f"--input_bin={corpus}/tiny_train_*.bin", f"--input_val_bin={corpus}/tiny_val_*.bin", f"--run_id={name}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        out[name] = os.path.join(log_dir, f"{name}_step000006.dcp")
    return out, f"spm:{corpus}/tiny_spm{VOCAB}.model"


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """{name: (folder, Check)}"""
    paths, spec = runs
    base = tmp_path_factory.mktemp("hf")
    return {name: (str(base / name), export.main([path, str(base / name), "--tokenizer", spec]))
            for name, path in paths.items()}


def fp32_loaded(path):
    loaded = common.Loaded(path, "cpu")
    loaded.model.float()
    return loaded


@pytest.mark.parametrize("name", ["gpt2", "ngpt2"])
def test_the_forward_equals_an_independent_implementation_in_float64(name, runs, exported):
    """GPT-2 against transformers' own Llama, nGPT against the export's modeling file (the paper's forward written
    apart from the script's): in float64 they agree to rounding, so any difference in the math would show. Bound:
    both sides rotate q and k in float32 (RoPE's angles and products; a few 1e-8 in the logits), the rest is
    float64."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(exported[name][0], trust_remote_code=name == "ngpt2",
                                              dtype=torch.float64)
    ours = common.Loaded(runs[0][name], "cpu").model.double()
    x = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)).abs().max().item()
    assert diff < 1e-6, diff
    print(f"{name}: float64 max abs logit diff {diff:.1e}")


@pytest.mark.parametrize("name", ["gpt2", "ngpt2"])
def test_export_gives_the_checkpoints_logits_and_greedy_tokens(name, runs, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    folder, check = exported[name]
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    if name == "gpt2":  # plain transformers, no remote code
        assert "auto_map" not in config and config["model_type"] == "llama"
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert type(model) is LlamaForCausalLM
    else:
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_ngpt.NGPTForCausalLM"
        assert {"modeling_ngpt.py", "configuration_ngpt.py"} <= set(os.listdir(folder))
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert not os.path.exists(folder + ".tmp")
    loaded = fp32_loaded(runs[0][name])
    x = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(x).logits - loaded.logits(x)).abs().max().item()
    assert diff < 1e-4 and check.max_abs_diff < 1e-4
    print(f"{name}: max abs logit diff {diff:.3e} (export's own check {check.max_abs_diff:.3e})")
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    ours = common.load_tokenizer(runs[1], loaded)
    text = "def f(x):\n    return  x + 1  # caf\u00e9\n"
    assert tok.encode(text, add_special_tokens=False) == ours.encode(text)
    idx = [ours.doc_start] + ours.encode("The ")
    greedy = common.generate(loaded, idx, 12, temperature=0)
    with torch.no_grad():
        out = model.generate(torch.tensor([idx]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=ours.doc_start)[0].tolist()
    assert out == greedy and len(out) == len(idx) + 12


def test_gpt2_head_holds_the_mup_divisor(runs, exported):
    from safetensors.torch import load_file
    loaded = fp32_loaded(runs[0]["gpt2"])
    assert loaded.model.width_mult == 2.0
    weights = load_file(os.path.join(exported["gpt2"][0], "model.safetensors"))
    torch.testing.assert_close(weights["lm_head.weight"], loaded.model.lm_head.weight.detach() / 2)


def test_model_card_has_val_loss_hyperparameters_and_command(runs, exported):
    with open(os.path.join(exported["ngpt2"][0], "README.md")) as f:
        card = f.read()
    log = open(os.path.join(os.path.dirname(runs[0]["ngpt2"]), "ngpt2.txt")).read()
    last = [line for line in log.splitlines() if line.startswith("step:6/6 val_loss:")][0]
    assert f"Final validation loss: {last.split('val_loss:')[1].split()[0]} (step 6)" in card
    assert "python train_ngpt2.py " in card and "--n_embd=64" in card and "| alpha_init | 0.05 |" in card


def one_line_exit(fn, *args, match):
    with pytest.raises(SystemExit) as exc:
        fn(*args)
    message = str(exc.value.code)
    assert message.startswith("error:") and "\n" not in message and match in message, message


def test_errors_say_what_to_pass_and_write_nothing(runs, tmp_path):
    paths, spec = runs
    out = str(tmp_path / "out")
    one_line_exit(export.main, [str(tmp_path / "nope"), out], match="no such folder")
    (tmp_path / "plain").mkdir()
    one_line_exit(export.main, [str(tmp_path / "plain"), out], match="not a checkpoint")
    partial = tmp_path / "partial.dcp"
    shutil.copytree(paths["gpt2"], partial)
    os.remove(partial / "train_state.pt")
    one_line_exit(export.main, [str(partial), out], match="previous checkpoint")
    averaged = str(tmp_path / "avg.dcp")
    average.average([paths["gpt2"], paths["gpt2"]], averaged)
    one_line_exit(export.main, [averaged, out], match="one of the run's checkpoints")
    qk = tmp_path / "qk.dcp"
    shutil.copytree(paths["gpt2"], qk)
    state = torch.load(qk / "train_state.pt", weights_only=False)
    state["hyperparameters"]["qk_norm"] = 1
    torch.save(state, qk / "train_state.pt")
    one_line_exit(export.main, [str(qk), out], match="--qk_norm=1")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    one_line_exit(export.main, [paths["gpt2"], str(tmp_path / "full")], match="not an empty folder")
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")


def test_a_failed_check_leaves_no_folder(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    out = str(tmp_path / "out")
    one_line_exit(export.main, [runs[0]["ngpt2"], out, "--tokenizer", runs[1]], match="nothing was written")
    assert os.listdir(tmp_path) == []


def test_push_uploads_the_folder_with_the_token(exported, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo, exist_ok):
            calls.append(("create", repo, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id, sorted(os.listdir(folder_path))))

    monkeypatch.setattr(export, "HfApi", FakeApi)
    folder = exported["gpt2"][0]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    one_line_exit(export.push, folder, "me/tiny", match="HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    export.push(folder, "me/tiny")
    assert calls[0] == ("token", "hf_test") and calls[1] == ("create", "me/tiny", True)
    assert calls[2][:3] == ("upload", folder, "me/tiny") and {"README.md", "model.safetensors"} <= set(calls[2][3])


@pytest.mark.parametrize("name", ["gpt2", "ngpt2"])
def test_lm_eval_hf_backend_reads_an_export(name, runs, exported):
    pytest.importorskip("accelerate", reason="lm-eval's hf backend needs accelerate (evals/requirements.txt)")
    from lm_eval.api.instance import Instance
    lm = harness.export_lm(exported[name][0], "cpu", 4)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=0)
                for ctx, cont in [("def f(x):", "\n    return x"), ("The", " end")]]
    theirs = lm.loglikelihood(requests)
    loaded = fp32_loaded(runs[0][name])
    ours = harness.CheckpointLM(loaded, common.load_tokenizer(runs[1], loaded)).loglikelihood(requests)
    for (a, _), (b, _) in zip(theirs, ours):
        assert a < 0 and abs(a - b) < 1e-3, (theirs, ours)
