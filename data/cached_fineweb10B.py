"""Download FineWeb10B already tokenized with GPT-2's BPE (about 100M tokens per chunk) from the
Hugging Face Hub into data/fineweb10B/ -- about an hour faster than tokenizing it yourself.

    python data/cached_fineweb10B.py          # all 103 training chunks + the validation shard
    python data/cached_fineweb10B.py 8        # the first 8 training chunks + the validation shard
    python data/cached_fineweb10B.py 8 --edu  # FineWeb-Edu instead, into data/finewebedu10B/
                                              # (same as python data/cached_finewebedu10B.py 8)

Complete files are skipped; a partial download (<file>.part) resumes where it stopped. Every shard's
header and size are checked before it is moved into place, so a file with the final name is whole.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from encoders import one_line  # noqa: E402
from shards import (HEADER_BYTES, MAGIC, DataError, Progress, is_complete_shard,  # noqa: E402
                    read_header, show_path)

HERE = os.path.dirname(os.path.abspath(__file__))
# variant -> (Hub dataset repo, file prefix, number of training chunks, local folder)
VARIANTS = {
    "fineweb": ("kjj0/fineweb10B-gpt2", "fineweb", 103, "fineweb10B"),
    "finewebedu": ("kjj0/finewebedu10B-gpt2", "finewebedu", 99, "finewebedu10B"),
}
CHUNK_BYTES = 1 << 20


def file_url(repo: str, filename: str, endpoint: str | None = None) -> str:
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    try:
        from huggingface_hub import hf_hub_url
        return hf_hub_url(repo, filename, repo_type="dataset", endpoint=endpoint)
    except ImportError:
        return f"{endpoint}/datasets/{repo}/resolve/main/{filename}"


def _network_error(filename: str, url: str, local_dir: str, exc: BaseException) -> DataError:
    return DataError(f"could not download {filename} ({one_line(exc)}): connect to the internet and "
                     f"rerun (partial files resume), or download {url} by hand into {show_path(local_dir)}/")


def _header_looks_right(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        return len(head) == 8 and int.from_bytes(head[:4], "little") == MAGIC \
            and int.from_bytes(head[4:8], "little") in (1, 2)
    except OSError:
        return False


def download_shard(repo: str, filename: str, local_dir: str, endpoint: str | None = None,
                   progress: bool = True, timeout: float = 60.0) -> str:
    """Downloads one shard into local_dir, resuming <file>.part; verifies it; returns its path."""
    dest = os.path.join(local_dir, filename)
    part = dest + ".part"
    if is_complete_shard(dest):
        return dest
    if os.path.exists(dest):  # a damaged or partial copy under the final name
        if _header_looks_right(dest) and not os.path.exists(part):
            os.replace(dest, part)  # resume from it
        else:
            os.remove(dest)
    url = file_url(repo, filename, endpoint)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "nanogpt-data/1.0"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: check what we have below
            resp = None
        elif exc.code in (401, 403, 404):
            raise DataError(f"{url} answered HTTP {exc.code}: is the file name right? (repo "
                            f"{repo}, file {filename})") from None
        else:
            raise _network_error(filename, url, local_dir, exc) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _network_error(filename, url, local_dir, exc) from None

    if resp is not None:
        with resp:
            if have and resp.status != 206:  # the server ignored the range: start over
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            bar = Progress(total=total, desc=filename, unit="B", unit_scale=True,
                           disable=not progress, initial=have)
            try:
                os.makedirs(local_dir, exist_ok=True)
                with open(part, "ab" if have else "wb") as f:
                    while True:
                        try:
                            chunk = resp.read(CHUNK_BYTES)
                        except (OSError, ValueError) as exc:
                            raise _network_error(filename, url, local_dir, exc) from None
                        if not chunk:
                            break
                        f.write(chunk)
                        bar.update(len(chunk))
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DataError(f"disk full while downloading {filename} into {local_dir}"
                                    + (f" (needs {total:,} bytes)" if total else "")
                                    + ": free space and rerun (the download resumes)") from None
                raise DataError(f"could not write {part}: {exc.strerror or exc}") from None
            finally:
                bar.close()

    try:
        read_header(part)
    except DataError as exc:
        size = os.path.getsize(part) if os.path.exists(part) else 0
        if size >= HEADER_BYTES and _header_looks_right(part) and "truncated" in str(exc):
            raise DataError(f"download of {filename} stopped early ({size:,} bytes so far): rerun "
                            f"to resume it") from None
        os.remove(part)
        raise DataError(f"downloaded {filename} is not a valid token shard ({exc}); deleted it, "
                        f"rerun to download it again") from None
    os.replace(part, dest)
    return dest


def download(n_chunks: int | None = None, variant: str = "fineweb", local_dir: str | None = None,
             endpoint: str | None = None, progress: bool = True) -> list[str]:
    """Downloads the validation shard and the first n_chunks training shards of a variant."""
    repo, prefix, available, folder = VARIANTS[variant]
    n = available if n_chunks is None else n_chunks
    if not 0 <= n <= available:
        raise DataError(f"number of chunks must be between 0 and {available} for {variant}, got {n}")
    local_dir = local_dir or os.path.join(HERE, folder)
    names = [f"{prefix}_val_{0:06d}.bin"] + [f"{prefix}_train_{i:06d}.bin" for i in range(1, n + 1)]
    paths, t0 = [], time.time()
    for i, name in enumerate(names, 1):
        already = is_complete_shard(os.path.join(local_dir, name))
        path = download_shard(repo, name, local_dir, endpoint, progress)
        _, count = read_header(path)
        if progress:
            state = "present" if already else "downloaded"
            print(f"[{i}/{len(names)}] {name}: {state}, {count:,} tokens", flush=True)
        paths.append(path)
    if progress:
        rel = show_path(local_dir)
        print(f"{len(paths)} shard(s) ready in {rel} ({time.time() - t0:.0f}s); train with "
              f"--input_bin='{rel}/{prefix}_train_*.bin' --input_val_bin='{rel}/{prefix}_val_*.bin'")
    return paths


def main(argv=None, variant: str = "fineweb") -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("n", nargs="?", type=int, default=None,
                   help="number of 100M-token training chunks (default: all)")
    p.add_argument("--edu", action="store_true", help="FineWeb-Edu (kjj0/finewebedu10B-gpt2)")
    p.add_argument("--local_dir", default=None, help="where to put the shards")
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    args = p.parse_args(argv)
    if args.edu:
        variant = "finewebedu"
    return download(args.n, variant, args.local_dir, args.endpoint)


if __name__ == "__main__":
    main()
