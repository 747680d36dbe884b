"""One side of the GPT-2 vs nGPT A/B (nGPT: arXiv 2410.01131, section 2.6). Only the model section and the
model's hyperparameter defaults differ between train_gpt2.py and train_ngpt2.py: `diff` shows what nGPT changes.
The Triton kernels are in ops.py, processes, checkpoints and the run log in runtime.py.

python train_gpt2.py --help                          # every hyperparameter, its default and meaning
python train_ngpt2.py --n_layer=4 --device=cpu       # any field as --name=value
torchrun --standalone --nproc_per_node=8 train_ngpt2.py
"""
import functools
import glob
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint as recompute

import ops
import optim
import runtime
from optim import build_optimizers, optimizer_step
from runtime import (build_sharded, catch_signals, close_run, compile_warmup, end_processes, gradient_norm, log_run,
                     open_run, print0, resume_run, save_run, start_processes, stop_if_signalled, train_state,
                     wrap_model)

# ============================================================================ hyperparameters
@dataclass
class Hyperparameters:
    # data
    input_bin: str = "data/fineweb10B/fineweb_train_*.bin"  # glob of training shards
    input_val_bin: str = "data/fineweb10B/fineweb_val_*.bin"  # glob of validation shards
    batch_size: int = 512  # sequences per optimizer step, over all processes
    device_batch_size: int = 64  # sequences per forward/backward on one process
    sequence_length: int = 1024  # tokens per sequence
    val_tokens: int = 10485760  # tokens in every validation pass (the same tokens for any process count)
    # run
    num_iterations: int = 4768  # optimizer steps
    val_loss_every: int = 125  # steps between validation passes (0: only at the start and the end)
    save_every: int = 1000  # steps between checkpoints (0: none, except on a signal or a non-finite loss)
    keep_checkpoints: int = 0  # 1: keep every <run_id>_step<N>.dcp checkpoint (evals, averaging); 0: the newest
    seed: int = 0  # seed of the initialization
    data_seed: int = 0  # order of the training data: 0 the shards in sorted order, else a shuffle and start offset
    device: str = ""  # "cuda", "cpu" or "" (cuda when present)
    compile: str = ""  # "1", "0" or "" (on with cuda, off on cpu)
    kernels: str = ""  # "triton", "torch" or "" (triton on cuda, torch on cpu)
    param_dtype: str = "float32"  # storage of matrix weights: float32 or bfloat16 (the nGPT paper's setting)
    fsdp: int = 0  # 1: shard weights, gradients and optimizer state over the processes (FSDP2); 0: DDP
    activation_checkpointing: int = 0  # 1: recompute each block's activations in the backward pass (less memory)
    resume: str = ""  # checkpoint directory to continue from, or "auto": run_id's newest; this command line applies
    log_dir: str = "logs"  # where logs/<run_id>.txt and checkpoints go
    run_id: str = ""  # name of the log and checkpoint ("" picks script, seed and time; fix it for --resume=auto)
    preset: str = ""  # model shape by name (PRESETS below); explicit --n_layer, --n_embd, ... flags win
    # schedule
    schedule: str = "wsd"  # "wsd" (warmup, constant, cooldown) or "cosine"
    warmdown_iters: int = 1400  # wsd: steps of the final cooldown
    cooldown_shape: str = "linear"  # wsd cooldown: "linear" or "1-sqrt"
    final_lr_frac: float = 0.0  # learning rate at the last step, as a fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    mup_base_width: int = 768  # muP base width; n_embd != it rescales init, lr and logits (0: off)
    # optimizer (optim.py; each model's param_groups() marks the matrices Muon may take)
    optimizer: str = "adamw"  # "adamw" everywhere, or "muon": Muon on attention and MLP matrices, AdamW on the rest
    muon_lr_ratio: float = 67.0  # Muon's lr / learning_rate, fixed while a search moves learning_rate (Muon's README)
    muon_momentum: float = 0.95  # Muon's momentum (torch's and modded-nanogpt's default)
    muon_nesterov: int = 1  # 1: Nesterov momentum in Muon (torch's and modded-nanogpt's default), 0: plain
    muon_ns_steps: int = 5  # Newton-Schulz iterations orthogonalizing Muon's update (torch's and modded-nanogpt's)
    # model (the lines below differ between train_gpt2.py and train_ngpt2.py)
    vocab_size: int = 50304  # embedding rows: GPT-2's 50257 padded to a multiple of 128
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # model width
    mlp_ratio: int = 4  # SwiGLU hidden width per n_embd, when mlp_hidden is 0
    mlp_hidden: int = 0  # SwiGLU hidden width of each of the two input projections (0: mlp_ratio * n_embd)
    learning_rate: float = 15e-4  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay, matrices only (nGPT: none, sec 2.6 step 6)
    warmup_iters: int = 0  # steps of linear learning-rate warmup (nGPT: none, sec 2.6 step 6)
    alpha_init: float = 0.05  # eigen learning rates alpha_A, alpha_M at init (eq. 10-11, sec 2.6 step 5)
    sqk_per_head: int = 1  # 1: each head has its own s_qk vector (reference code), 0: heads share one
    norm_eps: float = 1e-12  # added to the squared norm in every normalization (keeps zero vectors finite)

# --preset=NAME: (n_layer, n_head, n_embd, mlp_hidden); mlp_hidden 0 means mlp_ratio * n_embd. Heads of 64-128.
PRESETS = {
    "speedrun": (12, 12, 768, 0),  # the default: GPT-2 small's shape (124M with its tied 50257-token embedding)
    "350m": (24, 16, 1024, 2048),  # GPT-2 medium's depth and width; SwiGLU width 2048 keeps it near 350M
    "0.5b": (24, 16, 1024, 0),  # the nGPT paper's 0.5B
    "1b": (36, 20, 1280, 0),  # the nGPT paper's 1B
    "3b": (32, 32, 2560, 6912),  # StableLM-3B's shape
    "8b": (32, 32, 4096, 14336),  # Llama-3-8B's shape (full multi-head attention: no grouped keys and values)
    "13b": (40, 40, 5120, 13824),  # Llama-2-13B's shape
}
SHAPE = ("n_layer", "n_head", "n_embd", "mlp_hidden")

def parse_args(argv):
    hp = runtime.parse_flags(Hyperparameters, argv, PRESETS, SHAPE)
    checks = {"schedule": ("wsd", "cosine"), "cooldown_shape": ("linear", "1-sqrt"), "kernels": ("", "triton", "torch"),
              "param_dtype": ("float32", "bfloat16"), "compile": ("", "0", "1"), "device": ("", "cuda", "cpu"),
              "fsdp": (0, 1), "activation_checkpointing": (0, 1), "optimizer": ("adamw", "muon"),
              "muon_nesterov": (0, 1)}
    for name, allowed in checks.items():
        if getattr(hp, name) not in allowed:
            sys.exit(f"error: --{name} must be one of {allowed}, got {getattr(hp, name)!r}")
    if hp.warmup_iters > hp.num_iterations or (hp.schedule == "wsd" and hp.warmdown_iters > hp.num_iterations):
        sys.exit(f"error: warmup_iters={hp.warmup_iters} and warmdown_iters={hp.warmdown_iters} must each fit in "
                 f"num_iterations={hp.num_iterations}; lower them with --warmup_iters=... --warmdown_iters=...")
    if hp.n_embd % hp.n_head or (hp.n_embd // hp.n_head) % 2:
        sys.exit(f"error: n_embd={hp.n_embd} must split into n_head={hp.n_head} heads of even size (RoPE)")
    if hp.resume == "auto" and not hp.run_id:
        sys.exit("error: --resume=auto continues the newest checkpoint of one run; name it with --run_id=...")
    if not hp.mlp_hidden:
        hp.mlp_hidden = hp.mlp_ratio * hp.n_embd
    if "--help" in argv or "-h" in argv:
        runtime.print_help(hp, __file__, PRESETS)
    return hp

# ============================================================================ model
from torch.distributed.tensor import DTensor
from ops import chunked_cross_entropy, norm_rows_, norm_scale, residual_update  # Triton kernels or plain torch

class Rotary(nn.Module):
    """Rotary position embedding over (batch, time, head, head_dim) tensors."""

    def __init__(self, head_dim, base=10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self):
        """inv_freq, a constant outside the state dict: FSDP's meta-device build recomputes it after allocation."""
        return self.base ** (-torch.arange(0, self.head_dim, 2).float() / self.head_dim)

    def forward(self, x):
        angles = torch.outer(torch.arange(x.shape[1], device=x.device).float(), self.inv_freq)
        cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)

class Scaler(nn.Module):
    """A trainable vector stored as s_scale and used as s * s_init / s_scale (sec 2.5): its effective value
    starts at s_init while Adam sees a parameter of size s_scale."""

    def __init__(self, size, init, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.full((size,), float(scale)))
        self.multiplier = init / scale

    def forward(self):
        return self.weight * self.multiplier

class CausalSelfAttention(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.n_head = hp.n_head
        self.head_dim = hp.n_embd // hp.n_head
        self.eps = hp.norm_eps
        self.kernels = hp.kernels
        self.qkv = nn.Linear(hp.n_embd, 3 * hp.n_embd, bias=False)
        self.proj = nn.Linear(hp.n_embd, hp.n_embd, bias=False)
        self.rotary = Rotary(self.head_dim)
        sqk_size = hp.n_embd if hp.sqk_per_head else self.head_dim
        self.s_qk = Scaler(sqk_size, 1.0, 1 / math.sqrt(hp.n_embd))  # eq. 15-16: s_qk init 1, scale 1/sqrt(d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = self.rotary(q), self.rotary(k)
        s_qk = self.s_qk().view(-1, self.head_dim)  # one row per head, or one row for all heads
        q = norm_scale(q, s_qk, self.eps, self.kernels)  # eq. 15: q <- Norm(q) s_qk, after RoPE
        k = norm_scale(k, s_qk, self.eps, self.kernels)  # eq. 16
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           scale=math.sqrt(self.head_dim))  # eq. 17: softmax scale sqrt(d_k)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

class MLP(nn.Module):
    def __init__(self, hp):
        super().__init__()
        hidden = hp.mlp_hidden
        self.fc = nn.Linear(hp.n_embd, 2 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hp.n_embd, bias=False)
        self.s_u = Scaler(hidden, 1.0, 1.0)  # eq. 20-21: s_u and s_v init 1, scale 1
        self.s_v = Scaler(hidden, 1.0, 1.0)
        self.sqrt_d = math.sqrt(hp.n_embd)

    def forward(self, x):
        u, v = self.fc(x).chunk(2, dim=-1)
        # scalers cast to the activations' dtype: an fp32 scaler would promote bf16 activations (and what
        # autograd saves of them) to fp32 under autocast
        u = u * self.s_u().to(u.dtype)  # eq. 20: u <- u s_u (a uniform factor on u, like the reference code's
        # sqrt(d), would cancel: the block output is normalized before the residual update)
        v = v * (self.s_v() * self.sqrt_d).to(v.dtype)  # eq. 21: v <- v s_v sqrt(d_model): SiLU sees O(1) inputs
        return self.proj(u * F.silu(v))

class Block(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.attn = CausalSelfAttention(hp)
        self.mlp = MLP(hp)
        self.eps = hp.norm_eps
        self.kernels = hp.kernels
        scale = 1 / math.sqrt(hp.n_embd)
        self.alpha_attn = Scaler(hp.n_embd, hp.alpha_init, scale)  # sec 2.6 step 5: alpha init 0.05, scale 1/sqrt(d)
        self.alpha_mlp = Scaler(hp.n_embd, hp.alpha_init, scale)

    def forward(self, h):
        h = residual_update(h, self.attn(h), self.alpha_attn().abs(), self.eps, self.kernels)  # eq. 10
        return residual_update(h, self.mlp(h), self.alpha_mlp().abs(), self.eps, self.kernels)  # eq. 11

class GPT(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.hp = hp
        self.width_mult = hp.n_embd / hp.mup_base_width if hp.mup_base_width else 1.0
        self.embed = nn.Embedding(hp.vocab_size, hp.n_embd)
        self.blocks = nn.ModuleList([Block(hp) for _ in range(hp.n_layer)])
        self.lm_head = nn.Linear(hp.n_embd, hp.vocab_size, bias=False)
        self.s_z = Scaler(hp.vocab_size, 1.0, 1 / math.sqrt(hp.n_embd))  # eq. 3: logits scaled by s_z
        for p in self.parameters():
            if p.ndim == 2:  # any init: the projection below puts every vector on the sphere (sec 2.6 step 1)
                nn.init.normal_(p, std=1 / math.sqrt(hp.n_embd))
        normalize_weights_(self.normalized_matrices(), hp.norm_eps, "torch")  # built on the CPU, so plain torch

    def forward(self, idx, targets=None):
        """Mean cross-entropy over targets; without targets, the logits (batch, time, vocab)."""
        h = self.embed(idx)  # embeddings are unit rows, so h starts on the sphere
        for block in self.blocks:
            h = block(h)
        if targets is None:
            return self.head(h)
        return chunked_cross_entropy(self.head, h, targets, self.hp.vocab_size)

    def head(self, h):
        """The logits of the hidden states the blocks end with."""
        logits = self.lm_head(h)
        return logits * self.s_z().to(logits.dtype)  # eq. 3: z = E_output h * s_z; no final norm

    def param_groups(self):
        """AdamW groups and the muP rule, all in one place. m = n_embd / mup_base_width. Adam moves every entry of
        a parameter by about lr per step, whatever the entry's size, so each group's lr is set to keep the
        relative change of what it computes the same at any width (unit vectors have entries ~1/sqrt(d)):
        - hidden matrices, lr / m: a unit row (or column) meets an input with entries ~1/sqrt(d); a step aligned
          with that input changes an output entry by ~lr * d / sqrt(d) against outputs of ~1/sqrt(d): ~lr * d.
        - embed and lm_head, lr / sqrt(m): a step of ~lr per entry of a unit row has norm ~lr * sqrt(d), so it
          rotates an embedding (or a logit's direction) by ~lr * sqrt(d).
        - s_qk, alpha and s_z, lr / sqrt(m): stored at scale 1/sqrt(d) and used times sqrt(d) (sec 2.5), so a
          step of lr moves their effective value by ~lr * sqrt(d) relative to its init.
        - s_u and s_v, lr: stored at scale 1, so a step moves their effective value by ~lr at any width.
        Weight decay (none by default) on matrices only. At the base width every group has lr. Init and logit
        size need no rule: weights are unit vectors and logits are cosines times s_z at any width. The hidden
        matrices are marked muon=True: --optimizer=muon gives them to Muon (optim.py), post_step still renormalizes
        them (MuonH's sphere constraint)."""
        group_of = {id(p): "matrix" if p.ndim == 2 else "scaler" for p in self.parameters()}
        for block in self.blocks:
            group_of.update({id(p): "hidden" for p in block.parameters() if p.ndim == 2})
            group_of.update({id(p): "unit_scaler" for p in (block.mlp.s_u.weight, block.mlp.s_v.weight)})
        groups = {"hidden": [], "matrix": [], "scaler": [], "unit_scaler": []}
        for p in self.parameters():
            groups[group_of[id(p)]].append(p)
        lr = self.hp.learning_rate
        wd = self.hp.weight_decay
        sqrt_m = math.sqrt(self.width_mult)
        return [dict(params=groups["hidden"], lr=lr / self.width_mult, weight_decay=wd, muon=True),
                dict(params=groups["matrix"], lr=lr / sqrt_m, weight_decay=wd),
                dict(params=groups["scaler"], lr=lr / sqrt_m, weight_decay=0.0),
                dict(params=groups["unit_scaler"], lr=lr, weight_decay=0.0)]

    def normalized_matrices(self):
        """(matrix, dim) pairs: dim 1 normalizes rows (input side), dim 0 columns (output projections)."""
        pairs = [(self.embed.weight, 1), (self.lm_head.weight, 1)]
        for block in self.blocks:
            pairs += [(block.attn.qkv.weight, 1), (block.attn.proj.weight, 0),
                      (block.mlp.fc.weight, 1), (block.mlp.proj.weight, 0)]
        return pairs

    def post_step(self):
        normalize_weights_(self.normalized_matrices(), self.hp.norm_eps, self.hp.kernels)  # sec 2.6 step 7

    def config(self):
        params = sum(p.numel() for p in self.parameters())
        embedding = self.embed.weight.numel() + self.lm_head.weight.numel()  # untied: both are vocab x width
        return dict(model="ngpt", n_layer=self.hp.n_layer, n_head=self.hp.n_head, n_embd=self.hp.n_embd,
                    vocab_size=self.hp.vocab_size, mlp_hidden=self.hp.mlp_hidden, width_mult=self.width_mult,
                    params=params, non_embedding_params=params - embedding)

@torch.no_grad()
def normalize_weights_(pairs, eps, kernels):
    """In place: for (w, dim) in pairs, give each vector along `dim` of the 2-D w unit norm (1: rows, 0: columns)."""
    rows = []  # every matrix as rows, normalized together: one kernel launch per shape
    for w, dim in pairs:
        if w.dim() != 2 or dim not in (0, 1):
            raise ValueError(f"normalize_weights_: expected a 2-D weight and dim 0 or 1, got {tuple(w.shape)}, "
                             f"dim={dim}")
        if isinstance(w, DTensor):  # FSDP2 keeps a block of whole rows on each process
            w = w.to_local()
            if dim == 0:  # a column is split over the processes: sum its squares over all of them
                sum_sq = w.float().pow(2).sum(0)
                dist.all_reduce(sum_sq)
                w.copy_(w.float() * torch.rsqrt(sum_sq + eps))
                continue
        rows.append(w if dim == 1 else w.t())  # columns = rows of the transposed view: same memory, no copy
    norm_rows_(rows, eps, kernels)

# ============================================================================ data loader
MAGIC, HEADER_INTS, TOKEN_DTYPES = 20240520, 256, {1: np.uint16, 2: np.uint32}
DATA_HINT = ("build data with `python -m data.tiny` (offline) or `python -m data.cached_fineweb10B 25` "
             "(FineWeb: the 25 chunks the default run reads)")

def read_shard(path, min_tokens=0):
    """Tokens of one shard, memory-mapped: a 256-int32 header (magic, version, count), then the tokens. Checked
    from the header and the file size (no scan of the tokens), and to hold at least min_tokens."""
    if not os.path.isfile(path):
        sys.exit(f"error: {path}: no such shard; {DATA_HINT}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if len(header) < HEADER_INTS or header[0] != MAGIC:
        sys.exit(f"error: {path}: not a token shard (expected magic {MAGIC} in a 1024-byte header); {DATA_HINT}")
    if header[1] not in TOKEN_DTYPES:
        sys.exit(f"error: {path}: unknown shard version {header[1]} (this script reads 1 = uint16, 2 = uint32)")
    dtype, count = np.dtype(TOKEN_DTYPES[header[1]]), int(header[2])
    expected = HEADER_INTS * 4 + count * dtype.itemsize
    if os.path.getsize(path) != expected:
        sys.exit(f"error: {path}: {os.path.getsize(path)} bytes, header promises {expected} "
                 f"({count} tokens); the file is truncated or corrupt, re-download or rebuild it")
    if count < min_tokens:
        sys.exit(f"error: {path}: {count} tokens, fewer than one batch needs ({min_tokens}); "
                 f"lower --device_batch_size or --sequence_length, or use bigger shards")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(count,))

def checked_ids(tokens, vocab_size, source):
    """tokens, checked to be valid embedding rows: a scan, done once per shard opened, not for all at start-up."""
    if len(tokens) and int(tokens.max()) >= vocab_size:
        sys.exit(f"error: {source}: token id {int(tokens.max())} >= --vocab_size={vocab_size}; "
                 f"set --vocab_size to at least the tokenizer's vocabulary")
    return tokens

def shard_paths(pattern, flag):
    paths = sorted(glob.glob(pattern))
    if not paths:
        sys.exit(f"error: no files match --{flag}={pattern}; {DATA_HINT}")
    return paths

class DataLoader:
    """Training batches. Step i on rank r reads the r-th slice of the i-th window, so ranks never overlap and the
    order depends on nothing but the files and data_seed. data_seed 0 reads the shards in sorted order from their
    start; another data_seed reads them in a permuted order from a start offset into the first, and an epoch ends
    back at that offset: the same stream, rotated. Position is (epoch, segment, offset, data_seed); after the
    last segment the loader wraps to the first and the epoch count goes up (the data repeats)."""

    def __init__(self, pattern, batch, seq_len, rank, world, vocab_size, data_seed=0):
        if data_seed < 0:
            sys.exit(f"error: --data_seed must be >= 0 (0: the shards in sorted order), got {data_seed}")
        self.paths = shard_paths(pattern, "input_bin")
        self.span = batch * seq_len
        self.batch = batch
        self.seq_len = seq_len
        self.rank = rank
        self.world = world
        self.vocab_size = vocab_size
        self.data_seed = data_seed
        need = self.span * world + 1
        lengths = [len(read_shard(path, need)) for path in self.paths]  # headers and sizes at start-up, not hours in
        order, start = list(range(len(self.paths))), 0
        if data_seed:
            rng = np.random.default_rng(data_seed)
            order = rng.permutation(len(self.paths)).tolist()
            start = int(rng.integers(lengths[order[0]]))
        # (shard, first token, end): the first shard from start, the others whole, then the first one's head up to
        # start (its last target is token start, the epoch's first input)
        self.segments = [(i, 0, lengths[i]) for i in order]
        self.segments[0] = (order[0], start, lengths[order[0]])
        if start:
            self.segments.append((order[0], 0, start + 1))
        if all(end - first < need for _, first, end in self.segments):
            sys.exit(f"error: {self.paths[0]}: no window of {need} tokens fits on either side of --data_seed="
                     f"{data_seed}'s start offset {start}; use another --data_seed or bigger shards")
        self.load_state(dict(epoch=0, shard=0, offset=start, data_seed=data_seed))

    def state(self):
        return dict(epoch=self.epoch, shard=self.shard, offset=self.offset, data_seed=self.data_seed)

    def load_state(self, state):
        saved_seed = state.get("data_seed", 0)  # a position saved before data seeds existed: sorted order
        if saved_seed != self.data_seed:
            sys.exit(f"error: the checkpoint's loader position is for --data_seed={saved_seed}, this run has "
                     f"--data_seed={self.data_seed}; resume with --data_seed={saved_seed} to continue its batches")
        self.epoch = state["epoch"]
        self.shard = state["shard"]
        self.offset = state["offset"]
        index, _, self.end = self.segments[self.shard]
        path = self.paths[index]
        self.tokens = checked_ids(read_shard(path, self.span * self.world + 1), self.vocab_size, path)

    def next_batch(self, device):
        # checked before reading: a position saved with fewer processes or smaller batches may not fit here, and
        # a segment around a start offset may hold no window at all
        while self.offset + self.span * self.world + 1 > self.end:  # the window does not fit: next segment
            shard = (self.shard + 1) % len(self.segments)
            self.load_state(dict(epoch=self.epoch + (shard == 0), shard=shard, offset=self.segments[shard][1],
                                 data_seed=self.data_seed))
        start = self.offset + self.rank * self.span
        buf = torch.from_numpy(self.tokens[start:start + self.span + 1].astype(np.int64))
        self.offset += self.span * self.world
        x = buf[:-1].view(self.batch, self.seq_len)
        y = buf[1:].view(self.batch, self.seq_len)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

def val_tokens(pattern, count, vocab_size):
    """The first count + 1 tokens of the validation shards (inputs and their next-token targets), int64."""
    chunks, have = [], 0
    for path in shard_paths(pattern, "input_val_bin"):
        chunks.append(read_shard(path, 2)[:count + 1 - have])
        have += len(chunks[-1])
        if have == count + 1:
            break
    if have < count + 1:
        sys.exit(f"error: validation shards {pattern} hold {have} tokens, {count + 1} needed; lower --val_tokens")
    tokens = checked_ids(np.concatenate(chunks), vocab_size, pattern)  # only the tokens used
    return torch.from_numpy(tokens.astype(np.int64))

def val_batches(hp, rank, world, device):
    """The first val_tokens tokens of the validation shards, cut into sequences; rank r takes every world-th
    micro-batch, so all process counts see exactly the same tokens."""
    per_step = hp.device_batch_size * hp.sequence_length * world
    if hp.val_tokens % per_step:
        sys.exit(f"error: --val_tokens={hp.val_tokens} must be a multiple of device_batch_size * sequence_length * "
                 f"processes = {per_step}; change --val_tokens or --device_batch_size")
    tokens = val_tokens(hp.input_val_bin, hp.val_tokens, hp.vocab_size)
    span = hp.device_batch_size * hp.sequence_length
    for start in range(rank * span, hp.val_tokens, world * span):
        x = tokens[start:start + span].view(hp.device_batch_size, hp.sequence_length)
        y = tokens[start + 1:start + span + 1].view(hp.device_batch_size, hp.sequence_length)
        yield x.to(device), y.to(device)

# ============================================================================ schedule
def lr_multiplier(step, hp):
    """Fraction of the peak learning rate used at `step` (0-based)."""
    if step < hp.warmup_iters:
        return (step + 1) / hp.warmup_iters
    if hp.schedule == "cosine":
        progress = (step - hp.warmup_iters) / max(1, hp.num_iterations - hp.warmup_iters)
        return hp.final_lr_frac + (1 - hp.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
    cooldown_start = hp.num_iterations - hp.warmdown_iters
    if step < cooldown_start:
        return 1.0
    progress = (step - cooldown_start) / hp.warmdown_iters
    shape = progress if hp.cooldown_shape == "linear" else math.sqrt(progress)
    return 1.0 - (1.0 - hp.final_lr_frac) * shape

# ============================================================================ training loop
def build_model(hp):
    """The model as hp describes it, initialized from torch's current RNG state, on the default device."""
    model = GPT(hp)
    if hp.param_dtype == "bfloat16":
        for p in model.parameters():
            p.data = p.data.bfloat16() if p.ndim == 2 else p.data
    if hp.activation_checkpointing:  # keep each block's input only; its activations are recomputed for backward
        for block in model.blocks:
            block.forward = functools.partial(recompute, block.forward, use_reentrant=False)
    return model

def validates(step, hp):
    """Whether a validation pass runs at step (0-based, before that step trains; also at a run's first step)."""
    return step == hp.num_iterations or bool(hp.val_loss_every and step % hp.val_loss_every == 0)

def forward_backward(model, loader, micro_batches, autocast, device):
    """One optimizer step's gradients, accumulated over its micro-batches; returns (the step's mean loss, > 0 if a
    process has a stop signal), on the device: the step's one all-reduce carries both, no sync of their own."""
    total = torch.zeros((), device=device)
    for micro in range(micro_batches):
        x, y = loader.next_batch(device)
        # DDP all-reduces once per step; FSDP reduce-scatters every micro-batch (no full gradients kept)
        with model.no_sync() if isinstance(model, DDP) and micro < micro_batches - 1 else nullcontext():
            with autocast:
                loss = model(x, y) / micro_batches
            loss.backward()
        total += loss.detach()
    total = torch.stack([total, runtime.signal_flag(device)])
    if dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.AVG)
    return total

def evaluate(model, hp, rank, world, device, autocast):
    """Mean loss over the val_tokens validation tokens, the same tokens for any process count."""
    model.eval()
    with torch.no_grad(), autocast:
        losses = [model(x, y).float() for x, y in val_batches(hp, rank, world, device)]
    model.train()
    loss = torch.stack(losses).mean()  # every micro-batch holds the same token count
    if dist.is_initialized():
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)
    return loss.item()

def main(argv=None):
    hp = parse_args(sys.argv[1:] if argv is None else argv)
    rank, world, local_rank, device = start_processes(hp.device, hp.fsdp)
    master = rank == 0
    on_cuda = device.startswith("cuda")
    if not hp.kernels:
        hp.kernels = "triton" if on_cuda and ops.triton is not None else "torch"
    use_compile = hp.compile == "1" or (hp.compile == "" and on_cuda)
    if hp.batch_size % (hp.device_batch_size * world):
        sys.exit(f"error: batch_size={hp.batch_size} must be a multiple of device_batch_size * processes = "
                 f"{hp.device_batch_size} * {world}; change --batch_size or --device_batch_size")
    micro_batches = hp.batch_size // (hp.device_batch_size * world)
    compute_bf16 = on_cuda or hp.param_dtype == "bfloat16"  # else fp32 on CPU
    autocast = torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16) if compute_bf16 else nullcontext()
    resume = open_run(hp, [__file__, ops.__file__, runtime.__file__, optim.__file__], master, on_cuda)
    if hp.kernels == "triton":  # no kernel is trusted untested: each against its torch reference, before any step
        ops.check(device, print0)

    # ------------------------------------------------------------------------ model, optimizer, data, resume
    torch.manual_seed(hp.seed)  # the same initialization on every rank and device
    if hp.fsdp:
        model = build_sharded(functools.partial(build_model, hp), master, device, hp.seed)
    else:
        model = build_model(hp).to(device)
    raw_model = model
    optimizers = build_optimizers(raw_model, hp, fused=on_cuda)
    train_loader = DataLoader(hp.input_bin, hp.device_batch_size, hp.sequence_length, rank, world, hp.vocab_size,
                              hp.data_seed)
    log_run(hp, raw_model.config(), __file__, device, world, micro_batches, use_compile)
    # train time and timed steps continue across a resume; a step is saved once
    start_step, train_time_ms, timed_steps, saved_steps = resume_run(resume, raw_model, optimizers, train_loader, hp)
    model = wrap_model(model, use_compile, hp.fsdp, local_rank, on_cuda)
    catch_signals()

    def checkpoint(step, loader_state, why):  # a step saved already (a signal right after a save or resume): not again
        state = None if step in saved_steps else train_state(step, loader_state, hp, train_time_ms, timed_steps,
                                                             __file__)
        saved_steps.add(step)
        return save_run(hp, step, raw_model, optimizers, state, master, why)

    # ------------------------------------------------------------------------ training
    try:
        if use_compile:
            compile_warmup(lambda: forward_backward(model, train_loader, micro_batches, autocast, device),
                           optimizers, train_loader)
        epoch, signalled = train_loader.epoch, 0.0
        for step in range(start_step, hp.num_iterations + 1):
            last_step = step == hp.num_iterations
            save_step = hp.save_every and step > start_step and step % hp.save_every == 0
            # when the last step's all-reduce carried a signal, and before every validation and save (a signal never
            # waits on them): the steady state's steps have no collective or sync of their own for it
            if signalled or save_step or validates(step, hp) or step == start_step:
                stop_if_signalled(device, step, lambda why: checkpoint(step, train_loader.state(), why))
            if validates(step, hp) or step == start_step:
                val_loss = evaluate(model, hp, rank, world, device, autocast)
                print0(f"step:{step}/{hp.num_iterations} val_loss:{val_loss:.4f} train_time:{train_time_ms:.0f}ms "
                       f"step_avg:{train_time_ms / max(1, timed_steps):.2f}ms")
                stop_if_signalled(device, step, lambda why: checkpoint(step, train_loader.state(), why))
            if last_step:
                break
            if save_step:
                checkpoint(step, train_loader.state(), "save_every")

            t0 = time.perf_counter()
            loader_state = train_loader.state()
            loss = forward_backward(model, train_loader, micro_batches, autocast, device)
            grad_norm = gradient_norm(raw_model)
            # the step's one host sync: its gradients are checked before the optimizer step applies them
            train_loss, signalled, norm = torch.cat([loss, grad_norm.float()[None]]).tolist()
            if not (math.isfinite(train_loss) and math.isfinite(norm)):  # weights: the last good step's
                path = checkpoint(step, loader_state, "non-finite loss or gradient")
                print0(f"error: train_loss is {train_loss} and grad_norm {norm} at step {step + 1}; the "
                       f"last good state is in {path}. Lower --learning_rate or --grad_clip and continue with "
                       f"--resume={path}: the new values apply")
                sys.exit(1)
            optimizer_step(raw_model, optimizers, lr_multiplier(step, hp), hp.grad_clip, grad_norm)
            if on_cuda and validates(step + 1, hp):  # a validation's train time includes all the GPU's work
                torch.cuda.synchronize()
            train_time_ms += 1000 * (time.perf_counter() - t0)
            timed_steps += 1
            step_avg = train_time_ms / timed_steps
            print0(f"step:{step + 1}/{hp.num_iterations} train_loss:{train_loss:.4f} grad_norm:{norm:.4f} "
                   f"train_time:{train_time_ms:.0f}ms step_avg:{step_avg:.2f}ms "
                   f"tokens_per_s:{hp.batch_size * hp.sequence_length / (step_avg / 1000):.0f}")
            if train_loader.epoch > epoch:  # the loader came back to where its data order starts: the data repeats
                epoch = train_loader.epoch
                print0(f"data_epoch:{epoch} step:{step + 1} (the loader has read all of {hp.input_bin} in "
                       f"--data_seed={hp.data_seed}'s order; training data repeats from here)")
    except torch.OutOfMemoryError:
        sys.exit(f"error: out of GPU memory at device_batch_size={hp.device_batch_size} sequence_length="
                 f"{hp.sequence_length} processes={world} fsdp={hp.fsdp}; lower --device_batch_size (batch_size stays: "
                 f"more micro-batches), add --activation_checkpointing=1 or --fsdp=1, or use more GPUs; "
                 f"python -m tune.memory estimates the memory of any setting without a GPU")

    if hp.save_every:
        checkpoint(hp.num_iterations, train_loader.state(), "end")
    close_run(on_cuda)
    del model  # DDP's reducer goes while the process group is still registered (see end_processes)
    end_processes()

if __name__ == "__main__":
    main()
