"""Kernel bandwidth and step-time A/B of train_gpt2.py vs train_ngpt2.py on this device, with MFU.

python bench.py                   # CUDA: kernels at 65,536 tokens, step A/B at the default device batch, both shapes
python bench.py --skip_steps --sizes=speedrun --stream_dtypes=float32   # the kernel table only
TRITON_INTERPRET=1 python bench.py --quick                                  # CPU smoke run (numbers meaningless)
python bench.py --validate ...    # the GPU validation: runs validate.py with the other flags (docs/gpu_validation.md)

Every result is one grep-able line of key:value pairs (kernel:, speedup:, renorm:, step:, ab:). Kernel times are
triton.testing.do_bench medians (L2 flushed before every rep) on CUDA, perf_counter medians on CPU. GB/s counts
the least traffic a fused kernel needs (each input read once, each output written once), for every implementation.
MFU prices the step with tune/memory.py's flops_per_token against the GPU's peak (its PEAK_BF16_TFLOPS table).
"""
import argparse
import os
import statistics
import sys
import time
from typing import NamedTuple

import torch

import ops
import train_gpt2
import train_ngpt2
from optim import build_optimizers, optimizer_step
from tune import memory

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SCRIPTS = {"gpt2": train_gpt2, "ngpt2": train_ngpt2}
# the default shape (190.5M parameters) and a 1B-class one (16 x 2048, head_dim 128: 1.28B, 1.07B non-embedding)
SHAPES = {"speedrun": dict(n_layer=12, n_head=12, n_embd=768), "1B": dict(n_layer=16, n_head=16, n_embd=2048)}
DEFAULT_BATCH = {"speedrun": 64, "1B": 16}  # device batch of 1024-token sequences: train_*.py's default for speedrun
EPS = 1e-6
LINES = []


def emit(line):
    print(line, flush=True)
    LINES.append(line)


def sync():
    if CUDA:
        torch.cuda.synchronize()


def time_ms(fn, reps):
    """Median ms of fn(): do_bench on CUDA (flushes L2 between reps), perf_counter on CPU."""
    if CUDA:
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def copy_bandwidth(numel, reps):
    src = torch.randn(numel, device=DEVICE)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (time_ms(lambda: dst.copy_(src), reps) * 1e6)  # GB/s: read + write


# ---------------------------------------------------------------------------- kernels
def kernel_cases(D, n_head, tokens, stream):
    """(name, triton fn, torch reference, inputs, bytes fwd, bytes fwd+bwd) at training's dtypes: under CUDA autocast
    the residual stream is `stream` (fp32; bf16 with --param_dtype=bfloat16), branch outputs, q and k are bf16."""
    bf16 = torch.bfloat16
    x = torch.randn(tokens, D, device=DEVICE, dtype=stream)
    b = torch.randn(tokens, D, device=DEVICE, dtype=bf16)
    h = torch.nn.functional.normalize(torch.randn(tokens, D, device=DEVICE), dim=-1).to(stream)
    q = torch.randn(tokens, n_head, D // n_head, device=DEVICE, dtype=bf16)
    n, es, eb = tokens * D, x.element_size(), 2
    return [
        ("gpt_add_norm", lambda x, b, s: ops.add_norm(x, b, s, EPS, "triton"),
         lambda x, b, s: ops.add_norm(x, b, s, EPS, "torch"), [x, b, torch.randn(D, device=DEVICE)],
         n * (3 * es + eb), n * (3 * es + eb + 4 * es + eb)),  # fwd: x, b -> res, y; bwd: dres, dy, res -> dx, db
        ("ngpt_qk_norm", lambda q, s: ops.norm_scale(q, s, EPS, "triton"),
         lambda q, s: ops.norm_scale_torch(q, s, EPS), [q, torch.randn(n_head, D // n_head, device=DEVICE)],
         n * 2 * eb, n * 5 * eb),  # fwd: q -> y; bwd: dy, q -> dq
        ("ngpt_residual", lambda h, b, a: ops.residual_update(h, b, a, EPS, "triton"),
         lambda h, b, a: ops.residual_update_torch(h, b, a, EPS), [h, b, torch.rand(D, device=DEVICE)],
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


def bench_kernels(args, copy_gbs, run_triton):
    """Emits kernel: and speedup: lines; returns {kernel name: its fwd+bwd speedup line} of the first size and dtype."""
    tokens = 64 if args.quick else 65536
    speedups = {}
    for size in args.sizes:
        D, n_head = SHAPES[size]["n_embd"], SHAPES[size]["n_head"]
        if args.quick:
            D, n_head = 64, 2
        for stream in args.stream_dtypes:
            cases = kernel_cases(D, n_head, tokens, getattr(torch, stream))
            for name, fn, ref, inputs, bytes_fwd, bytes_all in cases:
                inputs = [t.requires_grad_() for t in inputs]
                torch._dynamo.reset()  # a fresh compile per case: no recompile limit
                impls = {"triton": fn if run_triton else None, "eager": ref,
                         "compiled": torch.compile(ref, dynamic=False) if args.backend else None}
                for mode, n_bytes in (("fwd", bytes_fwd), ("fwd+bwd", bytes_all)):
                    ms = {}
                    for impl, f in impls.items():
                        if f is None:
                            continue
                        ms[impl] = time_ms(run_pass(f, inputs, mode), args.reps)
                        gbs = n_bytes / (ms[impl] * 1e6)
                        emit(f"kernel:{name} size:{size} tokens:{tokens} stream:{stream} pass:{mode} impl:{impl} "
                             f"ms:{ms[impl]:.4f} GB/s:{gbs:.1f} copy_pct:{100 * gbs / copy_gbs:.1f}")
                    if "triton" in ms:
                        vs = " ".join(f"vs_{impl}:{ms[impl] / ms['triton']:.2f}x" for impl in ms if impl != "triton")
                        emit(f"speedup:{name} size:{size} stream:{stream} pass:{mode} {vs}")
                        if mode == "fwd+bwd" and name not in speedups:
                            speedups[name] = vs
    return speedups


def bench_renorm(args, copy_gbs, run_triton, compiled=True):
    """nGPT's post-step renormalization of every matrix, timed as the optimizer step calls it."""
    argv = model_argv(args.sizes[0], args.quick)
    renorm_ms = {}
    for dtype in ("float32", "bfloat16"):
        hp = train_ngpt2.parse_args(argv + [f"--param_dtype={dtype}"])
        with torch.device(DEVICE):  # built on the device directly: a benchmark needs no CPU-built copy
            model = train_ngpt2.GPT(hp)
        pairs = [(w.data.to(getattr(torch, dtype)), dim) for w, dim in model.normalized_matrices()]
        n_bytes = 2 * sum(w.numel() * w.element_size() for w, _ in pairs)
        impls = {"triton": lambda: train_ngpt2.normalize_weights_(pairs, hp.norm_eps, "triton"),
                 "eager": lambda: train_ngpt2.normalize_weights_(pairs, hp.norm_eps, "torch")}
        if args.backend and compiled:  # the step compiles none of it: a comparison only
            torch._dynamo.reset()
            impls["compiled"] = torch.compile(impls["eager"])
        if not run_triton:
            del impls["triton"]
        for impl, fn in impls.items():
            ms = time_ms(fn, args.reps)
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


def prepare(module, argv, backend):
    """(hp, model, the model to call: torch.compile'd with `backend` unless it is "", the optimizers as the scripts
    make them). "inductor" is torch.compile's default, as the scripts call it."""
    hp = module.parse_args(argv)
    torch.manual_seed(hp.seed)
    with torch.device(DEVICE):
        model = module.GPT(hp)
    optimizers = build_optimizers(model, hp, fused=CUDA)
    run = model
    if backend:
        run = torch.compile(model, backend=backend)
    return hp, model, run, optimizers


def autocast():
    return torch.autocast("cuda" if CUDA else "cpu", dtype=torch.bfloat16, enabled=CUDA)


def train_step(hp, model, run, optimizers, x, y):
    """One optimizer step as the scripts take it: bf16 autocast on CUDA, backward, then optim.optimizer_step."""
    with autocast():
        loss = run(x, y)
    loss.backward()
    optimizer_step(model, optimizers, 1.0, hp.grad_clip)
    sync()
    return loss


def mfu(cfg, hp, tokens_per_s, args):
    """Model FLOPs utilization of one GPU at tokens_per_s, as "45.1%", or "" when the GPU's peak is unknown."""
    peak = memory.peak_flops(device_name(), args.peak_tflops)
    if not peak:
        return ""
    return f"{100 * memory.flops_per_token(cfg, hp) * tokens_per_s / peak:.1f}%"


class Step(NamedTuple):
    ms: float  # median of one optimizer step
    mfu: str  # "45.1%", "" when the GPU's peak is unknown
    peak_bytes: int  # the most memory allocated at once over the steps (0 on CPU)


def step_time(name, prepared, label, args):
    """Median ms of one optimizer step at hp's device batch (after 3 warm-up steps), its MFU and peak memory; emits a
    step: line."""
    hp, model, run, optimizers = prepared
    x, y = torch.randint(hp.vocab_size, (2, hp.device_batch_size, hp.sequence_length), device=DEVICE).unbind(0)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # compilation (unless done already) and allocator warm-up
        train_step(hp, model, run, optimizers, x, y)
    times = []
    for _ in range(args.step_reps):
        t0 = time.perf_counter()
        train_step(hp, model, run, optimizers, x, y)
        times.append(1000 * (time.perf_counter() - t0))
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() if CUDA else 0
    peak_mib = f"{peak / 2**20:.0f}" if CUDA else "n/a"
    tokens_per_s = hp.device_batch_size * hp.sequence_length / (ms / 1000)
    utilization = mfu(model.config(), hp, tokens_per_s, args)
    emit(f"step:{name} {label} batch:{hp.device_batch_size} seq:{hp.sequence_length} ms:{ms:.2f} "
         f"tokens_per_s:{tokens_per_s:.0f}{' mfu:' + utilization if utilization else ''} peak_memory_MiB:{peak_mib}")
    return Step(ms, utilization, peak)


def bench_steps(args, run_triton, renorm_ms):
    seq = 32 if args.quick else 1024
    for size in args.sizes:
        batch = 2 if args.quick else DEFAULT_BATCH[size]
        for kernel_set in args.step_kernels:
            if kernel_set == "triton" and not run_triton:
                emit(f"step:skipped size:{size} kernels:triton (no CUDA and TRITON_INTERPRET unset)")
                continue
            while True:  # the default device batch, halved while it does not fit
                flags = [f"--kernels={kernel_set}", f"--batch_size={batch}", f"--device_batch_size={batch}",
                         f"--sequence_length={seq}"]
                try:
                    ms = []
                    for name, module in SCRIPTS.items():
                        torch._dynamo.reset()  # a fresh compile per model and size
                        prepared = prepare(module, model_argv(size, args.quick) + flags, args.backend)
                        ms.append(step_time(name, prepared, f"size:{size} kernels:{kernel_set}", args).ms)
                        del prepared
                    break
                except torch.OutOfMemoryError:
                    emit(f"step:out_of_memory size:{size} kernels:{kernel_set} batch:{batch} "
                         f"(retrying at {batch // 2})")
                    torch._dynamo.reset()
                    torch.cuda.empty_cache()
                    batch //= 2
                    if not batch:
                        return
            renorm = ""
            renorm_impl = "float32", "triton" if kernel_set == "triton" else "eager"  # bench_renorm's names
            if renorm_impl in renorm_ms and size == args.sizes[0]:
                renorm = f" renorm_pct_of_ngpt_step:{100 * renorm_ms[renorm_impl] / ms[1]:.2f}"
            emit(f"ab:ngpt/gpt size:{size} kernels:{kernel_set} batch:{batch} gpt_ms:{ms[0]:.2f} ngpt_ms:{ms[1]:.2f} "
                 f"ratio:{ms[1] / ms[0]:.3f}{renorm}")


def benchmark(args):
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    run_triton = ops.triton is not None and (CUDA or interpreting)
    emit(f"bench device:{device_name()} torch:{torch.__version__} triton:{triton_version()} "
         f"interpret:{int(interpreting)} quick:{int(args.quick)}")
    if not CUDA:
        emit("note: CPU run: every ms, GB/s, copy_pct, speedup, ratio and tokens_per_s below is meaningless (CPU "
             "threads and Triton's interpreter, not a GPU); only that each path runs is checked")
    if not run_triton:
        emit("note: triton rows skipped (" + ("triton is not installed" if ops.triton is None else
                                                "CPU tensors need TRITON_INTERPRET=1") + ")")
    copy_gbs = copy_bandwidth(2**28 if CUDA else 2**20, args.reps)  # 1 GiB on CUDA: far beyond L2
    emit(f"copy: GB/s:{copy_gbs:.1f}")
    bench_kernels(args, copy_gbs, run_triton)
    renorm_ms = bench_renorm(args, copy_gbs, run_triton)
    if not args.skip_steps:
        bench_steps(args, run_triton, renorm_ms)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(LINES) + "\n")


def device_name():
    return torch.cuda.get_device_name() if CUDA else "cpu"


def triton_version():
    return getattr(ops.triton, "__version__", None)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--validate" in argv:  # the validation is its own tool: it gets this process, so nothing is loaded twice
        os.execv(sys.executable, [sys.executable, os.path.join(ROOT, "validate.py")] +
                 [a for a in argv if a != "--validate"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few reps (CPU smoke run, CI)")
    parser.add_argument("--validate", action="store_true", help="run validate.py, the GPU validation, with the "
                        "other flags (python validate.py --help)")
    parser.add_argument("--out", default="", help="also write the output lines to this file")
    parser.add_argument("--sizes", default="speedrun,1B", help="model shapes, comma-separated: speedrun, 1B")
    parser.add_argument("--stream_dtypes", default="float32,bfloat16",
                        help="residual stream dtypes for the kernels (bfloat16: --param_dtype=bfloat16 runs)")
    parser.add_argument("--step_kernels", default="triton,torch", help="kernel sets for the step A/B")
    parser.add_argument("--compile_cpu", action="store_const", const="inductor", default="",
                        help="also torch.compile on CPU (slow to compile)")
    parser.add_argument("--skip_steps", action="store_true", help="only the kernel and renorm benchmarks")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="one GPU's dense bf16 peak for MFU (0: looked up by the exact device name)")
    args = parser.parse_args(argv)
    if not CUDA and not args.quick:
        sys.exit("error: bench.py measures a GPU and torch sees none here; the CPU smoke run is "
                 "TRITON_INTERPRET=1 python bench.py --quick (TRITON_INTERPRET=1 python validate.py --quick for "
                 "the validation's)")
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
    args.backend = "inductor" if CUDA else args.compile_cpu  # torch.compile's backend for the models ("": eager)
    benchmark(args)


if __name__ == "__main__":
    main()
