"""Download FineWeb-Edu 10B already tokenized with GPT-2's BPE into data/finewebedu10B/
(the FineWeb-Edu variant of cached_fineweb10B.py; same options).

    python data/cached_finewebedu10B.py       # all 99 training chunks + the validation shard
    python data/cached_finewebedu10B.py 8     # the first 8 training chunks + the validation shard
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cached_fineweb10B  # noqa: E402

if __name__ == "__main__":
    cached_fineweb10B.main(variant="finewebedu")
