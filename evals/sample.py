"""Text samples from a checkpoint of train_gpt2.py or train_ngpt2.py; the same seed gives the same text.

    python -m evals.sample logs/RUN_step004768.dcp --prompt "The meaning of life is"
    python -m evals.sample logs/RUN_step004768.dcp --prompt "def " --tokenizer spm:data/tiny/tiny_spm2048.model --seed 1

The prompt starts a document (the tokenizer's document-start token comes first, as in the training data);
generation stops early when the model starts a new document.
"""
import argparse
import sys

import torch

from evals.common import Loaded, add_args, generate, load_tokenizer


def sample(loaded, tok, prompt, max_new_tokens, temperature, top_k, seed):
    """The prompt and its continuation, as text."""
    generator = torch.Generator(device=loaded.device).manual_seed(seed)
    idx = [tok.doc_start] + tok.encode(prompt)
    out = generate(loaded, idx, max_new_tokens, temperature, top_k, generator, stop_token=tok.doc_start)
    if out[-1] == tok.doc_start and len(out) > len(idx):
        out = out[:-1]
    return tok.decode(out[1:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint directory (<run_id>_step<N>.dcp) of either script")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max_new_tokens", type=int, default=100, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--num_samples", type=int, default=1, help="samples, with seeds seed, seed+1, ...")
    add_args(p)
    args = p.parse_args(argv)
    if args.max_new_tokens < 0 or args.temperature < 0 or args.top_k < 0 or args.num_samples < 1:
        sys.exit("error: --max_new_tokens, --temperature and --top_k must be >= 0, --num_samples >= 1")
    loaded = Loaded(args.checkpoint, args.device)
    tok = load_tokenizer(args.tokenizer, loaded)
    texts = []
    for i in range(args.num_samples):
        seed = args.seed + i
        texts.append(sample(loaded, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k, seed))
        print(f"---------- sample seed:{seed} temperature:{args.temperature} top_k:{args.top_k}")
        print(texts[-1])
    return texts


if __name__ == "__main__":
    main()
