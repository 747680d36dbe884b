"""Tests of data/: the shard format, the tokenizing scripts, the tiny corpus and the downloaders.

CPU only and offline: the Hugging Face Hub is a local HTTP server in the Hub's URL layout, so the real
huggingface_hub client (retries, range resume, ETags, file listing) runs against it.
"""
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data")
import train_gpt2  # the training script's reader is the other end of the format
from data import cached_fineweb10B, encoders, prepare, shards, tiny


def gpt2_or_skip():
    try:
        return encoders.Tokenizer("gpt2")
    except SystemExit as exc:
        pytest.skip(f"no offline GPT-2 vocabulary for tiktoken (set TIKTOKEN_CACHE_DIR): {exc}")


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A small SentencePiece model trained on part of the tiny corpus (fast)."""
    return encoders.train_spm(tiny.tiny_texts(60_000), 512, str(tmp_path_factory.mktemp("spm") / "t.model"))


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return str(path)


def loader_tokens(paths):
    return np.concatenate([np.asarray(train_gpt2.read_shard(str(p))) for p in paths])


def one_line_exit(fn, *args, match, **kwargs):
    with pytest.raises(SystemExit, match=match) as info:
        fn(*args, **kwargs)
    assert str(info.value).startswith("error: ") and "\n" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- format

@pytest.mark.parametrize("vocab,version,dtype", [(50257, 1, np.uint16), (100_000, 2, np.uint32)])
def test_round_trip_through_training_loader(tmp_path, vocab, version, dtype):
    tokens = np.random.default_rng(0).integers(0, vocab, size=5000)
    tokens[:2] = [0, vocab - 1]
    path = shards.write_shard(str(tmp_path / "x_val_000000.bin"), tokens, vocab)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [20240520, version, 5000] and not header[3:].any()
    assert os.path.getsize(path) == 1024 + 5000 * np.dtype(dtype).itemsize
    got = train_gpt2.read_shard(path)
    assert got.dtype == dtype and np.array_equal(got, tokens)
    assert np.array_equal(shards.read_shard(path), tokens) and shards.shard_problem(path) is None
    assert os.listdir(tmp_path) == ["x_val_000000.bin"]  # no temporary file left behind


def test_vocab_and_token_range_errors(tmp_path):
    assert shards.version_for_vocab(65536) == 1 and shards.version_for_vocab(65537) == 2
    path = str(tmp_path / "a.bin")
    one_line_exit(shards.write_shard, path, [1, 2], 70000, version=1, match="does not fit the 16-bit")
    one_line_exit(shards.write_shard, path, [5, 300], 256, match=r"must lie in \[0, 256\)")
    one_line_exit(shards.write_shard, path, [-1], 256, match="must lie in")
    assert os.listdir(tmp_path) == []


def _damage(path, case):
    with open(path, "r+b") as f:
        if case == "short":
            f.truncate(100)
        elif case == "magic":
            f.write(np.int32(12345).tobytes())
        elif case == "version":
            f.seek(4)
            f.write(np.int32(7).tobytes())
        elif case == "truncated":
            f.truncate(1024 + 150)
        elif case == "trailing":
            f.seek(0, 2)
            f.write(b"\0\0")


@pytest.mark.parametrize("case,pattern", [("missing", "not found"), ("short", "not a token shard"),
                                          ("magic", "not a token shard"), ("version", "unknown shard version 7"),
                                          ("truncated", "truncated or damaged"), ("trailing", "truncated or damaged")])
def test_damaged_shards_are_one_line_errors(tmp_path, case, pattern):
    path = str(tmp_path / "x.bin")
    if case != "missing":
        shards.write_shard(path, np.arange(100), 1000)
        _damage(path, case)
    assert pattern in shards.shard_problem(path)
    assert path in one_line_exit(shards.read_shard, path, match=pattern)
    with pytest.raises(SystemExit):  # the training script's reader refuses it too
        train_gpt2.read_shard(path)


def test_failed_writes_leave_no_partial_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    one_line_exit(shards.write_shard, str(tmp_path / "file" / "x.bin"), [1], 10, match="could not write")
    target = str(tmp_path / "x_val_000000.bin")
    shards.write_shard(target, np.arange(10), 1000)

    def killed(*args):  # the job is interrupted after the tokens went out, before the file is moved into place
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        shards.write_shard(target, np.arange(1000), 1000)
    assert sorted(os.listdir(tmp_path)) == ["file", "x_val_000000.bin"]
    assert np.array_equal(shards.read_shard(target), np.arange(10))  # the older complete file is untouched


# ----------------------------------------------------------------------------- text -> shards

def test_text_to_shards_gpt2_matches_tiktoken(tmp_path):
    tok = gpt2_or_skip()
    texts = tiny.tiny_texts(40_000)
    out = tmp_path / "out"
    paths = prepare.main(["--input", write_jsonl(tmp_path / "in.jsonl", texts), "--out_dir", str(out),
                          "--prefix", "c", "--shard_size", "3000", "--workers", "1", "--no_progress"])
    names = [os.path.basename(p) for p in paths]
    assert names[:3] == ["c_val_000000.bin", "c_train_000001.bin", "c_train_000002.bin"]
    assert sorted(os.listdir(out)) == sorted(names)
    counts = [len(train_gpt2.read_shard(p)) for p in paths]
    assert set(counts[:-1]) == {3000} and 0 < counts[-1] <= 3000
    assert np.array_equal(loader_tokens(paths), np.concatenate([[50256] + tok.encode(t) for t in texts]))


def test_output_independent_of_worker_count(tmp_path, spm_model):
    paragraphs = [p for t in tiny.tiny_texts(120_000) for p in t.split("\n\n") if p.strip()]
    assert len(paragraphs) > 500  # many small tasks, so both workers really share the work
    src = write_jsonl(tmp_path / "in.jsonl", paragraphs)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare.main(["--input", src, "--out_dir", str(out), "--prefix", "c", "--tokenizer", f"spm:{spm_model}",
                      "--shard_size", "2000", "--workers", str(workers), "--docs_per_task", "3", "--no_progress"])
        outs.append({n: (out / n).read_bytes() for n in sorted(os.listdir(out))})
    assert len(outs[0]) > 3 and outs[0] == outs[1]


def test_max_tokens_and_document_tokens(tmp_path, spm_model):
    texts = ["first document", "second one\nwith two lines", "third"] * 50
    paths = prepare.main(["--input", write_jsonl(tmp_path / "in.jsonl", texts), "--out_dir", str(tmp_path / "o"),
                          "--tokenizer", f"spm:{spm_model}", "--shard_size", "100", "--max_tokens", "250",
                          "--workers", "2", "--no_progress"])
    sp = encoders.Tokenizer(f"spm:{spm_model}")
    assert [len(train_gpt2.read_shard(p)) for p in paths] == [100, 100, 50]
    got = loader_tokens(paths)
    assert np.array_equal(got, sp.encode_docs(texts, np.int64)[:250]) and got[0] == sp.doc_start == 1


def test_train_tokenizer_on_corpus_then_encode(tmp_path):
    texts = tiny.tiny_texts(150_000)
    out = tmp_path / "o"
    paths = prepare.main(["--input", write_jsonl(tmp_path / "in.jsonl", texts), "--out_dir", str(out),
                          "--prefix", "c", "--train_tokenizer", "600", "--tokenizer_sample_chars", "80000",
                          "--workers", "2", "--no_progress"])
    sp = encoders.Tokenizer(f"spm:{out / 'c_spm600.model'}")
    assert sp.vocab_size == 600 and len(paths) == 1
    tokens = loader_tokens(paths)
    docs = np.split(tokens, np.flatnonzero(tokens == sp.doc_start))[1:]
    assert [sp.decode(d[1:].tolist()) for d in docs] == texts  # lossless, one BOS per document


# ----------------------------------------------------------------------------- tiny corpus

def test_tiny_default_build_is_deterministic_and_lossless(tmp_path):
    val, train, tok = tiny.build(str(tmp_path / "a"))
    tiny.build(str(tmp_path / "b"))
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == ["tiny_spm2048.model", "tiny_train_000001.bin", "tiny_val_000000.bin"]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    val, train = train_gpt2.read_shard(val), train_gpt2.read_shard(train)
    tokens = np.concatenate([val, train])
    assert tok.vocab_size == 2048 and int(tokens.max()) < 2048
    assert len(val) == max(16384, round(0.1 * len(tokens))) and len(tokens) > 100_000
    assert tok.decode(tokens[tokens != tok.doc_start].tolist()) == "".join(tiny.tiny_texts())
    assert int((tokens == tok.doc_start).sum()) == len(tiny.tiny_texts())


def test_tiny_gpt2(tmp_path):
    tok = gpt2_or_skip()
    val, train, _ = tiny.build(str(tmp_path), tokenizer="gpt2", max_chars=50_000)
    assert np.array_equal(loader_tokens([val, train]), tok.encode_docs(tiny.tiny_texts(50_000), np.int64))


# ----------------------------------------------------------------------------- user errors

@pytest.mark.parametrize("argv,pattern", [
    (["--tokenizer", "bert"], "unknown tokenizer 'bert'"),
    (["--tokenizer", "spm:nowhere.model"], "SentencePiece model 'nowhere.model' not found"),
    (["--tokenizer", "spm:{src}"], "is not a SentencePiece model"),
    (["--workers", "0"], "--workers and --docs_per_task must be at least 1"),
    (["--shard_size", "0"], "--shard_size=0 must lie in"),
    (["--max_tokens", "0"], "--max_tokens=0 must be positive"),
    (["--train_tokenizer", "100"], "--train_tokenizer=100 is too small"),
    (["--input", "{tmp}/*.csv"], "matches no"),
    (["--input", "{tmp}/bad.jsonl"], r"bad.jsonl:2: expected a JSON object"),
    (["--input", "{tmp}/empty.jsonl"], "no documents found in 1 local file"),
    (["--input", "{tmp}/notext.parquet"], "has no 'text' column"),
    (["--train_tokenizer", "70000", "--shard_version", "1"], "does not fit the 16-bit tokens of --shard_version=1"),
])
def test_prepare_user_errors(tmp_path, spm_model, argv, pattern):
    import pyarrow as pa
    import pyarrow.parquet as pq
    src = write_jsonl(tmp_path / "in.jsonl", ["some text"])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "notext.parquet")
    base = ["--out_dir", str(tmp_path / "o"), "--tokenizer", f"spm:{spm_model}", "--workers", "1", "--no_progress"]
    if "--input" not in argv:
        base += ["--input", src]
    one_line_exit(prepare.main, base + [a.format(src=src, tmp=tmp_path) for a in argv], match=pattern)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    for cmd in (["tiny.py", "--tokenizer", "bert"], ["tiny.py", "--vocab", "10"],
                ["prepare.py", "--input", "x.jsonl"], ["cached_fineweb10B.py", "104"]):
        r = subprocess.run([sys.executable, "-m", "data." + cmd[0].removesuffix(".py")] + cmd[1:], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (cmd, r.stderr)


# ----------------------------------------------------------------------------- the Hub

class FakeHub:
    """The Hub's URL layout over a folder <root>/<owner>/<repo>/<revision>/<file>: HEAD/GET .../resolve/<rev>/<file>
    with ETag, X-Repo-Commit and Range; the tree listing. drop[name] = n closes the connection after n body bytes
    once. Records (method, file, Range) of each file request."""

    def __init__(self, root):
        self.root, self.requests, self.drop = root, [], {}
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head=False):
                url = urllib.parse.urlparse(self.path).path
                if url.startswith("/api/datasets/"):  # the tree listing: every file at that revision
                    owner, name, _, rev = url.split("/")[3:7]
                    top = os.path.join(hub.root, owner, name, urllib.parse.unquote(rev))
                    files = [os.path.relpath(os.path.join(d, f), top) for d, _, fs in os.walk(top) for f in fs]
                    return self.reply(200, json.dumps([dict(type="file", path=f, size=1, oid="0") for f in files]))
                owner, name, _, rev, file = url.split("/", 6)[2:]
                path = os.path.join(hub.root, owner, name, urllib.parse.unquote(rev), file)
                rng = self.headers.get("Range")
                hub.requests.append((self.command, file, rng))
                if not os.path.isfile(path):
                    return self.reply(404, "")
                data = open(path, "rb").read()
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                headers = {"X-Repo-Commit": "0" * 40, "ETag": '"%s"' % hashlib.sha256(data).hexdigest()}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                self.reply(206 if start else 200, body, headers, head, hub.drop.pop(file, None) if not head else None)

            def reply(self, code, body, headers=(), head=False, cut=None):
                body = body.encode() if isinstance(body, str) else body
                self.send_response(code)
                for key, value in dict(headers, **{"Content-Length": str(len(body))}).items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body[:cut])
                if cut is not None:  # the connection drops mid-body
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def put(self, repo, name, data, revision="main"):
        path = os.path.join(self.root, repo, revision, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return data

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # small chunks, so a 100 kB file can resume midway
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))  # no copy cached on this machine
    monkeypatch.setattr(time, "sleep", lambda s: None)  # the client's retry back-off, in no time
    hub = FakeHub(str(tmp_path / "hub"))
    rng = np.random.default_rng(1)
    hub.originals = {}
    for name, n in [("fineweb_val_000000.bin", 50_000), ("fineweb_train_000001.bin", 5000),
                    ("fineweb_train_000002.bin", 4000)]:
        path = os.path.join(hub.root, "kjj0", "fineweb10B-gpt2", "main", name)
        hub.originals[name] = open(shards.write_shard(path, rng.integers(0, 50257, n), 50257), "rb").read()
    yield hub
    hub.close()


def test_download_resumes_a_dropped_connection_and_skips_finished_shards(tmp_path, hub):
    local = str(tmp_path / "fineweb10B")
    hub.drop["fineweb_val_000000.bin"] = 30_000
    paths = cached_fineweb10B.download(1, local_dir=local, endpoint=hub.endpoint)
    assert [os.path.basename(p) for p in paths] == ["fineweb_val_000000.bin", "fineweb_train_000001.bin"]
    ranges = [r for m, f, r in hub.requests if m == "GET" and f == "fineweb_val_000000.bin"]
    assert ranges[0] is None and 0 < int(ranges[1].split("=")[1].rstrip("-")) <= 30_000  # continued, not restarted
    for p in paths:
        assert open(p, "rb").read() == hub.originals[os.path.basename(p)]
        assert len(train_gpt2.read_shard(p)) > 0
    hub.requests.clear()
    cached_fineweb10B.download(2, local_dir=local, endpoint=hub.endpoint)
    assert {f for _, f, _ in hub.requests} == {"fineweb_train_000002.bin"}  # finished shards: no request at all


def test_download_replaces_a_damaged_shard(tmp_path, hub):
    local = tmp_path / "fw"
    cached_fineweb10B.download(0, local_dir=str(local), endpoint=hub.endpoint)
    name = "fineweb_val_000000.bin"
    for damaged in (hub.originals[name][:2000], b"garbage" * 10):  # truncated, then not a shard at all
        (local / name).write_bytes(damaged)
        cached_fineweb10B.download(0, local_dir=str(local), endpoint=hub.endpoint)
        assert (local / name).read_bytes() == hub.originals[name]


def test_download_rejects_a_file_that_is_not_a_shard(tmp_path, hub):
    hub.put("kjj0/fineweb10B-gpt2", "fineweb_val_000000.bin", b"<html>a mirror's error page</html>" * 100)
    local = tmp_path / "fw"
    one_line_exit(cached_fineweb10B.download, 0, local_dir=str(local), endpoint=hub.endpoint,
                  match="not a whole shard.*rerun")
    assert not (local / "fineweb_val_000000.bin").exists()


def test_download_without_network_is_one_line_and_keeps_finished_shards(tmp_path, hub, spm_model):
    local = tmp_path / "fw"
    cached_fineweb10B.download(0, local_dir=str(local), endpoint=hub.endpoint)
    with socket.socket() as s:  # a port nobody listens on: the connection is refused, as with the network down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    msg = one_line_exit(cached_fineweb10B.download, 1, local_dir=str(local), endpoint=down,
                        match="could not download fineweb_train_000001.bin")
    assert "check the network" in msg and "rerun" in msg
    assert shards.shard_problem(str(local / "fineweb_val_000000.bin")) is None
    one_line_exit(encoders.Tokenizer, "llama", down, match="llama-tokenizer.*spm:PATH")
    msg = one_line_exit(prepare.main, ["--dataset", "fineweb", "--endpoint", down, "--tokenizer", f"spm:{spm_model}"],
                        match="could not list the files of dataset HuggingFaceFW/fineweb")
    assert "--input" in msg


def test_tiktoken_offline_message(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'\nmore detail")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    one_line_exit(encoders.Tokenizer, "gpt2", match="tiktoken could not load.*TIKTOKEN_CACHE_DIR")


def test_edu_command_line(tmp_path, hub):
    data = hub.put("kjj0/finewebedu10B-gpt2", "finewebedu_val_000000.bin", hub.originals["fineweb_val_000000.bin"])
    r = subprocess.run([sys.executable, "-m", "data.cached_finewebedu10B", "0", "--local_dir",
                        str(tmp_path / "edu"), "--endpoint", hub.endpoint], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "edu" / "finewebedu_val_000000.bin").read_bytes() == data
    one_line_exit(cached_fineweb10B.main, ["100", "--edu"], match="has 99 training chunks")


def test_prepare_streams_parquet_from_the_hub(tmp_path, hub, spm_model):
    """OpenWebText keeps only a loading script on main and its parquet files on refs/convert/parquet: prepare.py
    lists them, downloads one at a time, tokenizes in order and deletes each after use."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = tiny.tiny_texts(30_000)
    repo = "Skylion007/openwebtext"
    hub.put(repo, "openwebtext.py", b"# a loading script")
    for i, part in enumerate([texts[:len(texts) // 2], texts[len(texts) // 2:]]):
        pq.write_table(pa.table({"id": list(range(len(part))), "text": part}), tmp_path / "p.parquet")
        hub.put(repo, f"plain_text/train-0000{i}-of-00002.parquet", (tmp_path / "p.parquet").read_bytes(),
                revision="refs/convert/parquet")
    raw = tmp_path / "raw"
    paths = prepare.main(["--dataset", "openwebtext", "--tokenizer", f"spm:{spm_model}", "--endpoint", hub.endpoint,
                          "--out_dir", str(tmp_path / "owt"), "--raw_dir", str(raw), "--shard_size", "4000",
                          "--workers", "2", "--no_progress"])
    assert os.path.basename(paths[0]) == "openwebtext_val_000000.bin"
    sp = encoders.Tokenizer(f"spm:{spm_model}")
    assert np.array_equal(loader_tokens(paths), sp.encode_docs(texts, np.int64))
    assert not [f for f in os.listdir(raw) if f.endswith(".parquet")] and not os.listdir(raw / "plain_text")
