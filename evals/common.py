"""Shared by the eval tools: load a checkpoint of either training script, the tokenizer, sampling, result lines.

The model code is never copied: a checkpoint names the script that wrote it ("train_gpt2.py" or "train_ngpt2.py"),
and load() imports that script from the repo root and builds its GPT from the saved hyperparameters.
"""
import dataclasses
import glob
import importlib
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

import ops
from data.encoders import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = ("train_gpt2.py", "train_ngpt2.py")


def add_args(parser, tokenizer=True):
    parser.add_argument("--device", default="", help="cuda or cpu (default: cuda when present)")
    if tokenizer:
        parser.add_argument("--tokenizer", default="gpt2", help="gpt2 (tiktoken, default) or spm:PATH "
                            "(SentencePiece, e.g. data/tiny/tiny_spm2048.model)")


def pick_device(device):
    if device not in ("", "cpu", "cuda"):
        sys.exit(f"error: --device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device=cuda but torch sees no GPU; use --device=cpu")
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


def read_checkpoint(path):
    """The train state of a checkpoint directory (<run_id>_step<N>.dcp), checked to come from a training script."""
    state_path = os.path.join(path, "train_state.pt")
    if not os.path.isfile(state_path):
        sys.exit(f"error: {path}: not a checkpoint (a <run_id>_step<N>.dcp directory holding train_state.pt); "
                 f"train with --save_every=N (and --keep_checkpoints=1 to keep every one)")
    try:
        ckpt = torch.load(state_path, map_location="cpu", weights_only=False)
    except Exception as exc:
        sys.exit(f"error: {state_path} is not readable ({str(exc).splitlines()[0]})")
    if not isinstance(ckpt, dict) or ckpt.get("script") not in SCRIPTS or "hyperparameters" not in ckpt:
        sys.exit(f"error: {path} is not a checkpoint of {' or '.join(SCRIPTS)} (no 'script' and 'hyperparameters')")
    return ckpt


def build_model(path, ckpt, device):
    """(module, hp, model): the checkpoint's own script builds GPT(hp) as training did, then reads the weights with
    torch.distributed.checkpoint in this one process (from any number of training processes' shards)."""
    module = importlib.import_module(os.path.splitext(ckpt["script"])[0])
    names = {f.name for f in dataclasses.fields(module.Hyperparameters)}
    hp = module.Hyperparameters(**{k: v for k, v in ckpt["hyperparameters"].items() if k in names})
    hp.device = device
    hp.kernels = "torch"  # the Triton kernels need CUDA; on a GPU they are the default, as in training
    if device == "cuda" and ops.triton is not None:
        hp.kernels = "triton"
    hp.activation_checkpointing = 0  # nothing is kept for a backward pass here
    model = module.build_model(hp)  # the script's own build: bf16 matrices when training stored them so
    weights = model.state_dict()
    try:
        dcp.load(dict(model=weights), checkpoint_id=path, no_dist=True)
    except (RuntimeError, ValueError, CheckpointException) as err:  # an older version of the script's model
        sys.exit(f"error: the checkpoint {path} does not fit {ckpt['script']}'s current model "
                 f"({str(err).strip().splitlines()[-1].strip()}); evaluate it with the repo version that wrote it")
    model.load_state_dict(weights)
    return module, hp, model.to(device).eval()


class Loaded:
    """A checkpoint ready to evaluate: .model, .hp, .module, .device, .step, .tokens, .path, .ckpt."""

    def __init__(self, path, device=""):
        self.path = path
        self.device = pick_device(device)
        self.ckpt = read_checkpoint(path)
        self.module, self.hp, self.model = build_model(path, self.ckpt, self.device)
        self.step = int(self.ckpt.get("step", 0))
        self.tokens = self.step * self.hp.batch_size * self.hp.sequence_length
        self.name = os.path.basename(os.path.normpath(path))

    def autocast(self):
        """The training script's precision: bf16 autocast on CUDA, or on CPU when the matrices are bf16."""
        if self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.hp.param_dtype == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def logits(self, idx):
        with torch.no_grad(), self.autocast():
            return self.model(idx).float()

    def log_path(self):
        """The training run's log next to the checkpoint, where result lines are appended (None if absent)."""
        path = os.path.join(os.path.dirname(os.path.abspath(self.path)), f"{self.hp.run_id}.txt")
        if os.path.isfile(path):
            return path
        return None

    def report(self, name, rows):
        """Prints `eval:NAME step:N tokens:N key:value ...` per row and appends them to the run's log when that
        exists. rows: lists of (key, text); metric texts must contain a decimal point (integers are settings,
        such as ctx and n)."""
        if "averaged_from" in self.ckpt:  # not the run's own state at that step: a separate series
            name += "_avg"
        lines = [f"eval:{name} step:{self.step} tokens:{self.tokens} " + " ".join(f"{k}:{v}" for k, v in row)
                 for row in rows]
        print("\n".join(lines))
        log = self.log_path()
        if log:
            with open(log, "a") as f:
                f.write("".join(line + "\n" for line in lines))
            print(f"appended {len(lines)} eval line(s) to {log}")
        return lines


def load_tokenizer(spec, loaded):
    """data/encoders.py's Tokenizer, checked to fit the checkpoint's embedding."""
    if spec != "gpt2" and not spec.startswith("spm:"):
        sys.exit(f"error: unknown tokenizer {spec!r}; use --tokenizer gpt2 or --tokenizer spm:PATH")
    tok = Tokenizer(spec)
    vocab = loaded.hp.vocab_size
    if tok.vocab_size > vocab:
        models = glob.glob(os.path.join(os.path.dirname(loaded.hp.input_val_bin), "*.model"))
        hint = f"the run's data folder has {models[0]}" if models else "pass the tokenizer its data was made with"
        sys.exit(f"error: tokenizer {tok.name} has {tok.vocab_size} tokens, more than {loaded.name}'s vocab_size "
                 f"{vocab}; use --tokenizer spm:PATH ({hint})")
    return tok


def generate(loaded, idx, max_new_tokens, temperature=1.0, top_k=0, generator=None, stop_token=None):
    """Appends up to max_new_tokens tokens to the 1-D token list idx; temperature 0 is greedy. The context is cut to
    the training sequence length (RoPE runs longer, but the model has never seen longer). Stops after stop_token."""
    out = list(idx)
    for _ in range(max_new_tokens):
        x = torch.tensor([out[-loaded.hp.sequence_length:]], device=loaded.device)
        logits = loaded.logits(x)[0, -1, :]
        if temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = -float("inf")
            probs = torch.softmax(logits, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        out.append(token)
        if token == stop_token:
            break
    return out
