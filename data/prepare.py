"""Tokenize a raw-text corpus into token shards: FineWeb (sample-10BT), FineWeb-Edu (sample-10BT) or
OpenWebText, streamed from the Hugging Face Hub as parquet files (or read from local files).

    python data/prepare.py --dataset fineweb --tokenizer gpt2            # -> data/fineweb10B/
    python data/prepare.py --dataset fineweb-edu --tokenizer llama       # -> data/finewebedu10B_llama/
    python data/prepare.py --dataset openwebtext --train_tokenizer 8192  # -> data/openwebtext_spm8192/
    python data/prepare.py --input 'corpus/*.jsonl' --prefix mycorpus --out_dir data/mycorpus

Each document is preceded by the tokenizer's document token (gpt2: <|endoftext|> = 50256;
SentencePiece: its BOS id). Tokens are cut into shards of exactly --shard_size tokens (the last one
may be shorter); the first shard is validation (<prefix>_val_000000.bin), the rest training
(<prefix>_train_000001.bin, ...). Worker processes tokenize in parallel; results come back in
document order, so the shards do not depend on --workers.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import sys
import time
from collections import deque
from multiprocessing import Pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import encoders  # noqa: E402
from encoders import one_line  # noqa: E402
from shards import VERSION_DTYPE, DataError, Progress, ShardWriter, show_path, version_for_vocab  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (hub dataset repo, folder of parquet files in it, shard prefix, output folder stem,
#          a revision to try when the main branch has no parquet files)
DATASETS = {
    "fineweb": ("HuggingFaceFW/fineweb", "sample/10BT/", "fineweb", "fineweb10B", None),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample/10BT/", "finewebedu", "finewebedu10B", None),
    "openwebtext": ("Skylion007/openwebtext", "plain_text/", "openwebtext", "openwebtext",
                    "refs/convert/parquet"),
}
TEXT_EXTENSIONS = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".txt")


# ----------------------------------------------------------------------------- reading documents

def read_texts(path: str):
    """Yields the documents of one local file: parquet or jsonl(.gz) rows' "text" field, or a
    whole .txt file as one document."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"reading {path} needs pyarrow: pip install -r data/requirements.txt") from None
        try:
            pf = pq.ParquetFile(path)
            if "text" not in pf.schema_arrow.names:
                raise DataError(f"{path} has no 'text' column (columns: {pf.schema_arrow.names})")
            for batch in pf.iter_batches(batch_size=1024, columns=["text"]):
                for text in batch.column(0).to_pylist():
                    if text:
                        yield text
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"could not read parquet file {path} ({one_line(exc)}); delete it to "
                            f"download it again") from None
    elif path.endswith((".jsonl", ".jsonl.gz", ".json")):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"{path}:{lineno}: expected a JSON object with a \"text\" field "
                                    f"per line") from None
                if text:
                    yield text
    elif path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text:
            yield text
    else:
        raise DataError(f"unsupported input file {path}: expected one of {', '.join(TEXT_EXTENSIONS)}")


def local_files(patterns) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern, recursive=True))
        if os.path.isdir(pattern):
            found = sorted(p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                           if p.endswith(TEXT_EXTENSIONS))
        if not found:
            raise DataError(f"--input {pattern!r} matches no files")
        files.extend(found)
    return files


def local_documents(files):
    for path in files:
        yield from read_texts(path)


def _hub_error(what: str, repo: str, prefix: str, exc: BaseException) -> DataError:
    return DataError(
        f"could not {what} on the Hugging Face Hub ({one_line(exc)}): connect to the internet, or "
        f"download the dataset's parquet files elsewhere (hf download {repo} "
        f"--repo-type dataset --include '{prefix}*' --local-dir DIR) and pass --input 'DIR/{prefix}*'")


def hub_parquet_files(repo: str, prefix: str, fallback_revision: str | None = None,
                      revision: str | None = None, endpoint: str | None = None) -> tuple[list[str], str | None]:
    """Sorted parquet paths under prefix in a Hub dataset repo, and the revision they are on."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise DataError("streaming from the Hub needs huggingface_hub: pip install -r data/requirements.txt") from None
    revisions = [revision] if revision else [None] + ([fallback_revision] if fallback_revision else [])
    for rev in revisions:
        try:
            names = HfApi(endpoint=endpoint).list_repo_files(repo, repo_type="dataset", revision=rev)
        except Exception as exc:
            if rev is not None and rev == fallback_revision:
                break
            raise _hub_error(f"list the files of dataset {repo}", repo, prefix, exc) from None
        files = sorted(n for n in names if n.startswith(prefix) and n.endswith(".parquet"))
        if files:
            return files, rev
    raise DataError(f"dataset {repo} on the Hub has no parquet files under {prefix!r}; pass local "
                    f"files with --input")


def hub_documents(repo: str, files: list[str], revision: str | None, raw_dir: str,
                  keep_raw: bool = False, endpoint: str | None = None):
    """Downloads the parquet files one at a time into raw_dir and yields their documents; a file is
    deleted after it has been read to the end unless keep_raw."""
    from huggingface_hub import hf_hub_download
    for name in files:
        try:
            path = hf_hub_download(repo, name, repo_type="dataset", revision=revision,
                                   local_dir=raw_dir, endpoint=endpoint)
        except OSError as exc:
            if getattr(exc, "errno", None) == 28:
                raise DataError(f"disk full while downloading {name} into {raw_dir}: free space "
                                f"or pass --raw_dir elsewhere") from None
            raise _hub_error(f"download {name} from dataset {repo}", repo, os.path.dirname(name) + "/", exc) from None
        except Exception as exc:
            raise _hub_error(f"download {name} from dataset {repo}", repo, os.path.dirname(name) + "/", exc) from None
        yield from read_texts(path)
        if not keep_raw:
            try:
                os.remove(path)
            except OSError:
                pass


# ----------------------------------------------------------------------------- parallel encoding

_TOKENIZER = None
_DTYPE = None
_INIT_ERROR = None


def _init_worker(spec: str, dtype) -> None:
    global _TOKENIZER, _DTYPE, _INIT_ERROR
    try:
        _TOKENIZER = encoders.Tokenizer(spec)
    except DataError as exc:  # a SystemExit would kill the pool's worker: report it instead
        _INIT_ERROR = str(exc)
    _DTYPE = dtype


def _encode_batch(texts):
    if _INIT_ERROR is not None:
        raise RuntimeError(_INIT_ERROR)
    return _TOKENIZER.encode_docs(texts, _DTYPE)


def batched(iterable, n: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_stream(documents, spec: str, dtype, workers: int, docs_per_task: int = 64):
    """Yields one token array per batch of documents, in document order for any worker count.

    The documents are read in this process and at most 4 batches per worker are in flight, so
    memory stays bounded however large the corpus is.
    """
    batches = batched(documents, docs_per_task)
    if workers <= 1:
        tok = encoders.Tokenizer(spec)
        for batch in batches:
            yield tok.encode_docs(batch, dtype)
        return
    with Pool(workers, initializer=_init_worker, initargs=(spec, dtype)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) >= 4 * workers:
                yield _get(pending.popleft())
        while pending:
            yield _get(pending.popleft())


def _get(result):
    try:
        return result.get()
    except Exception as exc:
        raise DataError(f"a tokenizer worker failed ({one_line(exc)})") from None


def tokenize_to_shards(documents, spec: str, out_dir: str, prefix: str, shard_size: int,
                       max_tokens: int | None = None, workers: int = 1, version: int | None = None,
                       progress: bool = True, docs_per_task: int = 64) -> tuple[list[str], int]:
    """Tokenizes documents with tokenizer spec ('gpt2' or 'spm:PATH') into shards; returns
    (paths, total tokens)."""
    tok = encoders.Tokenizer(spec)
    writer = ShardWriter(out_dir, prefix, shard_size, tok.vocab_size, version=version,
                         max_tokens=max_tokens)
    bar = Progress(total=max_tokens, desc=f"tokenizing {prefix}", unit="tok", unit_scale=True,
                   disable=not progress)
    stream = encode_stream(documents, spec, VERSION_DTYPE[writer.version], workers, docs_per_task)
    try:
        for tokens in stream:
            bar.update(writer.add(tokens))
            if writer.done:
                break
    finally:
        stream.close()  # stops the worker pool when we leave early
        bar.close()
    return writer.close(), writer.total


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fineweb",
                   help="corpus streamed from the Hub (default fineweb)")
    p.add_argument("--input", action="append", default=None, metavar="GLOB",
                   help="read local .parquet/.jsonl(.gz)/.txt files instead of the Hub (repeatable)")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), llama or spm:PATH")
    p.add_argument("--train_tokenizer", type=int, default=None, metavar="VOCAB",
                   help="train a SentencePiece BPE of this size on a sample of the corpus and use it")
    p.add_argument("--tokenizer_sample_chars", type=int, default=20_000_000,
                   help="characters of the corpus --train_tokenizer learns from (default 20M)")
    p.add_argument("--shard_size", type=int, default=100_000_000, help="tokens per shard (default 1e8)")
    p.add_argument("--max_tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--shard_version", type=int, choices=(1, 2), default=None,
                   help="1 (uint16) or 2 (uint32); default: chosen from the vocabulary size")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="tokenizer processes (default: CPU count - 1)")
    p.add_argument("--docs_per_task", type=int, default=64, help="documents per worker task (default 64)")
    p.add_argument("--out_dir", default=None, help="output folder (default data/<dataset>[_<tokenizer>])")
    p.add_argument("--prefix", default=None, help="shard name prefix (default from --dataset)")
    p.add_argument("--raw_dir", default=None, help="where downloaded parquet files go (default data/raw/<dataset>)")
    p.add_argument("--keep_raw", action="store_true", help="keep downloaded parquet files")
    p.add_argument("--revision", default=None, help="Hub revision of the dataset")
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _tokenizer_tag(spec: str, train_vocab: int | None) -> str:
    if train_vocab:
        return f"spm{train_vocab}"
    if spec.startswith("spm:"):
        return "spm_" + os.path.splitext(os.path.basename(spec[4:]))[0]
    return spec


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    t0 = time.time()
    repo, hub_prefix, prefix, stem, fallback = DATASETS[args.dataset]
    if args.input and not args.out_dir:
        raise DataError("with --input, also give --out_dir (and optionally --prefix) so local text "
                        "does not land in a Hub dataset's folder")
    if args.input:
        prefix = os.path.basename(os.path.normpath(args.out_dir))
    prefix = args.prefix or prefix
    tag = _tokenizer_tag(args.tokenizer, args.train_tokenizer)
    out_dir = args.out_dir or os.path.join(HERE, stem if tag == "gpt2" else f"{stem}_{tag}")
    if args.workers < 1 or args.docs_per_task < 1:
        raise DataError("--workers and --docs_per_task must be at least 1")

    # Check the tokenizer before any download.
    if args.train_tokenizer is None:
        spec = encoders.resolve_tokenizer_spec(args.tokenizer, args.endpoint)
        vocab = encoders.Tokenizer(spec).vocab_size
        if args.shard_version is not None:
            from shards import check_vocab_fits
            check_vocab_fits(vocab, args.shard_version)

    if args.input:
        files = local_files(args.input)
        source = f"{len(files)} local file(s)"

        def documents():
            return local_documents(files)
    else:
        raw_dir = args.raw_dir or os.path.join(HERE, "raw", args.dataset)
        files, revision = hub_parquet_files(repo, hub_prefix, fallback, args.revision, args.endpoint)
        source = f"{len(files)} parquet file(s) of {repo}"

        def documents():
            return hub_documents(repo, files, revision, raw_dir, args.keep_raw, args.endpoint)
    print(f"source: {source}")

    if args.train_tokenizer is not None:
        model_path = os.path.join(out_dir, f"{prefix}_spm{args.train_tokenizer}.model")
        sample, chars = [], 0
        docs = documents()
        for text in docs:
            sample.append(text[: args.tokenizer_sample_chars - chars])
            chars += len(sample[-1])
            if chars >= args.tokenizer_sample_chars:
                break
        docs.close()
        print(f"training a {args.train_tokenizer}-token SentencePiece BPE on {chars:,} characters")
        encoders.train_spm(sample, args.train_tokenizer, model_path)
        del sample
        spec = "spm:" + os.path.abspath(model_path)
        print(f"tokenizer saved to {show_path(model_path)}")

    tok = encoders.Tokenizer(spec)
    version = args.shard_version or version_for_vocab(tok.vocab_size)
    print(f"tokenizer: {tok.name}, vocab size {tok.vocab_size}, shard version {version}, "
          f"{args.workers} worker(s), out: {show_path(out_dir)}")
    paths, total = tokenize_to_shards(documents(), spec, out_dir, prefix, args.shard_size,
                                      args.max_tokens, args.workers, version, not args.no_progress,
                                      args.docs_per_task)
    if not paths:
        raise DataError(f"no documents found in {source}")
    stale = [p for p in glob.glob(os.path.join(out_dir, f"{prefix}_*_*.bin"))
             if os.path.abspath(p) not in {os.path.abspath(q) for q in paths}]
    print(f"wrote {len(paths)} shard(s), {total:,} tokens, in {time.time() - t0:.1f}s to "
          f"{show_path(out_dir)}")
    if stale:
        print(f"note: {len(stale)} older shard(s) from a previous run remain in {show_path(out_dir)}, "
              f"e.g. {os.path.basename(sorted(stale)[0])}; delete them if they do not belong")
    rel = show_path(out_dir)
    print(f"train with: --input_bin='{rel}/{prefix}_train_*.bin' --input_val_bin='{rel}/{prefix}_val_*.bin' "
          f"--vocab_size={tok.vocab_size}")
    return paths


if __name__ == "__main__":
    main()
