"""One side of the GPT-2 vs nGPT A/B (nGPT: arXiv 2410.01131, section 2.6). Only the model section and the
model's hyperparameter defaults differ between train_gpt2.py and train_ngpt2.py: `diff` shows what nGPT changes.

python train_gpt2.py --help                          # every hyperparameter, its default and meaning
python train_ngpt2.py --n_layer=4 --device=cpu       # any field as --name=value
torchrun --standalone --nproc_per_node=8 train_ngpt2.py
"""
import dataclasses
import functools
import gc
import glob
import inspect
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                     set_state_dict)
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint as recompute

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the plain-torch kernels still work
    triton = None

# Custom ops (Triton kernels) live in one namespace per module: both scripts define them and may share a process.
OPS_NAMESPACE = "ngpt_ab_" + __name__.replace(".", "_")

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
    # model (the lines below differ between train_gpt2.py and train_ngpt2.py)
    vocab_size: int = 50304  # embedding rows: GPT-2's 50257 padded to a multiple of 128
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads
    n_embd: int = 768  # model width
    mlp_ratio: int = 4  # SwiGLU hidden width per n_embd, when mlp_hidden is 0
    mlp_hidden: int = 0  # SwiGLU hidden width of each of the two input projections (0: mlp_ratio * n_embd)
    learning_rate: float = 6e-4  # peak AdamW learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay, matrices only
    warmup_iters: int = 256  # steps of linear learning-rate warmup
    qk_norm: int = 0  # 1: QK-norm baseline: q and k RMS-normalized per head after RoPE, a learned gain per channel

def field_help():
    """Each field's trailing comment in the source above, for --help."""
    lines = inspect.getsource(Hyperparameters).splitlines()
    return {line.split(":")[0].strip(): line.split("#", 1)[1].strip() for line in lines if ": " in line and "#" in line}

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
    hp = Hyperparameters()
    fields = {f.name: f for f in dataclasses.fields(Hyperparameters)}
    show_help = "--help" in argv or "-h" in argv
    given = {}
    for arg in argv:
        if arg in ("--help", "-h"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or not eq:
            sys.exit(f"error: expected --name=value, got {arg!r} (run with --help for the list)")
        if name not in fields:
            sys.exit(f"error: unknown hyperparameter --{name} (run with --help for the list)")
        given[name] = value
    preset = given.get("preset", "")
    if preset and preset not in PRESETS:
        sys.exit(f"error: --preset must be one of {tuple(PRESETS)}, got {preset!r}")
    if preset:  # first the preset's shape, then every explicit flag over it, whatever the order on the line
        hp = dataclasses.replace(hp, **dict(zip(SHAPE, PRESETS[preset])))
    for name, value in given.items():
        kind = fields[name].type
        try:
            setattr(hp, name, kind(value))
        except ValueError:
            sys.exit(f"error: --{name} expects a {kind.__name__}, got {value!r}")
    checks = {"schedule": ("wsd", "cosine"), "cooldown_shape": ("linear", "1-sqrt"), "kernels": ("", "triton", "torch"),
              "param_dtype": ("float32", "bfloat16"), "compile": ("", "0", "1"), "device": ("", "cuda", "cpu"),
              "fsdp": (0, 1), "activation_checkpointing": (0, 1)}
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
    if show_help:
        print_help(hp, fields)
        sys.exit(0)
    return hp

def print_help(hp, fields):
    helps = field_help()
    script = os.path.basename(__file__)
    print(f"usage: {script} [--name=value ...]\n")
    for name, f in fields.items():
        print(f"  {f'--{name}={getattr(hp, name)}':<52} {f.type.__name__:<6} {helps.get(name, '')}")
    print(f"\npresets: {', '.join(PRESETS)}; any setting's parameters and memory per GPU: "
          f"python tune/memory.py {script[len('train_'):-len('.py')]} --preset=NAME [--name=value ...]")

# ============================================================================ model
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

class RMSNorm(nn.Module):
    def __init__(self, dim, kernels):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.kernels = kernels

    def forward(self, x):
        d = x.shape[-1]  # x / rms(x) = x / ||x|| * sqrt(d), so RMSNorm is normalize-and-scale
        return norm_scale(x, self.gain * math.sqrt(d), d * 1e-6, self.kernels)

    def add(self, x, branch):
        """(x + branch, RMSNorm(x + branch)): the residual add and this norm in one pass."""
        d = x.shape[-1]
        return add_norm(x, branch, self.gain * math.sqrt(d), d * 1e-6, self.kernels)

class CausalSelfAttention(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.n_head = hp.n_head
        self.head_dim = hp.n_embd // hp.n_head
        self.kernels = hp.kernels
        self.qkv = nn.Linear(hp.n_embd, 3 * hp.n_embd, bias=False)
        self.proj = nn.Linear(hp.n_embd, hp.n_embd, bias=False)
        self.rotary = Rotary(self.head_dim)
        self.qk_gain = None
        if hp.qk_norm:
            # One gain per channel of each head, shared by q and k (nGPT's s_qk without the rest of nGPT), stored at
            # 1/sqrt(d) and used times sqrt(d), d the muP base width (nGPT's scalers, sec 2.5): Adam moves it by
            # ~lr*sqrt(d) per step, so the logit scale is learned; a gain stored as itself moves ~lr and stays near
            # 1 (records/2026-12-01_tiny_cpu_qk_norm). A vector: no weight decay, lr not width-scaled.
            self.qk_mult = math.sqrt(hp.mup_base_width or hp.n_embd)
            self.qk_gain = nn.Parameter(torch.full((hp.n_embd,), 1 / self.qk_mult))

    def gains(self):
        """The QK-norm gains in use, (n_head, head_dim)."""
        return (self.qk_gain * self.qk_mult).view(self.n_head, -1)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = self.rotary(q), self.rotary(k)
        if self.qk_gain is not None:
            # Rows of norm sqrt(head_dim) times the gains, i.e. RMSNorm per head (unit-rms entries at gain 1), with
            # the default 1/sqrt(head_dim) softmax scale: logits sqrt(head_dim) * sum(gain^2 * q_hat * k_hat) for
            # unit q_hat and k_hat, O(1) for random q and k as in standard attention with unit-variance q and k, and
            # never above sqrt(head_dim) * max(gain^2) (the bound that keeps attention logits from growing).
            scale = self.gains() * math.sqrt(self.head_dim)
            q = norm_scale(q, scale, self.head_dim * 1e-6, self.kernels)  # row r of (B*T*H, hd) is head r % H
            k = norm_scale(k, scale, self.head_dim * 1e-6, self.kernels)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

class MLP(nn.Module):
    def __init__(self, hp):
        super().__init__()
        hidden = hp.mlp_hidden
        self.fc = nn.Linear(hp.n_embd, 2 * hidden, bias=False)
        self.proj = nn.Linear(hidden, hp.n_embd, bias=False)

    def forward(self, x):
        u, v = self.fc(x).chunk(2, dim=-1)
        return self.proj(u * F.silu(v))

class Block(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.norm1 = RMSNorm(hp.n_embd, hp.kernels)
        self.attn = CausalSelfAttention(hp)
        self.norm2 = RMSNorm(hp.n_embd, hp.kernels)
        self.mlp = MLP(hp)

    def forward(self, x, y, next_norm):
        """x: the residual stream, y = norm1(x). Returns the new stream and next_norm of it (the next block's
        norm1 or the final norm): each residual add runs fused with the norm that reads its result."""
        x, y = self.norm2.add(x, self.attn(y))
        return next_norm.add(x, self.mlp(y))

class GPT(nn.Module):
    def __init__(self, hp):
        super().__init__()
        self.hp = hp
        self.width_mult = hp.n_embd / hp.mup_base_width if hp.mup_base_width else 1.0
        self.embed = nn.Embedding(hp.vocab_size, hp.n_embd)
        self.blocks = nn.ModuleList([Block(hp) for _ in range(hp.n_layer)])
        self.final_norm = RMSNorm(hp.n_embd, hp.kernels)
        self.lm_head = nn.Linear(hp.n_embd, hp.vocab_size, bias=False)
        std = 0.02
        nn.init.normal_(self.embed.weight, std=std)
        nn.init.normal_(self.lm_head.weight, std=std)
        for block in self.blocks:  # muP: hidden matrices' init std goes as 1/sqrt(width)
            hidden_std = std / math.sqrt(self.width_mult)
            nn.init.normal_(block.attn.qkv.weight, std=hidden_std)
            nn.init.normal_(block.mlp.fc.weight, std=hidden_std)
            for proj in (block.attn.proj, block.mlp.proj):  # GPT-2: residual projections shrink with depth
                nn.init.normal_(proj.weight, std=hidden_std / math.sqrt(2 * hp.n_layer))

    def forward(self, idx, targets=None):
        """Mean cross-entropy over targets; without targets, the logits (batch, time, vocab)."""
        x = self.embed(idx)
        y = self.blocks[0].norm1(x)
        next_norms = [block.norm1 for block in self.blocks[1:]] + [self.final_norm]
        for block, next_norm in zip(self.blocks, next_norms):
            x, y = block(x, y, next_norm)
        logits = self.lm_head(y) / self.width_mult  # y = final_norm(x); muP output multiplier
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))

    def param_groups(self):
        """AdamW groups: weight decay on matrices only; muP divides hidden matrices' lr by the width ratio."""
        hidden = {id(p) for block in self.blocks for p in block.parameters() if p.ndim == 2}
        groups = {"hidden": [], "matrix": [], "vector": []}
        for p in self.parameters():
            group = "vector"
            if p.ndim == 2:
                group = "hidden" if id(p) in hidden else "matrix"
            groups[group].append(p)
        lr = self.hp.learning_rate
        wd = self.hp.weight_decay
        return [dict(params=groups["hidden"], lr=lr / self.width_mult, weight_decay=wd),
                dict(params=groups["matrix"], lr=lr, weight_decay=wd),
                dict(params=groups["vector"], lr=lr, weight_decay=0.0)]

    def post_step(self):
        """GPT keeps no constraint on its weights between steps."""

    def config(self):
        params = sum(p.numel() for p in self.parameters())
        embedding = self.embed.weight.numel() + self.lm_head.weight.numel()  # untied: both are vocab x width
        return dict(model="gpt", n_layer=self.hp.n_layer, n_head=self.hp.n_head, n_embd=self.hp.n_embd,
                    vocab_size=self.hp.vocab_size, mlp_hidden=self.hp.mlp_hidden, width_mult=self.width_mult,
                    params=params, non_embedding_params=params - embedding)

# GPT kernel: fused residual add + RMSNorm, res = x + b and y = res * rsqrt(sum(res^2) + eps) * scale in one
# pass (nGPT's residual update is one kernel too). Uses _check_triton, _tile_config and _bwd_grid from the
# kernels section below.

if triton is not None:

    @triton.jit
    def _add_norm_fwd_kernel(X, B, S, RES, Y, RSTD, n_rows, D, eps, stride_xr, stride_xc, stride_br, stride_bc,
                             BLOCK: tl.constexpr, ROWS: tl.constexpr):
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        rmask = r < n_rows
        mask = rmask[:, None] & (cols < D)[None, :]
        r64 = r.to(tl.int64)[:, None]
        x = tl.load(X + r64 * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + r64 * stride_br + cols[None, :] * stride_bc, mask=mask, other=0.0).to(tl.float32)
        res = (x + b).to(RES.dtype.element_ty)
        tl.store(RES + r64 * D + cols[None, :], res, mask=mask)
        v = res.to(tl.float32)  # the norm reads the stored residual, as the unfused add-then-norm does
        rstd = tl.rsqrt(tl.sum(v * v, axis=1) + eps)
        s = tl.load(S + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + r64 * D + cols[None, :], (v * rstd[:, None] * s).to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + r, rstd, mask=rmask)

    @triton.jit
    def _add_norm_bwd_kernel(DRES, DY, RES, S, RSTD, DX, DB, DS_PART, n_rows, D, rows_per_prog,
                             stride_dr, stride_dc, stride_dyr, stride_dyc, BLOCK: tl.constexpr, ROWS: tl.constexpr):
        # dx = db = dres + d(norm)/d(res)^T dy; dscale partial per program, as in _norm_scale_bwd_kernel
        p = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        cmask = cols < D
        s = tl.load(S + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        k0 = p * rows_per_prog  # a while loop, not range(): see _norm_scale_bwd_kernel
        end = k0 + rows_per_prog
        while k0 < end:
            r = (k0 + tl.arange(0, ROWS)).to(tl.int64)
            rmask = r < n_rows
            mask = rmask[:, None] & cmask[None, :]
            dres = tl.load(DRES + r[:, None] * stride_dr + cols[None, :] * stride_dc, mask=mask, other=0.0)
            dy = tl.load(DY + r[:, None] * stride_dyr + cols[None, :] * stride_dyc, mask=mask, other=0.0)
            dy = dy.to(tl.float32)
            res = tl.load(RES + r[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + r, mask=rmask, other=0.0)[:, None]
            xhat = res * rstd
            gs = dy * s
            d = dres.to(tl.float32) + rstd * (gs - xhat * tl.sum(gs * xhat, axis=1)[:, None])
            tl.store(DX + r[:, None] * D + cols[None, :], d.to(DX.dtype.element_ty), mask=mask)
            tl.store(DB + r[:, None] * D + cols[None, :], d.to(DB.dtype.element_ty), mask=mask)
            acc += tl.sum(dy * xhat, axis=0)
            k0 += ROWS
        tl.store(DS_PART + p * D + cols, acc, mask=cmask)

@torch.library.custom_op(f"{OPS_NAMESPACE}::add_norm_fwd", mutates_args=())
def _add_norm_fwd_op(x: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_triton(x)
    D = x.shape[-1]
    x2, b2 = x.reshape(-1, D), b.reshape(-1, D)  # views when possible, any strides
    n_rows = x2.shape[0]
    res = torch.empty((n_rows, D), device=x.device, dtype=torch.promote_types(x.dtype, b.dtype))  # as x + b
    y = torch.empty_like(res)
    rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32)
    block, rows, num_warps = _tile_config(D)
    _add_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
        x2, b2, scale.contiguous(), res, y, rstd, n_rows, D, eps, x2.stride(0), x2.stride(1), b2.stride(0),
        b2.stride(1), BLOCK=block, ROWS=rows, num_warps=num_warps)
    return res.view(x.shape), y.view(x.shape), rstd

@_add_norm_fwd_op.register_fake
def _(x, b, scale, eps):
    res = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, b.dtype))
    return res, torch.empty_like(res), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)

@torch.library.custom_op(f"{OPS_NAMESPACE}::add_norm_bwd", mutates_args=())
def _add_norm_bwd_op(dres: torch.Tensor, dy: torch.Tensor, res: torch.Tensor, scale: torch.Tensor, rstd: torch.Tensor,
                     x_dtype: torch.dtype, b_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_triton(res)
    D = res.shape[-1]
    dr2, dy2 = dres.reshape(-1, D), dy.reshape(-1, D)
    n_rows = dr2.shape[0]
    block, rows, num_warps = _tile_config(D)
    n_prog, rows_per_prog = _bwd_grid(n_rows, 1, rows, res.device)
    dx = torch.empty((n_rows, D), device=res.device, dtype=x_dtype)
    db = torch.empty((n_rows, D), device=res.device, dtype=b_dtype)
    ds_part = torch.empty((n_prog, D), device=res.device, dtype=torch.float32)
    _add_norm_bwd_kernel[(n_prog,)](
        dr2, dy2, res, scale.contiguous(), rstd, dx, db, ds_part, n_rows, D, rows_per_prog,
        dr2.stride(0), dr2.stride(1), dy2.stride(0), dy2.stride(1), BLOCK=block, ROWS=rows, num_warps=num_warps)
    return dx.view(res.shape), db.view(res.shape), ds_part.sum(0).to(scale.dtype)

@_add_norm_bwd_op.register_fake
def _(dres, dy, res, scale, rstd, x_dtype, b_dtype):
    return res.new_empty(res.shape, dtype=x_dtype), res.new_empty(res.shape, dtype=b_dtype), torch.empty_like(scale)

def _add_norm_setup(ctx, inputs, output):
    x, b, scale, _ = inputs
    ctx.dtypes = x.dtype, b.dtype
    ctx.save_for_backward(output[0], scale, output[2])  # the residual and rstd: x and b are not needed

def _add_norm_backward(ctx, dres, dy, _drstd):
    res, scale, rstd = ctx.saved_tensors
    dx, db, dscale = _add_norm_bwd_op(dres, dy, res, scale, rstd, *ctx.dtypes)
    return dx, db, dscale, None

_add_norm_fwd_op.register_autograd(_add_norm_backward, setup_context=_add_norm_setup)

def add_norm(x, b, scale, eps, kernels):
    """(res, y): res = x + b and y = res * rsqrt(sum(res^2, -1) + eps) * scale, scale of shape (D,)."""
    if x.shape != b.shape or scale.shape != (x.shape[-1],):
        raise ValueError(f"add_norm: x and b must have the same shape (..., D) and scale shape (D,); "
                         f"got x {tuple(x.shape)}, b {tuple(b.shape)}, scale {tuple(scale.shape)}")
    if kernels == "triton":
        return _add_norm_fwd_op(x, b, scale, eps)[:2]
    res = x + b
    return res, norm_scale_torch(res, scale, eps)

# ============================================================================ kernels
# norm_scale(x, scale, eps, kernels) = x * rsqrt(sum(x^2, -1) + eps) * scale
# Rows are the flattened leading dims of x; row r uses scale[r % G] for scale of shape (G, D)
# or (D,) (G=1). Triton path: one program per tile of ROWS rows, fp32 math, rstd saved per row.

if triton is not None:

    @triton.jit
    def _norm_scale_fwd_kernel(X, S, Y, RSTD, n_rows, D, G, eps,
                               stride_xr, stride_xc, stride_yr, stride_yc,
                               HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        rmask = r < n_rows
        mask = rmask[:, None] & (cols < D)[None, :]
        r64 = r.to(tl.int64)  # row * stride can exceed 2**31 elements
        x = tl.load(X + r64[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) + eps)
        y = x * rstd[:, None]
        if HAS_SCALE:
            y = y * tl.load(S + (r % G)[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + r64[:, None] * stride_yr + cols[None, :] * stride_yc, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + r, rstd, mask=rmask)

    @triton.jit
    def _norm_scale_bwd_kernel(DY, X, S, RSTD, DX, DS_PART, n_rows, D, G, rows_per_prog,
                               stride_dyr, stride_dyc, stride_xr, stride_xc,
                               HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
        # program (p, g) owns rows g + G*k, k in [p*rows_per_prog, (p+1)*rows_per_prog): all use scale[g],
        # so its dscale partial is a plain register sum, written once to DS_PART[p, g]
        p, g = tl.program_id(0), tl.program_id(1)
        cols = tl.arange(0, BLOCK)
        cmask = cols < D
        if HAS_SCALE:
            s = tl.load(S + g * D + cols, mask=cmask, other=0.0).to(tl.float32)
        else:
            s = tl.full([BLOCK], 1.0, tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        k0 = p * rows_per_prog  # a while loop: Triton 3.6's interpreter fails on range() of run-time
        end = k0 + rows_per_prog  # bounds (scalars there are 1-element arrays, NumPy >= 2.4)
        while k0 < end:
            r = g + G * (k0 + tl.arange(0, ROWS)).to(tl.int64)
            rmask = r < n_rows
            mask = rmask[:, None] & cmask[None, :]
            dy = tl.load(DY + r[:, None] * stride_dyr + cols[None, :] * stride_dyc, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(X + r[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + r, mask=rmask, other=0.0)
            xhat = x * rstd[:, None]
            gs = dy * s[None, :]
            # d/dx of x*rstd(x): rstd * (g - xhat * <g, xhat>)
            dx = rstd[:, None] * (gs - xhat * tl.sum(gs * xhat, axis=1)[:, None])
            tl.store(DX + r[:, None] * D + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
            acc += tl.sum(dy * xhat, axis=0)
            k0 += ROWS
        if HAS_SCALE:
            tl.store(DS_PART + (p * G + g) * D + cols, acc, mask=cmask)

def _check_triton(t):
    if triton is None:
        raise RuntimeError("kernels='triton' needs the triton package (pip install triton); or pass --kernels=torch")
    if t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"kernels='triton' needs CUDA tensors (got {t.device}); pass --kernels=torch "
                           "or set TRITON_INTERPRET=1 to run Triton's (slow) interpreter on CPU")

def _tile_config(D, rows_adjacent=False):
    # fixed heuristics, no autotune: ~2048-element tiles (several rows when D is small), 8 warps per 2048;
    # rows adjacent in memory (a weight's columns): >= 16 rows per tile so each load coalesces across rows
    block = triton.next_power_of_2(D)
    rows = max(16 if rows_adjacent else 1, 2048 // block)
    return block, rows, min(32, max(4, block * rows // 256))

def _bwd_grid(n_rows, G, rows, device):
    # persistent backward: ~4 programs per SM so per-program partial sums stay few
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    per_group = triton.cdiv(n_rows, G)
    n_prog = max(1, min(triton.cdiv(per_group, rows), target // G))
    rows_per_prog = triton.cdiv(triton.cdiv(per_group, n_prog), rows) * rows
    return triton.cdiv(per_group, rows_per_prog), rows_per_prog

def _norm_scale_launch(x2, scale, eps, out=None):
    """Forward on a 2-D (rows, D) view with any strides; writes into out (may alias x2: in-place). Returns rstd."""
    _check_triton(x2)
    n_rows, D = x2.shape
    out = torch.empty_like(x2, memory_format=torch.contiguous_format) if out is None else out
    assert out.shape == x2.shape and out.dtype == x2.dtype, "norm_scale launch: out must match x"
    s = scale.reshape(-1, D).contiguous() if scale is not None else x2  # dummy pointer when HAS_SCALE=False
    rstd = torch.empty(n_rows, device=x2.device, dtype=torch.float32)
    block, rows, num_warps = _tile_config(D, rows_adjacent=x2.stride(0) == 1 and D > 1)
    _norm_scale_fwd_kernel[(triton.cdiv(n_rows, rows),)](
        x2, s, out, rstd, n_rows, D, s.shape[0], eps, x2.stride(0), x2.stride(1), out.stride(0), out.stride(1),
        HAS_SCALE=scale is not None, BLOCK=block, ROWS=rows, num_warps=num_warps)
    return out, rstd

def _norm_scale_bwd_launch(dy2, x2, scale, rstd):
    _check_triton(x2)
    n_rows, D = x2.shape
    G = scale.numel() // D if scale is not None else 1
    block, rows, num_warps = _tile_config(D)
    n_prog, rows_per_prog = _bwd_grid(n_rows, G, rows, x2.device)
    dx = torch.empty((n_rows, D), device=x2.device, dtype=x2.dtype)
    ds_part = torch.empty((n_prog, G, D) if scale is not None else (0,), device=x2.device, dtype=torch.float32)
    s = scale.reshape(G, D).contiguous() if scale is not None else x2
    _norm_scale_bwd_kernel[(n_prog, G)](
        dy2, x2, s, rstd, dx, ds_part, n_rows, D, G, rows_per_prog,
        dy2.stride(0), dy2.stride(1), x2.stride(0), x2.stride(1),
        HAS_SCALE=scale is not None, BLOCK=block, ROWS=rows, num_warps=num_warps)
    dscale = ds_part.sum(0).to(scale.dtype) if scale is not None else ds_part
    return dx, dscale

@torch.library.custom_op(f"{OPS_NAMESPACE}::norm_scale_fwd", mutates_args=())
def _norm_scale_fwd_op(x: torch.Tensor, scale: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, rstd = _norm_scale_launch(x.reshape(-1, x.shape[-1]), scale, eps)  # reshape copies only if not viewable
    return y.view(x.shape), rstd

@_norm_scale_fwd_op.register_fake
def _(x, scale, eps):
    return x.new_empty(x.shape), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)

@torch.library.custom_op(f"{OPS_NAMESPACE}::norm_scale_bwd", mutates_args=())
def _norm_scale_bwd_op(dy: torch.Tensor, x: torch.Tensor, scale: Optional[torch.Tensor],
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    D = x.shape[-1]
    dx, dscale = _norm_scale_bwd_launch(dy.reshape(-1, D), x.reshape(-1, D), scale, rstd)
    return dx.view(x.shape), dscale.view(scale.shape) if scale is not None else dscale

@_norm_scale_bwd_op.register_fake
def _(dy, x, scale, rstd):
    if scale is None:
        return x.new_empty(x.shape), x.new_empty(0, dtype=torch.float32)
    return x.new_empty(x.shape), scale.new_empty(scale.shape)

def _norm_scale_setup(ctx, inputs, output):
    x, scale, _ = inputs
    ctx.save_for_backward(x, scale, output[1])

def _norm_scale_backward(ctx, dy, _drstd):
    x, scale, rstd = ctx.saved_tensors
    dx, dscale = _norm_scale_bwd_op(dy, x, scale, rstd)
    return dx, dscale if scale is not None else None, None

_norm_scale_fwd_op.register_autograd(_norm_scale_backward, setup_context=_norm_scale_setup)

def norm_scale_torch(x, scale, eps):
    """Plain-torch reference: fp32 math, output in x.dtype."""
    D = x.shape[-1]
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)
    if scale is not None:
        y = (y.reshape(-1, scale.numel() // D, D) * scale.float().reshape(-1, D)).reshape(x.shape)
    return y.to(x.dtype)

def norm_scale(x, scale, eps, kernels):
    """y = x * rsqrt(sum(x^2, -1) + eps) * scale; scale None, (D,) or (G, D) with row r using scale[r % G]."""
    D = x.shape[-1]
    if scale is not None and (scale.shape[-1] != D or scale.dim() > 2 or (x.numel() // D) % (scale.numel() // D)):
        raise ValueError(f"norm_scale: scale must be (D,) or (G, D) with D={D} and G dividing the row count "
                         f"{x.numel() // D}; got scale {tuple(scale.shape)} for x {tuple(x.shape)}")
    if not eps > 0:
        raise ValueError(f"norm_scale: eps must be > 0 (zero rows would give NaN), got {eps}")
    if kernels == "triton":
        return _norm_scale_fwd_op(x, scale, eps)[0]
    return norm_scale_torch(x, scale, eps)

# ============================================================================ data loader
MAGIC, HEADER_INTS, TOKEN_DTYPES = 20240520, 256, {1: np.uint16, 2: np.uint32}
DATA_HINT = ("build data with `python data/tiny.py` (offline) or `python data/cached_fineweb10B.py 25` "
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
stop_signal = 0
log_file = None  # the run's log, open on rank 0 only

def on_signal(signum, frame):
    global stop_signal
    stop_signal = signum

def environment_report(device):
    lines = [f"python:{platform.python_version()} torch:{torch.__version__} numpy:{np.__version__} "
             f"cuda:{torch.version.cuda} triton:{getattr(triton, '__version__', None)}"]
    if device == "cuda":
        lines.append(f"gpu:{torch.cuda.get_device_name()} count:{torch.cuda.device_count()}")
        try:
            lines.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout)
        except (OSError, subprocess.SubprocessError) as err:
            lines.append(f"nvidia-smi: {err}")
    else:
        lines.append(f"cpu:{platform.processor() or platform.machine()} threads:{torch.get_num_threads()}")
    return "\n".join(lines)

def peak_rss_kib():
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss keeps the launching
    process's peak (a big parent, like pytest, inflates it), so it is only the fallback."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def start_processes(hp):
    """(rank, world, local_rank, device): one process, or torchrun's (DDP, or FSDP2 with --fsdp=1)."""
    device = hp.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device=cuda but torch sees no GPU; use --device=cpu")
    if hp.fsdp and "RANK" not in os.environ:
        sys.exit("error: --fsdp=1 shards over the processes torchrun starts; run under torchrun or use --fsdp=0")
    rank, world, local_rank = 0, 1, 0
    if "RANK" in os.environ:
        rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if "RANK" in os.environ:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, world, local_rank, device

def from_rank0(value):
    """Rank 0's value on every process: one run id and one resume checkpoint for the whole job."""
    box = [value]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]

def print0(s, console=True):
    """One line into the run's log and, unless console=False, onto the console; rank 0 alone holds log_file."""
    if log_file is not None:
        print(s, file=log_file, flush=True)
        if console:
            print(s, flush=True)

def shard_model(model, compute_bf16):
    """FSDP2: every matrix is a group, gathered for its own forward and backward and freed after; the vectors (a tiny
    share) stay with the root. Not a group per block: GPT's fused add + norm has each block call the next block's
    norm. With bf16 compute a Linear's weight is gathered in bf16 (what autograd keeps for backward is then that
    gather, not a bf16 cast of an fp32 one) and its gradients reduced in fp32; the rest is gathered as stored."""
    linear = MixedPrecisionPolicy()
    if compute_bf16:
        linear = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fully_shard(module, mp_policy=linear)
        if isinstance(module, nn.Embedding):
            fully_shard(module)
    fully_shard(model)

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

def build_sharded(hp, master, device, compute_bf16):
    """The FSDP2 model without a full copy per process (host memory: a 13b model is ~53 GB in fp32): every process
    builds it on the meta device, shards it and allocates its shards; rank 0 alone builds the real model (same
    seed, so the init without FSDP) and broadcasts it into the shards."""
    with torch.device("meta"):
        model = build_model(hp)
    shard_model(model, compute_bf16)
    model.to_empty(device=device)
    for module in model.modules():
        if isinstance(module, Rotary):  # a buffer, not in the state dict: recomputed, not loaded
            module.inv_freq.copy_(module.frequencies())
    full = {}
    if master:
        torch.manual_seed(hp.seed)  # as main() set it (the meta build drew nothing): the same init
        full = build_model(hp).state_dict()
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model

def forward_backward(model, loader, micro_batches, autocast, device):
    """One optimizer step's gradients, accumulated over its micro-batches; returns the step's mean loss."""
    total = torch.zeros((), device=device)
    for micro in range(micro_batches):
        x, y = loader.next_batch(device)
        # DDP all-reduces once per step; FSDP reduce-scatters every micro-batch (no full gradients kept)
        with model.no_sync() if isinstance(model, DDP) and micro < micro_batches - 1 else nullcontext():
            with autocast:
                loss = model(x, y) / micro_batches
            loss.backward()
        total += loss.detach()
    if dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.AVG)
    return total

def gradient_norm(model):
    """The global gradient norm (over every process's shards with FSDP), as clip_grad_norm_ computes it."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if isinstance(norm, DTensor):
        return norm.full_tensor()
    return norm

def log_run(hp, cfg, device, world, micro_batches, use_compile):
    """The run's header lines, after the source and versions: what was built and how it runs."""
    print0(f"script:{os.path.basename(__file__)}")
    print0(f"parameters:{cfg['params']} non_embedding_parameters:{cfg['non_embedding_params']} "
           f"({cfg['params'] / 1e6:.1f}M, {cfg['non_embedding_params'] / 1e6:.1f}M without the embedding and head)")
    print0(f"hyperparameters:{json.dumps(dataclasses.asdict(hp))}")
    print0(f"model_config:{json.dumps(cfg)}")
    mode = "single"
    if dist.is_initialized():
        mode = "fsdp init:rank0_broadcast" if hp.fsdp else "ddp"
    print0(f"device:{device} processes:{world} mode:{mode} micro_batches:{micro_batches} compile:{use_compile} "
           f"kernels:{hp.kernels} activation_checkpointing:{hp.activation_checkpointing}")

def compile_warmup(model, optimizer, loader, micro_batches, autocast, device):
    """Compiles before the clock starts: two steps' forward and backward, no optimizer step, the loader put back."""
    t0 = time.perf_counter()
    loader_state = loader.state()
    for _ in range(2):
        forward_backward(model, loader, micro_batches, autocast, device)
        optimizer.zero_grad(set_to_none=True)
    loader.load_state(loader_state)
    print0(f"compile_warmup:{1000 * (time.perf_counter() - t0):.0f}ms (not counted in train_time)")

def agreed_signal(device):
    """The stop signal any process has received (0: none), the same on every process."""
    stop = torch.tensor(float(stop_signal), device=device)
    if dist.is_initialized():
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    return int(stop.item())

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

# ---------------------------------------------------------------------------- checkpoints
# One format for one process, DDP and FSDP: a torch.distributed.checkpoint directory per saved step,
# <log_dir>/<run_id>_step<N>.dcp, holding the model and optimizer (any process count and mode reads it) and
# train_state.pt (step, loader position, train time, RNG, hyperparameters), written last.
warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # DCP on one process: a mode we use

def run_checkpoints(log_dir, run_id):
    """(step, suffix, path) of run_id's checkpoint directories: <run_id>_step<N>.dcp, its .tmp (a save under way,
    complete once train_state.pt is in it) and its .old (a re-save's old copy, being deleted: never read)."""
    name = re.compile(rf"{re.escape(run_id)}_step(\d+)\.dcp(\.tmp|\.old)?")
    for path in glob.glob(os.path.join(glob.escape(log_dir), f"{glob.escape(run_id)}_step*.dcp*")):
        match = name.fullmatch(os.path.basename(path))
        if match:
            yield int(match.group(1)), match.group(2), path

def checkpoint_dir(hp, step):
    return os.path.join(hp.log_dir, f"{hp.run_id}_step{step:06d}.dcp")

def train_state(step, loader_state, hp, train_time_ms, timed_steps):
    rng = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available():  # this process's GPU only: a machine that sees fewer GPUs restores it too
        rng["cuda"] = torch.cuda.get_rng_state()
    return dict(step=step, loader=loader_state, train_time_ms=train_time_ms, timed_steps=timed_steps,
                hyperparameters=dataclasses.asdict(hp), script=os.path.basename(__file__), rng=rng)

def latest_checkpoint(log_dir, run_id):
    """The complete checkpoint of run_id with the highest step (at one step, the renamed copy), or ""."""
    found = [(step, not suffix, path) for step, suffix, path in run_checkpoints(log_dir, run_id)
             if suffix != ".old" and os.path.isfile(os.path.join(path, "train_state.pt"))]
    return max(found, default=(0, False, ""))[2]

def fsync(path):
    """Flush a file or directory to disk: a rename is durable only once what it renames and its parent are."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def save_checkpoint(path, pieces, state, master):
    """pieces (named state dicts) go through torch.distributed.checkpoint into path.tmp, each process writing its
    part (fsynced); the master adds train_state.pt last and renames: path is complete or absent, and a step saved
    again keeps its old copy until the new one is complete. Collective under torchrun; evals/ uses it too."""
    tmp = f"{path}.tmp"
    if master and os.path.exists(tmp):  # left by a save that was cut short
        shutil.rmtree(tmp)
    if dist.is_initialized():
        dist.barrier()
    dcp.save(pieces, checkpoint_id=tmp, no_dist=not dist.is_initialized())
    if master:
        with open(os.path.join(tmp, "train_state.pt.part"), "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(tmp, "train_state.pt.part"), os.path.join(tmp, "train_state.pt"))
        fsync(tmp)
        put_in_place(path)
    if dist.is_initialized():
        dist.barrier()

def put_in_place(path):
    """The complete path.tmp becomes path. An older path is moved to path.old first and deleted only once the new
    one is in place; a save stopped between the two renames leaves a complete .tmp, which --resume=auto finishes."""
    shutil.rmtree(f"{path}.old", ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, f"{path}.old")
    os.replace(f"{path}.tmp", path)
    fsync(os.path.dirname(os.path.abspath(path)))
    shutil.rmtree(f"{path}.old", ignore_errors=True)

def load_checkpoint(path, model, optimizer, loader, hp):
    """A checkpoint's weights, optimizer moments, loader position and RNG state, resharded to this run's processes
    and mode; the optimizer's settings (learning rates, weight decay, betas) stay this command line's. Returns the
    train state."""
    if not os.path.isfile(os.path.join(path, "train_state.pt")):
        sys.exit(f"error: --resume={path}: not a complete checkpoint (a <run_id>_step<N>.dcp directory holding "
                 f"train_state.pt); pass one of those, or --resume=auto with the run's --run_id and --log_dir")
    state = torch.load(os.path.join(path, "train_state.pt"), map_location="cpu", weights_only=False)
    if "averaged_from" in state or "train_time_ms" not in state:
        sys.exit(f"error: --resume={path} holds weights only (an averaged checkpoint) or comes from an older version "
                 f"of this script: evaluate it with evals/; resume from one of the run's own checkpoints")
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    model_state, optimizer_state = get_state_dict(model, optimizer)
    pieces = dict(model=model_state, optimizer=optimizer_state)
    try:
        dcp.load(pieces, checkpoint_id=path, no_dist=not dist.is_initialized())
    except (RuntimeError, ValueError, CheckpointException) as err:  # another model size, or the other script's
        saved = {k: v for k, v in state["hyperparameters"].items() if getattr(hp, k, None) != v}
        sys.exit(f"error: --resume={path} does not fit this model ({str(err).strip().splitlines()[-1].strip()}); "
                 f"it was saved with {saved}")
    set_state_dict(model, optimizer, model_state_dict=pieces["model"], optim_state_dict=pieces["optimizer"])
    for group, setting in zip(optimizer.param_groups, settings):
        group.update(setting)  # the checkpoint brings moments and step counts, the command line the settings
    steps = [state["step"]]
    if dist.is_initialized():  # every process must continue from the same step
        steps = [None] * dist.get_world_size()
        dist.all_gather_object(steps, state["step"])
    if len(set(steps)) > 1:
        sys.exit(f"error: the processes read different steps {steps} from {path}; is the filesystem shared?")
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and "cuda" in state["rng"]:  # this process's GPU: any GPU count restores it
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    loader.load_state(state["loader"])
    return state

def open_run(hp, master, on_cuda):
    """Names the run (on rank 0, for every process), opens its log on rank 0 (a continued run appends) and writes
    the script's source and versions at its top. Returns the checkpoint to resume from ("" for a fresh start)."""
    global log_file
    if not hp.run_id:
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:6]}"
        hp.run_id = from_rank0(f"{os.path.splitext(os.path.basename(__file__))[0]}_s{hp.seed}_{stamp}")
    os.makedirs(hp.log_dir, exist_ok=True)
    resume = hp.resume
    if resume == "auto":  # chosen on rank 0: on a shared filesystem another node's listing can lag
        resume = ""
        if master:
            resume = latest_checkpoint(hp.log_dir, hp.run_id)
        if master and resume.endswith(".tmp"):  # a save stopped between its last two renames: finish it
            resume = resume[:-len(".tmp")]
            put_in_place(resume)
        resume = from_rank0(resume)
    log_file = None
    if master:
        log_file = open(os.path.join(hp.log_dir, f"{hp.run_id}.txt"), "a" if resume else "w")
    with open(__file__) as f:
        print0(f.read(), console=False)
    print0("=" * 100, console=False)
    print0(environment_report("cuda" if on_cuda else "cpu"), console=False)
    return resume

def close_run(on_cuda):
    """The log's last line, the peak memory; then the log is closed (main() may run again in this process)."""
    global log_file
    if on_cuda:
        print0(f"peak_memory:{torch.cuda.max_memory_allocated() / 2**20:.0f}MiB (cuda allocated)")
    else:
        print0(f"peak_memory:{peak_rss_kib() / 1024:.0f}MiB (process max rss)")
    if log_file is not None:
        log_file.close()
        log_file = None

def main(argv=None):
    hp = parse_args(sys.argv[1:] if argv is None else argv)
    rank, world, local_rank, device = start_processes(hp)
    master = rank == 0
    on_cuda = device.startswith("cuda")
    if not hp.kernels:
        hp.kernels = "triton" if on_cuda and triton is not None else "torch"
    use_compile = hp.compile == "1" or (hp.compile == "" and on_cuda)
    if hp.batch_size % (hp.device_batch_size * world):
        sys.exit(f"error: batch_size={hp.batch_size} must be a multiple of device_batch_size * processes = "
                 f"{hp.device_batch_size} * {world}; change --batch_size or --device_batch_size")
    micro_batches = hp.batch_size // (hp.device_batch_size * world)
    compute_bf16 = on_cuda or hp.param_dtype == "bfloat16"  # else fp32 on CPU
    autocast = nullcontext()
    if compute_bf16:
        autocast = torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16)
    resume = open_run(hp, master, on_cuda)

    # ------------------------------------------------------------------------ model, optimizer, data, resume
    torch.manual_seed(hp.seed)  # the same initialization on every rank and device
    if hp.fsdp:
        model = build_sharded(hp, master, device, compute_bf16)
    else:
        model = build_model(hp).to(device)
    raw_model = model
    optimizer = torch.optim.AdamW(raw_model.param_groups(), betas=(0.9, 0.95), eps=1e-8, fused=on_cuda)
    for group in optimizer.param_groups:
        group["peak_lr"] = group["lr"]
    train_loader = DataLoader(hp.input_bin, hp.device_batch_size, hp.sequence_length, rank, world, hp.vocab_size,
                              hp.data_seed)
    start_step = 0
    train_time_ms = 0.0  # both continue across a resume
    timed_steps = 0
    saved_steps = set()  # a step is saved once
    if resume:
        state = load_checkpoint(resume, raw_model, optimizer, train_loader, hp)
        start_step = state["step"]
        train_time_ms = state["train_time_ms"]
        timed_steps = state["timed_steps"]
        if os.path.abspath(resume) == os.path.abspath(checkpoint_dir(hp, start_step)):
            saved_steps.add(start_step)
    # compile the inner module, then wrap it in DDP (PyTorch's "Where to apply torch.compile?"): dynamo compiles
    # it inside DDP's forward, sees the DDP module and splits the graph at DDP's gradient buckets (DDPOptimizer,
    # default bucket_cap_mb=25), so each bucket's all-reduce overlaps the rest of the backward pass
    if use_compile:
        model = torch.compile(model)
    if dist.is_initialized() and not hp.fsdp:  # no buffer broadcast: RoPE's inv_freq, the one buffer, is constant
        model = DDP(model, device_ids=[local_rank] if on_cuda else None, broadcast_buffers=False)

    cfg = raw_model.config()
    log_run(hp, cfg, device, world, micro_batches, use_compile)
    if resume:  # the command line's values apply from here on
        saved = state["hyperparameters"]
        changes = " ".join(f"{k}:{saved[k]}->{v}" for k, v in dataclasses.asdict(hp).items()
                           if k != "resume" and saved.get(k, v) != v)
        print0(f"resumed_from:{resume} at_step:{start_step} train_time:{train_time_ms:.0f}ms")
        print0(f"resume_changes: {changes or 'none'}")
    tokens_per_step = hp.batch_size * hp.sequence_length
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def checkpoint(step, loader_state, why):
        path = checkpoint_dir(hp, step)
        if step not in saved_steps:  # else this very state is on disk: a signal right after a save or a resume
            model_state, optimizer_state = get_state_dict(raw_model, optimizer)
            state = train_state(step, loader_state, hp, train_time_ms, timed_steps)
            save_checkpoint(path, dict(model=model_state, optimizer=optimizer_state), state, master)
            saved_steps.add(step)
        if master and not hp.keep_checkpoints:  # the newest complete one stays
            for _, _, other in run_checkpoints(hp.log_dir, hp.run_id):
                if other != path:
                    shutil.rmtree(other)
        print0(f"checkpoint:{path} step:{step} reason:{why}")
        return path

    def stop_if_signalled(step):  # before every validation and save, so a signal never waits on them
        signum = agreed_signal(device)
        if signum:
            path = checkpoint(step, train_loader.state(), f"signal {signum}")
            print0(f"stopped by signal {signum} at step {step}; continue with --resume={path}")
            sys.exit(128 + signum)

    # ------------------------------------------------------------------------ training
    try:
        if use_compile:
            compile_warmup(model, optimizer, train_loader, micro_batches, autocast, device)
        epoch = train_loader.epoch
        for step in range(start_step, hp.num_iterations + 1):
            last_step = step == hp.num_iterations
            stop_if_signalled(step)
            if last_step or step == start_step or (hp.val_loss_every and step % hp.val_loss_every == 0):
                val_loss = evaluate(model, hp, rank, world, device, autocast)
                print0(f"step:{step}/{hp.num_iterations} val_loss:{val_loss:.4f} train_time:{train_time_ms:.0f}ms "
                       f"step_avg:{train_time_ms / max(1, timed_steps):.2f}ms")
                stop_if_signalled(step)
            if last_step:
                break
            if hp.save_every and step > start_step and step % hp.save_every == 0:
                checkpoint(step, train_loader.state(), "save_every")

            t0 = time.perf_counter()
            loader_state = train_loader.state()
            for group in optimizer.param_groups:
                group["lr"] = group["peak_lr"] * lr_multiplier(step, hp)
            loss = forward_backward(model, train_loader, micro_batches, autocast, device)
            grad_norm = gradient_norm(raw_model)
            train_loss, norm = torch.stack([loss, grad_norm.float()]).tolist()  # one device sync for both
            if not (math.isfinite(train_loss) and math.isfinite(norm)):  # weights: the last good step's
                path = checkpoint(step, loader_state, "non-finite loss or gradient")
                print0(f"error: train_loss is {train_loss} and grad_norm {norm} at step {step + 1}; the "
                       f"last good state is in {path}. Lower --learning_rate or --grad_clip and continue with "
                       f"--resume={path}: the new values apply")
                sys.exit(1)
            if hp.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(raw_model.parameters(), hp.grad_clip, grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            raw_model.post_step()
            if on_cuda:
                torch.cuda.synchronize()
            train_time_ms += 1000 * (time.perf_counter() - t0)
            timed_steps += 1
            step_avg = train_time_ms / timed_steps
            print0(f"step:{step + 1}/{hp.num_iterations} train_loss:{train_loss:.4f} grad_norm:{norm:.4f} "
                   f"train_time:{train_time_ms:.0f}ms step_avg:{step_avg:.2f}ms "
                   f"tokens_per_s:{tokens_per_step / (step_avg / 1000):.0f}")
            if train_loader.epoch > epoch:  # the loader wrapped to its first shard in this step: the data repeats
                epoch = train_loader.epoch
                print0(f"data_epoch:{epoch} step:{step + 1} (the loader wrapped to the first shard of "
                       f"{hp.input_bin}; training data repeats from here)")
    except torch.OutOfMemoryError:
        sys.exit(f"error: out of GPU memory at device_batch_size={hp.device_batch_size} sequence_length="
                 f"{hp.sequence_length} processes={world} fsdp={hp.fsdp}; lower --device_batch_size (batch_size stays: "
                 f"more micro-batches), add --activation_checkpointing=1 or --fsdp=1, or use more GPUs; "
                 f"tune/memory.py estimates the memory of any setting without a GPU")

    if hp.save_every:
        checkpoint(hp.num_iterations, train_loader.state(), "end")
    close_run(on_cuda)
    if dist.is_initialized():
        dist.barrier()  # no rank tears down the process group while another still uses it
        # Free DDP's reducer while the process group is still registered: if the reducer held the last reference,
        # gloo's destructor would run with the GIL held and could deadlock with its worker thread at exit.
        del model
        gc.collect()
        dist.destroy_process_group()

if __name__ == "__main__":
    main()
