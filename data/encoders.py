"""Tokenizers for data/: GPT-2's BPE (tiktoken) and SentencePiece (LLaMA's model, any .model file, or one trained
here). Specs: gpt2 | llama | spm:PATH. Every document starts with the tokenizer's document token: <|endoftext|>
(50256) for gpt2, the BOS id for SentencePiece.
"""
import io
import os
import sys

import numpy as np

from data.shards import first_line

LLAMA_REPO = "hf-internal-testing/llama-tokenizer"  # an ungated copy of LLaMA's tokenizer.model (32000, bos=1)
MIN_SPM_VOCAB = 300  # byte fallback alone takes 256 + 3 special ids


class Tokenizer:
    """spec, name, vocab_size, doc_start (the id put before each document), encode(text), decode(ids)."""

    def __init__(self, spec, endpoint=None):
        if spec == "llama":
            spec = "spm:" + download_llama(endpoint)
        if spec == "gpt2":
            import tiktoken
            try:
                enc = tiktoken.get_encoding("gpt2")
            except Exception as exc:  # the first use downloads the vocabulary
                sys.exit(f"error: tiktoken could not load GPT-2's BPE ({first_line(exc)}); connect to the internet "
                         f"once, or point TIKTOKEN_CACHE_DIR at a folder holding tiktoken's cached files")
            self.encode, self.decode = enc.encode_ordinary, enc.decode
            self.vocab_size = enc.n_vocab
            self.doc_start = enc.eot_token
        elif spec.startswith("spm:"):
            import sentencepiece
            path = os.path.abspath(spec[4:])
            if not os.path.isfile(path):
                sys.exit(f"error: SentencePiece model {spec[4:]!r} not found; give --tokenizer spm:PATH to a .model "
                         f"file, --tokenizer llama, or --train_tokenizer VOCAB")
            try:
                sp = sentencepiece.SentencePieceProcessor(model_file=path)
            except Exception as exc:
                sys.exit(f"error: {path} is not a SentencePiece model ({first_line(exc)})")
            if sp.bos_id() < 0:
                sys.exit(f"error: {path} has no BOS token, which the shards put before each document")
            spec = "spm:" + path
            self.encode, self.decode = sp.encode, sp.decode
            self.vocab_size = sp.get_piece_size()
            self.doc_start = sp.bos_id()
        else:
            sys.exit(f"error: unknown tokenizer {spec!r}; use gpt2, llama or spm:PATH")
        self.spec = spec  # gpt2 or spm:ABSPATH, what worker processes load
        self.name = spec if spec == "gpt2" else "spm:" + os.path.basename(spec[4:])

    def encode_docs(self, texts, dtype):
        """[doc_start] + encode(text) for every text, concatenated."""
        out = []
        for text in texts:
            out.append(self.doc_start)
            out.extend(self.encode(text))
        return np.array(out, dtype=dtype)


def download_llama(endpoint=None):
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(LLAMA_REPO, "tokenizer.model", endpoint=endpoint)
    except Exception as exc:  # no network, a proxy, a mirror without it...
        sys.exit(f"error: could not download tokenizer.model from the Hub repo {LLAMA_REPO} ({first_line(exc)}); "
                 f"connect to the internet, or pass any LLaMA tokenizer.model with --tokenizer spm:PATH")


def train_spm(texts, vocab_size, model_path, seed=1337):
    """Trains a lossless SentencePiece BPE on texts and writes it atomically to model_path.

    Identity normalization, no whitespace cleanup or dummy prefix, byte fallback and '\\n' as a symbol make
    decode(encode(text)) == text; one thread and a fixed seed make the .model file byte-identical from run to run.
    Texts are cut at line ends into pieces of at most 2000 characters (SentencePiece drops longer sentences).
    """
    import sentencepiece
    pieces = []
    for text in texts:
        start = 0
        while start < len(text):
            end = min(start + 2000, len(text))
            cut = text.rfind("\n", start, end)
            if end < len(text) and cut > start:
                end = cut + 1
            pieces.append(text[start:end])
            start = end
    if not pieces:
        sys.exit("error: no text to train the tokenizer on")
    buf = io.BytesIO()
    sentencepiece.set_random_generator_seed(seed)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(pieces), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=0.9995, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        split_digits=False, byte_fallback=True, user_defined_symbols=["\n"], max_sentence_length=16384,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2)
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    tmp = f"{model_path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, model_path)
    return model_path
