"""Kernel bandwidth and step-time A/B of train_gpt2.py vs train_ngpt2.py on this device; one-command GPU validation.

python bench.py                   # CUDA: kernels at 65,536 tokens, step A/B at the default device batch, both shapes
python bench.py --validate        # CUDA, < 10 min: CUDA tests, this benchmark at speedrun, a short A/B of both scripts;
                                  # logs and a README of the numbers in records/<date>_gpu_validation_<gpu>/
TRITON_INTERPRET=1 python bench.py --quick                                  # CPU smoke run (numbers meaningless)
TRITON_INTERPRET=1 python bench.py --validate --quick --record_dir=/tmp/v   # the validation's CPU smoke run (CI)

Every result is one grep-able line of key:value pairs (kernel:, speedup:, renorm:, step:, ab:). Kernel times are
triton.testing.do_bench medians (L2 flushed before every rep) on CUDA, perf_counter medians on CPU. GB/s counts
the least traffic a fused kernel needs (each input read once, each output written once), for every implementation.
"""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import train_gpt2
import train_ngpt2

ROOT = os.path.dirname(os.path.abspath(__file__))
# the default shape (190.5M parameters) and a 1B-class one (16 x 2048, head_dim 128: 1.28B, 1.07B non-embedding)
SHAPES = {"speedrun": dict(n_layer=12, n_head=12, n_embd=768), "1B": dict(n_layer=16, n_head=16, n_embd=2048)}
DEFAULT_BATCH = {"speedrun": 64, "1B": 16}  # device batch of 1024-token sequences: train_*.py's default for speedrun
EPS = 1e-6
LINES = []


def emit(line):
    print(line, flush=True)
    LINES.append(line)


def time_ms(fn, cuda, reps):
    """Median ms of fn(): do_bench on CUDA (flushes L2 between reps), perf_counter on CPU."""
    if cuda:
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def copy_bandwidth(device, cuda, numel, reps):
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (time_ms(lambda: dst.copy_(src), cuda, reps) * 1e6)  # GB/s: read + write


# ---------------------------------------------------------------------------- kernels
def kernel_cases(D, n_head, tokens, stream, device):
    """(name, triton fn, torch reference, inputs, bytes fwd, bytes fwd+bwd) at training's dtypes: under CUDA autocast
    the residual stream is `stream` (fp32; bf16 with --param_dtype=bfloat16), branch outputs, q and k are bf16."""
    bf16 = torch.bfloat16
    x = torch.randn(tokens, D, device=device, dtype=stream)
    b = torch.randn(tokens, D, device=device, dtype=bf16)
    h = torch.nn.functional.normalize(torch.randn(tokens, D, device=device), dim=-1).to(stream)
    q = torch.randn(tokens, n_head, D // n_head, device=device, dtype=bf16)
    n, es, eb = tokens * D, x.element_size(), 2
    return [
        ("gpt_add_norm", lambda x, b, s: train_gpt2.add_norm(x, b, s, EPS, "triton"),
         lambda x, b, s: train_gpt2.add_norm(x, b, s, EPS, "torch"), [x, b, torch.randn(D, device=device)],
         n * (3 * es + eb), n * (3 * es + eb + 4 * es + eb)),  # fwd: x, b -> res, y; bwd: dres, dy, res -> dx, db
        ("ngpt_qk_norm", lambda q, s: train_ngpt2.norm_scale(q, s, EPS, "triton"),
         lambda q, s: train_ngpt2.norm_scale_torch(q, s, EPS), [q, torch.randn(n_head, D // n_head, device=device)],
         n * 2 * eb, n * 5 * eb),  # fwd: q -> y; bwd: dy, q -> dq
        ("ngpt_residual", lambda h, b, a: train_ngpt2.residual_update(h, b, a, EPS, "triton"),
         lambda h, b, a: train_ngpt2.residual_update_torch(h, b, a, EPS), [h, b, torch.rand(D, device=device)],
         n * (2 * es + eb), n * (2 * es + eb + 3 * es + 2 * eb)),  # fwd: h, b -> out; bwd: dout, h, b -> dh, db
    ]


def run_pass(fn, inputs, mode):
    if mode == "fwd":
        def forward():
            with torch.no_grad():
                fn(*inputs)
        return forward
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [torch.randn_like(o) for o in outs]

    def step():
        o = fn(*inputs)
        torch.autograd.grad(o if isinstance(o, tuple) else (o,), inputs, grads)
    return step


def bench_kernels(args, device, cuda, copy_gbs, run_triton):
    tokens = 64 if args.quick else 65536
    for size in args.sizes:
        D, n_head = SHAPES[size]["n_embd"], SHAPES[size]["n_head"]
        if args.quick:
            D, n_head = 64, 2
        for stream in args.stream_dtypes:
            cases = kernel_cases(D, n_head, tokens, getattr(torch, stream), device)
            for name, fn, ref, inputs, bytes_fwd, bytes_all in cases:
                inputs = [t.requires_grad_() for t in inputs]
                torch._dynamo.reset()  # a fresh compile per case: no recompile limit, no dynamic shapes
                impls = {"triton": fn if run_triton else None, "eager": ref,
                         "compiled": torch.compile(ref, dynamic=False) if cuda or args.compile_cpu else None}
                for mode, n_bytes in (("fwd", bytes_fwd), ("fwd+bwd", bytes_all)):
                    ms = {}
                    for impl, f in impls.items():
                        if f is None:
                            continue
                        ms[impl] = time_ms(run_pass(f, inputs, mode), cuda, args.reps)
                        gbs = n_bytes / (ms[impl] * 1e6)
                        emit(f"kernel:{name} size:{size} tokens:{tokens} stream:{stream} pass:{mode} impl:{impl} "
                             f"ms:{ms[impl]:.4f} GB/s:{gbs:.1f} copy_pct:{100 * gbs / copy_gbs:.1f}")
                    if "triton" in ms:
                        vs = " ".join(f"vs_{impl}:{ms[impl] / ms['triton']:.2f}x" for impl in ms if impl != "triton")
                        emit(f"speedup:{name} size:{size} stream:{stream} pass:{mode} {vs}")


def bench_renorm(args, device, cuda, copy_gbs, run_triton):
    """nGPT's post-step renormalization of every matrix, timed as the optimizer step calls it."""
    argv = model_argv(args.sizes[0], args.quick)
    renorm_ms = {}
    for dtype in ("float32", "bfloat16"):
        hp, model = build(train_ngpt2, argv + [f"--param_dtype={dtype}"], device)
        pairs = [(w.data.to(getattr(torch, dtype)), dim) for w, dim in model.normalized_matrices()]
        n_bytes = 2 * sum(w.numel() * w.element_size() for w, _ in pairs)
        impls = {"triton": lambda: train_ngpt2.normalize_weights_(pairs, hp.norm_eps, "triton"),
                 "eager": lambda: train_ngpt2.normalize_weights_(pairs, hp.norm_eps, "torch")}
        if cuda or args.compile_cpu:
            torch._dynamo.reset()
            impls["compiled"] = torch.compile(impls["eager"])
        if not run_triton:
            del impls["triton"]
        for impl, fn in impls.items():
            ms = time_ms(fn, cuda, args.reps)
            renorm_ms[dtype, impl] = ms
            gbs = n_bytes / (ms * 1e6)
            emit(f"renorm:ngpt size:{args.sizes[0]} dtype:{dtype} impl:{impl} matrices:{len(pairs)} "
                 f"MB:{n_bytes / 2e6:.1f} ms:{ms:.4f} GB/s:{gbs:.1f} copy_pct:{100 * gbs / copy_gbs:.1f}")
    return renorm_ms


# ---------------------------------------------------------------------------- step-time A/B
def model_argv(size, quick):
    if quick:
        return ["--n_layer=2", "--n_head=2", "--n_embd=64", "--vocab_size=256", "--mup_base_width=64"]
    return [f"--{k}={v}" for k, v in SHAPES[size].items()]


def build(module, argv, device):
    hp = module.parse_args(argv)
    with torch.device(device):  # built on the device directly: a benchmark needs no CPU-built copy
        model = module.GPT(hp)
    return hp, model


def step_time(module, size, kernels, batch, args, device, cuda):
    """Median ms of one optimizer step (fwd, bwd, clip, AdamW, post_step) at `batch` x seq, and peak MiB."""
    seq = 32 if args.quick else 1024
    argv = model_argv(size, args.quick) + [f"--kernels={kernels}", f"--batch_size={batch}",
                                            f"--device_batch_size={batch}", f"--sequence_length={seq}"]
    hp, model = build(module, argv, device)
    torch._dynamo.reset()
    optimizer = torch.optim.AdamW(model.param_groups(), betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    run = torch.compile(model) if cuda or args.compile_cpu else model
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda)
    x, y = torch.randint(hp.vocab_size, (2, batch, seq), device=device).unbind(0)

    def step():
        with autocast:
            loss = run(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.post_step()
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # compilation and allocator warm-up
        step()
    times = []
    for _ in range(args.step_reps):
        t0 = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - t0))
    ms = statistics.median(times)
    memory = "n/a"
    if cuda:
        memory = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"
    tokens_per_s = batch * seq / (ms / 1000)
    peak = train_gpt2.peak_flops(hp, torch.cuda.get_device_name() if cuda else "cpu")
    mfu = ""
    if peak:
        mfu = f" mfu:{100 * train_gpt2.flops_per_token(model.config(), hp) * tokens_per_s / peak:.1f}%"
    emit(f"step:{module.__name__} size:{size} kernels:{kernels} batch:{batch} seq:{seq} ms:{ms:.2f} "
         f"tokens_per_s:{tokens_per_s:.0f}{mfu} peak_memory_MiB:{memory}")
    return ms


def bench_steps(args, device, cuda, run_triton, renorm_ms):
    for size in args.sizes:
        batch = 2 if args.quick else DEFAULT_BATCH[size]
        for kernels in args.step_kernels:
            if kernels == "triton" and not run_triton:
                emit(f"step:skipped size:{size} kernels:triton (no CUDA and TRITON_INTERPRET unset)")
                continue
            while True:  # the default device batch, halved while it does not fit
                try:
                    ms = [step_time(m, size, kernels, batch, args, device, cuda) for m in (train_gpt2, train_ngpt2)]
                    break
                except torch.OutOfMemoryError:
                    emit(f"step:out_of_memory size:{size} kernels:{kernels} batch:{batch} (retrying at {batch // 2})")
                    torch._dynamo.reset()
                    torch.cuda.empty_cache()
                    batch //= 2
                    if not batch:
                        return
            renorm = ""
            if ("float32", kernels) in renorm_ms and size == args.sizes[0]:
                renorm = f" renorm_pct_of_ngpt_step:{100 * renorm_ms['float32', kernels] / ms[1]:.2f}"
            emit(f"ab:ngpt/gpt size:{size} kernels:{kernels} batch:{batch} gpt_ms:{ms[0]:.2f} ngpt_ms:{ms[1]:.2f} "
                 f"ratio:{ms[1] / ms[0]:.3f}{renorm}")


def benchmark(args):
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    run_triton = train_gpt2.triton is not None and (cuda or interpreting)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    emit(f"bench device:{name} torch:{torch.__version__} triton:{getattr(train_gpt2.triton, '__version__', None)} "
         f"interpret:{int(interpreting)} quick:{int(args.quick)}")
    if not cuda:
        emit("note: CPU run: every ms, GB/s, copy_pct, speedup, ratio and tokens_per_s below is meaningless (CPU "
             "threads and Triton's interpreter, not a GPU); only that each path runs is checked")
    if not run_triton:
        emit("note: triton rows skipped (" + ("triton is not installed" if train_gpt2.triton is None else
                                                "CPU tensors need TRITON_INTERPRET=1") + ")")
    copy_gbs = copy_bandwidth(device, cuda, 2**28 if cuda else 2**20, args.reps)  # 1 GiB on CUDA: far beyond L2
    emit(f"copy: GB/s:{copy_gbs:.1f}")
    bench_kernels(args, device, cuda, copy_gbs, run_triton)
    renorm_ms = bench_renorm(args, device, cuda, copy_gbs, run_triton)
    if not args.skip_steps:
        bench_steps(args, device, cuda, run_triton, renorm_ms)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(LINES) + "\n")


# ---------------------------------------------------------------------------- validation
def run_logged(cmd, log_path, env=None):
    """Run cmd, tee its output into log_path; returns (exit code, output)."""
    print(f"validate: {' '.join(cmd)}  > {log_path}", flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    text = out.stdout + out.stderr
    with open(log_path, "w") as f:
        f.write(f"$ {' '.join(cmd)}\n{text}")
    return out.returncode, text


def validate(args):
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower().replace("nvidia", "")).strip("_")
    out_dir = args.record_dir or os.path.join(ROOT, "records", f"{datetime.date.today()}_gpu_validation_{slug}")
    os.makedirs(out_dir, exist_ok=True)
    py = sys.executable
    results = {}
    tests = ["tests/test_gpu.py"] + ([] if args.quick else ["tests/test_kernels.py"])  # CPU: the skips only
    rc, text = run_logged([py, "-m", "pytest", *tests, "-q", "-rs"], os.path.join(out_dir, "tests.txt"))
    summary = [line for line in text.splitlines() if re.search(r"passed|failed|skipped|error", line)]
    results["tests"] = (rc, summary[-1:])
    bench_cmd = [py, "bench.py", f"--out={out_dir}/bench.txt", "--sizes=speedrun", "--step_kernels=triton",
                 "--stream_dtypes=float32"] + (["--quick"] if args.quick else [])
    rc, text = run_logged(bench_cmd, os.path.join(out_dir, "bench_stdout.txt"))
    keep = ("copy:", "speedup:", "renorm:", "step:", "ab:")
    results["bench"] = (rc, [line for line in text.splitlines() if line.startswith(keep)])
    rc, ab_lines = short_ab(args, out_dir, cuda)
    results["ab"] = (rc, ab_lines)
    write_readme(out_dir, gpu, results, bench_cmd)
    failed = [k for k, (rc, _) in results.items() if rc]
    print(f"validate: {'FAILED ' + ','.join(failed) if failed else 'ok'}; logs and README in {out_dir}", flush=True)
    sys.exit(1 if failed else 0)


def short_ab(args, out_dir, cuda):
    """Both scripts at the speedrun shape for a few steps through torchrun (one process), on cached FineWeb when
    present, else on random tokens (losses then mean nothing, step times still do)."""
    steps = 3 if args.quick else 60
    with tempfile.TemporaryDirectory() as tmp:
        train_glob, val_glob = "data/fineweb10B/fineweb_train_*.bin", "data/fineweb10B/fineweb_val_*.bin"
        if args.quick or not os.path.exists(os.path.join(ROOT, "data/fineweb10B/fineweb_val_000000.bin")):
            vocab = 256 if args.quick else 50257
            rng = np.random.default_rng(0)
            for split, n in (("train", 2**23), ("val", 2**19)):
                header = np.zeros(256, dtype="<i4")
                header[:3] = train_gpt2.MAGIC, 1, n
                with open(os.path.join(tmp, f"rand_{split}_000000.bin"), "wb") as f:
                    f.write(header.tobytes() + rng.integers(0, vocab, n, dtype=np.uint16).tobytes())
            train_glob, val_glob = f"{tmp}/rand_train_*.bin", f"{tmp}/rand_val_*.bin"
        common = [f"--input_bin={train_glob}", f"--input_val_bin={val_glob}", f"--num_iterations={steps}",
                  "--save_every=0", f"--log_dir={out_dir}", "--warmdown_iters=0"]
        if args.quick:
            common += model_argv("speedrun", True) + ["--sequence_length=32", "--batch_size=4", "--device_batch_size=4",
                                                  "--val_tokens=128", "--val_loss_every=0", "--warmup_iters=1"]
        else:  # one micro-batch of the default 64 x 1024 per step, to fit the time budget
            common += ["--batch_size=64", f"--val_tokens={4 * 65536}", "--val_loss_every=30", "--warmup_iters=10"]
        lines, rc_all = [], 0
        for name in ("gpt2", "ngpt2"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                   f"train_{name}.py", *common, f"--run_id=validate_{name}"]
            rc, text = run_logged(cmd, os.path.join(out_dir, f"ab_{name}_stdout.txt"))
            rc_all = rc_all or rc
            steps_lines = [line for line in text.splitlines() if line.startswith("step:")]
            keep = [line for line in text.splitlines() if line.startswith(("peak_memory:", "mfu_peak:"))]
            lines += [f"{name}: {line}" for line in steps_lines[-2:] + keep]
    return rc_all, lines


def write_readme(out_dir, gpu, results, bench_cmd):
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(f"# GPU validation on {gpu}, {datetime.date.today()}\n\n")
        f.write("Made by `python bench.py --validate` (the logs here hold every command and its full output).\n\n")
        if gpu == "cpu":
            f.write("CPU smoke run: every time, bandwidth, ratio and loss below is meaningless; it checks that the "
                    "validation runs end to end.\n\n")
        for key, title in (("tests", "CUDA tests (tests.txt)"), ("bench", f"benchmark: `{' '.join(bench_cmd[1:])}`"),
                           ("ab", "short A/B, one process through torchrun (ab_*_stdout.txt, validate_*.txt)")):
            rc, lines = results[key]
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
            f.write(f"## {title}: {status}\n\n```\n" + "\n".join(lines) + "\n```\n\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few reps (CPU smoke run, CI)")
    parser.add_argument("--validate", action="store_true", help="CUDA tests + benchmark + short A/B into records/")
    parser.add_argument("--record_dir", default="", help="--validate: write here instead of records/<date>_...")
    parser.add_argument("--out", default="", help="also write the output lines to this file")
    parser.add_argument("--sizes", default="speedrun,1B", help="model shapes, comma-separated: speedrun, 1B")
    parser.add_argument("--stream_dtypes", default="float32,bfloat16",
                        help="residual stream dtypes for the kernels (bfloat16: --param_dtype=bfloat16 runs)")
    parser.add_argument("--step_kernels", default="triton,torch", help="kernel sets for the step A/B")
    parser.add_argument("--compile_cpu", action="store_true", help="also torch.compile on CPU (slow to compile)")
    parser.add_argument("--skip_steps", action="store_true", help="only the kernel and renorm benchmarks")
    args = parser.parse_args(argv)
    for name, allowed in (("sizes", SHAPES), ("stream_dtypes", ("float32", "bfloat16")),
                          ("step_kernels", ("triton", "torch"))):
        values = getattr(args, name).split(",")
        if not values or any(v not in allowed for v in values):
            sys.exit(f"error: --{name}={getattr(args, name)}: each value must be one of {tuple(allowed)}")
        setattr(args, name, values)
    if args.quick:
        args.sizes = args.sizes[:1]  # the tiny stand-in shape is the same for every size
        args.stream_dtypes = args.stream_dtypes[:1]
    args.reps = 3 if args.quick else 10
    args.step_reps = 2 if args.quick else 10
    if args.validate:
        validate(args)
    benchmark(args)


if __name__ == "__main__":
    main(sys.argv[1:])
