"""Shared test setup: a share of the cores per pytest worker, Triton's CPU interpreter when there is no GPU, offline
tiktoken."""
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pytest -n N runs N workers, each spawning training processes: left at torch's default (a thread per core) they
# oversubscribe the cores, and on 2 cores a test ran 3x slower beside another than alone. Set in the workers only:
# the controller's environment is theirs too, and one process at a time may use every core.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

try:
    import torch
    if not torch.cuda.is_available():  # must be set before any test imports triton or the scripts
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

shared_tiktoken = os.path.join(os.path.dirname(ROOT), "shared", "tiktoken")
if os.path.isdir(shared_tiktoken):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", shared_tiktoken)


def write_shard(path, tokens, magic=20240520, version=1):
    """A token shard written by hand, so tests can also make broken ones (bad magic, unknown version)."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16 if version == 1 else np.uint32).tobytes())
