#!/usr/bin/env python3
"""muP coordinate check of both scripts' models: train a few steps at several widths (same depth, same data) and
see whether what each layer computes, and how much it moved, stays the same across width (it should, with muP).

python -m tune.coord_check                                # gpt2 and ngpt2, widths 64..512, about a minute on CPU
python -m tune.coord_check --scripts ngpt2 --widths 64 128 --steps 5 --lr 3e-3
python -m tune.coord_check --optimizer muon --lr 1e-3    # Muon on the hidden matrices (lr x --muon_lr_ratio)

Each model is built by its script (parse_args, GPT, param_groups, post_step), trained as the scripts train it
(optim.py: AdamW, or with --optimizer muon Muon on the hidden matrices; the grad clip) at a constant lr on random
Zipf tokens, the same for every width, then measured on a fixed probe batch against its own state at init:
  embed, block i: rms = the coordinates' root mean square, change = |x - x_init| / |x_init| per token (relative:
                  nGPT's hidden states are unit vectors, so their rms is 1/sqrt(width) by construction)
  logits:         rms and change = mean |z - z_init|, the absolute change that the softmax sees
Lines flat across width mean the parametrization transfers. A table goes to the console (key:value lines, grep-able),
a plot per model to img/coord_check_<script>.png (with Muon: coord_check_<script>_muon.png).
"""
import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import train_gpt2
import train_ngpt2
from optim import build_optimizers, optimizer_step

SCRIPTS = {"gpt2": train_gpt2, "ngpt2": train_ngpt2}


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scripts", nargs="+", default=["gpt2", "ngpt2"], choices=["gpt2", "ngpt2"])
    ap.add_argument("--widths", nargs="+", type=int, default=[64, 128, 256, 512])
    ap.add_argument("--base_width", type=int, default=64, help="--mup_base_width of every model")
    ap.add_argument("--head_dim", type=int, default=16, help="n_head = width / head_dim")
    ap.add_argument("--n_layer", type=int, default=2)
    ap.add_argument("--vocab_size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-2, help="the scripts' --learning_rate (no schedule)")
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"], help="the scripts' --optimizer")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    ap.add_argument("--seeds", type=int, default=2, help="results are the mean over this many seeds")
    ap.add_argument("--out_dir", default=os.path.join(ROOT, "img"), help="where the plots go ('' for none)")
    args = ap.parse_args(argv)
    for width in args.widths:
        if width % args.head_dim:
            sys.exit(f"error: width {width} is not a multiple of --head_dim={args.head_dim}")
    return args


def zipf_batches(args, seed):
    """steps + 1 batches of (input, target) of random Zipf(1.2) tokens: the last one is the probe."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(args.steps + 1):
        tokens = np.minimum(rng.zipf(1.2, size=(args.batch, args.seq + 1)) - 1, args.vocab_size - 1)
        tokens = torch.from_numpy(tokens)
        batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return batches


def activations(model, idx):
    """{name: tensor}: the embedding output, each block's output (the residual stream) and the logits for idx."""
    out = {}

    def keep(name):
        def hook(module, args, y):
            out[name] = (y[0] if isinstance(y, tuple) else y).detach()  # GPT's blocks return (stream, its norm)
        return hook
    hooks = [model.embed.register_forward_hook(keep("embed"))]
    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_hook(keep(f"block{i}")))
    with torch.no_grad():
        out["logits"] = model(idx).detach()
    for hook in hooks:
        hook.remove()
    return out


def measure(module, width, args, seed):
    """{name: (rms, change)} after args.steps training steps of module's model at this width."""
    hp = module.parse_args([f"--n_embd={width}", f"--n_head={width // args.head_dim}", f"--n_layer={args.n_layer}",
                            f"--vocab_size={args.vocab_size}", f"--mup_base_width={args.base_width}",
                            f"--learning_rate={args.lr}", f"--sequence_length={args.seq}", "--kernels=torch",
                            "--device=cpu", "--warmup_iters=0", "--warmdown_iters=0", f"--optimizer={args.optimizer}"])
    torch.manual_seed(seed)
    model = module.GPT(hp)
    optimizers = build_optimizers(model, hp)
    batches = zipf_batches(args, seed)
    probe = batches[-1][0]
    init = activations(model, probe)
    for x, y in batches[:-1]:
        model(x, y).backward()
        optimizer_step(model, optimizers, 1.0, hp.grad_clip)
    now = activations(model, probe)
    result = {}
    for name, x in now.items():
        x0 = init[name]
        rms = x.pow(2).mean().sqrt().item()
        if name == "logits":
            change = (x - x0).abs().mean().item()
        else:
            change = ((x - x0).norm(dim=-1) / x0.norm(dim=-1)).mean().item()
        result[name] = (rms, change)
    return result


def coord_check(name, args):
    """{width: {tensor name: (rms, change)}}, each the mean over args.seeds seeds."""
    module = SCRIPTS[name]
    table = {}
    for width in args.widths:
        runs = [measure(module, width, args, seed) for seed in range(args.seeds)]
        table[width] = {key: tuple(float(np.mean([r[key][i] for r in runs])) for i in range(2)) for key in runs[0]}
    return table


def spread(table, key, index):
    """max / min over widths of one measure: 1 is perfectly flat."""
    values = [table[width][key][index] for width in table]
    return max(values) / min(values)


def plot(name, optimizer, table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    widths = sorted(table)
    keys = list(table[widths[0]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    size_title = "rms (logits, hidden states)"
    if name == "ngpt2":
        size_title = "rms (hidden states are unit vectors: 1/sqrt(width) by design)"
    for ax, index, title in [(axes[0], 0, size_title),
                             (axes[1], 1, "change since init (logits: mean |dz|; hidden: relative)")]:
        for key in keys:
            ax.plot(widths, [table[w][key][index] for w in widths], "o-", label=key)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (n_embd)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"coordinate check: train_{name}.py, {optimizer} (flat across width = muP transfers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    from tqdm import tqdm
    for name in tqdm(args.scripts, desc="models"):
        table = coord_check(name, args)
        print(f"\ntrain_{name}.py: {args.steps} {args.optimizer} steps at lr {args.lr:g}, base width "
              f"{args.base_width}, mean of {args.seeds} seeds")
        for width, row in table.items():
            print(f"model:{name} optimizer:{args.optimizer} width:{width} " + " ".join(
                f"{key}_rms:{rms:.4f} {key}_change:{change:.4f}" for key, (rms, change) in row.items()))
        last = f"block{args.n_layer - 1}"
        print(f"model:{name} optimizer:{args.optimizer} spread_logits_change:{spread(table, 'logits', 1):.2f} "
              f"spread_logits_rms:{spread(table, 'logits', 0):.2f} spread_{last}_change:{spread(table, last, 1):.2f} "
              f"(max/min over widths; 1 = flat)")
        if args.out_dir:
            os.makedirs(args.out_dir, exist_ok=True)
            suffix = "" if args.optimizer == "adamw" else f"_{args.optimizer}"
            path = os.path.join(args.out_dir, f"coord_check_{name}{suffix}.png")
            plot(name, args.optimizer, table, path)
            print(f"plot: {path}")


if __name__ == "__main__":
    main()
