"""CUDA-only checks at real shapes (run by `python bench.py --validate`; skipped without a GPU).

Kernels against their torch references at 65,536 tokens of the speedrun and 1B widths, fp32 and bf16 (the
validation's first stage, with tests/test_kernels.py); a compiled training step with the Triton kernels against
--kernels=torch under bf16 autocast and --param_dtype=bfloat16 through one-process torchrun (its more_tests stage:
they compile models, so they come after the stages that fit the default budget).
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import ops
import train_gpt2
import train_ngpt2
from conftest import write_shard

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real kernels at real "
                                "shapes); the CPU tests run the same kernels under TRITON_INTERPRET=1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = 65536
EPS = 1e-6
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def check(fn, ref, inputs, tol):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out, out_ref = fn(*inputs), ref(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    out_ref = out_ref if isinstance(out_ref, tuple) else (out_ref,)
    for o, o_ref in zip(out, out_ref):
        torch.testing.assert_close(o, o_ref, **tol)
    dys = [torch.randn_like(o) for o in out]
    for g, g_ref in zip(torch.autograd.grad(out, inputs, dys), torch.autograd.grad(out_ref, inputs, dys)):
        torch.testing.assert_close(g, g_ref, **tol)


@pytest.mark.parametrize("D, n_head", [(768, 12), (2048, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_at_real_shapes(D, n_head, dtype):
    torch.manual_seed(0)
    with torch.device("cuda"):
        x, b = torch.randn(TOKENS, D, dtype=dtype), torch.randn(TOKENS, D, dtype=torch.bfloat16)
        h = torch.nn.functional.normalize(torch.randn(TOKENS, D), dim=-1).to(dtype)
        q, s_qk = torch.randn(TOKENS, n_head, D // n_head, dtype=torch.bfloat16), torch.randn(n_head, D // n_head)
        scale, alpha = torch.randn(D), torch.rand(D)
        w = torch.randn(4 * D, D, dtype=dtype)
    tol = TOL[torch.bfloat16]  # every case has a bf16 operand
    check(lambda *a: ops.add_norm(*a, EPS, "triton"), lambda *a: ops.add_norm(*a, EPS, "torch"),
          [x, b, scale], tol)
    check(lambda *a: ops.norm_scale(*a, EPS, "triton"), lambda *a: ops.norm_scale_torch(*a, EPS),
          [x, scale], TOL[dtype])
    check(lambda *a: ops.norm_scale(*a, EPS, "triton"), lambda *a: ops.norm_scale_torch(*a, EPS),
          [q, s_qk], tol)
    check(lambda *a: ops.residual_update(*a, EPS, "triton"),
          lambda *a: ops.residual_update_torch(*a, EPS), [h, b, alpha], tol)
    pairs, refs = [(w.clone(), 1), (w.clone(), 0)], [(w.clone(), 1), (w.clone(), 0)]
    train_ngpt2.normalize_weights_(pairs, EPS, "triton")
    train_ngpt2.normalize_weights_(refs, EPS, "torch")
    for (got, _), (ref, _) in zip(pairs, refs):
        torch.testing.assert_close(got, ref, **TOL[dtype])


@pytest.mark.parametrize("module", [train_gpt2, train_ngpt2], ids=["gpt", "ngpt"])
def test_compiled_step_triton_matches_torch(module):
    # one compiled forward/backward under bf16 autocast at the speedrun width (2 layers): same loss and gradients
    x, y = torch.randint(50304, (2, 8, 1024), device="cuda").unbind(0)
    results = []
    for kernels in ("triton", "torch"):
        torch.manual_seed(0)
        hp = module.parse_args(["--n_layer=2", f"--kernels={kernels}"])
        model = module.GPT(hp).cuda()
        torch._dynamo.reset()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.compile(model)(x, y)
        loss.backward()
        results.append((loss.item(), [p.grad.float() for p in model.parameters()]))
    (loss_t, grads_t), (loss_r, grads_r) = results
    assert abs(loss_t - loss_r) < 1e-2
    for g_t, g_r in zip(grads_t, grads_r):
        assert (g_t - g_r).norm() <= 5e-2 * g_r.norm() + 1e-6


@pytest.mark.parametrize("name", ["gpt2", "ngpt2"])
def test_bfloat16_params_through_one_process_torchrun(name, tmp_path):
    for split in ("train_000001", "val_000000"):
        write_shard(tmp_path / f"r_{split}.bin", np.random.default_rng(0).integers(0, 256, 40000))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           os.path.join(ROOT, f"train_{name}.py"), f"--input_bin={tmp_path}/r_train_*.bin",
           f"--input_val_bin={tmp_path}/r_val_*.bin", "--vocab_size=256", "--n_layer=2", "--n_head=2", "--n_embd=128",
           "--mup_base_width=128", "--sequence_length=256", "--batch_size=16", "--device_batch_size=8",
           "--val_tokens=4096", "--num_iterations=5", "--warmup_iters=1", "--warmdown_iters=2", "--val_loss_every=0",
           "--save_every=0", "--param_dtype=bfloat16", f"--log_dir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"train_loss:([\d.]+)", out.stdout)]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert "kernels:triton" in out.stdout and "compile:True" in out.stdout
