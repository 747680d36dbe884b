"""Tokenize a raw-text corpus into token shards: FineWeb or FineWeb-Edu (sample-10BT) or OpenWebText, streamed
from the Hugging Face Hub one parquet file at a time, or local files.

    python -m data.prepare --dataset fineweb                             # GPT-2 BPE -> data/fineweb10B/
    python -m data.prepare --dataset fineweb-edu --tokenizer llama       # -> data/finewebedu10B_llama/
    python -m data.prepare --dataset openwebtext --train_tokenizer 8192  # -> data/openwebtext_spm8192/
    python -m data.prepare --input 'corpus/*.jsonl' --out_dir data/mycorpus

Shards hold exactly --shard_size tokens (the last may be shorter); the first is validation. Worker processes
tokenize in parallel and their results are taken in document order, so the shards do not depend on --workers.
"""
import argparse
import glob
import gzip
import itertools
import json
import os
import sys
import time
from collections import deque
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm


from data.encoders import MIN_SPM_VOCAB, Tokenizer, train_spm
from data.shards import DTYPES, MAX_VOCAB, first_line, version_for_vocab, write_shard

HERE = os.path.dirname(os.path.abspath(__file__))
# name -> (Hub dataset repo, folder of its parquet files, shard prefix, output folder)
DATASETS = {
    "fineweb": ("HuggingFaceFW/fineweb", "sample/10BT/", "fineweb", "fineweb10B"),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample/10BT/", "finewebedu", "finewebedu10B"),
    "openwebtext": ("Skylion007/openwebtext", "plain_text/", "openwebtext", "openwebtext"),
}
TEXT_FILES = (".parquet", ".jsonl", ".jsonl.gz", ".txt")


def read_texts(path):
    """The documents of one file: the "text" field of parquet or JSON-lines rows, or a whole .txt file."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            sys.exit(f"error: {path} has no 'text' column (it has {pf.schema_arrow.names})")
        for batch in pf.iter_batches(batch_size=1024, columns=["text"]):
            yield from filter(None, batch.column(0).to_pylist())
    elif path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            yield f.read()
    else:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    text = json.loads(line)["text"] if line.strip() else ""
                except (ValueError, KeyError, TypeError):
                    sys.exit(f"error: {path}:{lineno}: expected a JSON object with a \"text\" field on each line")
                if text:
                    yield text


def local_files(patterns):
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "**", "*")
        found = sorted(p for p in glob.glob(pattern, recursive=True) if p.endswith(TEXT_FILES))
        if not found:
            sys.exit(f"error: --input {pattern!r} matches no {', '.join(TEXT_FILES)} files")
        files += found
    return files


def hub_error(what, repo, folder, exc):
    return (f"error: could not {what} ({first_line(exc)}); check the network (and HF_ENDPOINT if set) and rerun, "
            f"or fetch the files elsewhere (hf download {repo} --repo-type dataset --include '{folder}*' "
            f"--local-dir DIR) and pass --input 'DIR/{folder}*'")


def hub_files(repo, folder, revision, endpoint):
    """The dataset's parquet files under folder, sorted, and the revision holding them (datasets that the Hub
    stores as a loading script have them on the refs/convert/parquet branch)."""
    from huggingface_hub import HfApi
    for rev in [revision] if revision else [None, "refs/convert/parquet"]:
        try:
            names = HfApi(endpoint=endpoint).list_repo_files(repo, repo_type="dataset", revision=rev)
        except Exception as exc:
            sys.exit(hub_error(f"list the files of dataset {repo}", repo, folder, exc))
        files = sorted(n for n in names if n.startswith(folder) and n.endswith(".parquet"))
        if files:
            return files, rev
    sys.exit(f"error: dataset {repo} has no parquet files under {folder}; pass local files with --input")


def hub_documents(repo, folder, files, revision, raw_dir, keep_raw, endpoint):
    """Downloads the parquet files one at a time and yields their documents; a file read to the end is deleted."""
    from huggingface_hub import hf_hub_download
    for name in files:
        try:
            path = hf_hub_download(repo, name, repo_type="dataset", revision=revision, local_dir=raw_dir,
                                   endpoint=endpoint)
        except Exception as exc:
            sys.exit(hub_error(f"download {name} of dataset {repo}", repo, folder, exc))
        yield from read_texts(path)
        if not keep_raw:
            os.remove(path)


def _init_worker(spec, dtype):
    global _tok, _dtype
    _tok, _dtype = Tokenizer(spec), dtype


def _encode(texts):
    return _tok.encode_docs(texts, _dtype)


def encode(documents, spec, dtype, workers, docs_per_task):
    """Token arrays of consecutive batches of documents, in document order whatever the number of workers.
    At most 4 batches per worker are in flight, so memory stays bounded however large the corpus."""
    documents = iter(documents)
    batches = iter(lambda: list(itertools.islice(documents, docs_per_task)), [])
    with Pool(workers, _init_worker, (spec, dtype)) as pool:
        pending = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode, (batch,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fineweb", help="corpus on the Hub")
    p.add_argument("--input", action="append", metavar="GLOB",
                   help="local .parquet/.jsonl(.gz)/.txt files or folders instead of the Hub (repeatable)")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), llama or spm:PATH")
    p.add_argument("--train_tokenizer", type=int, metavar="VOCAB",
                   help="train a SentencePiece BPE of this size on the start of the corpus and use it")
    p.add_argument("--tokenizer_sample_chars", type=int, default=20_000_000,
                   help="characters --train_tokenizer learns from (default 20M)")
    p.add_argument("--shard_size", type=int, default=100_000_000, help="tokens per shard (default 1e8)")
    p.add_argument("--max_tokens", type=int, help="stop after this many tokens")
    p.add_argument("--shard_version", type=int, choices=(1, 2), help="1 (uint16) or 2 (uint32); default: from "
                   "the vocabulary size")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="tokenizer processes (default: CPU count - 1)")
    p.add_argument("--docs_per_task", type=int, default=64, help="documents per worker task")
    p.add_argument("--out_dir", help="output folder (default data/<dataset folder>[_<tokenizer>])")
    p.add_argument("--prefix", help="shard name prefix (default from --dataset, or the --out_dir name)")
    p.add_argument("--raw_dir", help="where parquet files are downloaded (default data/raw/<dataset>)")
    p.add_argument("--keep_raw", action="store_true", help="keep the downloaded parquet files")
    p.add_argument("--revision", help="Hub revision of the dataset")
    p.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.input and not args.out_dir:
        sys.exit("error: with --input, also give --out_dir, so local text does not land in a Hub dataset's folder")
    if args.workers < 1 or args.docs_per_task < 1:
        sys.exit("error: --workers and --docs_per_task must be at least 1")
    if not 0 < args.shard_size < 1 << 31:  # the header stores the count as an int32
        sys.exit(f"error: --shard_size={args.shard_size} must lie in [1, 2**31)")
    if args.max_tokens is not None and args.max_tokens < 1:
        sys.exit(f"error: --max_tokens={args.max_tokens} must be positive")
    if args.train_tokenizer is not None and args.train_tokenizer < MIN_SPM_VOCAB:
        sys.exit(f"error: --train_tokenizer={args.train_tokenizer} is too small for a byte-fallback BPE; "
                 f"use at least {MIN_SPM_VOCAB}")
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    repo, folder, prefix, out_name = DATASETS[args.dataset]
    if args.input:
        prefix = os.path.basename(os.path.normpath(args.out_dir))
    prefix = args.prefix or prefix
    if args.train_tokenizer:
        tag = f"spm{args.train_tokenizer}"
        vocab = args.train_tokenizer
    else:
        tok = Tokenizer(args.tokenizer, args.endpoint)  # fails here, before any download
        tag = args.tokenizer
        if tag.startswith("spm:"):
            tag = "spm_" + os.path.splitext(os.path.basename(tag[4:]))[0]
        vocab = tok.vocab_size
    if args.shard_version == 1 and vocab > MAX_VOCAB[1]:
        sys.exit(f"error: a vocabulary of {vocab} tokens does not fit the 16-bit tokens of --shard_version=1; "
                 f"use 2 or leave it unset")
    out_dir = args.out_dir or os.path.relpath(os.path.join(HERE, out_name if tag == "gpt2" else f"{out_name}_{tag}"))

    if args.input:
        files = local_files(args.input)
        source = f"{len(files)} local file(s)"

        def documents():
            return (text for path in files for text in read_texts(path))
    else:
        files, revision = hub_files(repo, folder, args.revision, args.endpoint)
        source = f"{len(files)} parquet file(s) of {repo}"
        raw_dir = args.raw_dir or os.path.join(HERE, "raw", args.dataset)

        def documents():
            return hub_documents(repo, folder, files, revision, raw_dir, args.keep_raw, args.endpoint)
    print(f"source: {source}")

    if args.train_tokenizer:
        sample = []
        left = args.tokenizer_sample_chars
        for text in documents():
            sample.append(text[:left])
            left -= len(sample[-1])
            if left <= 0:
                break
        model = os.path.join(out_dir, f"{prefix}_spm{args.train_tokenizer}.model")
        train_spm(sample, args.train_tokenizer, model)
        print(f"trained a {args.train_tokenizer}-token SentencePiece BPE on {sum(map(len, sample)):,} characters: "
              f"{model}")
        tok = Tokenizer("spm:" + model)
        del sample

    version = args.shard_version or version_for_vocab(tok.vocab_size)
    print(f"tokenizer: {tok.name}, vocab size {tok.vocab_size}, shard version {version}, {args.workers} worker(s), "
          f"out: {out_dir}")
    buf = np.empty(args.shard_size, dtype=DTYPES[version])
    fill = 0
    total = 0
    paths = []

    def write(n):
        split = "val" if not paths else "train"
        path = os.path.join(out_dir, f"{prefix}_{split}_{len(paths):06d}.bin")
        paths.append(write_shard(path, buf[:n], tok.vocab_size, version))

    bar = tqdm(total=args.max_tokens, desc=f"tokenizing {prefix}", unit="tok", unit_scale=True,
               disable=args.no_progress)
    stream = encode(documents(), tok.spec, DTYPES[version], args.workers, args.docs_per_task)
    for tokens in stream:
        if args.max_tokens is not None:
            tokens = tokens[:args.max_tokens - total]
        total += tokens.size
        bar.update(tokens.size)
        while tokens.size:  # cut the stream into shards of exactly shard_size tokens
            n = min(tokens.size, args.shard_size - fill)
            buf[fill:fill + n] = tokens[:n]
            fill += n
            tokens = tokens[n:]
            if fill == args.shard_size:
                write(fill)
                fill = 0
        if total == args.max_tokens:
            break
    stream.close()  # stops the workers when --max_tokens ends the run early
    bar.close()
    if fill:
        write(fill)
    if not paths:
        sys.exit(f"error: no documents found in {source}")
    stale = sorted(set(glob.glob(os.path.join(out_dir, f"{prefix}_*_*.bin"))) - set(paths))
    if stale:
        print(f"note: {len(stale)} shard(s) of an earlier run remain in {out_dir}, e.g. {stale[0]}; delete them "
              f"if they do not belong")
    print(f"wrote {len(paths)} shard(s), {total:,} tokens, in {time.time() - t0:.1f}s")
    print(f"train with: --input_bin='{out_dir}/{prefix}_train_*.bin' --input_val_bin='{out_dir}/{prefix}_val_*.bin' "
          f"--vocab_size={tok.vocab_size}")
    return paths


if __name__ == "__main__":
    main()
