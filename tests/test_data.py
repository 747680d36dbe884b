"""Tests of data/: shard writer/reader, the tokenizing scripts, the tiny corpus and the downloader.

CPU only, offline, a few seconds. The Hub is replaced by local stand-ins: a local HTTP server in the
Hub's URL layout (for the resuming downloader) and monkeypatched huggingface_hub functions (for the
parquet streaming path).
"""
import errno
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
sys.path.insert(0, DATA)  # data/ is a folder of scripts, not a package; conftest.py adds ROOT and TIKTOKEN_CACHE_DIR

import cached_fineweb10B  # noqa: E402
import encoders  # noqa: E402
import prepare  # noqa: E402
import shards  # noqa: E402
import tiny  # noqa: E402
import train_gpt2  # noqa: E402  (the training script's own reader is the other end of the format)
from shards import DataError  # noqa: E402


def gpt2_or_skip():
    try:
        return encoders.Tokenizer("gpt2")
    except DataError as exc:
        pytest.skip(f"no offline GPT-2 vocabulary for tiktoken (set TIKTOKEN_CACHE_DIR): {exc}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small SentencePiece model trained on part of the tiny corpus (fast)."""
    path = str(tmp_path_factory.mktemp("spm") / "t.model")
    encoders.train_spm(tiny.tiny_texts(60_000), 512, path)
    return path


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return str(path)


def loader_tokens(paths):
    return np.concatenate([np.asarray(train_gpt2.read_shard(str(p))) for p in paths])


# ----------------------------------------------------------------------------- format

@pytest.mark.parametrize("vocab,version,dtype", [(50257, 1, np.uint16), (100_000, 2, np.uint32)])
def test_round_trip_through_training_loader(tmp_path, vocab, version, dtype):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=5000)
    tokens[:2] = [0, vocab - 1]
    path = shards.write_shard(tmp_path / "x_val_000000.bin", tokens, vocab_size=vocab)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [20240520, version, 5000] and not header[3:].any()
    assert os.path.getsize(path) == 1024 + 5000 * np.dtype(dtype).itemsize
    got = train_gpt2.read_shard(path)
    assert got.dtype == dtype and np.array_equal(got, tokens)
    assert np.array_equal(shards.read_shard(path), tokens)
    assert np.array_equal(shards.read_shard(path, mmap=True), tokens)


def test_version_follows_vocab_size(tmp_path):
    assert shards.version_for_vocab(65536) == 1
    assert shards.version_for_vocab(65537) == 2
    shards.write_shard(tmp_path / "a.bin", [1, 2, 3])  # no vocab given: from the largest token
    assert shards.read_header(tmp_path / "a.bin") == (1, 3)
    shards.write_shard(tmp_path / "b.bin", [70000])
    assert shards.read_header(tmp_path / "b.bin") == (2, 1)
    shards.write_shard(tmp_path / "c.bin", [])
    assert shards.read_header(tmp_path / "c.bin") == (1, 0)


def test_vocab_too_big_for_token_width(tmp_path):
    with pytest.raises(DataError, match="exceeds the 16-bit token width"):
        shards.write_shard(tmp_path / "a.bin", [1, 2], vocab_size=70000, version=1)
    with pytest.raises(DataError, match="exceeds the 16-bit token width"):
        shards.write_shard(tmp_path / "a.bin", [70000], version=1)
    with pytest.raises(DataError, match="exceeds the 16-bit token width"):
        shards.ShardWriter(str(tmp_path), "x", 100, vocab_size=100_000, version=1)
    with pytest.raises(DataError, match="outside the vocabulary"):
        shards.write_shard(tmp_path / "a.bin", [5, 300], vocab_size=256)
    assert not os.path.exists(tmp_path / "a.bin")


def _corrupt(tmp_path, name, fn):
    path = str(tmp_path / name)
    shards.write_shard(path, np.arange(100), vocab_size=1000)
    fn(path)
    return path


@pytest.mark.parametrize("case,pattern", [
    ("missing", "shard not found"),
    ("short", "shorter than the 1024-byte header"),
    ("magic", "magic number"),
    ("version", "unsupported shard version 7"),
    ("truncated", "is truncated"),
    ("trailing", "has trailing bytes"),
])
def test_header_validation(tmp_path, case, pattern):
    def patch(path, offset, value):
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(np.int32(value).tobytes())

    def truncate(path, size):
        with open(path, "r+b") as f:
            f.truncate(size)

    path = {
        "missing": lambda: str(tmp_path / "nope.bin"),
        "short": lambda: _corrupt(tmp_path, "s.bin", lambda p: truncate(p, 100)),
        "magic": lambda: _corrupt(tmp_path, "m.bin", lambda p: patch(p, 0, 12345)),
        "version": lambda: _corrupt(tmp_path, "v.bin", lambda p: patch(p, 4, 7)),
        "truncated": lambda: _corrupt(tmp_path, "t.bin", lambda p: truncate(p, 1024 + 150)),
        "trailing": lambda: _corrupt(tmp_path, "x.bin", lambda p: open(p, "ab").write(b"\0\0")),
    }[case]()
    with pytest.raises(DataError, match=pattern) as info:
        shards.read_shard(path)
    assert "\n" not in str(info.value) and path in str(info.value)
    assert not shards.is_complete_shard(path)
    with pytest.raises(SystemExit):  # the training script's reader refuses it too
        train_gpt2.read_shard(path)


def test_disk_full_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    if os.path.exists("/dev/full"):  # the kernel's real ENOSPC
        monkeypatch.setattr(shards, "_open_for_write", lambda p: open("/dev/full", "wb"))
    else:
        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

            def write(self, b):
                raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(shards, "_open_for_write", lambda p: Full())
    target = tmp_path / "x_val_000000.bin"
    with pytest.raises(DataError, match="disk full while writing") as info:
        shards.write_shard(target, np.arange(1 << 16), vocab_size=1 << 16)
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "x_val_000000.bin"
    real_open = shards._open_for_write

    class Interrupting:
        def __init__(self, path):
            self.f = real_open(path)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()
            return False

        def write(self, b):
            if len(b) != 1024:
                raise KeyboardInterrupt  # killed after the header went out
            self.f.write(b)

        def flush(self):
            self.f.flush()

        def fileno(self):
            return self.f.fileno()

    monkeypatch.setattr(shards, "_open_for_write", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        shards.write_shard(target, np.arange(1000), vocab_size=1000)
    assert os.listdir(tmp_path) == []
    # an older, complete file is left untouched by a failed rewrite
    monkeypatch.setattr(shards, "_open_for_write", real_open)
    shards.write_shard(target, np.arange(10), vocab_size=1000)
    monkeypatch.setattr(shards, "_open_for_write", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        shards.write_shard(target, np.arange(1000), vocab_size=1000)
    assert np.array_equal(shards.read_shard(target), np.arange(10))
    assert os.listdir(tmp_path) == [target.name]


# ----------------------------------------------------------------------------- text -> shards

def test_text_to_shards_gpt2_matches_tiktoken(tmp_path):
    tok = gpt2_or_skip()
    texts = tiny.tiny_texts(40_000)
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out"
    paths = prepare.main(["--input", src, "--out_dir", str(out), "--prefix", "c",
                          "--shard_size", "3000", "--workers", "1", "--no_progress"])
    expected = np.concatenate([[50256] + tok.encode(t) for t in texts])
    names = [os.path.basename(p) for p in paths]
    assert names[0] == "c_val_000000.bin" and names[1:3] == ["c_train_000001.bin", "c_train_000002.bin"]
    assert sorted(os.listdir(out)) == sorted(names)
    counts = [shards.read_header(p)[1] for p in paths]
    assert all(c == 3000 for c in counts[:-1]) and 0 < counts[-1] <= 3000
    assert all(shards.read_header(p)[0] == 1 for p in paths)
    assert np.array_equal(loader_tokens(paths), expected)


def test_output_independent_of_worker_count(tmp_path, tiny_model):
    paragraphs = [p for t in tiny.tiny_texts(120_000) for p in t.split("\n\n") if p.strip()]
    assert len(paragraphs) > 500  # many small tasks, so both workers really share the work
    src = write_jsonl(tmp_path / "in.jsonl", paragraphs)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare.main(["--input", src, "--out_dir", str(out), "--prefix", "c", "--tokenizer",
                      f"spm:{tiny_model}", "--shard_size", "2000", "--workers", str(workers),
                      "--docs_per_task", "3", "--no_progress"])
        outs.append({n: (out / n).read_bytes() for n in sorted(os.listdir(out))})
    assert len(outs[0]) > 3 and outs[0] == outs[1]


def test_max_tokens_and_bos_separators(tmp_path, tiny_model):
    texts = ["first document", "second one\nwith two lines", "third"] * 50
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    paths = prepare.main(["--input", src, "--out_dir", str(tmp_path / "o"), "--tokenizer",
                          f"spm:{tiny_model}", "--shard_size", "100", "--max_tokens", "250",
                          "--workers", "2", "--no_progress"])
    got = loader_tokens(paths)
    sp = encoders.Tokenizer(f"spm:{tiny_model}")
    full = sp.encode_docs(texts, np.int64)
    assert [shards.read_header(p)[1] for p in paths] == [100, 100, 50]
    assert np.array_equal(got, full[:250]) and got[0] == sp.doc_start == 1


def test_train_tokenizer_on_corpus_then_encode(tmp_path):
    texts = tiny.tiny_texts(150_000)
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "o"
    paths = prepare.main(["--input", src, "--out_dir", str(out), "--prefix", "c",
                          "--train_tokenizer", "600", "--tokenizer_sample_chars", "80000",
                          "--shard_size", "100000000", "--workers", "2", "--no_progress"])
    model = out / "c_spm600.model"
    assert model.exists() and len(paths) == 1
    sp = encoders.Tokenizer(f"spm:{model}")
    assert sp.vocab_size == 600
    tokens = loader_tokens(paths)
    docs = np.split(tokens, np.flatnonzero(tokens == sp.doc_start))[1:]
    assert [sp.decode(d[1:]) for d in docs] == texts  # lossless, one BOS per document


# ----------------------------------------------------------------------------- tiny corpus

def test_tiny_default_build_is_deterministic(tmp_path):
    a = tiny.build(str(tmp_path / "a"), quiet=True)
    b = tiny.build(str(tmp_path / "b"), quiet=True)
    assert a["tokens"] == b["tokens"] and a["val_tokens"] == b["val_tokens"]
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == ["tiny_spm2048.model", "tiny_train_000001.bin", "tiny_val_000000.bin"]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    assert a["vocab_size"] == 2048 and a["docs"] > 50
    val, train = train_gpt2.read_shard(a["val"]), train_gpt2.read_shard(a["train"])
    assert len(val) >= 16384 and len(val) + len(train) == a["tokens"] > 100_000
    assert 0.05 < len(val) / a["tokens"] < 0.2 and int(max(val.max(), train.max())) < 2048
    sp = encoders.Tokenizer(f"spm:{a['model']}")
    text = "".join(tiny.tiny_texts())
    tokens = np.concatenate([val, train])
    assert sp.decode(tokens[tokens != sp.doc_start]) == text  # lossless
    assert int((tokens == sp.doc_start).sum()) == a["docs"]


def test_tiny_gpt2(tmp_path):
    tok = gpt2_or_skip()
    info = tiny.build(str(tmp_path), tokenizer="gpt2", max_chars=50_000, quiet=True)
    tokens = loader_tokens([info["val"], info["train"]])
    assert info["vocab_size"] == 50257
    assert np.array_equal(tokens, tok.encode_docs(tiny.tiny_texts(50_000), np.int64))


# ----------------------------------------------------------------------------- clear errors

def test_unknown_tokenizer(tmp_path):
    with pytest.raises(DataError, match="unknown tokenizer 'bert'"):
        encoders.load_tokenizer("bert")
    src = write_jsonl(tmp_path / "in.jsonl", ["x"])
    with pytest.raises(DataError, match="unknown tokenizer"):
        prepare.main(["--input", src, "--out_dir", str(tmp_path / "o"), "--tokenizer", "bert"])
    with pytest.raises(DataError, match="SentencePiece model not found"):
        encoders.load_tokenizer("spm:" + str(tmp_path / "missing.model"))


def test_cli_errors_are_one_line_without_traceback():
    r = subprocess.run([sys.executable, os.path.join(DATA, "tiny.py"), "--tokenizer", "bert"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "unknown tokenizer 'bert'" in r.stderr


def test_no_network_messages(tmp_path, monkeypatch, tiny_model):
    import huggingface_hub
    import tiktoken

    def offline(*a, **k):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(DataError, match="could not load GPT-2's BPE.*TIKTOKEN_CACHE_DIR") as info:
        encoders.load_tokenizer("gpt2")
    assert "\n" not in str(info.value)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DataError, match="hf-internal-testing/llama-tokenizer.*spm:PATH") as info:
        encoders.load_tokenizer("llama")
    assert "\n" not in str(info.value)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", offline)
    with pytest.raises(DataError, match="HuggingFaceFW/fineweb.*--input") as info:
        prepare.main(["--dataset", "fineweb", "--tokenizer", f"spm:{tiny_model}"])
    assert "\n" not in str(info.value) and "hf download" in str(info.value)

    # the downloader against a port nobody listens on: a real connection failure
    with pytest.raises(DataError, match="could not download fineweb_val_000000.bin") as info:
        cached_fineweb10B.download(0, local_dir=str(tmp_path / "fw"), endpoint=f"http://127.0.0.1:{_free_port()}",
                                   progress=False)
    assert "by hand into" in str(info.value) and "\n" not in str(info.value)


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- Hub stand-ins

class FakeHub:
    """A local HTTP server in the Hub's URL layout (/datasets/<repo>/resolve/main/<file>) with
    Range support, recording each request's Range header. truncate_to cuts bodies short once."""

    def __init__(self, root):
        self.root, self.requests, self.truncate_to, self.ignore_range = root, [], None, False
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                prefix = "/datasets/"
                rel = self.path[len(prefix):].replace("/resolve/main/", "/", 1)
                path = os.path.join(hub.root, rel)
                rng = self.headers.get("Range")
                hub.requests.append((os.path.basename(path), rng))
                if not self.path.startswith(prefix) or not os.path.isfile(path):
                    self.send_error(404)
                    return
                data = open(path, "rb").read()
                start = int(rng.split("=")[1].split("-")[0]) if rng and not hub.ignore_range else 0
                if start >= len(data) and rng:
                    self.send_error(416)
                    return
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if hub.truncate_to is not None:
                    body, hub.truncate_to = body[: hub.truncate_to], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(tmp_path):
    repo_dir = tmp_path / "hub" / "kjj0" / "fineweb10B-gpt2"
    repo_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    originals = {}
    for name, n in [("fineweb_val_000000.bin", 3000), ("fineweb_train_000001.bin", 5000),
                    ("fineweb_train_000002.bin", 4000)]:
        shards.write_shard(repo_dir / name, rng.integers(0, 50257, n), vocab_size=50257)
        originals[name] = (repo_dir / name).read_bytes()
    hub = FakeHub(str(tmp_path / "hub"))
    hub.originals = originals
    yield hub
    hub.close()


def test_download_resumes_partial_file_and_skips_complete(tmp_path, fake_hub):
    local = tmp_path / "fineweb10B"
    local.mkdir()
    name = "fineweb_train_000001.bin"
    (local / (name + ".part")).write_bytes(fake_hub.originals[name][:3000])
    paths = cached_fineweb10B.download(1, local_dir=str(local), endpoint=fake_hub.endpoint, progress=False)
    assert [os.path.basename(p) for p in paths] == ["fineweb_val_000000.bin", name]
    assert (name, "bytes=3000-") in fake_hub.requests  # resumed, not restarted
    for p in paths:
        assert open(p, "rb").read() == fake_hub.originals[os.path.basename(p)]
        assert len(train_gpt2.read_shard(p)) > 0
    assert sorted(os.listdir(local)) == sorted(os.path.basename(p) for p in paths)
    fake_hub.requests.clear()
    cached_fineweb10B.download(2, local_dir=str(local), endpoint=fake_hub.endpoint, progress=False)
    assert fake_hub.requests == [("fineweb_train_000002.bin", None)]  # complete files skipped


def test_download_interrupted_then_resumed(tmp_path, fake_hub):
    local = tmp_path / "fw"
    name = "fineweb_val_000000.bin"
    fake_hub.truncate_to = 2500  # the connection drops after 2500 bytes
    with pytest.raises(DataError, match="stopped early|could not download"):
        cached_fineweb10B.download(0, local_dir=str(local), endpoint=fake_hub.endpoint, progress=False)
    assert not (local / name).exists()  # never a partial file under the final name
    assert (local / (name + ".part")).stat().st_size == 2500
    cached_fineweb10B.download(0, local_dir=str(local), endpoint=fake_hub.endpoint, progress=False)
    assert (local / name).read_bytes() == fake_hub.originals[name]
    assert fake_hub.requests[-1] == (name, "bytes=2500-")


def test_download_replaces_damaged_file_and_handles_ignored_range(tmp_path, fake_hub):
    local = tmp_path / "fw"
    local.mkdir()
    name = "fineweb_val_000000.bin"
    (local / name).write_bytes(fake_hub.originals[name][:2000])  # partial copy under the final name
    fake_hub.ignore_range = True  # a server that answers 200 with the whole file
    cached_fineweb10B.download(0, local_dir=str(local), endpoint=fake_hub.endpoint, progress=False)
    assert (local / name).read_bytes() == fake_hub.originals[name]
    (local / name).write_bytes(b"garbage" * 10)  # not a shard at all: downloaded again from 0
    fake_hub.ignore_range = False
    cached_fineweb10B.download(0, local_dir=str(local), endpoint=fake_hub.endpoint, progress=False)
    assert (local / name).read_bytes() == fake_hub.originals[name]
    assert fake_hub.requests[-1] == (name, None)


def test_download_rejects_a_file_that_is_not_a_shard(tmp_path, fake_hub):
    repo_dir = os.path.join(fake_hub.root, "kjj0", "fineweb10B-gpt2")
    with open(os.path.join(repo_dir, "fineweb_val_000000.bin"), "wb") as f:
        f.write(b"<html>not a shard</html>" * 100)
    local = tmp_path / "fw"
    with pytest.raises(DataError, match="not a valid token shard"):
        cached_fineweb10B.download(0, local_dir=str(local), endpoint=fake_hub.endpoint, progress=False)
    assert os.listdir(local) == []
    with pytest.raises(DataError, match="HTTP 404"):
        cached_fineweb10B.download_shard("kjj0/fineweb10B-gpt2", "fineweb_train_000099.bin",
                                         str(local), fake_hub.endpoint, progress=False)


def test_edu_variant_names():
    repo, prefix, n, folder = cached_fineweb10B.VARIANTS["finewebedu"]
    assert (repo, prefix, n, folder) == ("kjj0/finewebedu10B-gpt2", "finewebedu", 99, "finewebedu10B")
    with pytest.raises(DataError, match="between 0 and 103"):
        cached_fineweb10B.download(104, progress=False)


def test_hub_streaming_path(tmp_path, monkeypatch, tiny_model):
    """prepare's Hub code path (list the dataset's parquet files, download them one at a time, read,
    delete) with huggingface_hub's list_repo_files and hf_hub_download replaced by local stand-ins.
    Real parquet files when pyarrow is installed; otherwise the stand-in hands back JSON-lines
    copies (the reader picks the format by extension), so the listing/download logic is still run."""
    import huggingface_hub
    texts = tiny.tiny_texts(30_000)
    halves = [texts[: len(texts) // 2], texts[len(texts) // 2:]]
    store = tmp_path / "store"
    store.mkdir()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        ext = ".parquet"
        for i, part in enumerate(halves):
            pq.write_table(pa.table({"text": part, "id": list(range(len(part)))}), store / f"{i}{ext}")
    except ImportError:
        ext = ".jsonl"
        for i, part in enumerate(halves):
            write_jsonl(store / f"{i}{ext}", part)
    listed, downloaded = [], []

    def list_repo_files(self, repo_id, repo_type=None, revision=None, **kw):
        listed.append((repo_id, repo_type, revision))
        if revision is None:  # the main branch has only the loading script, like old OpenWebText
            return ["README.md", "openwebtext.py"]
        return ["README.md", "plain_text/train-00001-of-00002.parquet",
                "plain_text/train-00000-of-00002.parquet", "other/x.parquet"]

    def hf_hub_download(repo_id, filename, repo_type=None, revision=None, local_dir=None, **kw):
        downloaded.append((repo_id, filename, repo_type, revision))
        i = int(filename.split("train-")[1][:5])
        dest = os.path.join(local_dir, filename + ("" if ext == ".parquet" else ".jsonl"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(store / f"{i}{ext}", dest)
        return dest

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    raw = tmp_path / "raw"
    out = tmp_path / "owt"
    paths = prepare.main(["--dataset", "openwebtext", "--tokenizer", f"spm:{tiny_model}",
                          "--out_dir", str(out), "--raw_dir", str(raw), "--shard_size", "4000",
                          "--workers", "2", "--no_progress"])
    assert listed == [("Skylion007/openwebtext", "dataset", None),
                      ("Skylion007/openwebtext", "dataset", "refs/convert/parquet")]
    assert [d[1] for d in downloaded] == ["plain_text/train-00000-of-00002.parquet",
                                          "plain_text/train-00001-of-00002.parquet"]
    assert all(d[2] == "dataset" and d[3] == "refs/convert/parquet" for d in downloaded)
    assert os.path.basename(paths[0]) == "openwebtext_val_000000.bin"
    sp = encoders.Tokenizer(f"spm:{tiny_model}")
    assert np.array_equal(loader_tokens(paths), sp.encode_docs(texts, np.int64))
    assert not [f for _, _, fs in os.walk(raw) for f in fs]  # raw files removed after use
