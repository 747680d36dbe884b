"""Tokenizers for the data scripts: GPT-2 BPE (tiktoken) and SentencePiece (a LLaMA model file,
any .model by path, or one trained here on a sample of the corpus).

Tokenizer specs (the --tokenizer argument):
    gpt2        tiktoken's GPT-2 BPE, 50257 tokens; <|endoftext|> (50256) goes before each document
    llama       LLaMA's 32000-token SentencePiece model, fetched from the Hub (LLAMA_REPO)
    spm:PATH    any SentencePiece .model file; its BOS id goes before each document
"""
from __future__ import annotations

import io
import os

import numpy as np

from shards import DataError, atomic_write_bytes

# An ungated copy of the original LLaMA tokenizer.model (32000 pieces, bos=1, eos=2, unk=0).
LLAMA_REPO = "hf-internal-testing/llama-tokenizer"
LLAMA_FILE = "tokenizer.model"
GPT2_VOCAB_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (for one-line errors)."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    first = text[0] if len(text[0]) <= 200 else text[0][:197] + "..."
    return f"{type(exc).__name__}: {first}"


class Tokenizer:
    """name, vocab_size, doc_start (the id put before each document), encode(text) -> list[int]."""

    def __init__(self, spec: str):
        self.spec = spec
        if spec == "gpt2":
            self._init_gpt2()
        elif spec.startswith("spm:"):
            self._init_spm(spec[4:])
        else:
            raise DataError(f"unknown tokenizer {spec!r}: expected gpt2, llama or spm:PATH")

    def _init_gpt2(self) -> None:
        try:
            import tiktoken
        except ImportError:
            raise DataError("the gpt2 tokenizer needs tiktoken: pip install -r data/requirements.txt") from None
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as exc:  # tiktoken downloads its vocabulary on first use
            cache = os.environ.get("TIKTOKEN_CACHE_DIR", "(unset)")
            raise DataError(
                f"could not load GPT-2's BPE with tiktoken ({one_line(exc)}): it downloads "
                f"{GPT2_VOCAB_URL} and encoder.json on first use; connect to the internet, or point "
                f"TIKTOKEN_CACHE_DIR (now {cache}) at a folder holding tiktoken's cached copies") from None
        self._enc = enc
        self.name = "gpt2"
        self.vocab_size = enc.n_vocab
        self.doc_start = enc.eot_token

    def _init_spm(self, path: str) -> None:
        try:
            import sentencepiece as spm
        except ImportError:
            raise DataError("SentencePiece tokenizers need sentencepiece: pip install -r "
                            "data/requirements.txt") from None
        if not path or not os.path.isfile(path):
            raise DataError(f"SentencePiece model not found: {path!r} (give --tokenizer spm:PATH to a "
                            f".model file, --tokenizer llama, or --train_tokenizer VOCAB)")
        sp = spm.SentencePieceProcessor()
        try:
            sp.load(path)
        except Exception as exc:
            raise DataError(f"{path} is not a SentencePiece model ({one_line(exc)})") from None
        if sp.bos_id() < 0:
            raise DataError(f"{path} has no BOS token; the shards need one before each document "
                            f"(train it with bos_id set)")
        self._sp = sp
        self.name = f"spm:{os.path.basename(path)}"
        self.vocab_size = sp.get_piece_size()
        self.doc_start = sp.bos_id()

    def encode(self, text: str) -> list[int]:
        if hasattr(self, "_enc"):
            return self._enc.encode_ordinary(text)
        return self._sp.encode(text)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if hasattr(self, "_enc"):
            return self._enc.decode(ids)
        return self._sp.decode(ids)

    def encode_docs(self, texts, dtype) -> np.ndarray:
        """Concatenates [doc_start] + encode(text) for every text."""
        out: list[int] = []
        for text in texts:
            out.append(self.doc_start)
            out.extend(self.encode(text))
        return np.asarray(out, dtype=dtype)


def resolve_tokenizer_spec(spec: str, endpoint: str | None = None) -> str:
    """Turns a user spec into 'gpt2' or 'spm:ABSPATH' (downloading the LLaMA model if asked)."""
    if spec == "gpt2":
        return spec
    if spec == "llama":
        try:
            from huggingface_hub import hf_hub_download
            path = hf_hub_download(LLAMA_REPO, LLAMA_FILE, endpoint=endpoint)
        except ImportError:
            raise DataError("--tokenizer llama needs huggingface_hub: pip install -r data/requirements.txt") from None
        except Exception as exc:
            raise DataError(
                f"could not download {LLAMA_FILE} from the Hugging Face Hub model repo {LLAMA_REPO} "
                f"({one_line(exc)}): connect to the internet, or download "
                f"https://huggingface.co/{LLAMA_REPO}/resolve/main/{LLAMA_FILE} (or any LLaMA "
                f"tokenizer.model) by hand and pass --tokenizer spm:PATH") from None
        return "spm:" + os.path.abspath(path)
    if spec.startswith("spm:"):
        path = spec[4:]
        if not path or not os.path.isfile(path):
            raise DataError(f"SentencePiece model not found: {path!r} (give --tokenizer spm:PATH to a "
                            f".model file, --tokenizer llama, or --train_tokenizer VOCAB)")
        return "spm:" + os.path.abspath(path)
    raise DataError(f"unknown tokenizer {spec!r}: expected gpt2, llama or spm:PATH")


def load_tokenizer(spec: str, endpoint: str | None = None) -> Tokenizer:
    return Tokenizer(resolve_tokenizer_spec(spec, endpoint))


# ----------------------------------------------------------------------------- SentencePiece training

def text_chunks(texts, max_chars: int = 2000):
    """Cuts texts into pieces of at most max_chars characters, at line ends where possible (these
    are the 'sentences' SentencePiece trains on; it drops sentences longer than max_sentence_length)."""
    for text in texts:
        start = 0
        while start < len(text):
            end = min(start + max_chars, len(text))
            if end < len(text):
                cut = text.rfind("\n", start, end)
                if cut > start:
                    end = cut + 1
            yield text[start:end]
            start = end


def train_spm(texts, vocab_size: int, model_path: str, seed: int = 1337) -> str:
    """Trains a lossless SentencePiece BPE model on texts and writes it atomically to model_path.

    identity normalization, no whitespace cleanup or dummy prefix, byte fallback and '\\n' as a
    user symbol make decode(encode(text)) == text. One thread and a fixed seed make the .model file
    byte-identical from run to run on the same text. ids: unk=0, bos=1, eos=2, no pad.
    """
    try:
        import sentencepiece as spm
    except ImportError:
        raise DataError("training a tokenizer needs sentencepiece: pip install -r data/requirements.txt") from None
    if vocab_size < 300:
        raise DataError(f"--train_tokenizer vocabulary {vocab_size} is too small: byte fallback alone "
                        f"takes 256 + 4 ids; use at least 300")
    chunks = list(text_chunks(texts))
    if not chunks:
        raise DataError("no text to train the tokenizer on")
    buf = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(chunks), model_writer=buf, model_type="bpe",
            vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=0.9995,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, allow_whitespace_only_pieces=True, split_digits=False,
            byte_fallback=True, user_defined_symbols=["\n"], max_sentence_length=16384,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    except Exception as exc:
        raise DataError(f"SentencePiece training failed ({one_line(exc)})") from None
    atomic_write_bytes(model_path, [buf.getvalue()])
    return model_path
