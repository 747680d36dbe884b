"""Download FineWeb10B already tokenized with GPT-2's BPE (100M tokens per chunk) from the Hugging Face Hub
into data/fineweb10B/, about an hour faster than tokenizing it yourself.

    python -m data.cached_fineweb10B          # all 103 training chunks + the validation shard
    python -m data.cached_fineweb10B 8        # the first 8 training chunks + the validation shard
    python -m data.cached_fineweb10B 8 --edu  # FineWeb-Edu (99 chunks) into data/finewebedu10B/ instead
                                              # (same as python -m data.cached_finewebedu10B 8)

huggingface_hub does the transfer: it retries and resumes a dropped connection, checks ETags, shows progress and
honours HF_TOKEN and HF_ENDPOINT (mirrors). Shards already complete are skipped without asking the Hub; every
shard's header and size are checked, and a damaged one is downloaded again.
"""
import argparse
import os
import sys


from data.shards import first_line, shard_problem

HERE = os.path.dirname(os.path.abspath(__file__))
# variant -> (Hub dataset repo, file prefix, training chunks in it, local folder)
VARIANTS = {
    "fineweb": ("kjj0/fineweb10B-gpt2", "fineweb", 103, "fineweb10B"),
    "finewebedu": ("kjj0/finewebedu10B-gpt2", "finewebedu", 99, "finewebedu10B"),
}


def download(n_chunks=None, variant="fineweb", local_dir=None, endpoint=None):
    """Fetches the validation shard and the first n_chunks training shards (default all); returns their paths."""
    from huggingface_hub import hf_hub_download
    repo, prefix, available, folder = VARIANTS[variant]
    n_chunks = available if n_chunks is None else n_chunks
    if not 0 <= n_chunks <= available:
        sys.exit(f"error: {repo} has {available} training chunks, asked for {n_chunks}; give 0 to {available}")
    local_dir = local_dir or os.path.relpath(os.path.join(HERE, folder))
    names = [f"{prefix}_val_000000.bin"] + [f"{prefix}_train_{i:06d}.bin" for i in range(1, n_chunks + 1)]
    fetched = 0
    for name in names:
        path = os.path.join(local_dir, name)
        if os.path.exists(path):
            problem = shard_problem(path)
            if not problem:
                continue
            print(f"{problem}: downloading it again")
            os.remove(path)
        try:
            hf_hub_download(repo, name, repo_type="dataset", local_dir=local_dir, endpoint=endpoint)
        except Exception as exc:  # no network, a refused mirror, a full disk: the Hub client's own error classes
            sys.exit(f"error: could not download {name} from {repo} ({first_line(exc)}); check the network (and "
                     f"HF_ENDPOINT if set) and the free disk space, then rerun: finished shards are kept")
        problem = shard_problem(path)
        if problem:
            os.remove(path)
            sys.exit(f"error: the download is not a whole shard ({problem}); deleted it, rerun to fetch it again")
        fetched += 1
    print(f"{len(names)} shard(s) in {local_dir} ({fetched} downloaded); train with "
          f"--input_bin='{local_dir}/{prefix}_train_*.bin' --input_val_bin='{local_dir}/{prefix}_val_*.bin'")
    return [os.path.join(local_dir, name) for name in names]


def main(argv=None, variant="fineweb"):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("n", nargs="?", type=int, help="number of 100M-token training chunks (default: all)")
    p.add_argument("--edu", action="store_true", help="FineWeb-Edu (kjj0/finewebedu10B-gpt2)")
    p.add_argument("--local_dir", help="where the shards go (default data/fineweb10B or data/finewebedu10B)")
    p.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    args = p.parse_args(argv)
    return download(args.n, "finewebedu" if args.edu else variant, args.local_dir, args.endpoint)


if __name__ == "__main__":
    main()
