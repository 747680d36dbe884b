"""HellaSwag accuracy of a checkpoint of train_gpt2.py or train_ngpt2.py (the validation set, 10,042 items).

    python -m evals.hellaswag logs/RUN_step004768.dcp      # downloads data/hellaswag/hellaswag_val.jsonl once
    python -m evals.hellaswag logs/RUN_step004768.dcp --limit 500 --tokenizer spm:data/tiny/tiny_spm2048.model

Each ending is scored as the log-likelihood of its tokens given the context: context tokens = encode(ctx), ending
tokens = encode(" " + ending), concatenated (a context is cut from the left when the pair is longer than the
training sequence length). acc picks the ending with the highest total log-likelihood, acc_norm the one with the
highest mean per ending token. The last line is `hellaswag acc:A acc_norm:B n:N`; an `eval:hellaswag` line is also
appended to the run's log next to the checkpoint, for tune/compare.py.
"""
import argparse
import json
import os
import sys
import urllib.request

import torch
import torch.nn.functional as F
from tqdm import tqdm

from evals.common import ROOT, Loaded, add_args, load_tokenizer

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"  # as llm.c reads it
DEFAULT_DATA = os.path.join(ROOT, "data", "hellaswag", "hellaswag_val.jsonl")


def download(url, path):
    """url -> path, with a progress bar; written to a temporary name first, so a cut download leaves nothing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.part"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {os.path.basename(path)}") as bar:
                while chunk := response.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        sys.exit(f"error: could not download {url} ({exc}); connect to the internet, or pass a local copy with "
                 f"--data FILE (or another address with --url / HELLASWAG_URL)")
    os.replace(tmp, path)


def read_items(path, limit=None):
    items = []
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                items.append(dict(ctx=item["ctx"], endings=list(item["endings"]), label=int(item["label"])))
            except (ValueError, KeyError, TypeError) as exc:
                sys.exit(f"error: {path} line {i + 1} is not a HellaSwag item with ctx, endings, label ({exc})")
            if limit and len(items) == limit:
                break
    if not items:
        sys.exit(f"error: {path} holds no items")
    return items


def score_items(loaded, tok, items, batch_size=16):
    """[(total log-likelihood, token count) per ending] per item, batched over items of similar length."""
    max_len = loaded.hp.sequence_length
    seqs = []  # (item index, ending index, tokens, ending length)
    for i, item in enumerate(items):
        ctx = tok.encode(item["ctx"])
        for j, ending in enumerate(item["endings"]):
            end = tok.encode(" " + ending)
            tokens = (ctx + end)[-(max_len + 1):]
            seqs.append((i, j, tokens, min(len(end), len(tokens) - 1)))
    seqs.sort(key=lambda s: len(s[2]))
    scores = [[None] * len(item["endings"]) for item in items]
    per_batch = batch_size * 4
    for start in tqdm(range(0, len(seqs), per_batch), desc="hellaswag", unit="batch"):
        batch = seqs[start:start + per_batch]
        width = max(len(s[2]) for s in batch) - 1
        x = torch.zeros(len(batch), width, dtype=torch.long)
        y = torch.full((len(batch), width), -100, dtype=torch.long)  # -100: ignored (context and padding)
        for row, (_, _, tokens, n_end) in enumerate(batch):
            x[row, :len(tokens) - 1] = torch.tensor(tokens[:-1])
            y[row, len(tokens) - 1 - n_end:len(tokens) - 1] = torch.tensor(tokens[-n_end:])
        logits = loaded.logits(x.to(loaded.device))
        nll = F.cross_entropy(logits.transpose(1, 2), y.to(loaded.device), ignore_index=-100, reduction="none")
        totals = (-nll.sum(1)).tolist()
        for (i, j, _, n_end), total in zip(batch, totals):
            scores[i][j] = (total, n_end)
    return scores


def accuracy(items, scores):
    """(acc, acc_norm): argmax of the total log-likelihood, and of the mean per ending token."""
    acc = acc_norm = 0
    for item, item_scores in zip(items, scores):
        totals = [s for s, _ in item_scores]
        means = [s / n for s, n in item_scores]
        acc += totals.index(max(totals)) == item["label"]
        acc_norm += means.index(max(means)) == item["label"]
    return acc / len(items), acc_norm / len(items)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (<run_id>_step<N>.dcp) of either script")
    p.add_argument("--data", default=DEFAULT_DATA, help="the HellaSwag jsonl; downloaded here when missing")
    p.add_argument("--url", default=os.environ.get("HELLASWAG_URL", URL), help="where to download it from "
                   "(default: $HELLASWAG_URL or the upstream file)")
    p.add_argument("--limit", type=int, default=0, help="only the first N items (0: all)")
    p.add_argument("--batch_size", type=int, default=16, help="items per forward pass (4 endings each)")
    add_args(p)
    args = p.parse_args(argv)
    if args.limit < 0 or args.batch_size < 1:
        sys.exit("error: --limit must be >= 0 and --batch_size >= 1")
    loaded = Loaded(args.checkpoint, args.device)
    tok = load_tokenizer(args.tokenizer, loaded)
    if not os.path.isfile(args.data):
        download(args.url, args.data)
    items = read_items(args.data, args.limit)
    acc, acc_norm = accuracy(items, score_items(loaded, tok, items, args.batch_size))
    loaded.report("hellaswag", [[("acc", f"{acc:.4f}"), ("acc_norm", f"{acc_norm:.4f}"), ("n", len(items))]])
    print(f"hellaswag acc:{acc:.4f} acc_norm:{acc_norm:.4f} n:{len(items)}")
    return acc, acc_norm


if __name__ == "__main__":
    main()
