"""Benchmarks of the hand-written Triton kernels against plain torch and torch.compile, the nGPT post-step
weight renormalization, and a step-time A/B of train_gpt2.py vs train_ngpt2.py.

python bench.py                  # CUDA: the 124M and 1B shapes; CPU: tiny shapes
python bench.py --quick          # tiny sizes, few reps (CI: TRITON_INTERPRET=1 python bench.py --quick, CPU)
python bench.py --out bench.txt  # also write the output to a file

Every result is one grep-able line of key:value pairs (kernel:, renorm:, step:, ab:, ratio:). Timings are
medians; on CPU the Triton rows run only under TRITON_INTERPRET=1 (and then time the interpreter, not a GPU).
"""
import argparse
import os
import statistics
import sys
import time

import torch

import train_gpt2
import train_ngpt2

LINES = []


def emit(line):
    print(line, flush=True)
    LINES.append(line)


def fmt(v, digits=3):
    return "skipped" if v is None else f"{v:.{digits}f}"


def median_ms(fn, reps, warmup, cuda):
    """Median wall time of fn() in ms: CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def copy_bandwidth(device, numel, reps, cuda):
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), reps, 2, cuda)
    return 2 * src.numel() * src.element_size() / (ms * 1e6)  # GB/s: read + write


# ---------------------------------------------------------------------------- kernels
def kernel_cases(tokens, quick):
    """(kernel, case, x shape, scale groups) at the shapes the 124M (D=768, 12 heads of 64) and 1B (D=2048,
    16 heads of 128) configs use, for `tokens` tokens per device step."""
    cases = [("norm_scale", "124M_rmsnorm", (tokens, 768), 1), ("norm_scale", "124M_qk", (tokens, 12, 64), 12),
             ("residual_update", "124M", (tokens, 768), 1)]
    if not quick:
        cases += [("norm_scale", "1B_rmsnorm", (tokens, 2048), 1), ("norm_scale", "1B_qk", (tokens, 16, 128), 16),
                  ("residual_update", "1B", (tokens, 2048), 1)]
    return cases


def make_inputs(kernel, shape, groups, dtype, device):
    D = shape[-1]
    if kernel == "norm_scale":
        scale = torch.randn(groups, D, device=device) if groups > 1 else torch.randn(D, device=device)
        return [torch.randn(shape, device=device, dtype=dtype), scale]
    h = torch.nn.functional.normalize(torch.randn(shape, device=device), dim=-1).to(dtype)
    return [h, torch.randn(shape, device=device, dtype=dtype), torch.rand(D, device=device)]


def kernel_fn(kernel, kernels):
    eps = 1e-6
    if kernel == "norm_scale":
        if kernels == "torch_ref":
            return lambda x, s: train_gpt2.norm_scale_torch(x, s, eps)
        return lambda x, s: train_gpt2.norm_scale(x, s, eps, kernels)
    if kernels == "torch_ref":
        return lambda h, b, a: train_ngpt2.residual_update_torch(h, b, a, eps)
    return lambda h, b, a: train_ngpt2.residual_update(h, b, a, eps, kernels)


def bench_kernels(args, device, cuda, copy_gbs, run_triton, run_compiled, tokens, reps):
    # minimum traffic in elements of x: norm_scale reads x, writes y (+ bwd reads x, dy, writes dx);
    # residual_update reads h, b, writes out (+ bwd reads dout, h, b, writes dh, db)
    traffic = {("norm_scale", "fwd"): 2, ("norm_scale", "fwd+bwd"): 5,
               ("residual_update", "fwd"): 3, ("residual_update", "fwd+bwd"): 8}
    for kernel, case, shape, groups in kernel_cases(tokens, args.quick):
        for dtype in (torch.bfloat16, torch.float32):
            inputs = [t.requires_grad_() for t in make_inputs(kernel, shape, groups, dtype, device)]
            ref = kernel_fn(kernel, "torch_ref")
            torch._dynamo.reset()  # fresh compile cache per case: no recompile limit, no dynamic shapes
            impls = {"triton": kernel_fn(kernel, "triton") if run_triton else None, "torch": kernel_fn(kernel, "torch"),
                     "compiled": torch.compile(ref, dynamic=False) if run_compiled else None}
            dy = torch.randn(shape, device=device, dtype=dtype)
            n_bytes = inputs[0].numel() * inputs[0].element_size()
            for mode in ("fwd", "fwd+bwd"):
                ms = {}
                for name, fn in impls.items():
                    if fn is None:
                        ms[name] = None
                        continue
                    if mode == "fwd":
                        def step(fn=fn):
                            with torch.no_grad():
                                fn(*inputs)
                    else:
                        def step(fn=fn):
                            torch.autograd.grad(fn(*inputs), inputs, dy)
                    ms[name] = median_ms(step, reps, 2, cuda)
                    gbs = traffic[kernel, mode] * n_bytes / (ms[name] * 1e6)
                    emit(f"kernel:{kernel} case:{case} shape:{'x'.join(map(str, shape))} groups:{groups} "
                         f"dtype:{str(dtype)[6:]} pass:{mode} impl:{name} ms:{ms[name]:.4f} GB/s:{gbs:.1f} "
                         f"copy_pct:{100 * gbs / copy_gbs:.1f}")
                t, tt, tc = ms["triton"], ms["torch"], ms["compiled"]
                emit(f"ratio:{kernel} case:{case} dtype:{str(dtype)[6:]} pass:{mode} "
                     f"triton/torch:{fmt(t / tt if t and tt else None)} triton/compiled:{fmt(t / tc if t and tc else None)}")


# ---------------------------------------------------------------------------- post-step renorm
def model_argv(size, tiny):
    if tiny:
        return ["--n_layer=2", "--n_head=2", "--n_embd=64", "--vocab_size=256", "--mup_base_width=64"]
    if size == "1B":
        return ["--n_layer=16", "--n_head=16", "--n_embd=2048"]
    return ["--n_layer=12", "--n_head=12", "--n_embd=768"]


def build(module, argv, device):
    hp = module.parse_args(argv)
    with torch.device(device):  # built on the device directly, as a benchmark needs no CPU-built copy
        model = module.GPT(hp)
    return hp, model


def bench_renorm(args, device, cuda, copy_gbs, run_triton, reps):
    for dtype in ("float32", "bfloat16"):
        for kernels in ("triton", "torch"):
            if kernels == "triton" and not run_triton:
                emit(f"renorm:ngpt124M dtype:{dtype} impl:triton skipped (no CUDA and TRITON_INTERPRET unset)")
                continue
            argv = model_argv("124M", args.tiny) + [f"--kernels={kernels}"]
            hp, model = build(train_ngpt2, argv, device)
            pairs = model.normalized_matrices()
            if dtype == "bfloat16":
                pairs = [(w.data.bfloat16(), dim) for w, dim in pairs]
            n_bytes = sum(w.numel() * w.element_size() for w, _ in pairs)
            ms = median_ms(lambda: train_ngpt2.normalize_weights_(pairs, hp.norm_eps, kernels), reps, 2, cuda)
            gbs = 2 * n_bytes / (ms * 1e6)
            emit(f"renorm:ngpt124M{'_tiny' if args.tiny else ''} dtype:{dtype} impl:{kernels} matrices:{len(pairs)} "
                 f"MB:{n_bytes / 1e6:.1f} ms:{ms:.4f} GB/s:{gbs:.1f} copy_pct:{100 * gbs / copy_gbs:.1f}")


# ---------------------------------------------------------------------------- step-time A/B
def step_time(module, size, kernels, args, device, cuda, compile_model, reps):
    batch, seq = (2, 32) if args.tiny else ((8, 1024) if size == "1B" else (16, 1024))
    argv = model_argv(size, args.tiny) + [f"--kernels={kernels}", f"--batch_size={batch}",
                                            f"--device_batch_size={batch}", f"--sequence_length={seq}"]
    hp, model = build(module, argv, device)
    torch._dynamo.reset()  # each model compiles from scratch: no shape guards carried over from another size
    optimizer = torch.optim.AdamW(model.param_groups(), betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    run = torch.compile(model) if compile_model else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    x, y = torch.randint(hp.vocab_size, (2, batch, seq), device=device).unbind(0)

    def step():
        with autocast:
            loss = run(x, y)
        loss.backward()
        if hp.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.post_step()

    ms = median_ms(step, reps, 3, cuda)  # warmup steps include compilation
    cfg = model.config()
    tokens_per_s = batch * seq / (ms / 1000)
    flops_per_token = 6 * (cfg["params"] - hp.vocab_size * hp.n_embd) + 12 * hp.n_layer * hp.n_embd * seq
    peak = next((v for k, v in train_gpt2.PEAK_BF16_FLOPS.items() if k in torch.cuda.get_device_name()), None) if cuda else None
    mfu = f" mfu:{100 * flops_per_token * tokens_per_s / peak:.1f}%" if peak else ""
    emit(f"step:{module.__name__} size:{size}{'_tiny' if args.tiny else ''} kernels:{kernels} compiled:{int(compile_model)} "
         f"params:{cfg['params']} tokens:{batch * seq} ms:{ms:.2f} tokens_per_s:{tokens_per_s:.0f}{mfu}")
    return ms


def bench_steps(args, device, cuda, run_triton, reps):
    compile_model = cuda or args.compile_cpu
    sizes = ["124M"] if args.tiny else ["124M", "1B"]
    for size in sizes:
        for kernels in ("triton", "torch"):
            if kernels == "triton" and not run_triton:
                emit(f"step:skipped size:{size} kernels:triton (no CUDA and TRITON_INTERPRET unset)")
                continue
            try:
                ms = [step_time(m, size, kernels, args, device, cuda, compile_model, reps) for m in (train_gpt2, train_ngpt2)]
            except torch.OutOfMemoryError:
                emit(f"step:skipped size:{size} kernels:{kernels} (out of memory)")
                torch._dynamo.reset()
                torch.cuda.empty_cache()
                continue
            emit(f"ab:ngpt/gpt size:{size} kernels:{kernels} gpt_ms:{ms[0]:.2f} ngpt_ms:{ms[1]:.2f} ratio:{ms[1] / ms[0]:.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few reps (CI)")
    parser.add_argument("--out", default="", help="also write the output lines to this file")
    parser.add_argument("--compile-cpu", action="store_true", help="also time torch.compile on CPU (slow to compile)")
    parser.add_argument("--skip-steps", action="store_true", help="only the kernel and renorm benchmarks")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.tiny = args.quick or not cuda  # models: the real 124M/1B configs only on CUDA
    device = "cuda" if cuda else "cpu"
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    run_triton = train_gpt2.triton is not None and (cuda or interpreting)
    run_compiled = cuda or args.compile_cpu
    reps = 3 if args.quick else (20 if cuda else 5)
    tokens = 32 if args.quick else (16 * 1024 if cuda else 256)
    emit(f"bench device:{torch.cuda.get_device_name() if cuda else 'cpu'} torch:{torch.__version__} "
         f"triton:{getattr(train_gpt2.triton, '__version__', None)} interpret:{int(interpreting)} quick:{int(args.quick)}")
    if not run_triton:
        emit("note: triton rows skipped (" + ("triton is not installed" if train_gpt2.triton is None else
                                                "CPU tensors need TRITON_INTERPRET=1") + ")")
    if not run_compiled:
        emit("note: compiled rows skipped on CPU (pass --compile-cpu to include them)")
    copy_gbs = copy_bandwidth(device, 2**28 if cuda else (2**20 if args.quick else 2**24), reps, cuda)
    emit(f"copy: GB/s:{copy_gbs:.1f}")
    bench_kernels(args, device, cuda, copy_gbs, run_triton, run_compiled, tokens, reps)
    bench_renorm(args, device, cuda, copy_gbs, run_triton, reps)
    if not args.skip_steps:
        bench_steps(args, device, cuda, run_triton, 2 if args.quick else (10 if cuda else 3))
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(LINES) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
