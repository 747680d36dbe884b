"""EleutherAI's lm-evaluation-harness on a checkpoint of train_gpt2.py or train_ngpt2.py.

    pip install -r evals/requirements.txt
    python -m evals.harness logs/RUN_step004768.dcp --tasks hellaswag,arc_easy,piqa,winogrande,lambada_openai
    python -m evals.harness logs/RUN_step004768.dcp --tasks my_task --include_path my_tasks/ --limit 100
    python -m evals.harness hf/RUN --tasks hellaswag      # a folder written by python -m evals.export

The harness downloads each task's data through Hugging Face datasets on first use. A small lm_eval LM subclass
scores requests with the model's own forward pass: loglikelihood (context + continuation, cut from the left to
the training sequence length), loglikelihood_rolling (windows of the training length) and generate_until (greedy).
It prints the harness's table and appends one `eval:harness_TASK` line per task to the run's log. An exported
folder (config.json inside) is read by lm-eval's own `hf` backend (HFLM, trust_remote_code for nGPT) instead; its
lines are printed only (the folder has no run log).
"""
import argparse
import importlib.util
import os
import re
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from evals.common import Loaded, add_args, generate, load_tokenizer, pick_device

try:
    from lm_eval.api.model import LM
except ImportError:  # main() says how to install it
    LM = object


class CheckpointLM(LM):
    def __init__(self, loaded, tok, batch_size=32):
        super().__init__()
        self.loaded = loaded
        self.tok = tok
        self.batch_size = batch_size
        self.max_length = loaded.hp.sequence_length

    def score(self, pairs, desc):
        """[(log-likelihood of cont, cont is the greedy choice)] for (context tokens, continuation tokens) pairs."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results = [None] * len(pairs)
        for start in tqdm(range(0, len(order), self.batch_size), desc=desc, unit="batch"):
            batch = [pairs[i] for i in order[start:start + self.batch_size]]
            seqs = [(ctx + cont)[-(self.max_length + 1):] for ctx, cont in batch]
            width = max(len(s) for s in seqs) - 1
            x = torch.zeros(len(batch), width, dtype=torch.long)
            for row, seq in enumerate(seqs):
                x[row, :len(seq) - 1] = torch.tensor(seq[:-1])
            logprobs = F.log_softmax(self.loaded.logits(x.to(self.loaded.device)), dim=-1).cpu()
            for row, (seq, (_, cont)) in enumerate(zip(seqs, batch)):
                n = len(cont)
                lp = logprobs[row, len(seq) - 1 - n:len(seq) - 1]
                target = torch.tensor(seq[-n:])
                total = lp.gather(1, target[:, None]).sum().item()
                greedy = bool((lp.argmax(-1) == target).all())
                results[order[start + row]] = (total, greedy)
        return results

    def encode_pair(self, context, continuation):
        spaces = len(context) - len(context.rstrip(" "))  # a trailing space belongs to the continuation's tokens
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self.tok.encode(context) if context else [self.tok.doc_start]
        return ctx, self.tok.encode(continuation)

    def loglikelihood(self, requests):
        return self.score([self.encode_pair(*r.args) for r in requests], "loglikelihood")

    def loglikelihood_rolling(self, requests):
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        pairs, owner = [], []
        for i, r in enumerate(requests):
            windows = get_rolling_token_windows(self.tok.encode(r.args[0]), self.tok.doc_start, self.max_length, 1)
            for window in windows:
                pairs.append(make_disjoint_window(window))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (total, _) in zip(owner, self.score(pairs, "loglikelihood_rolling")):
            totals[i] += total
        return totals

    def generate_until(self, requests):
        out = []
        for r in tqdm(requests, desc="generate_until"):
            context, kwargs = r.args
            until = kwargs.get("until") or []
            if isinstance(until, str):
                until = [until]
            idx = self.tok.encode(context) or [self.tok.doc_start]
            tokens = generate(self.loaded, idx, int(kwargs.get("max_gen_toks", 256)), temperature=0)
            text = self.tok.decode(tokens[len(idx):])
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def log_rows(results):
    """{eval name: row} for Loaded.report, one per task: the harness's metrics (no stderr), n = samples evaluated."""
    rows = {}
    for task, metrics in results["results"].items():
        row = []
        for key, value in sorted(metrics.items()):
            metric, comma, filt = key.partition(",")  # "acc,none": metric and filter; other keys are names
            if comma and isinstance(value, (int, float)) and not metric.endswith("_stderr"):
                suffix = "" if filt == "none" else "_" + re.sub(r"\W", "_", filt)
                row.append((metric + suffix, f"{float(value):.4f}"))
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        if row and n is not None:
            row.append(("n", n))
        if row:
            rows["harness_" + re.sub(r"\W", "_", task)] = row
    return rows


def export_lm(path, device, batch_size):
    """lm-eval's `hf` backend (HFLM) on a folder written by python -m evals.export."""
    if importlib.util.find_spec("transformers") is None:
        sys.exit("error: an exported folder is read with transformers; install it with pip install -r "
                 "evals/requirements.txt")
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:  # lm-eval's hf extra: accelerate
        sys.exit(f"error: lm-eval's hf backend needs {exc.name}; install it with pip install -r evals/requirements.txt")
    return HFLM(pretrained=path, backend="causal", trust_remote_code=True, device=pick_device(device),
                batch_size=batch_size, dtype="float32")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (<run_id>_step<N>.dcp) of either script, or a folder "
                   "written by python -m evals.export")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--limit", type=int, default=0, help="only the first N documents of each task (0: all)")
    p.add_argument("--num_fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    p.add_argument("--include_path", default="", help="a folder of extra task YAMLs")
    p.add_argument("--batch_size", type=int, default=32, help="sequences per forward pass")
    add_args(p)
    args = p.parse_args(argv)
    if LM is object:
        sys.exit("error: python -m evals.harness needs lm-eval; install it with pip install -r evals/requirements.txt")
    if args.limit < 0 or args.batch_size < 1:
        sys.exit("error: --limit must be >= 0 and --batch_size >= 1")
    if args.include_path and not os.path.isdir(args.include_path):
        sys.exit(f"error: --include_path={args.include_path}: no such folder")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table
    exported = os.path.isfile(os.path.join(args.checkpoint, "config.json"))
    if exported:
        lm = export_lm(args.checkpoint, args.device, args.batch_size)
    else:
        loaded = Loaded(args.checkpoint, args.device)
        lm = CheckpointLM(loaded, load_tokenizer(args.tokenizer, loaded), args.batch_size)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    manager = None
    if args.include_path:  # tasks all found there: skip indexing lm-eval's thousands of built-in tasks (~20 s)
        manager = TaskManager(include_path=args.include_path, include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=args.include_path or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        sys.exit(f"error: unknown lm-eval task(s) {unknown}; see `lm-eval ls tasks`, or add YAMLs with --include_path")
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager,
                              limit=args.limit or None, num_fewshot=args.num_fewshot, log_samples=False)
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    for name, row in log_rows(results).items():
        if exported:
            print(f"eval:{name} " + " ".join(f"{k}:{v}" for k, v in row))
        else:
            loaded.report(name, [row])
    return results


if __name__ == "__main__":
    main()
