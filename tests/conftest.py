"""Shared test setup: the repo root on sys.path, Triton's CPU interpreter when there is no GPU, offline tiktoken."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

try:
    import torch
    if not torch.cuda.is_available():  # must be set before any test imports triton or the scripts
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

shared_tiktoken = os.path.join(os.path.dirname(ROOT), "shared", "tiktoken")
if os.path.isdir(shared_tiktoken):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", shared_tiktoken)
