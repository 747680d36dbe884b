"""Download FineWeb-Edu 10B already tokenized with GPT-2's BPE into data/finewebedu10B/: the same as
`python -m data.cached_fineweb10B [N] --edu` (all 99 training chunks, or the first N, + the validation shard)."""
from data.cached_fineweb10B import main

if __name__ == "__main__":
    main(variant="finewebedu")
