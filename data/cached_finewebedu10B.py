"""Download FineWeb-Edu 10B already tokenized with GPT-2's BPE into data/finewebedu10B/: the same as
`python data/cached_fineweb10B.py [N] --edu` (all 99 training chunks, or the first N, + the validation shard)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cached_fineweb10B import main  # noqa: E402

if __name__ == "__main__":
    main(variant="finewebedu")
