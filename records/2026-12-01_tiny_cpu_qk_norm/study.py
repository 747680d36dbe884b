#!/usr/bin/env python3
"""The QK-norm study: four forms of --qk_norm on the tiny corpus at widths 64 and 128, each at its own best lr.

OMP_NUM_THREADS=1 python records/2026-12-01_tiny_cpu_qk_norm/study.py --out=OUT

Per variant and width: a factor-2 lr sweep at seed 0 (tune/sweep.py), extended by one lr past an edge that holds
the best (twice at most), then seeds 1 and 2 at the best lr. Every run saves its final checkpoint, from which the
gains and the attention logit scale are read. Writes OUT/table.md; a stopped study continues where it left off.
It needs train_gpt2.py as of the study's commits (5b03edf, fad6d95): --qk_norm=2..4 exist only there (README.md).
"""
import argparse
import math
import os
import statistics
import subprocess
import sys

import torch
import torch.distributed.checkpoint as dcp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import train_gpt2  # noqa: E402

FLAGS = ["--input_bin=data/tiny/tiny_train_*.bin", "--input_val_bin=data/tiny/tiny_val_*.bin", "--vocab_size=2048",
         "--n_layer=4", "--sequence_length=128", "--batch_size=4", "--device_batch_size=4", "--num_iterations=150",
         "--warmup_iters=15", "--warmdown_iters=45", "--val_loss_every=25", "--val_tokens=4096",
         "--mup_base_width=128", "--save_every=150"]
NAMES = {0: "plain GPT-2, no QK-norm (reference)", 1: "(a) per-head gain", 2: "(b) per-channel gain",
         3: "(c) per-channel gain, scaler reparam",
         4: "(d) no gain, fixed scale (modded-nanogpt)"}
LRS = [1.2e-3, 2.4e-3, 4.8e-3, 9.6e-3]
SEEDS = [1, 2]
HEAD_DIM = 32


def sweep(out, variant, width, lrs, seed):
    """{lr: final val loss (nan if diverged)} of the runs, run by tune/sweep.py into out/q<variant>_w<width>_s<seed>."""
    folder = os.path.join(out, f"q{variant}_w{width}_s{seed}")
    subprocess.run([sys.executable, os.path.join(ROOT, "tune", "sweep.py"), "--scripts", "gpt2", "--lrs",
                    *[f"{lr:g}" for lr in lrs], "--widths", str(width), f"--head_dim={HEAD_DIM}", f"--out={folder}",
                    f"--qk_norm={variant}", f"--seed={seed}"] + FLAGS, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    losses = {}
    with open(os.path.join(folder, "results.tsv")) as f:
        for line in f.read().splitlines()[1:]:
            _, _, lr, status, loss = line.split("\t")
            losses[float(lr)] = float(loss) if status == "ok" else math.nan
    return folder, losses


def best_lr(out, variant, width):
    lrs = list(LRS)
    for _ in range(2):  # extend past an edge holding the best, at most twice
        _, losses = sweep(out, variant, width, lrs, 0)
        best = min((v, lr) for lr, v in losses.items() if math.isfinite(v))[1]
        if best == lrs[0]:
            lrs.insert(0, lrs[0] / 2)
        elif best == lrs[-1]:
            lrs.append(lrs[-1] * 2)
        else:
            break
    folder, losses = sweep(out, variant, width, lrs, 0)
    return min((v, lr) for lr, v in losses.items() if math.isfinite(v))[1], losses


def final_gains(folder, variant, width, lr):
    """(gains of every layer, logit scale per head) from the run's final checkpoint; the logit scale is
    sqrt(head_dim) * mean over channels of gain^2 (the logit of q and k at cosine 1 with equal weight per channel)."""
    hp = train_gpt2.parse_args(FLAGS + [f"--n_embd={width}", f"--n_head={width // HEAD_DIM}", f"--qk_norm={variant}"])
    model = train_gpt2.GPT(hp)
    name = f"gpt2_w{width}_lr{lr:g}"
    ckpt = os.path.join(folder, f"{name}_step{hp.num_iterations:06d}.dcp")
    if variant == 0:  # no bound: q and k are not normalized
        return None, None
    if variant == 4:
        return None, torch.full((hp.n_layer * hp.n_head,), 0.12 * 128)
    state = {k: v for k, v in model.state_dict().items() if k.endswith("qk_gain")}
    dcp.load(dict(model=state), checkpoint_id=ckpt, no_dist=True)
    for k, v in state.items():
        model.get_parameter(k).data.copy_(v)
    gains = torch.stack([b.attn.gains().detach() for b in model.blocks])  # (layer, head, 1 or head_dim)
    return gains, (gains.pow(2).mean(-1) * math.sqrt(HEAD_DIM)).flatten()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="1,2,3,4")
    ap.add_argument("--widths", default="64,128")
    args = ap.parse_args()
    rows = ["| variant | width | lrs swept (seed 0 final val loss) | best lr | final val loss, mean ± sd (seeds 0-2) "
            "| final gains: min / mean / max | logit scale per head: min / mean / max |",
            "|---|---|---|---|---|---|---|"]
    for variant in map(int, args.variants.split(",")):
        for width in map(int, args.widths.split(",")):
            lr, losses = best_lr(args.out, variant, width)
            finals = [losses[lr]]
            for seed in SEEDS:
                finals.append(sweep(args.out, variant, width, [lr], seed)[1][lr])
            gains, logit = final_gains(os.path.join(args.out, f"q{variant}_w{width}_s0"), variant, width, lr)
            swept = ", ".join(f"{k:g}: {v:.4f}" for k, v in sorted(losses.items()))
            g = "n/a (none)" if gains is None else f"{gains.min():.3f} / {gains.mean():.3f} / {gains.max():.3f}"
            scale = "n/a (unbounded)"
            if logit is not None:
                scale = f"{logit.min():.2f} / {logit.mean():.2f} / {logit.max():.2f}"
            rows.append(f"| {NAMES[variant]} | {width} | {swept} | {lr:g} | {statistics.mean(finals):.4f} ± "
                        f"{statistics.stdev(finals):.4f} ({', '.join(f'{v:.4f}' for v in finals)}) | {g} | {scale} |")
            print(rows[-1], flush=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
