"""Token shards: the one writer and reader of the format every script in data/ produces.

A shard is a little-endian file: a header of 256 int32 (magic 20240520, version, token count), then the tokens,
uint16 each (version 1, vocabularies up to 65536) or uint32 (version 2); its size is exactly 1024 + count * 2
(or * 4) bytes. Names: <prefix>_val_000000.bin (validation), then <prefix>_train_000001.bin, ...
"""
import os
import sys

import numpy as np

MAGIC = 20240520
HEADER_BYTES = 256 * 4
DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
MAX_VOCAB = {1: 1 << 16, 2: 1 << 32}


def first_line(exc):
    """An exception as one short line (its first sentence), for one-line error messages."""
    text = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(exc).__name__}: {text[:160]}"


def version_for_vocab(vocab_size):
    return 1 if vocab_size <= MAX_VOCAB[1] else 2


def write_shard(path, tokens, vocab_size, version=None):
    """Writes tokens as one shard, atomically (a temporary file beside it, moved into place once whole)."""
    version = version or version_for_vocab(vocab_size)
    if vocab_size > MAX_VOCAB[version]:
        sys.exit(f"error: a vocabulary of {vocab_size} tokens does not fit the {8 * DTYPES[version].itemsize}-bit "
                 f"tokens of shard version {version}; leave the version unset to choose it from the vocabulary")
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        sys.exit(f"error: token ids for {path} must lie in [0, {vocab_size}), found {tokens.min()}..{tokens.max()}")
    header = np.zeros(256, dtype="<i4")
    header[:3] = MAGIC, version, tokens.size
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            tokens.astype(DTYPES[version], copy=False).tofile(f)
        os.replace(tmp, path)
    except OSError as exc:
        sys.exit(f"error: could not write {path} ({exc.strerror}); free some disk space or choose another folder")
    finally:
        if os.path.exists(tmp):  # interrupted: leave no half-written file (an older complete one stays)
            os.remove(tmp)
    return path


def shard_problem(path):
    """What is wrong with the shard at path (header and size check), or None when it is whole."""
    if not os.path.isfile(path):
        return f"{path} not found"
    size = os.path.getsize(path)
    header = np.fromfile(path, dtype="<i4", count=3) if size >= HEADER_BYTES else [0]
    if header[0] != MAGIC:
        return f"{path} is not a token shard (no {MAGIC} header)"
    version, count = int(header[1]), int(header[2])
    if version not in DTYPES:
        return f"{path} has unknown shard version {version} (1 = uint16, 2 = uint32)"
    expected = HEADER_BYTES + count * DTYPES[version].itemsize
    if size != expected:
        return f"{path} has {size:,} bytes, its header promises {expected:,} (truncated or damaged)"
    return None


def read_shard(path):
    """The tokens of one shard (uint16 or uint32), after the header and size check."""
    problem = shard_problem(path)
    if problem:
        sys.exit(f"error: {problem}; delete it and rebuild or download it again")
    _, version, count = np.fromfile(path, dtype="<i4", count=3)
    return np.fromfile(path, dtype=DTYPES[int(version)], count=int(count), offset=HEADER_BYTES)
