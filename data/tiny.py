"""Offline tiny corpus: Python's own documentation (pydoc_data.topics, sorted by key, one document per topic),
tokenized into tiny_val_000000.bin and tiny_train_000001.bin in about a second.

    python -m data.tiny                       # data/tiny/: a 2048-token SentencePiece BPE trained on the same text
    python -m data.tiny --tokenizer gpt2      # data/tiny_gpt2/: GPT-2 BPE (tiktoken's vocabulary, TIKTOKEN_CACHE_DIR)

The trained tokenizer is saved beside the shards (tiny_spm2048.model). The first 10% of the tokens (at least 16384)
are the validation shard. The output is byte-identical from run to run.
"""
import argparse
import os
import sys

import numpy as np


from data.encoders import MIN_SPM_VOCAB, Tokenizer, train_spm
from data.shards import version_for_vocab, write_shard

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_VAL_TOKENS = 16384


def tiny_texts(max_chars=None):
    """Python's bundled topic docs, sorted by key; max_chars keeps only the first characters."""
    from pydoc_data.topics import topics
    texts = [topics[key] for key in sorted(topics)]
    if max_chars is None:
        return texts
    kept = []
    for text in texts:
        left = max_chars - sum(map(len, kept))
        if left <= 0:
            break
        kept.append(text[:left])
    return kept


def build(out_dir, tokenizer="spm", vocab=2048, max_chars=None):
    """Writes the tiny shards (and the trained tokenizer) into out_dir; returns (val path, train path, Tokenizer)."""
    texts = tiny_texts(max_chars)
    if tokenizer == "spm":
        tokenizer = "spm:" + train_spm(texts, vocab, os.path.join(out_dir, f"tiny_spm{vocab}.model"))
    tok = Tokenizer(tokenizer)
    tokens = tok.encode_docs(texts, dtype=np.uint32)
    n_val = max(MIN_VAL_TOKENS, int(round(tokens.size * 0.1)))
    n_val = min(n_val, tokens.size // 2)  # only a --max_chars subset is this small
    version = version_for_vocab(tok.vocab_size)
    val = write_shard(os.path.join(out_dir, "tiny_val_000000.bin"), tokens[:n_val], tok.vocab_size, version)
    train = write_shard(os.path.join(out_dir, "tiny_train_000001.bin"), tokens[n_val:], tok.vocab_size, version)
    print(f"tiny corpus: {len(texts)} docs, {sum(map(len, texts)):,} chars -> {tokens.size:,} tokens "
          f"({n_val:,} val + {tokens.size - n_val:,} train), tokenizer {tok.name}, vocab size {tok.vocab_size}")
    print(f"train with: --input_bin='{out_dir}/tiny_train_*.bin' --input_val_bin='{out_dir}/tiny_val_*.bin' "
          f"--vocab_size={tok.vocab_size}")
    return val, train, tok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="spm",
                   help="spm (train a SentencePiece BPE on the text, default), gpt2, llama or spm:PATH")
    p.add_argument("--vocab", type=int, default=2048, help="vocabulary of the trained SentencePiece BPE")
    p.add_argument("--out_dir", default=None, help="default data/tiny, or data/tiny_<tokenizer> for the others")
    p.add_argument("--max_chars", type=int, default=None, help="use only the first N characters (quick tests)")
    args = p.parse_args(argv)
    if args.vocab < MIN_SPM_VOCAB:
        sys.exit(f"error: --vocab={args.vocab} is too small for a byte-fallback BPE; use at least {MIN_SPM_VOCAB}")
    out_dir = args.out_dir
    if out_dir is None:
        tag = args.tokenizer
        if tag.startswith("spm:"):
            tag = "spm_" + os.path.splitext(os.path.basename(tag[4:]))[0]
        out_dir = os.path.relpath(os.path.join(HERE, "tiny" if tag == "spm" else f"tiny_{tag}"))
    build(out_dir, args.tokenizer, args.vocab, args.max_chars)


if __name__ == "__main__":
    main()
