"""Export a checkpoint of train_gpt2.py or train_ngpt2.py to a Hugging Face transformers folder, and the Hub.

    python -m evals.export logs/RUN_step004768.dcp hf/RUN
    python -m evals.export logs/RUN_step000300.dcp hf/tiny --tokenizer spm:data/tiny/tiny_spm2048.model
    HF_TOKEN=hf_... python -m evals.export logs/RUN_step004768.dcp hf/RUN --push USER/RUN

GPT-2 (plain attention) becomes a LlamaForCausalLM (loads with no remote code; muP's logit divisor folded into the
head); nGPT gets its own configuration_ngpt.py and modeling_ngpt.py beside the weights (trust_remote_code=True).
Weights are written in float32 (bf16-stored matrices convert exactly). The tokenizer is written beside them. The
folder is built under OUT.tmp, loaded back with transformers and checked against the checkpoint's own model
(logits on a fixed batch in fp32 within 1e-4, the same greedy tokens as evals/sample.py) before it becomes OUT.
See docs/export.md.
"""
import argparse
import dataclasses
import os
import re
import shutil
import sys

import torch

from evals.common import Loaded, generate, load_tokenizer, read_checkpoint

try:
    import transformers
    from huggingface_hub import HfApi
except ImportError:  # main() says how to install them
    transformers = None

HF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf")
NGPT_FILES = ("configuration_ngpt.py", "modeling_ngpt.py")
TOLERANCE = 1e-4  # max abs logit difference, fp32
GPT2_BPE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"  # tiktoken's own source (and cache key)
PROMPT = "The meaning of"
INSTALL = "pip install -r evals/requirements.txt"


# ---------------------------------------------------------------------------- the checkpoint
def check_paths(ckpt_path, out):
    """One-line errors before any work: what the checkpoint is, whether OUT is free."""
    if not os.path.isdir(ckpt_path):
        sys.exit(f"error: {ckpt_path}: no such folder; pass a checkpoint directory <run_id>_step<N>.dcp")
    has_state = os.path.isfile(os.path.join(ckpt_path, "train_state.pt"))
    if not has_state and os.path.isfile(os.path.join(ckpt_path, ".metadata")):
        sys.exit(f"error: {ckpt_path} is incomplete (weights but no train_state.pt: its save was interrupted); "
                 f"export the run's previous checkpoint")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        sys.exit(f"error: {out} exists and is not an empty folder; pass a new OUT folder or remove it")


def checked_loaded(ckpt_path):
    """The checkpoint's own model on the CPU in float32 (Loaded then runs it without autocast)."""
    ckpt = read_checkpoint(ckpt_path)
    if "averaged_from" in ckpt:
        sys.exit(f"error: {ckpt_path} is an average made by evals.average (no run state of its own to document); "
                 f"export one of the run's checkpoints, e.g. {ckpt['averaged_from'][-1]}")
    if ckpt["hyperparameters"].get("qk_norm"):
        sys.exit(f"error: {ckpt_path} was trained with --qk_norm=1, which LlamaForCausalLM cannot express; export "
                 f"plain-attention GPT-2 runs or nGPT runs")
    loaded = Loaded(ckpt_path, "cpu")
    loaded.model.float()
    loaded.hp.param_dtype = "float32"  # Loaded.autocast: fp32 math, as the export is compared in
    return loaded


# ---------------------------------------------------------------------------- weights and configs
def llama_model(loaded, doc_start):
    """train_gpt2.py's GPT as LlamaForCausalLM: the same pre-norm blocks (RMSNorm eps 1e-6 on the mean square,
    SwiGLU, no biases, untied head, RoPE base 10000 on head halves), with three renamings of weights:
    - RoPE: ours rotates (x1, x2) to (x1 cos + x2 sin, x2 cos - x1 sin), Llama to (x1 cos - x2 sin, x2 cos + x1 sin);
      negating the second half of each head's q and k rows maps one onto the other (q.k is unchanged).
    - SwiGLU: our fc is [u; v] with u * silu(v): Llama's up_proj = u rows, gate_proj = v rows.
    - muP's logits / width_mult becomes lm_head.weight / width_mult."""
    hp, model = loaded.hp, loaded.model
    head_dim = hp.n_embd // hp.n_head
    config = transformers.LlamaConfig(
        vocab_size=hp.vocab_size, hidden_size=hp.n_embd, intermediate_size=hp.mlp_hidden,
        num_hidden_layers=hp.n_layer, num_attention_heads=hp.n_head, num_key_value_heads=hp.n_head,
        head_dim=head_dim, hidden_act="silu", max_position_embeddings=hp.sequence_length, rms_norm_eps=1e-6,
        rope_theta=10000.0, attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=doc_start, eos_token_id=doc_start, torch_dtype="float32")
    sign = torch.ones(head_dim)
    sign[head_dim // 2:] = -1
    sign = sign.repeat(hp.n_head)[:, None]
    state = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.blocks[-1].norm_out.gain,
             "lm_head.weight": model.lm_head.weight / model.width_mult}
    input_norms = [model.norm_in] + [block.norm_out for block in model.blocks[:-1]]  # each block owns the next's
    for i, (block, input_norm) in enumerate(zip(model.blocks, input_norms)):
        pre = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.chunk(3, dim=0)
        up, gate = block.mlp.fc.weight.chunk(2, dim=0)
        state.update({pre + "self_attn.q_proj.weight": q * sign, pre + "self_attn.k_proj.weight": k * sign,
                      pre + "self_attn.v_proj.weight": v, pre + "self_attn.o_proj.weight": block.attn.proj.weight,
                      pre + "mlp.up_proj.weight": up, pre + "mlp.gate_proj.weight": gate,
                      pre + "mlp.down_proj.weight": block.mlp.proj.weight,
                      pre + "input_layernorm.weight": input_norm.gain,
                      pre + "post_attention_layernorm.weight": block.norm2.gain})
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(config)
    hf.load_state_dict({k: v.detach().float().contiguous() for k, v in state.items()}, strict=True, assign=True)
    return hf


def ngpt_model(loaded, doc_start):
    """train_ngpt2.py's GPT as evals/hf/modeling_ngpt.py's NGPTForCausalLM: the same weight names, each scaler
    stored as its effective value (the vector the forward multiplies by: stored s times s_init / s_scale)."""
    from evals.hf.configuration_ngpt import NGPTConfig
    from evals.hf.modeling_ngpt import NGPTForCausalLM
    hp, model = loaded.hp, loaded.model
    config = NGPTConfig(vocab_size=hp.vocab_size, hidden_size=hp.n_embd, num_hidden_layers=hp.n_layer,
                        num_attention_heads=hp.n_head, intermediate_size=hp.mlp_hidden,
                        sqk_per_head=bool(hp.sqk_per_head), norm_eps=hp.norm_eps, rope_theta=10000.0,
                        max_position_embeddings=hp.sequence_length, bos_token_id=doc_start, eos_token_id=doc_start,
                        torch_dtype="float32")
    config.auto_map = {"AutoConfig": "configuration_ngpt.NGPTConfig",
                       "AutoModelForCausalLM": "modeling_ngpt.NGPTForCausalLM"}
    scalers = {name: module for name, module in model.named_modules() if type(module).__name__ == "Scaler"}
    state = {}
    for name, tensor in model.state_dict().items():
        owner = name.rsplit(".", 1)[0]
        if owner in scalers:  # sec 2.5: the effective value s * s_init / s_scale
            state[owner] = scalers[owner]()
        else:
            state[name] = tensor
    with torch.device("meta"):
        hf = NGPTForCausalLM(config)
    hf.load_state_dict({k: v.detach().float().contiguous() for k, v in state.items()}, strict=True, assign=True)
    return hf


def hf_model(loaded, doc_start):
    if loaded.ckpt["script"] == "train_ngpt2.py":
        return ngpt_model(loaded, doc_start)
    return llama_model(loaded, doc_start)


# ---------------------------------------------------------------------------- tokenizer
def hf_tokenizer(tok, folder):
    """data/encoders.py's tokenizer as a transformers tokenizer: GPT-2's BPE from tiktoken's own files (its cache
    works offline), a SentencePiece BPE model as a LlamaTokenizer with the same pieces and merges."""
    if tok.spec == "gpt2":
        from tiktoken.load import read_file_cached
        files = {}
        for name in ("encoder.json", "vocab.bpe"):
            try:
                data = read_file_cached(GPT2_BPE + name)
            except Exception as exc:
                sys.exit(f"error: could not read GPT-2's {name} through tiktoken ({str(exc).splitlines()[0]}); connect "
                         f"to the internet once, or point TIKTOKEN_CACHE_DIR at a folder holding tiktoken's cache")
            files[name] = os.path.join(folder, name)
            with open(files[name], "wb") as f:
                f.write(data)
        hf = transformers.GPT2TokenizerFast(vocab_file=files["encoder.json"], merges_file=files["vocab.bpe"])
        for path in files.values():
            os.remove(path)
        return hf
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=tok.spec[4:])
    n = sp.get_piece_size()
    special = [sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) for i in range(n)]
    first_byte = next((i for i in range(n) if sp.is_byte(i)), n)
    user = [sp.id_to_piece(i) for i in range(first_byte) if not special[i]]  # user symbols sit before the bytes
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    merges = []  # BPE merges ranked as SentencePiece ranks their results: by the merged piece's id
    for piece, i in vocab.items():
        if special[i] or piece in user:
            continue
        merges += [(i, vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:]) for k in range(1, len(piece))
                   if piece[:k] in vocab and piece[k:] in vocab]
    hf = transformers.LlamaTokenizer(vocab=vocab, merges=[(a, b) for *_, a, b in sorted(merges)],
                                     add_prefix_space=False, legacy=False, unk_token=sp.id_to_piece(sp.unk_id()),
                                     bos_token=sp.id_to_piece(sp.bos_id()),
                                     eos_token=sp.id_to_piece(sp.eos_id()) if sp.eos_id() >= 0 else None)
    hf.add_tokens(user)  # always one piece, as SentencePiece treats them
    return hf


# ---------------------------------------------------------------------------- verification
@dataclasses.dataclass
class Check:
    max_abs_diff: float
    greedy_tokens: list
    tokenizer_ids_match: bool


def verify(folder, loaded, tok):
    """Loads folder with transformers as a user would and compares it with the checkpoint's model: logits on a
    fixed batch, greedy tokens from evals/sample.py's generate(), and the tokenizer's ids on a fixed text."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    hf.eval()
    hp = loaded.hp
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, tok.vocab_size, (2, min(hp.sequence_length, 64)), generator=g)
    with torch.no_grad():
        diff = (hf(batch).logits.float() - loaded.logits(batch)).abs().max().item()
    print(f"max abs logit difference, transformers vs checkpoint (fp32, batch 2x{batch.shape[1]}): {diff:.3e}")
    if not diff <= TOLERANCE:
        sys.exit(f"error: the exported model's logits differ from {loaded.path}'s by {diff:.3e} > {TOLERANCE}; "
                 f"nothing was written (report this with the checkpoint's script and hyperparameters)")
    idx = [tok.doc_start] + tok.encode(PROMPT)
    n = max(1, min(32, hp.sequence_length - len(idx)))
    ours = generate(loaded, idx, n, temperature=0, stop_token=tok.doc_start)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([idx]), max_new_tokens=n, do_sample=False, eos_token_id=tok.doc_start,
                             pad_token_id=tok.doc_start)[0].tolist()
    if ours != theirs:
        sys.exit(f"error: greedy generate() of the export gives {theirs[len(idx):]}, evals/sample.py's generation "
                 f"{ours[len(idx):]}; nothing was written")
    print(f"greedy generate(): the same {len(ours) - len(idx)} tokens as evals/sample.py")
    text = "The export's tokenizer check:\n\tdef f(x):  return x ** 2  # 42 caf\u00e9 \u4e2d\u6587\n"
    htok = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    same = htok.encode(text, add_special_tokens=False) == tok.encode(text)
    if not same:
        sys.exit(f"error: the exported tokenizer encodes a test text differently from {tok.name}; nothing was written")
    return Check(diff, ours[len(idx):], same)


# ---------------------------------------------------------------------------- model card
def final_val_loss(loaded):
    """(step, val loss) of the last validation in the run's log at or before the checkpoint's step, or None."""
    log = loaded.log_path()
    if not log:
        return None
    found = None
    with open(log) as f:
        for line in f:
            m = re.match(r"step:(\d+)/\d+ val_loss:([0-9.]+|nan|inf)", line)
            if m and int(m.group(1)) <= loaded.step:
                found = (int(m.group(1)), float(m.group(2)))
    return found


def train_command(loaded):
    """The command that trains this run again: every hyperparameter that differs from the script's defaults (the
    log keeps the parsed hyperparameters, not the command line, so this is rebuilt from them)."""
    hp = loaded.ckpt["hyperparameters"]
    defaults = dataclasses.asdict(loaded.module.Hyperparameters())
    flags = [f"--{k}={v}" for k, v in hp.items() if k in defaults and v != defaults[k]
             and k not in ("device", "kernels", "compile", "resume")]
    return f"python {loaded.ckpt['script']} " + " ".join(flags)


def model_card(loaded, tok, check, kind):
    hp = loaded.ckpt["hyperparameters"]
    val = final_val_loss(loaded)
    val_text = f"{val[1]:.4f} (step {val[0]})" if val else "not found (no run log beside the checkpoint)"
    load = "AutoModelForCausalLM.from_pretrained(path)"
    if kind == "ngpt":
        load = "AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)"
    rows = "\n".join(f"| {k} | {v} |" for k, v in hp.items())
    return f"""---
library_name: transformers
tags: [{'ngpt' if kind == 'ngpt' else 'llama'}, gpt2-vs-ngpt]
---
# {hp.get('run_id', loaded.name)} ({'nGPT' if kind == 'ngpt' else 'GPT-2 arm, as LlamaForCausalLM'})

Trained by `{loaded.ckpt['script']}` for {loaded.step} steps ({loaded.tokens} tokens); tokenizer {tok.name}.
Final validation loss: {val_text}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = {load}
tokenizer = AutoTokenizer.from_pretrained(path)
```

Every document in training started with token {tok.doc_start}: put it before a prompt.
Exported with `python -m evals.export`, which checked this folder against the checkpoint: max abs logit difference
{check.max_abs_diff:.3e} (fp32), the same greedy tokens, the same tokenizer ids.

Training command (rebuilt from the logged hyperparameters):

```
{train_command(loaded)}
```

| hyperparameter | value |
|---|---|
{rows}
"""


# ---------------------------------------------------------------------------- write, push
def export(ckpt_path, out, tokenizer):
    check_paths(ckpt_path, out)
    loaded = checked_loaded(ckpt_path)
    tok = load_tokenizer(tokenizer, loaded)
    kind = "ngpt" if loaded.ckpt["script"] == "train_ngpt2.py" else "llama"
    tmp = os.path.abspath(out).rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a previous export stopped before its rename
    os.makedirs(tmp)
    try:
        hf = hf_model(loaded, tok.doc_start)
        hf.save_pretrained(tmp)
        if kind == "ngpt":
            for name in NGPT_FILES:
                shutil.copy(os.path.join(HF_DIR, name), os.path.join(tmp, name))
        hf_tokenizer(tok, tmp).save_pretrained(tmp)
        check = verify(tmp, loaded, tok)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(model_card(loaded, tok, check, kind))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(out):  # empty (check_paths)
        os.rmdir(out)
    os.replace(tmp, out)
    print(f"exported {ckpt_path} ({loaded.ckpt['script']}, step {loaded.step}) -> {out} "
          f"({'LlamaForCausalLM' if kind == 'llama' else 'NGPTForCausalLM, trust_remote_code=True'})")
    return check


def push(out, repo):
    token = os.environ.get("HF_TOKEN")
    if not token:
        sys.exit("error: --push needs a Hugging Face write token in HF_TOKEN (https://huggingface.co/settings/tokens); "
                 f"the folder {out} is written, push it later with the same command's --push on a new OUT")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, exist_ok=True)
        info = api.upload_folder(folder_path=out, repo_id=repo, commit_message=f"Export of {os.path.basename(out)}")
    except Exception as exc:
        sys.exit(f"error: uploading {out} to the Hub repo {repo} failed ({str(exc).strip().splitlines()[0]}); "
                 f"check HF_TOKEN's write access and the repo name, then run huggingface-cli upload {repo} {out}")
    print(f"pushed {out} to https://huggingface.co/{repo}")
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (<run_id>_step<N>.dcp) of either script")
    p.add_argument("out", help="the folder to write (new or empty)")
    p.add_argument("--push", default="", help="a Hub repo (USER/NAME) to upload the folder to, with HF_TOKEN")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (tiktoken, default) or spm:PATH, the run's tokenizer "
                   "(e.g. spm:data/tiny/tiny_spm2048.model)")
    args = p.parse_args(argv)
    if transformers is None:
        sys.exit(f"error: python -m evals.export needs transformers and huggingface_hub; install them with {INSTALL}")
    check = export(args.checkpoint, args.out, args.tokenizer)
    if args.push:
        push(args.out, args.push)
    return check


if __name__ == "__main__":
    main()
