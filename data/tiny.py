"""Offline tiny corpus: Python's own documentation strings (pydoc_data.topics, sorted by key),
tokenized into data/tiny/tiny_val_000000.bin and data/tiny/tiny_train_000001.bin in seconds.

    python data/tiny.py                       # 2048-token SentencePiece BPE trained on the same text
    python data/tiny.py --tokenizer gpt2      # GPT-2 BPE (needs tiktoken's vocab: TIKTOKEN_CACHE_DIR)

The default tokenizer is saved beside the shards (data/tiny/tiny_spm2048.model). Each topic is one
document, preceded by BOS (SentencePiece) or <|endoftext|> (GPT-2). The first ~10% of the tokens (at
least 16384) form the validation shard. The output is byte-identical from run to run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shards import shard_name, show_path, version_for_vocab, write_shard  # noqa: E402
import encoders  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_VAL_TOKENS = 16384


def tiny_texts(max_chars: int | None = None) -> list[str]:
    """Python's bundled topic docs, sorted by key; max_chars keeps only the first characters."""
    from pydoc_data.topics import topics
    texts = [topics[key] for key in sorted(topics)]
    if max_chars is not None:
        kept, left = [], max_chars
        for text in texts:
            if left <= 0:
                break
            kept.append(text[:left])
            left -= len(kept[-1])
        texts = kept
    return texts


def build(out_dir: str | None = None, tokenizer: str = "spm", vocab: int = 2048,
          max_chars: int | None = None, val_fraction: float = 0.1, quiet: bool = False) -> dict:
    """Builds the tiny shards; returns a dict with paths, token counts and vocab size."""
    t0 = time.time()
    if out_dir is None:
        out_dir = os.path.join(HERE, "tiny" if tokenizer == "spm" else f"tiny_{tokenizer.replace(':', '_')}")
    texts = tiny_texts(max_chars)
    model_path = None
    if tokenizer == "spm":
        model_path = os.path.join(out_dir, f"tiny_spm{vocab}.model")
        encoders.train_spm(texts, vocab, model_path)
        tok = encoders.load_tokenizer("spm:" + model_path)
    else:
        tok = encoders.load_tokenizer(tokenizer)
    version = version_for_vocab(tok.vocab_size)
    tokens = tok.encode_docs(texts, dtype=np.uint32)
    total = int(tokens.size)
    n_val = max(MIN_VAL_TOKENS, int(round(total * val_fraction)))
    n_val = min(n_val, total // 2)  # only a --max_chars subset can be this small
    val_path = os.path.join(out_dir, shard_name("tiny", "val", 0))
    train_path = os.path.join(out_dir, shard_name("tiny", "train", 1))
    write_shard(val_path, tokens[:n_val], vocab_size=tok.vocab_size, version=version)
    write_shard(train_path, tokens[n_val:], vocab_size=tok.vocab_size, version=version)
    info = dict(out_dir=out_dir, val=val_path, train=train_path, model=model_path,
                tokens=total, val_tokens=n_val, train_tokens=total - n_val,
                vocab_size=tok.vocab_size, chars=sum(len(t) for t in texts), docs=len(texts),
                seconds=time.time() - t0)
    if not quiet:
        rel = show_path(out_dir)
        print(f"tiny corpus: {info['docs']} docs, {info['chars']:,} chars -> {total:,} tokens "
              f"({n_val:,} val + {total - n_val:,} train) in {info['seconds']:.1f}s")
        print(f"tokenizer: {tok.name}, vocab size {tok.vocab_size}"
              + (f", saved to {show_path(model_path)}" if model_path else ""))
        print(f"train with: --input_bin='{rel}/tiny_train_*.bin' --input_val_bin='{rel}/tiny_val_*.bin' "
              f"--vocab_size={tok.vocab_size}")
    return info


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="spm",
                   help="spm (train a SentencePiece BPE on the text, default), gpt2, llama or spm:PATH")
    p.add_argument("--vocab", type=int, default=2048, help="SentencePiece vocabulary size (default 2048)")
    p.add_argument("--out_dir", default=None,
                   help="output folder (default data/tiny for spm, data/tiny_<tokenizer> otherwise)")
    p.add_argument("--max_chars", type=int, default=None,
                   help="use only the first N characters of the text (quick tests)")
    args = p.parse_args(argv)
    return build(args.out_dir, args.tokenizer, args.vocab, args.max_chars)


if __name__ == "__main__":
    main()
