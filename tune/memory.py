#!/usr/bin/env python3
"""Parameters and per-GPU memory of a planned run of train_gpt2.py or train_ngpt2.py, and whether it fits: weights,
gradients, AdamW state, buffers and the activations of one micro-batch, for a process count and the scripts' own
flags (--preset=NAME: the scripts' PRESETS).

python -m tune.memory gpt2                                           # the default run on one GPU
python -m tune.memory ngpt2 --preset=1b --fsdp=1 --device_batch_size=4 --sequence_length=4096 --processes=8
python -m tune.memory gpt2 --preset=8b --fsdp=1 --processes=16 --gpu_gib=80   # plan for a GPU this machine lacks

Every --name=value other than --processes and --gpu_gib is the script's own flag, read by the script's own
parse_args (so --preset works and bad flags get its errors; `python train_gpt2.py --help` lists them). Weights,
gradients and the two AdamW moments take 4 bytes per element (matrices 2 with --param_dtype=bfloat16) and are
divided over the processes with --fsdp=1; buffers are FSDP's gathered root and largest matrix (with its prefetch)
or DDP's gradient buckets; activations are the count of what backward keeps per token (activation_elements(),
counted on CPU with saved-tensor hooks), 2 bytes each under bf16 autocast (every CUDA run;
--device=cpu plans fp32 unless --param_dtype=bfloat16), plus the loss's one chunk of rows at a time (fp32 logits,
log-softmax and their gradients: ops.chunked_cross_entropy). A run fits when the total is within 95% of the GPU's
memory (default: this machine's first GPU). It is an estimate: a CPU test holds it within 25% of measured memory.
The cost model beside it (PEAK_BF16_TFLOPS, flops_per_token) prices runs for bench.py's MFU and tune/fair.py's plan.
"""
import argparse
import dataclasses
import os
import sys

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import ops
import train_gpt2
import train_ngpt2

SCRIPTS = {"gpt2": train_gpt2, "ngpt2": train_ngpt2}
USABLE = 0.95  # of the GPU's memory: the allocator's fragmentation and the CUDA context take the rest
PARTS = ("weights", "gradients", "optimizer", "buffers", "activations", "total")
# dense bf16 tensor-core peak TFLOPS of one GPU (NVIDIA datasheets) by device name, first match wins; H100 SXM
# reports itself as "H100 80GB HBM3". Other names get no MFU unless a peak is given.
PEAK_BF16_TFLOPS = [("H100 80GB HBM3", 989), ("H100 SXM", 989), ("H100 NVL", 835), ("H100 PCIe", 756),
                    ("H200 NVL", 835), ("H200", 989), ("B200", 2250), ("A100", 312), ("L40S", 362), ("RTX 4090", 165)]


def activation_elements(hp, model):
    """(per block, outside the blocks, per row of the loss): elements the backward pass keeps per token, counted on
    CPU with saved-tensor hooks. GPT ("gpt"), per block: 12 widths (block input, two norms' input, output and inner
    product, q and k after RoPE, qkv, attention output) and 4 MLP widths (fc output, SiLU, product), 2 widths more
    with qk_norm (normalized q and k); outside, the final norm. nGPT ("ngpt"), per block: 18 widths (GPT's plus q/k
    normalization and the two residual updates' inner tensors) and 6 MLP widths (fc output, the two scaled halves,
    SiLU, product); outside, the last block's output. A row of the loss: its logits (nGPT: and their scaled copy),
    the log-softmax, and in the backward pass the gradients of the logits (3 vocab widths), fp32 in any run."""
    if model == "gpt":
        per_block = 12 * hp.n_embd + 4 * hp.mlp_hidden
        if hp.qk_norm:
            per_block += 2 * hp.n_embd
        return per_block, 3 * hp.n_embd, 4 * hp.vocab_size
    return 18 * hp.n_embd + 6 * hp.mlp_hidden, hp.n_embd, 5 * hp.vocab_size


def parameters(module, hp):
    """The model's parameter count, built on the meta device (no memory)."""
    with torch.device("meta"):
        return module.GPT(hp).config()["params"]


def peak_flops(device_name, peak_tflops=0.0):
    """One GPU's dense bf16 peak in FLOP/s: peak_tflops if given, else by device name; None when unknown."""
    if peak_tflops:
        return peak_tflops * 1e12
    return next((tflops * 1e12 for name, tflops in PEAK_BF16_TFLOPS if name in device_name), None)


def flops_per_token(cfg, hp):
    """Training FLOPs per token: 6 per matmul weight (2 forward, 4 backward; the embedding lookup has none) plus
    causal attention: q.k and att.v cost 2 * n_embd * T each per layer forward over all T keys, half of that
    under the causal mask, and backward doubles it again (6 * n_embd * T per layer in all)."""
    return 6 * (cfg["params"] - hp.vocab_size * hp.n_embd) + 6 * hp.n_layer * hp.n_embd * hp.sequence_length


def estimate(module, hp, processes):
    """Bytes per process of the run hp describes on `processes` processes (torchrun's world size)."""
    with torch.device("meta"):
        model = module.GPT(hp)

    def size(params):
        return sum(p.numel() * (2 if hp.param_dtype == "bfloat16" and p.ndim == 2 else 4) for p in params)

    weights = size(model.parameters())
    matrices = [size([m.weight]) for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    per_block, outside, loss_row = activation_elements(hp, model.config()["model"])
    tokens = hp.device_batch_size * hp.sequence_length
    blocks_kept = hp.n_layer * per_block
    if hp.activation_checkpointing:  # each block's input, and one block recomputed at a time
        blocks_kept = hp.n_layer * hp.n_embd + per_block
    est = dict(weights=weights, gradients=weights, optimizer=2 * weights, buffers=0)
    if hp.fsdp:
        est = {name: value / processes for name, value in est.items()}
        est["buffers"] = 2 * (weights - sum(matrices)) + 3 * max(matrices)  # the root, a matrix and its prefetch
    elif processes > 1:
        est["buffers"] = weights  # DDP's gradient buckets
    autocast_bf16 = hp.device != "cpu" or hp.param_dtype == "bfloat16"  # CUDA runs under bf16 autocast
    loss_rows = min(tokens, max(1, ops.LOSS_CHUNK // hp.vocab_size))  # the rows of the loss's chunk
    est["activations"] = tokens * (blocks_kept + outside) * (2 if autocast_bf16 else 4) + loss_rows * loss_row * 4
    est["total"] = sum(est.values())
    return est


def changes(module, hp, processes, capacity):
    """Flag changes that make a run fit `capacity` bytes, each tried alone on top of hp."""
    fits = []

    def total(**flags):
        return estimate(module, dataclasses.replace(hp, **flags), processes)["total"]

    batch = hp.device_batch_size // 2
    while batch and total(device_batch_size=batch) > USABLE * capacity:
        batch //= 2
    if batch:  # the largest power-of-two fraction that fits; batch_size stays, so micro-batches go up
        fits.append(f"--device_batch_size={batch}")
    if not hp.activation_checkpointing and total(activation_checkpointing=1) <= USABLE * capacity:
        fits.append("--activation_checkpointing=1")
    if not hp.fsdp and processes > 1 and total(fsdp=1) <= USABLE * capacity:
        fits.append("--fsdp=1")
    both = dict(fsdp=1, activation_checkpointing=1)
    if not fits and not hp.fsdp and processes > 1 and total(**both) <= USABLE * capacity:
        fits.append("--fsdp=1 --activation_checkpointing=1")
    return fits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("script", choices=sorted(SCRIPTS), help="gpt2 (train_gpt2.py) or ngpt2 (train_ngpt2.py)")
    ap.add_argument("--processes", type=int, default=1, help="processes (GPUs) the run is started on by torchrun")
    ap.add_argument("--gpu_gib", type=float, default=0.0, help="one GPU's memory in GiB (default: this machine's)")
    args, flags = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.processes < 1:
        sys.exit(f"error: --processes={args.processes} must be >= 1")
    module = SCRIPTS[args.script]
    hp = module.parse_args(flags)
    if hp.batch_size % (hp.device_batch_size * args.processes):
        sys.exit(f"error: batch_size={hp.batch_size} must be a multiple of device_batch_size * processes = "
                 f"{hp.device_batch_size} * {args.processes}; change --batch_size or --device_batch_size")
    est = estimate(module, hp, args.processes)
    capacity = args.gpu_gib * 2**30
    if not capacity and torch.cuda.is_available():
        capacity = torch.cuda.get_device_properties(0).total_memory
    mode = "single"
    if args.processes > 1 or hp.fsdp:
        mode = "fsdp" if hp.fsdp else "ddp"
    params = parameters(module, hp)
    print(f"memory: script:train_{args.script}.py parameters:{params} ({params / 1e6:.1f}M) n_layer:{hp.n_layer} "
          f"n_head:{hp.n_head} n_embd:{hp.n_embd} mlp_hidden:{hp.mlp_hidden} mode:{mode} "
          f"processes:{args.processes} param_dtype:{hp.param_dtype} device_batch_size:{hp.device_batch_size} "
          f"sequence_length:{hp.sequence_length} activation_checkpointing:{hp.activation_checkpointing}")
    for part in PARTS:
        print(f"  {part:<12} {est[part] / 2**30:>9.2f} GiB")
    print("memory_per_gpu: " + " ".join(f"{part}:{est[part] / 2**20:.1f}MiB" for part in PARTS))
    if not capacity:
        print("fits: unknown (no GPU here: give --gpu_gib=...)")
        return est
    if est["total"] <= USABLE * capacity:
        print(f"fits: yes ({est['total'] / 2**30:.1f} GiB of {capacity / 2**30:.1f} GiB, {USABLE:.0%} usable)")
        return est
    fixes = changes(module, hp, args.processes, capacity)
    advice = "; ".join(fixes) if fixes else "none of --device_batch_size, --activation_checkpointing, --fsdp alone"
    print(f"fits: no ({est['total'] / 2**30:.1f} GiB of {capacity / 2**30:.1f} GiB, {USABLE:.0%} usable); "
          f"each of these fits: {advice}; or more processes with --fsdp=1, or a smaller --preset")
    return est


if __name__ == "__main__":
    main()
