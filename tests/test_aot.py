"""Ahead-of-time compile of every Triton kernel (ops.py) for H100 (sm_90) and A100 (sm_80), no GPU needed.

The launchers run on small CPU tensors with the kernel launch replaced by a recorder, so the block sizes, warps,
dtypes and integer/alignment specializations are exactly those training picks at every preset's width and head
size (both scripts' PRESETS), in fp32, bf16 and the autocast mix (fp32 residual, bf16 branch and norm output).
Each recorded launch is compiled by Triton's own compiler for the target, and its PTX is assembled again with the
bundled ptxas -v to read register and spill counts. A compile error or a spill fails.

python -m pytest tests/test_aot.py          # the test (compiles in a subprocess without TRITON_INTERPRET)
python tests/test_aot.py 90                 # one JSON line per compiled kernel (sm_90)
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = 256  # rows per recorded launch: a multiple of 16 like 65,536 tokens, so the specializations match training


def preset_shapes():
    """{(n_embd, n_head)} over both scripts' presets."""
    import train_gpt2
    import train_ngpt2

    return sorted({(n_embd, n_head) for module in (train_gpt2, train_ngpt2)
                   for _, n_head, n_embd, _ in module.PRESETS.values()})


def expected_blocks():
    """The BLOCK of every tile the launchers' heuristics pick at the preset shapes."""
    import ops as K

    blocks = set()
    for D, n_head in preset_shapes():
        blocks |= {K._tile_config(D)[0], K._tile_config(D // n_head)[0]}
        blocks |= {K._norm_rows_tile(D, rows_adjacent)[0] for rows_adjacent in (False, True)}
    return blocks


def record_launches():
    """Every kernel launch the launchers make at the training shapes: (jit function, args, kwargs)."""
    import torch
    import triton
    import ops as K  # ops.py

    calls = []
    triton.runtime.jit.JITFunction.__getitem__ = lambda fn, grid: lambda *a, **kw: calls.append((fn, a, kw))
    K._check_triton = lambda t: None  # CPU tensors stand in for CUDA ones; nothing is launched
    f32, bf16 = torch.float32, torch.bfloat16
    eps = 1e-6
    for D, n_head in preset_shapes():
        hd = D // n_head
        for dtype in (f32, bf16):
            for x, scale in ((torch.randn(ROWS, D, dtype=dtype), torch.randn(D)),  # RMSNorm
                             (torch.randn(ROWS * n_head, hd, dtype=dtype), torch.randn(n_head, hd))):  # QK-norm
                for out_dtype in {dtype, bf16}:  # bf16: an fp32 input's norm under autocast
                    y, rstd = K._norm_scale_launch(x, scale, eps, out_dtype)
                    K._norm_scale_bwd_launch(torch.randn_like(y), x, scale, rstd)
            # nGPT's post-step renorm, two matrices per launch: rows (dim 1), and columns (dim 0) as rows of w.t()
            K.norm_rows_(list(torch.randn(2, ROWS, D, dtype=dtype).unbind(0)), eps, "triton")
            K.norm_rows_([w.t() for w in torch.randn(2, D, ROWS, dtype=dtype).unbind(0)], eps, "triton")
        for h_dtype, b_dtype in ((f32, f32), (bf16, bf16), (f32, bf16)):  # the last: fp32 residual under autocast
            h, b, alpha = torch.randn(ROWS, D, dtype=h_dtype), torch.randn(ROWS, D, dtype=b_dtype), torch.rand(D)
            _, rstd_b, rstd_u = K._residual_fwd_op(h, b, alpha, eps)
            K._residual_bwd_op(torch.randn_like(h), h, b, alpha, rstd_b, rstd_u)
            for y_dtype in {torch.promote_types(h_dtype, b_dtype), bf16}:  # bf16: y under autocast
                res, y, rstd = K._add_norm_fwd_op(h, b, alpha, eps, y_dtype)
                K._add_norm_bwd_op(torch.randn_like(res), torch.randn_like(y), res, alpha, rstd, h_dtype, b_dtype)
    kernels = {name: obj for name, obj in vars(K).items() if isinstance(obj, triton.runtime.jit.JITFunction)}
    return calls, kernels


def compile_launch(fn, args, kwargs, capability):
    """Compile one recorded launch for sm_<capability> as the JIT would there; returns (registers, spill bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    with tempfile.TemporaryDirectory() as tmp:  # ptxas -v again: the compiled kernel's metadata has no spill count
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
        log = subprocess.run([get_ptxas(capability).path, "-v", f"--gpu-name={arch}", ptx, "-o", ptx + ".o"],
                             capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return registers, spills


def main(capability):
    calls, kernels = record_launches()
    seen = set()
    for fn, args, kwargs in calls:
        dtypes = [str(a.dtype)[6:] for a in args if hasattr(a, "dtype")]
        ones = tuple(a == 1 for a in args if isinstance(a, int))  # ints equal to 1 specialize as constants
        key = (fn.__name__, json.dumps(kwargs, sort_keys=True), tuple(dtypes), ones)
        if key in seen:  # the same compile (e.g. the norm kernel of both scripts at one shape)
            continue
        seen.add(key)
        registers, spills = compile_launch(fn, args, kwargs, capability)
        print(json.dumps(dict(kernel=fn.__name__, sm=capability, dtypes=dtypes, registers=registers,
                              spill_bytes=spills, **kwargs)), flush=True)
    print(json.dumps(dict(all_kernels=sorted(kernels))), flush=True)


def run_aot(capability, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter replaces the compiler
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")  # a fresh cache: every kernel really compiles
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, __file__, str(capability)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)


def ptxas_available():
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        from triton.compiler import ASTSource  # noqa: F401
        from triton.runtime.jit import create_function_from_signature  # noqa: F401
        return all(os.access(get_ptxas(capability).path, os.X_OK) for capability in (80, 90))
    except (ImportError, AttributeError, RuntimeError):
        return False


needs_ptxas = pytest.mark.skipif(not ptxas_available(), reason="needs triton 3.x with its bundled ptxas (pip install "
                                 "triton on Linux x86-64; the harness uses triton.compile's internals of 3.6 to 3.9)")


@needs_ptxas
@pytest.mark.parametrize("capability", [90, 80], ids=["sm_90", "sm_80"])
@pytest.mark.slow
def test_every_kernel_compiles_without_spills(capability, tmp_path):
    out = run_aot(capability, tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    compiled, kernels = lines[:-1], lines[-1]["all_kernels"]
    assert {c["kernel"] for c in compiled} == set(kernels)  # every @triton.jit kernel of ops.py
    assert {c["BLOCK"] for c in compiled} == expected_blocks()  # every tile the heuristics pick at the presets
    spilled = [c for c in compiled if c["spill_bytes"]]
    assert not spilled, f"register spills on sm_{capability}: {spilled}"


CANARY = '''
import sys
import triton
import triton.language as tl
from tests import test_aot


@triton.jit
def big_tile(X, BLOCK: tl.constexpr):  # one warp holding 32K fp32 values: 1024 per thread, far beyond 255 registers
    x = tl.load(X + tl.arange(0, BLOCK))
    tl.store(X + tl.arange(0, BLOCK), x * tl.sum(x, 0))


@triton.jit
def broken(X, BLOCK: tl.constexpr):
    tl.store(X + tl.arange(0, BLOCK), undefined_name)


import torch
x = torch.empty(32768)
print("spills", test_aot.compile_launch(big_tile, (x,), dict(BLOCK=32768, num_warps=1), 90)[1])
test_aot.compile_launch(broken, (x,), dict(BLOCK=128), 90)
'''


@needs_ptxas
@pytest.mark.slow
def test_harness_sees_spills_and_compile_errors(tmp_path):
    # the harness must really compile: a kernel that spills reports it, a broken kernel fails
    script = tmp_path / "canary.py"
    script.write_text(CANARY)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, str(script), "90"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    spills = int(re.search(r"spills (\d+)", out.stdout).group(1))
    assert spills > 0
    assert out.returncode != 0 and "undefined_name" in out.stderr


if __name__ == "__main__":
    main(int(sys.argv[1]))
