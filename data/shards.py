"""Token shard format shared by every script in data/ (the one writer and reader).

A shard is a little-endian file:
    header: 256 int32 -- header[0] = 20240520 (magic), header[1] = version, header[2] = token count
    tokens: version 1 -> uint16 each, version 2 -> uint32 each (vocabularies larger than 65536)
and its size is exactly 256*4 + count*itemsize bytes.

Names: <prefix>_val_000000.bin is the first shard (validation), then <prefix>_train_000001.bin, ...

Writes are atomic: the bytes go to a temporary file beside the target, then os.replace() moves it in
place, so an interrupted job never leaves a file with a valid header and missing tokens.

Errors are raised as DataError, a SystemExit carrying a one-line message: a script that does not
catch it prints the message and exits with status 1, with no traceback.
"""
from __future__ import annotations

import errno
import os
import sys
import time

import numpy as np

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VERSION_DTYPE = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
MAX_VOCAB = {1: 1 << 16, 2: 1 << 32}


class DataError(SystemExit):
    """A clear, one-line error for the user (exits with status 1 when uncaught)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------- naming

def shard_name(prefix: str, split: str, index: int) -> str:
    """shard_name("fineweb", "val", 0) -> "fineweb_val_000000.bin"."""
    if split not in ("train", "val"):
        raise DataError(f"shard split must be 'train' or 'val', got {split!r}")
    return f"{prefix}_{split}_{index:06d}.bin"


def show_path(path: str) -> str:
    """path relative to the current folder when it is below it, else absolute (for messages)."""
    rel = os.path.relpath(path)
    return os.path.abspath(path) if rel.startswith("..") else rel


# ----------------------------------------------------------------------------- versions

def version_for_vocab(vocab_size: int) -> int:
    """Smallest shard version whose token width holds every id below vocab_size."""
    vocab_size = int(vocab_size)
    if vocab_size <= 0:
        raise DataError(f"vocabulary size must be positive, got {vocab_size}")
    for version in (1, 2):
        if vocab_size <= MAX_VOCAB[version]:
            return version
    raise DataError(f"vocabulary of {vocab_size} tokens does not fit in 32-bit shard tokens")


def check_vocab_fits(vocab_size: int, version: int) -> None:
    """Fail clearly when a tokenizer's vocabulary is too big for the shard's token width."""
    if version not in VERSION_DTYPE:
        raise DataError(f"unknown shard version {version}: expected 1 (uint16) or 2 (uint32)")
    if int(vocab_size) > MAX_VOCAB[version]:
        bits = VERSION_DTYPE[version].itemsize * 8
        raise DataError(
            f"tokenizer vocabulary of {vocab_size} tokens exceeds the {bits}-bit token width of shard "
            f"version {version} (max {MAX_VOCAB[version]}): use version {version_for_vocab(vocab_size)} "
            f"(leave the version unset to choose it from the vocabulary size)")


# ----------------------------------------------------------------------------- atomic writes

def _open_for_write(path: str):
    """Opens a temporary file for writing (a seam that tests replace to simulate a full disk)."""
    return open(path, "wb")


def _tmp_path(path: str) -> str:
    return f"{path}.tmp.{os.getpid()}"


def _raise_os_error(exc: OSError, path: str, nbytes: int | None = None) -> None:
    where = os.path.dirname(os.path.abspath(path))
    if exc.errno == errno.ENOSPC:
        need = f" ({nbytes:,} bytes)" if nbytes else ""
        raise DataError(f"disk full while writing {path}{need}: free space in {where} or write "
                        f"elsewhere (e.g. --out_dir)") from None
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise DataError(f"cannot write {path}: {exc.strerror} (choose a writable folder)") from None
    raise DataError(f"could not write {path}: {exc.strerror or exc}") from None


def atomic_write_bytes(path: str, chunks) -> None:
    """Writes the byte chunks to path atomically (tmp file + fsync + os.replace)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = _tmp_path(path)
    nbytes = 0
    try:
        os.makedirs(folder, exist_ok=True)
        with _open_for_write(tmp) as f:
            for chunk in chunks:
                f.write(chunk)
                nbytes += len(memoryview(chunk).cast("B"))
            f.flush()
            try:
                os.fsync(f.fileno())
            except (OSError, ValueError, AttributeError):
                pass
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        _raise_os_error(exc, path, nbytes or None)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ----------------------------------------------------------------------------- writer

def write_shard(path, tokens, vocab_size: int | None = None, version: int | None = None) -> str:
    """Writes tokens (any integer array-like) as one shard; returns the path.

    version: 1 (uint16) or 2 (uint32). Left unset it is chosen from vocab_size (or, failing that,
    from the largest token). A vocabulary or a token too big for the version is a DataError.
    """
    path = os.fspath(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"tokens for {path} must be integers, got dtype {arr.dtype}")
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    if lo < 0:
        raise DataError(f"tokens for {path} must be non-negative, found {lo}")
    if version is None:
        version = version_for_vocab(vocab_size if vocab_size is not None else hi + 1)
    if vocab_size is not None:
        check_vocab_fits(vocab_size, version)
        if arr.size and hi >= vocab_size:
            raise DataError(f"token id {hi} in {path} is outside the vocabulary of {vocab_size}")
    check_vocab_fits(hi + 1, version)
    if arr.size >= 1 << 31:
        raise DataError(f"{arr.size} tokens do not fit one shard (the count is an int32); use "
                        f"smaller shards")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = MAGIC
    header[1] = version
    header[2] = arr.size
    body = np.ascontiguousarray(arr, dtype=VERSION_DTYPE[version])
    atomic_write_bytes(path, [header.tobytes(), memoryview(body).cast("B")])
    return path


# ----------------------------------------------------------------------------- reader

def read_header(path) -> tuple[int, int]:
    """Validates a shard's header and size; returns (version, token count)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"shard not found: {path} (build or download it first, see data/README.md)")
    if os.path.isdir(path):
        raise DataError(f"expected a shard file, found a folder: {path}")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise DataError(f"{path} is not a token shard: {size} bytes, shorter than the "
                        f"{HEADER_BYTES}-byte header (truncated or not a shard)")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    if int(header[0]) != MAGIC:
        raise DataError(f"{path} is not a token shard: magic number {int(header[0])}, expected "
                        f"{MAGIC}")
    version, count = int(header[1]), int(header[2])
    if version not in VERSION_DTYPE:
        raise DataError(f"{path}: unsupported shard version {version}, expected 1 (uint16) or "
                        f"2 (uint32)")
    if count < 0:
        raise DataError(f"{path}: negative token count {count} in the header")
    expected = HEADER_BYTES + count * VERSION_DTYPE[version].itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{path} is {what}: {size} bytes, expected {expected} for {count} "
                        f"version-{version} tokens (delete it and rebuild or download it again)")
    return version, count


def read_shard(path, mmap: bool = False) -> np.ndarray:
    """Reads and validates one shard; returns its tokens (uint16 or uint32 array)."""
    path = os.fspath(path)
    version, count = read_header(path)
    dtype = VERSION_DTYPE[version]
    if mmap:
        return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        return np.fromfile(f, dtype=dtype, count=count)


def is_complete_shard(path) -> bool:
    """True when path is a valid shard (header and size check), False otherwise."""
    try:
        read_header(path)
        return True
    except DataError:
        return False


# ----------------------------------------------------------------------------- sharding

class ShardWriter:
    """Cuts a stream of token arrays into shards of exactly shard_size tokens (the last one may be
    shorter): shard 0 is validation, the rest training. max_tokens stops it early."""

    def __init__(self, out_dir: str, prefix: str, shard_size: int, vocab_size: int,
                 version: int | None = None, max_tokens: int | None = None):
        if shard_size <= 0:
            raise DataError(f"--shard_size must be positive, got {shard_size}")
        if max_tokens is not None and max_tokens <= 0:
            raise DataError(f"--max_tokens must be positive, got {max_tokens}")
        self.version = version_for_vocab(vocab_size) if version is None else version
        check_vocab_fits(vocab_size, self.version)
        self.out_dir, self.prefix = out_dir, prefix
        self.shard_size, self.vocab_size, self.max_tokens = shard_size, vocab_size, max_tokens
        self.buf = np.empty(shard_size, dtype=VERSION_DTYPE[self.version])
        self.fill = 0
        self.index = 0
        self.total = 0
        self.paths: list[str] = []

    @property
    def done(self) -> bool:
        return self.max_tokens is not None and self.total >= self.max_tokens

    def add(self, tokens) -> int:
        """Appends tokens; returns how many were taken (fewer once max_tokens is reached)."""
        tokens = np.asarray(tokens)
        if self.max_tokens is not None:
            tokens = tokens[: max(0, self.max_tokens - self.total)]
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            raise DataError(f"token id {int(tokens.max())} is outside the tokenizer's vocabulary "
                            f"of {self.vocab_size}")
        taken, pos = tokens.size, 0
        while pos < tokens.size:
            n = min(self.shard_size - self.fill, tokens.size - pos)
            self.buf[self.fill:self.fill + n] = tokens[pos:pos + n]
            self.fill += n
            pos += n
            if self.fill == self.shard_size:
                self._flush()
        self.total += taken
        return taken

    def _flush(self) -> None:
        if self.fill == 0:
            return
        split = "val" if self.index == 0 else "train"
        path = os.path.join(self.out_dir, shard_name(self.prefix, split, self.index))
        write_shard(path, self.buf[: self.fill], vocab_size=self.vocab_size, version=self.version)
        self.paths.append(path)
        self.index += 1
        self.fill = 0

    def close(self) -> list[str]:
        """Writes the last, partial shard; returns all paths written."""
        self._flush()
        return self.paths


# ----------------------------------------------------------------------------- progress

class Progress:
    """tqdm when installed, plain prints (at most every few seconds) otherwise."""

    def __init__(self, total=None, desc: str = "", unit: str = "it", unit_scale: bool = False,
                 disable: bool = False, initial: int = 0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable = disable
        self._bar = None
        self._last = 0.0
        if disable:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                             initial=initial, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.time()
        if now - self._last >= 5.0:
            self._last = now
            of = f"/{self.total:,}" if self.total else ""
            print(f"{self.desc}: {self.n:,}{of} {self.unit}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.disable:
            of = f"/{self.total:,}" if self.total else ""
            print(f"{self.desc}: {self.n:,}{of} {self.unit} done", file=sys.stderr, flush=True)
