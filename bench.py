"""Kernel bandwidth and step-time A/B of train_gpt2.py vs train_ngpt2.py on this device; one-command GPU validation.

python bench.py                   # CUDA: kernels at 65,536 tokens, step A/B at the default device batch, both shapes
python bench.py --validate        # CUDA, <= 6 min (--budget_s): the stages below, into records/<date>_gpu_validation_*
python bench.py --validate --stages=steps,run --record_dir=/tmp/v2   # some stages again, after a fix
TRITON_INTERPRET=1 python bench.py --quick                                  # CPU smoke run (numbers meaningless)
TRITON_INTERPRET=1 python bench.py --validate --quick --record_dir=/tmp/v   # the validation's CPU smoke run (tests)

--validate runs these stages, in order of value (README: GPU validation):
  tests       the CUDA tests: every kernel against torch at real shapes and odd ones, fp32 and bf16, fwd and bwd
  compile     one compiled training step of each model at the default shape (64 x 1024 tokens, Triton kernels):
              compile time, graph breaks, loss and gradients against eager --kernels=torch, peak memory against
              tune/memory.py's estimate; then the eval graph the scripts' validation compiles
  kernels     the kernel bandwidth table (speedrun width, 65,536 tokens, fp32 residual stream)
  steps       the step-time A/B with MFU, on the models compiled by `compile`
  run         both scripts' own main() for 30 steps in this process, reusing the code `compile` compiled
  more_tests  the CUDA tests that compile models or start training runs (beyond the default budget)
Each stage prints `stage:NAME status:ok|FAILED|skipped s:SECONDS ...` when it ends and adds to the record folder
at once: a log per command, results.txt, README.md (every command and its result) and the folder as DIR.tar.gz
(one file to fetch), rewritten after every stage, so a run stopped midway keeps what it finished. A stage expected
to run past --budget_s is skipped, and its line says so. Each model is compiled once, in `compile`.

Every result is one grep-able line of key:value pairs (kernel:, speedup:, renorm:, step:, ab:). Kernel times are
triton.testing.do_bench medians (L2 flushed before every rep) on CUDA, perf_counter medians on CPU. GB/s counts
the least traffic a fused kernel needs (each input read once, each output written once), for every implementation.
"""
import argparse
import contextlib
import dataclasses
import datetime
import gc
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

STARTED = time.perf_counter()  # --budget_s counts from here, torch's import included
import numpy as np  # noqa: E402
import torch  # noqa: E402

import kernels  # noqa: E402
import train_gpt2  # noqa: E402
import train_ngpt2  # noqa: E402
from optim import build_optimizers, optimizer_step  # noqa: E402
from tune import memory  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SCRIPTS = {"gpt2": train_gpt2, "ngpt2": train_ngpt2}
# the default shape (190.5M parameters) and a 1B-class one (16 x 2048, head_dim 128: 1.28B, 1.07B non-embedding)
SHAPES = {"speedrun": dict(n_layer=12, n_head=12, n_embd=768), "1B": dict(n_layer=16, n_head=16, n_embd=2048)}
DEFAULT_BATCH = {"speedrun": 64, "1B": 16}  # device batch of 1024-token sequences: train_*.py's default for speedrun
EPS = 1e-6
LINES = []
# dense bf16 tensor-core peak TFLOPS of one GPU (NVIDIA datasheets) by device name, first match wins; H100 SXM
# reports itself as "H100 80GB HBM3". Other names get no MFU unless --peak_tflops is given.
PEAK_BF16_TFLOPS = [("H100 80GB HBM3", 989), ("H100 SXM", 989), ("H100 NVL", 835), ("H100 PCIe", 756),
                    ("H200 NVL", 835), ("H200", 989), ("B200", 2250), ("A100", 312), ("L40S", 362), ("RTX 4090", 165)]
STAGES = ("tests", "compile", "kernels", "steps", "run", "more_tests")
# seconds each stage is expected to take on one H200 (README, GPU validation: from FLOP and byte counts with compiles
# of 40-90 s per model), and under --quick on 2 CPU cores; --budget_s skips a stage that would not fit
EXPECTED_S = dict(tests=60, compile=180, kernels=45, steps=10, run=30, more_tests=240)
EXPECTED_QUICK_S = dict(tests=10, compile=30, kernels=20, steps=10, run=20, more_tests=10)
SLOW_TESTS = "compiled_step or torchrun or few_training_steps"  # CUDA tests that compile models or start runs
RUN_STEPS = 30


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
        ("gpt_add_norm", lambda x, b, s: kernels.add_norm(x, b, s, EPS, "triton"),
         lambda x, b, s: kernels.add_norm(x, b, s, EPS, "torch"), [x, b, torch.randn(D, device=DEVICE)],
         n * (3 * es + eb), n * (3 * es + eb + 4 * es + eb)),  # fwd: x, b -> res, y; bwd: dres, dy, res -> dx, db
        ("ngpt_qk_norm", lambda q, s: kernels.norm_scale(q, s, EPS, "triton"),
         lambda q, s: kernels.norm_scale_torch(q, s, EPS), [q, torch.randn(n_head, D // n_head, device=DEVICE)],
         n * 2 * eb, n * 5 * eb),  # fwd: q -> y; bwd: dy, q -> dq
        ("ngpt_residual", lambda h, b, a: kernels.residual_update(h, b, a, EPS, "triton"),
         lambda h, b, a: kernels.residual_update_torch(h, b, a, EPS), [h, b, torch.rand(D, device=DEVICE)],
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
                if not args.validate:  # a fresh compile per case: no recompile limit (--validate keeps its models')
                    torch._dynamo.reset()
                impls = {"triton": fn if run_triton else None, "eager": ref,
                         "compiled": torch.compile(ref, dynamic=False) if CUDA or args.compile_cpu else None}
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


def bench_renorm(args, copy_gbs, run_triton):
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
        if (CUDA or args.compile_cpu) and not args.validate:  # the step compiles none of it: a comparison only
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
    make them). "inductor" is torch.compile's default, as the scripts call it: their main() in this process reuses
    the code."""
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


def peak_flops(device_name, peak_tflops=0.0):
    """One GPU's dense bf16 peak in FLOP/s: peak_tflops if given, else by device name; None when unknown."""
    if peak_tflops:
        return peak_tflops * 1e12
    return next((tflops * 1e12 for name, tflops in PEAK_BF16_TFLOPS if name in device_name), None)


def flops_per_token(cfg, hp):
    """Training FLOPs per token: 6 per matmul weight (2 forward, 4 backward; the embedding lookup has none) plus
    causal attention: q.k and att.v cost 2 * n_embd * T each per layer forward over all T keys, half of that
    under the causal mask, and backward doubles it again (6 * n_embd * T per layer in all)."""
    return 6 * (cfg["params"] - hp.vocab_size * hp.n_embd) + 6 * hp.n_layer * hp.n_embd * hp.sequence_length


def mfu(cfg, hp, tokens_per_s, args):
    """Model FLOPs utilization of one GPU at tokens_per_s, as "45.1%", or "" when the GPU's peak is unknown."""
    peak = peak_flops(torch.cuda.get_device_name() if CUDA else "cpu", args.peak_tflops)
    if not peak:
        return ""
    return f"{100 * flops_per_token(cfg, hp) * tokens_per_s / peak:.1f}%"


def step_time(name, prepared, label, args):
    """Median ms of one optimizer step at hp's device batch (after 3 warm-up steps) and its MFU; emits a step: line."""
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
    memory_mib = "n/a"
    if CUDA:
        memory_mib = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"
    tokens_per_s = hp.device_batch_size * hp.sequence_length / (ms / 1000)
    utilization = mfu(model.config(), hp, tokens_per_s, args)
    emit(f"step:{name} {label} batch:{hp.device_batch_size} seq:{hp.sequence_length} ms:{ms:.2f} "
         f"tokens_per_s:{tokens_per_s:.0f}{' mfu:' + utilization if utilization else ''} peak_memory_MiB:{memory_mib}")
    return ms, utilization


def bench_steps(args, run_triton, renorm_ms):
    seq = 32 if args.quick else 1024
    for size in args.sizes:
        batch = 2 if args.quick else DEFAULT_BATCH[size]
        for kernels in args.step_kernels:
            if kernels == "triton" and not run_triton:
                emit(f"step:skipped size:{size} kernels:triton (no CUDA and TRITON_INTERPRET unset)")
                continue
            while True:  # the default device batch, halved while it does not fit
                flags = [f"--kernels={kernels}", f"--batch_size={batch}", f"--device_batch_size={batch}",
                         f"--sequence_length={seq}"]
                try:
                    ms = []
                    for name, module in SCRIPTS.items():
                        torch._dynamo.reset()  # a fresh compile per model and size
                        prepared = prepare(module, model_argv(size, args.quick) + flags, args.backend)
                        ms.append(step_time(name, prepared, f"size:{size} kernels:{kernels}", args)[0])
                        del prepared
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
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    run_triton = kernels.triton is not None and (CUDA or interpreting)
    emit(f"bench device:{device_name()} torch:{torch.__version__} triton:{triton_version()} "
         f"interpret:{int(interpreting)} quick:{int(args.quick)}")
    if not CUDA:
        emit("note: CPU run: every ms, GB/s, copy_pct, speedup, ratio and tokens_per_s below is meaningless (CPU "
             "threads and Triton's interpreter, not a GPU); only that each path runs is checked")
    if not run_triton:
        emit("note: triton rows skipped (" + ("triton is not installed" if kernels.triton is None else
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
    return getattr(kernels.triton, "__version__", None)


# ---------------------------------------------------------------------------- validation
class Record:
    """The validation's folder: a log per command, results.txt (a line per stage), README.md and DIR.tar.gz, the last
    three rewritten when a stage ends, so that a run stopped midway leaves all it finished."""

    def __init__(self, path, header):
        self.path = path
        self.header = header
        self.done = []
        self.stage = None
        os.makedirs(path, exist_ok=True)
        open(self.file("results.txt"), "w").close()
        self.write()

    def file(self, name):
        return os.path.join(self.path, name)

    def begin(self, name):
        self.stage = dict(name=name, commands=[], files=[], first_line=len(LINES))

    def log(self, name):
        """Path of a file this stage writes into the folder (the README lists it)."""
        self.stage["files"].append(name)
        return self.file(name)

    def command(self, text):
        self.stage["commands"].append(text)

    def run(self, cmd, log, timeout):
        """cmd in the repo root, its output into the folder's `log` as it comes; returns (exit code, output)."""
        self.command(shlex.join(cmd))
        print(f"validate: {shlex.join(cmd)}  > {log}", flush=True)
        with open(self.log(log), "w") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        with open(self.file(log)) as f:
            return rc, f.read()

    def end(self, status, seconds, summary):
        line = f"stage:{self.stage['name']} status:{status} s:{seconds:.0f} {summary}"
        emit(line)
        self.stage.update(status=status, seconds=seconds, line=line, lines=LINES[self.stage["first_line"]:-1])
        self.done.append(self.stage)
        with open(self.file("results.txt"), "a") as f:
            f.write(line + "\n")
        self.write()

    def write(self):
        """README.md, then the folder as DIR.tar.gz (written aside and renamed: never half an archive)."""
        text = self.header + "\n| stage | status | seconds |\n|---|---|---|\n"
        text += "".join(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} |\n" for s in self.done)
        for s in self.done:
            text += f"\n## {s['name']}: {s['status']}\n\n`{s['line']}`\n\n"
            text += "".join(f"- command: `{c}`\n" for c in s["commands"])
            if s["files"]:
                text += "- files: " + ", ".join(f"`{name}`" for name in s["files"]) + "\n"
            if s["lines"]:
                text += "\n```\n" + "\n".join(s["lines"]) + "\n```\n"
        with open(self.file("README.md"), "w") as f:
            f.write(text)
        with tarfile.open(self.path + ".tar.gz.tmp", "w:gz") as tar:
            tar.add(self.path, arcname=os.path.basename(self.path))
        os.replace(self.path + ".tar.gz.tmp", self.path + ".tar.gz")


def default_argv(args):
    """The default shape at one micro-batch of 64 x 1024 tokens per step and --kernels; --quick: a tiny model."""
    if args.quick:
        return model_argv("speedrun", True) + ["--sequence_length=32", "--batch_size=4", "--device_batch_size=4",
                                               f"--kernels={args.kernels}"]
    return ["--batch_size=64", "--device_batch_size=64", f"--kernels={args.kernels}"]


def compiled(name, args, state):
    """prepare()'s tuple for one script at default_argv, made once: the stages after `compile` reuse it."""
    if name not in state:
        state[name] = prepare(SCRIPTS[name], default_argv(args), args.backend)
    return state[name]


def stage_tests(args, record, state, slow=False):
    tests = ["tests/test_gpu.py"] if args.quick else ["tests/test_gpu.py", "tests/test_kernels.py"]  # CPU: skips
    select = SLOW_TESTS if slow else f"not ({SLOW_TESTS})"
    left = max(1, state["deadline"] - time.perf_counter())  # a hung test fails the stage, not the whole budget
    rc, text = record.run([sys.executable, "-m", "pytest", *tests, "-q", "-rs", "-k", select],
                          "more_tests.txt" if slow else "tests.txt", left)
    summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    counts = re.sub(r" in [\d.]+s.*", "", summary[-1]).strip("= ") if summary else "no pytest summary"
    return rc == 0, f"pytest:{rc} {counts.replace(', ', ',').replace(' ', '_')}"


def compile_check(name, args, state):
    """One compiled training step at the default shape against eager --kernels=torch on the same weights and batch,
    then the eval graph; emits a compile: line and returns whether it held."""
    module = SCRIPTS[name]
    hp, model, run, optimizers = compiled(name, args, state)
    x, y = torch.randint(hp.vocab_size, (2, hp.device_batch_size, hp.sequence_length), device=DEVICE).unbind(0)
    with torch.device(DEVICE):
        reference = module.GPT(dataclasses.replace(hp, kernels="torch"))
    reference.load_state_dict(model.state_dict())
    ref_loss = 0.0
    chunk = min(8, hp.device_batch_size)  # eager keeps more activations: the same batch in micro-batches
    for i in range(0, hp.device_batch_size, chunk):
        with autocast():
            part = reference(x[i:i + chunk], y[i:i + chunk]) * (chunk / hp.device_batch_size)
        part.backward()
        ref_loss += part.item()
    ref_grads = [p.grad.cpu() for p in reference.parameters()]  # off the GPU: the peak below is the compiled step's
    del reference
    torch._dynamo.utils.counters.clear()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with autocast():
        loss = run(x, y)
    loss.backward()
    sync()
    compile_s = time.perf_counter() - t0
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    grad_err = max(((p.grad.cpu() - r).norm() / (r.norm() + 1e-6)).item()
                   for p, r in zip(model.parameters(), ref_grads))
    optimizer_step(model, optimizers, 1.0, hp.grad_clip)  # the rest of the step, as the scripts take it
    sync()
    peak = "n/a"
    if CUDA:  # weights, gradients and activations; AdamW's state arrives after them, in the optimizer step
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"
    plan = hp if CUDA else dataclasses.replace(hp, device="cpu")
    estimate = memory.estimate(module, plan, 1)["total"] / 2**20
    model.eval()  # the graph the scripts' validation passes compile: no grad, eval mode
    t0 = time.perf_counter()
    with torch.no_grad(), autocast():
        eval_loss = run(x, y).item()
    model.train()
    eval_s = time.perf_counter() - t0
    ok = breaks == 0 and abs(loss.item() - ref_loss) < 1e-2 and grad_err < 5e-2 and np.isfinite(eval_loss)
    emit(f"compile:{name} ok:{int(ok)} backend:{args.backend or 'eager'} compile_s:{compile_s:.1f} "
         f"graph_breaks:{breaks} loss:{loss.item():.4f} "
         f"torch_kernels_loss:{ref_loss:.4f} max_grad_rel_err:{grad_err:.1e} first_step_peak_MiB:{peak} "
         f"memory_estimate_MiB:{estimate:.0f} eval_compile_s:{eval_s:.1f} eval_loss_after_step:{eval_loss:.4f}")
    return ok, compile_s


def stage_compile(args, record, state):
    record.command(f"python bench.py --validate --stages=compile: in this process, torch.compile of each script's GPT "
                   f"at {shlex.join(default_argv(args))}, one training step, its eager check, the eval graph")
    ok = {}
    seconds = {}
    for name in SCRIPTS:
        ok[name], seconds[name] = compile_check(name, args, state)
    return all(ok.values()), " ".join(f"{name}:{'ok' if ok[name] else 'FAILED'} {name}_compile_s:{seconds[name]:.0f}"
                                      for name in SCRIPTS)


def stage_kernels(args, record, state):
    record.command("python bench.py --validate --stages=kernels: in this process, the table of python bench.py "
                   "--skip_steps --sizes=speedrun --stream_dtypes=float32, without the compiled renorm")
    first = len(LINES)
    copy_gbs = copy_bandwidth(2**28 if CUDA else 2**20, args.reps)
    emit(f"copy: GB/s:{copy_gbs:.1f}")
    speedups = bench_kernels(args, copy_gbs, True)
    state["renorm_ms"] = bench_renorm(args, copy_gbs, True)
    with open(record.log("kernels.txt"), "w") as f:
        f.write("\n".join(LINES[first:]) + "\n")
    triton_ms = state["renorm_ms"]["float32", "triton"]
    return True, " ".join(f"{name}_{vs.split()[-1]}" for name, vs in speedups.items()) + f" renorm_ms:{triton_ms:.3f}"


def stage_steps(args, record, state):
    record.command("python bench.py --validate --stages=steps: in this process, on the compile stage's models, 3 "
                   f"warm-up and {args.step_reps} timed steps each")
    ms = {}
    utilization = {}
    for name in SCRIPTS:
        ms[name], utilization[name] = step_time(name, compiled(name, args, state), "kernels:triton", args)
    renorm = ""
    if ("float32", "triton") in state.get("renorm_ms", {}):
        renorm = f" renorm_pct_of_ngpt_step:{100 * state['renorm_ms']['float32', 'triton'] / ms['ngpt2']:.2f}"
    emit(f"ab:ngpt/gpt kernels:triton gpt_ms:{ms['gpt2']:.2f} ngpt_ms:{ms['ngpt2']:.2f} "
         f"ratio:{ms['ngpt2'] / ms['gpt2']:.3f}{renorm}")
    return True, (f"gpt_ms:{ms['gpt2']:.1f} ngpt_ms:{ms['ngpt2']:.1f} ratio:{ms['ngpt2'] / ms['gpt2']:.3f} "
                  f"gpt_mfu:{utilization['gpt2'] or 'n/a'} ngpt_mfu:{utilization['ngpt2'] or 'n/a'}")


def token_flags(args, tmp):
    """--input_bin/--input_val_bin: cached FineWeb when present, else random tokens in tmp (losses then mean
    nothing; step times, MFU and the code path still do)."""
    if not args.quick and os.path.exists(os.path.join(ROOT, "data/fineweb10B/fineweb_val_000000.bin")):
        return [f"--input_bin={ROOT}/data/fineweb10B/fineweb_train_*.bin",
                f"--input_val_bin={ROOT}/data/fineweb10B/fineweb_val_*.bin"]
    vocab = 256 if args.quick else 50257
    rng = np.random.default_rng(0)
    for split, n in (("train", 2**16 if args.quick else 2**22), ("val", 2**12 if args.quick else 2**19)):
        header = np.zeros(256, dtype="<i4")
        header[:3] = train_gpt2.MAGIC, 1, n
        with open(os.path.join(tmp, f"rand_{split}_000000.bin"), "wb") as f:
            f.write(header.tobytes() + rng.integers(0, vocab, n, dtype=np.uint16).tobytes())
    return [f"--input_bin={tmp}/rand_train_*.bin", f"--input_val_bin={tmp}/rand_val_*.bin"]


def last(pattern, text, default="n/a"):
    found = re.findall(pattern, text, re.M)
    return found[-1] if found else default


def stage_run(args, record, state):
    """Both scripts' main() in this process: the loader, the compile warm-up, the loop, validation, the log, MFU.
    Their model and batch are the compile stage's, so torch.compile finds that stage's code and compiles nothing."""
    for name in SCRIPTS:
        state.pop(name, None)  # main() builds its own model: free the compile stage's, so peak memory is main()'s
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # main() logs the process's peak: from here on, its own
    steps = 3 if args.quick else RUN_STEPS
    results = {}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        flags = default_argv(args) + token_flags(args, tmp) + [
            f"--num_iterations={steps}", "--warmup_iters=1", "--warmdown_iters=0", "--val_loss_every=0",
            "--save_every=0", f"--compile={args.compile * CUDA}", f"--val_tokens={128 if args.quick else 4 * 65536}",
            f"--log_dir={record.path}"]
        for name, module in SCRIPTS.items():
            argv = flags + [f"--run_id=run_{name}"]
            record.command(f"python train_{name}.py {shlex.join(argv)} (as main(argv) in this process)")
            log = record.log(f"run_{name}.txt")
            handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
            code = 0
            try:
                with open(record.log(f"run_{name}_console.txt"), "w") as f:
                    with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                        module.main(argv)
            except SystemExit as exit_:  # the scripts' one-line errors (in the console file)
                code = exit_.code if isinstance(exit_.code, int) else 1
            finally:
                signal.signal(signal.SIGTERM, handlers[0])  # main() installed its save-on-signal handlers
                signal.signal(signal.SIGINT, handlers[1])
            text = open(log).read() if os.path.exists(log) else ""
            tokens_per_s = last(r"^step:\d+/\d+ train_loss:.* tokens_per_s:(\d+)", text)
            utilization = ""
            if tokens_per_s != "n/a":  # the logged throughput against this GPU's peak (one process here)
                hp = module.parse_args(argv)
                with torch.device("meta"):
                    utilization = mfu(module.GPT(hp).config(), hp, float(tokens_per_s), args)
            results[name] = dict(val_loss=last(r"^step:\d+/\d+ val_loss:(\S+)", text),
                                 step_avg=last(r"^step:\d+/\d+ train_loss:.* step_avg:([\d.]+)ms", text),
                                 mfu=utilization or "n/a",
                                 warmup=last(r"^compile_warmup:(\d+)ms", text),
                                 peak=last(r"^peak_memory:(\d+)MiB", text))
            ok = ok and not code and results[name]["val_loss"] != "n/a"
            emit(f"run:{name} exit:{code} steps:{steps} " + " ".join(f"{k}:{v}" for k, v in results[name].items()))
    return ok, " ".join(f"{name}_{k}:{results[name][k]}" for name in SCRIPTS for k in ("val_loss", "step_avg", "mfu"))


def stage_more_tests(args, record, state):
    return stage_tests(args, record, state, slow=True)


STAGE_FUNCTIONS = dict(tests=stage_tests, compile=stage_compile, kernels=stage_kernels, steps=stage_steps,
                       run=stage_run, more_tests=stage_more_tests)


def failure(err, record):
    """A stage's exception as its one-line result; the traceback goes into the folder."""
    name = f"{record.stage['name']}_error.txt"
    with open(record.log(name), "w") as f:
        f.write(traceback.format_exc())
    hint = ""
    if isinstance(err, torch.OutOfMemoryError):
        hint = " (the default micro-batch of 64 x 1024 tokens does not fit: python -m tune.memory gpt2 --gpu_gib=...)"
    message = (str(err).strip().splitlines() or [""])[0][:200]
    return f"error:{type(err).__name__} {message}{hint} (traceback in {name})"


def validate(args):
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("error: --validate --quick on CPU runs the Triton kernels in Triton's interpreter: "
                 "TRITON_INTERPRET=1 python bench.py --validate --quick")
    slug = re.sub(r"[^a-z0-9]+", "_", device_name().lower().replace("nvidia", "")).strip("_")
    path = os.path.abspath(args.record_dir or os.path.join(ROOT, "records",
                                                           f"{datetime.date.today()}_gpu_validation_{slug}"))
    expected = EXPECTED_S if CUDA else EXPECTED_QUICK_S
    header = (f"# GPU validation on {device_name()}, {datetime.date.today()}\n\n"
              f"`python {shlex.join(['bench.py'] + args.argv)}` with torch {torch.__version__} and triton "
              f"{triton_version()}. Each stage's result line, commands and files below; what the stages check and "
              f"what to do when one fails: the project README, GPU validation.\n")
    if not CUDA:
        header += ("\nCPU smoke run (--quick, tiny model, Triton's interpreter): every time, bandwidth, ratio and loss "
                   "here is meaningless; it checks that each stage runs and records.\n")
    record = Record(path, header)
    plan = sum(expected[s] for s in args.stages)
    print(f"validate: stages {','.join(args.stages)}, expected ~{plan}s here against --budget_s={args.budget_s:g}; "
          f"record in {path}", flush=True)
    state = dict(deadline=STARTED + args.budget_s)  # and the compile stage's models, the kernels stage's renorm times
    for stage in args.stages:
        record.begin(stage)
        left = state["deadline"] - time.perf_counter()
        if expected[stage] > left:
            record.end("skipped", 0, f"expected_s:{expected[stage]} left_s:{max(left, 0):.0f} "
                       f"(over --budget_s={args.budget_s:g}; run it with --stages={stage})")
            continue
        t0 = time.perf_counter()
        try:
            ok, summary = STAGE_FUNCTIONS[stage](args, record, state)
        except Exception as err:  # recorded; the next stage still runs
            ok, summary = False, failure(err, record)
        record.end("ok" if ok else "FAILED", time.perf_counter() - t0, summary)
    failed = [s["name"] for s in record.done if s["status"] == "FAILED"]
    skipped = [s["name"] for s in record.done if s["status"] == "skipped"]
    print(f"validate: {'FAILED ' + ','.join(failed) if failed else 'ok'}"
          f"{'; skipped ' + ','.join(skipped) if skipped else ''}; {time.perf_counter() - STARTED:.0f}s; "
          f"record in {path}, archived as {path}.tar.gz", flush=True)
    sys.exit(1 if failed else 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few reps (CPU smoke run, CI)")
    parser.add_argument("--validate", action="store_true", help="the GPU validation's stages into a record folder")
    parser.add_argument("--record_dir", default="", help="--validate: the record folder (default records/<date>_...); "
                        "its archive goes beside it as RECORD_DIR.tar.gz")
    parser.add_argument("--stages", default=",".join(STAGES), help="--validate: the stages to run, comma-separated")
    parser.add_argument("--budget_s", type=float, default=360, help="--validate: skip the stages that would end past "
                        "this many seconds (their expected times are EXPECTED_S)")
    parser.add_argument("--kernels", default="triton", choices=("triton", "torch"),
                        help="--validate: the models' kernels (torch: the scripts' plain-torch fallback)")
    parser.add_argument("--compile", type=int, default=1, choices=(0, 1),
                        help="--validate: 0 runs the models eagerly (the scripts' --compile=0 fallback)")
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
    args.argv = list(argv or [])
    if not CUDA and not args.quick:
        sys.exit("error: bench.py measures a GPU and torch sees none here; the CPU smoke run is "
                 "TRITON_INTERPRET=1 python bench.py --quick (add --validate for the validation's)")
    for name, allowed in (("sizes", SHAPES), ("stream_dtypes", ("float32", "bfloat16")),
                          ("step_kernels", ("triton", "torch")), ("stages", STAGES)):
        values = getattr(args, name).split(",")
        if not values or any(v not in allowed for v in values):
            sys.exit(f"error: --{name}={getattr(args, name)}: each value must be one of {tuple(allowed)}")
        setattr(args, name, values)
    args.stages = [s for s in STAGES if s in args.stages]  # always in order of value
    if args.quick or args.validate:
        args.sizes = args.sizes[:1]  # the tiny stand-in shape is the same for every size; --validate: speedrun
        args.stream_dtypes = args.stream_dtypes[:1]  # --validate: the fp32 residual stream of default runs
    args.reps = 3 if args.quick else 10
    args.step_reps = 2 if args.quick else 10
    args.backend = "inductor" if CUDA else args.compile_cpu  # torch.compile's backend for the models ("": eager)
    if args.validate and not CUDA:
        args.backend = "aot_eager"  # the CPU smoke run: traced (graph breaks show), no code generated
    if args.validate and not args.compile:
        args.backend = ""
    if args.validate:
        validate(args)
    benchmark(args)


if __name__ == "__main__":
    main(sys.argv[1:])
