"""Validation loss, perplexity and bits per byte at several context lengths, for one or more checkpoints.

    python -m evals.extrapolate logs/ab/gpt2_s0_step004768.dcp logs/ab/ngpt2_s0_step004768.dcp \
        --lengths 256,512,1024,2048,4096

Every length reads the same validation tokens (default: the checkpoint's val_tokens from its input_val_bin),
cut into windows of that many tokens; a tail shorter than a window is left out. At the training length this is
exactly the training script's val loss. One line `ctx:L val_loss:X ppl:Y bpb:Z` per length per checkpoint, an
`eval:extrapolate` line per length appended to the run's log, and a plot of loss vs context length, all
checkpoints on one figure (default img/extrapolate.png).

Bits per byte = loss_nats * n_tokens / (n_bytes * ln 2), n_bytes the UTF-8 length of the decoded predicted
tokens (document-start tokens decode to no text), so runs with different tokenizers compare.
"""
import argparse
import math
import os
import sys

import torch
from tqdm import tqdm

from evals.common import ROOT, Loaded, add_args, load_tokenizer


def val_loss(loaded, tokens, ctx, batch_tokens):
    """Mean next-token loss over the windows of ctx tokens that fit in tokens[:-1]; (loss, tokens scored)."""
    windows = (len(tokens) - 1) // ctx
    per_batch = max(1, batch_tokens // ctx)
    total = 0.0
    for start in tqdm(range(0, windows, per_batch), desc=f"ctx {ctx}", unit="batch", leave=False):
        rows = min(per_batch, windows - start)
        x = tokens[start * ctx:(start + rows) * ctx].view(rows, ctx).to(loaded.device)
        y = tokens[start * ctx + 1:(start + rows) * ctx + 1].view(rows, ctx).to(loaded.device)
        with torch.no_grad(), loaded.autocast():
            total += loaded.model(x, y).float().item() * rows  # the training script's own loss
    return total / windows, windows * ctx


def bits_per_byte(loss, n_tokens, n_bytes):
    return loss * n_tokens / (n_bytes * math.log(2))


def text_bytes(tok, targets):
    """UTF-8 bytes of the decoded tokens; document-start tokens separate documents and hold no text."""
    ids = [t for t in targets.tolist() if t != tok.doc_start]
    return len(tok.decode(ids).encode("utf-8"))


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, train_len, rows in results:
        line, = ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=label)
        ax.axvline(train_len, color=line.get_color(), linestyle=":", alpha=0.5)
    ax.set_xscale("log", base=2)
    ctxs = sorted({r[0] for _, _, rows in results for r in rows})
    ax.set_xticks(ctxs, [str(c) for c in ctxs])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens; dotted: training length)")
    ax.set_ylabel("val loss")
    ax.set_title("length extrapolation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories (<run_id>_step<N>.dcp) of either script")
    p.add_argument("--lengths", default="", help="comma-separated context lengths (default: the training length "
                   "times 1/2, 1, 2, 4, 8)")
    p.add_argument("--val_bin", default="", help="glob of validation shards (default: the checkpoint's input_val_bin)")
    p.add_argument("--val_tokens", type=int, default=0, help="tokens to evaluate (default: the checkpoint's)")
    p.add_argument("--batch_tokens", type=int, default=0, help="tokens per forward pass (default: the checkpoint's "
                   "device_batch_size * sequence_length, so the training length runs the training script's batches)")
    p.add_argument("--plot", default=os.path.join(ROOT, "img", "extrapolate.png"), help="figure path ('' for none)")
    add_args(p)
    args = p.parse_args(argv)
    try:
        lengths = [int(s) for s in args.lengths.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"error: --lengths expects comma-separated integers, got {args.lengths!r}")
    if any(n < 1 for n in lengths) or args.val_tokens < 0 or args.batch_tokens < 0:
        sys.exit("error: --lengths must be positive, --val_tokens and --batch_tokens >= 0")
    results = []
    for path in args.checkpoints:
        loaded = Loaded(path, args.device)
        tok = load_tokenizer(args.tokenizer, loaded)
        train_len = loaded.hp.sequence_length
        count = args.val_tokens or loaded.hp.val_tokens
        ctxs = lengths or [train_len // 2, train_len, 2 * train_len, 4 * train_len, 8 * train_len]
        too_long = [n for n in ctxs if n > count]
        if too_long:
            sys.exit(f"error: context lengths {too_long} exceed the {count} validation tokens; raise --val_tokens")
        tokens = loaded.module.val_tokens(args.val_bin or loaded.hp.input_val_bin, count, loaded.hp.vocab_size)
        print(f"{path}: {loaded.ckpt['script']} step:{loaded.step} trained at ctx:{train_len}, {count} val tokens")
        rows = []
        for ctx in ctxs:
            batch_tokens = args.batch_tokens or loaded.hp.device_batch_size * train_len
            loss, n_tokens = val_loss(loaded, tokens, ctx, batch_tokens)
            bpb = bits_per_byte(loss, n_tokens, text_bytes(tok, tokens[1:n_tokens + 1]))
            print(f"ctx:{ctx} val_loss:{loss:.4f} ppl:{math.exp(loss):.2f} bpb:{bpb:.4f}")
            rows.append((ctx, loss, bpb))
        loaded.report("extrapolate", [[("ctx", ctx), ("val_loss", f"{loss:.4f}"), ("ppl", f"{math.exp(loss):.2f}"),
                                       ("bpb", f"{bpb:.4f}")] for ctx, loss, bpb in rows])
        label = f"{os.path.splitext(loaded.ckpt['script'])[0]} {loaded.name} (step {loaded.step})"
        results.append((label, train_len, rows))
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
