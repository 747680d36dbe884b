"""ops.py's Triton kernels (norm_scale, add_norm, residual_update, norm_rows_) vs their plain-torch references,
and the self-check the scripts run before training on them.

With a GPU the kernels run on CUDA; without one, on CPU tensors through Triton's interpreter (slow: shapes
stay tiny). Run: python -m pytest tests/test_kernels.py
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()  # without it, conftest.py has set TRITON_INTERPRET=1 before any import of triton

pytest.importorskip("triton")
import ops  # noqa: E402  (after the importorskip)
import train_gpt2  # noqa: E402
import train_ngpt2  # noqa: E402
from conftest import write_shard  # noqa: E402

if not CUDA and type(ops._norm_scale_fwd_kernel).__name__ != "InterpretedFunction":
    raise RuntimeError("tests/test_kernels.py: ops.py was imported before TRITON_INTERPRET=1 was set "
                       "(tests/conftest.py should have set it); run pytest with TRITON_INTERPRET=1 in the environment")


@pytest.fixture(autouse=True)
def default_device():
    with torch.device("cuda" if CUDA else "cpu"):  # tensors below are created on the device the kernels run on
        yield


EPS = 1e-6
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def grads(out, inputs, dy):
    return torch.autograd.grad(out, [t for t in inputs if t is not None], dy)


def check_norm_scale(mod, x, scale, dtype=torch.float32):
    x = x.detach().requires_grad_()
    scale = scale.detach().requires_grad_() if scale is not None else None
    y = mod.norm_scale(x, scale, EPS, "triton")
    y_ref = mod.norm_scale_torch(x, scale, EPS)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    dy = torch.randn_like(y)
    for g, g_ref in zip(grads(y, [x, scale], dy), grads(y_ref, [x, scale], dy)):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, g_ref, **TOL[dtype])


@pytest.mark.parametrize("D, rows", [(100, 37), (768, 5), (1000, 3)])
@pytest.mark.parametrize("scale_shape", ["none", "D", "GD"])
def test_norm_scale_fp32(D, rows, scale_shape):
    torch.manual_seed(D)
    G = 2 if scale_shape == "GD" else 1  # 2 groups: several backward programs per group at D=100
    x = torch.randn(rows * G, D)
    scale = {"none": None, "D": torch.randn(D), "GD": torch.randn(G, D)}[scale_shape]
    check_norm_scale(ops, x, scale)


@pytest.mark.parametrize("D", [100, 768])
def test_norm_scale_bf16(D):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, D).bfloat16()  # (B, T, heads, D) with a per-head scale, as nGPT's q and k
    check_norm_scale(ops, x, torch.randn(4, D), torch.bfloat16)
    check_norm_scale(ops, x, torch.randn(D).bfloat16(), torch.bfloat16)


def test_norm_scale_per_head_rows():
    # row r of the flattened (B*T*H, D) view must use scale[r % H]: compare against an explicit loop
    torch.manual_seed(0)
    x, scale = torch.randn(2, 5, 3, 16), torch.randn(3, 16)
    y = ops.norm_scale(x, scale, EPS, "triton")
    for h in range(3):
        expected = x[:, :, h] / torch.sqrt(x[:, :, h].pow(2).sum(-1, keepdim=True) + EPS) * scale[h]
        torch.testing.assert_close(y[:, :, h], expected)


def test_norm_scale_zero_rows():
    x = torch.randn(9, 100)
    x[[0, 4, 8]] = 0.0
    scale = torch.randn(100, requires_grad=True)
    xr = x.clone().requires_grad_()
    y = ops.norm_scale(xr, scale, EPS, "triton")
    assert torch.isfinite(y).all() and (y[[0, 4, 8]] == 0).all()
    y.sum().backward()
    assert torch.isfinite(xr.grad).all() and torch.isfinite(scale.grad).all()
    check_norm_scale(ops, x, scale)


def test_norm_scale_non_contiguous():
    torch.manual_seed(0)
    check_norm_scale(ops, torch.randn(100, 11).t(), torch.randn(100))  # column stride != 1
    check_norm_scale(ops, torch.randn(7, 130)[:, 5:105], torch.randn(100))  # row stride != D
    qkv = torch.randn(2, 3, 3 * 4 * 16)
    q = qkv[..., : 4 * 16].view(2, 3, 4, 16)  # a q slice of a fused qkv: not flattenable to 2-D without a copy
    check_norm_scale(ops, q, torch.randn(4, 16))
    # a non-contiguous incoming gradient
    x = torch.randn(6, 100, requires_grad=True)
    dy = torch.randn(100, 6).t()
    g = torch.autograd.grad(ops.norm_scale(x, None, EPS, "triton"), x, dy)[0]
    torch.testing.assert_close(g, torch.autograd.grad(ops.norm_scale_torch(x, None, EPS), x, dy)[0])


def test_norm_scale_bad_input():
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match="scale"):
        ops.norm_scale(x, torch.ones(3, 10), EPS, "triton")  # 3 does not divide 4 rows
    with pytest.raises(ValueError, match="scale"):
        ops.norm_scale(x, torch.ones(9), EPS, "torch")


def test_missing_triton_message(monkeypatch):
    monkeypatch.setattr(ops, "triton", None)
    x = torch.randn(4, 10)
    torch.testing.assert_close(ops.norm_scale(x, None, EPS, "torch"), ops.norm_scale_torch(x, None, EPS))
    with pytest.raises(RuntimeError, match="needs the triton package"):
        ops.norm_scale(x, None, EPS, "triton")


def test_cpu_without_interpreter_message(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ops.norm_scale(torch.randn(4, 10, device="cpu"), None, EPS, "triton")


def check_residual(h, b, alpha, dtype=torch.float32):
    h, b, alpha = (t.detach().requires_grad_() for t in (h, b, alpha))
    out = ops.residual_update(h, b, alpha, EPS, "triton")
    ref = ops.residual_update_torch(h, b, alpha, EPS)
    assert out.shape == h.shape and out.dtype == h.dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    dy = torch.randn_like(out)
    for g, g_ref in zip(grads(out, [h, b, alpha], dy), grads(ref, [h, b, alpha], dy)):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, g_ref, **TOL[dtype])


@pytest.mark.parametrize("D, rows", [(100, 37), (768, 5), (1000, 3)])
def test_residual_update_fp32(D, rows):
    torch.manual_seed(D)
    h = torch.nn.functional.normalize(torch.randn(rows, D), dim=-1)
    check_residual(h, torch.randn(rows, D), torch.rand(D))


def test_residual_update_bf16_and_strides():
    torch.manual_seed(0)
    h = torch.nn.functional.normalize(torch.randn(2, 5, 100), dim=-1)
    b = torch.randn(2, 100, 5).transpose(1, 2)  # non-contiguous branch output
    check_residual(h.bfloat16(), b.bfloat16(), torch.rand(100), torch.bfloat16)
    check_residual(h, b, torch.rand(100))
    b[0, 1] = 0.0  # a zero branch output: its norm stays finite thanks to eps
    check_residual(h, b, torch.rand(100))


def test_residual_update_mixed_dtypes():
    # under CUDA autocast the residual stream h is fp32 while the branch output b is bf16
    torch.manual_seed(0)
    h = torch.nn.functional.normalize(torch.randn(9, 100), dim=-1).requires_grad_()
    b, alpha = torch.randn(9, 100).bfloat16().requires_grad_(), torch.rand(100, requires_grad=True)
    out = ops.residual_update(h, b, alpha, EPS, "triton")
    ref = ops.residual_update_torch(h, b, alpha, EPS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    dy = torch.randn_like(out)
    for g, g_ref, t in zip(grads(out, [h, b, alpha], dy), grads(ref, [h, b, alpha], dy), [h, b, alpha]):
        assert g.dtype == t.dtype
        torch.testing.assert_close(g, g_ref, **TOL[t.dtype])


def check_add_norm(x, b, scale):
    x, b, scale = (t.detach().requires_grad_() for t in (x, b, scale))
    res, y = ops.add_norm(x, b, scale, EPS, "triton")
    res_ref, y_ref = ops.add_norm(x, b, scale, EPS, "torch")
    tol = TOL[torch.bfloat16 if torch.bfloat16 in (x.dtype, b.dtype) else torch.float32]
    assert res.dtype == y.dtype == res_ref.dtype and res.shape == x.shape
    exact = dict(atol=0, rtol=0) if res.dtype == torch.float32 else tol  # an fp32 add of fp32 or bf16 is exact
    torch.testing.assert_close(res, res_ref, **exact)
    torch.testing.assert_close(y, y_ref, **tol)
    dres, dy = torch.randn_like(res), torch.randn_like(y)
    got = torch.autograd.grad([res, y], [x, b, scale], [dres, dy])
    ref = torch.autograd.grad([res_ref, y_ref], [x, b, scale], [dres, dy])
    for g, g_ref, t in zip(got, ref, [x, b, scale]):
        assert g.dtype == t.dtype and torch.isfinite(g).all()
        torch.testing.assert_close(g, g_ref, **tol)


@pytest.mark.parametrize("D, rows", [(100, 37), (768, 5), (1000, 3)])
def test_add_norm_fp32(D, rows):
    torch.manual_seed(D)
    check_add_norm(torch.randn(rows, D), torch.randn(rows, D), torch.randn(D))


def test_add_norm_bf16_mixed_and_strides():
    torch.manual_seed(0)
    x, b, scale = torch.randn(2, 5, 100), torch.randn(2, 100, 5).transpose(1, 2), torch.randn(100)  # b strided
    check_add_norm(x.bfloat16(), b.bfloat16(), scale)  # bf16 parameters: a bf16 residual stream
    check_add_norm(x, b.bfloat16(), scale)  # CUDA autocast: fp32 residual, bf16 branch output
    check_add_norm(torch.randn(7, 130)[:, 5:105], torch.randn(7, 100), scale)  # x rows strided
    b = -x.clone()
    b[0, 0] += 1.0
    check_add_norm(x, b, scale)  # zero residual rows stay finite thanks to eps


def test_add_norm_only_one_output_used():
    # the last block's residual is not used: its gradient arrives as zeros, not an error
    torch.manual_seed(0)
    x, b, scale = (t.requires_grad_() for t in (torch.randn(6, 32), torch.randn(6, 32), torch.randn(32)))
    got = torch.autograd.grad(ops.add_norm(x, b, scale, EPS, "triton")[1].sum(), [x, b, scale])
    ref = torch.autograd.grad(ops.add_norm(x, b, scale, EPS, "torch")[1].sum(), [x, b, scale])
    for g, g_ref in zip(got, ref):
        torch.testing.assert_close(g, g_ref, **TOL[torch.float32])


@pytest.mark.parametrize("kernel_set", ["triton", "torch"])
def test_autocast_norm_outputs_in_autocast_dtype_residual_fp32(kernel_set):
    # under autocast a norm's output feeds a matmul: written in bf16 by both implementations, its gradient taken
    # in bf16; the residual stays fp32. Without autocast the dtypes are the inputs' (fp32 here)
    torch.manual_seed(0)
    x, b, scale = torch.randn(6, 40), torch.randn(6, 40).bfloat16(), torch.randn(40)
    leaves = [t.detach().requires_grad_() for t in (x, b, scale)]
    device = "cuda" if CUDA else "cpu"
    with torch.autocast(device, dtype=torch.bfloat16):
        res, y = ops.add_norm(*leaves, EPS, kernel_set)
        z = ops.norm_scale(leaves[0], leaves[2], EPS, kernel_set)
    assert (res.dtype, y.dtype, z.dtype) == (torch.float32, torch.bfloat16, torch.bfloat16)
    res_ref, y_ref = ops.add_norm_torch(*leaves, EPS)  # fp32 outputs, rounded to bf16 below
    torch.testing.assert_close(res, res_ref, atol=0, rtol=0)
    torch.testing.assert_close(y, y_ref.bfloat16(), **TOL[torch.bfloat16])
    torch.testing.assert_close(z, ops.norm_scale_torch(leaves[0], leaves[2], EPS).bfloat16(), **TOL[torch.bfloat16])
    got = torch.autograd.grad([res, y, z], leaves, [torch.ones_like(res), torch.ones_like(y), torch.ones_like(z)])
    for g, t in zip(got, leaves):
        assert g.dtype == t.dtype and torch.isfinite(g).all() and g.abs().sum() > 0
    r, y32 = ops.add_norm(x, x, scale, EPS, kernel_set)
    assert r.dtype == y32.dtype == ops.norm_scale(x, scale, EPS, kernel_set).dtype == torch.float32


def test_autocast_both_kernel_sets_same_dtypes_and_gradients():
    torch.manual_seed(0)
    x, b, scale = torch.randn(2, 3, 40), torch.randn(2, 3, 40).bfloat16(), torch.randn(40)
    outputs = {}
    for kernel_set in ("triton", "torch"):
        leaves = [t.detach().requires_grad_() for t in (x, b, scale)]
        with torch.autocast("cuda" if CUDA else "cpu", dtype=torch.bfloat16):
            res, y = ops.add_norm(*leaves, EPS, kernel_set)
            z = ops.norm_scale(y, None, EPS, kernel_set)
        dys = [torch.linspace(-1, 1, res.numel()).view(res.shape).to(t.dtype) for t in (res, z)]
        outputs[kernel_set] = [res, z] + list(torch.autograd.grad([res, z], leaves, dys))
    for a, b_ in zip(outputs["triton"], outputs["torch"]):
        assert a.dtype == b_.dtype
        torch.testing.assert_close(a, b_, **TOL[torch.bfloat16])


@pytest.mark.parametrize("kernel_set", ["triton", "torch"])
def test_gpt_linears_read_bf16_norm_outputs_under_autocast(kernel_set):
    # every Linear fed by a norm (qkv, fc, lm_head) gets its input in bf16, with no cast of its own, and the
    # residual stream between blocks stays fp32
    hp = train_gpt2.parse_args(["--n_layer=2", "--n_head=2", "--n_embd=32", "--vocab_size=64", "--mup_base_width=32",
                                f"--kernels={kernel_set}"])
    model = train_gpt2.GPT(hp)
    seen = {}
    for name, module in model.named_modules():
        if name.endswith(("qkv", "fc", "lm_head")):
            module.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].dtype))
    streams = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: streams.append(out[0].dtype))
    idx = torch.randint(64, (2, 8))
    with torch.autocast("cuda" if CUDA else "cpu", dtype=torch.bfloat16):
        loss = model(idx, idx)
    loss.backward()
    assert len(seen) == 5 and set(seen.values()) == {torch.bfloat16}, seen
    assert streams == [torch.float32, torch.float32]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_compile_under_autocast_no_graph_break():
    def f(x, b, scale):
        res, y = ops.add_norm(x, b, scale, EPS, "triton")
        return res.sum() + ops.norm_scale(y, scale, EPS, "triton").float().sum()

    torch._dynamo.reset()
    args = [torch.randn(4, 32), torch.randn(4, 32).bfloat16(), torch.randn(32)]
    with torch.autocast("cuda" if CUDA else "cpu", dtype=torch.bfloat16):
        assert torch._dynamo.explain(f)(*args).graph_break_count == 0
        torch.testing.assert_close(torch.compile(f, backend="aot_eager", fullgraph=True)(*args), f(*args))


class LaunchCounter:
    def __init__(self, fn):
        self.fn, self.launches = fn, []

    def __getitem__(self, grid):
        self.launches.append(grid)
        return self.fn[grid]


def test_norm_rows_batched_equals_one_launch_each(monkeypatch):
    torch.manual_seed(0)
    ws = [torch.randn(24, 40), torch.randn(24, 40), torch.randn(40, 24), torch.randn(40, 24), torch.randn(40, 24),
          torch.randn(24, 40).bfloat16(), torch.randn(30, 41)[:, :40]]  # the last: row stride 41
    views = [ws[0], ws[1], ws[2].t(), ws[3].t(), ws[4], ws[5], ws[6]]
    alone = [v.clone() for v in views]  # contiguous copies: other strides, their own launch each
    alone[2], alone[3] = ws[2].clone().t(), ws[3].clone().t()  # keep the column strides
    counter = LaunchCounter(ops._norm_rows_kernel)
    monkeypatch.setattr(ops, "_norm_rows_kernel", counter)
    for v in alone:
        ops.norm_rows_([v], EPS, "triton")
    assert len(counter.launches) == len(alone)
    counter.launches.clear()
    assert ops.norm_rows_(views, EPS, "triton") is views
    assert len(counter.launches) == 5  # rows fp32 (2 matrices), columns (2), rows 40x24, rows bf16, row stride 41
    for v, a in zip(views, alone):
        assert torch.equal(v, a)
        torch.testing.assert_close(v.float().norm(dim=1), torch.ones(v.shape[0]), atol=1e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_rows_wide_columns_in_chunks(dtype):
    # a weight's columns at width > 2048 do not fit in registers: two passes over 1024-column chunks
    D = 2100
    assert ops._norm_rows_tile(D, rows_adjacent=True)[3] and not ops._norm_rows_tile(D, False)[3]
    torch.manual_seed(0)
    w = torch.randn(D, 20).to(dtype)  # (out, in): dim 0 normalized through w.t(), rows adjacent in memory
    ref = w.clone()
    ops.norm_rows_([w.t()], EPS, "triton")
    ops.norm_rows_([ref.t()], EPS, "torch")
    torch.testing.assert_close(w, ref, **TOL[dtype])
    torch.testing.assert_close(w.float().norm(dim=0), torch.ones(20), atol=1e-2 if dtype == torch.bfloat16 else 1e-5,
                               rtol=0)


def test_ngpt_post_step_one_launch_per_shape(monkeypatch):
    hp = train_ngpt2.parse_args(["--n_layer=3", "--n_head=2", "--n_embd=32", "--vocab_size=64", "--kernels=triton"])
    model = train_ngpt2.GPT(hp)
    ref = train_ngpt2.GPT(hp)
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters()):
            p.mul_(1.5)
            q.copy_(p)
    counter = LaunchCounter(ops._norm_rows_kernel)
    monkeypatch.setattr(ops, "_norm_rows_kernel", counter)
    model.post_step()
    shapes = {(tuple(w.shape), dim) for w, dim in model.normalized_matrices()}
    assert len(counter.launches) == len(shapes) == 5  # embed and lm_head, qkv, attn proj, fc, mlp proj: not 2 + 4L
    for w, dim in ref.normalized_matrices():  # one launch per matrix: the same bits
        ops.norm_rows_([w.detach() if dim == 1 else w.detach().t()], hp.norm_eps, "triton")
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalize_weights(dtype):
    torch.manual_seed(0)
    ws = [torch.randn(37, 100).to(dtype), torch.randn(100, 37).to(dtype), torch.randn(24, 1000).t().to(dtype)]
    pairs = [(ws[0], 1), (ws[1], 0), (ws[2], 1)]
    refs = [w.clone() for w in ws]
    train_ngpt2.normalize_weights_(pairs, EPS, "triton")
    train_ngpt2.normalize_weights_([(r, d) for r, (_, d) in zip(refs, pairs)], EPS, "torch")
    for (w, dim), ref in zip(pairs, refs):
        torch.testing.assert_close(w, ref, **TOL[dtype])
        norms = w.float().norm(dim=dim)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)


def test_normalize_weights_parameter_in_place():
    w = torch.nn.Parameter(torch.randn(20, 30))
    ptr = w.data_ptr()
    train_ngpt2.normalize_weights_([(w, 0)], EPS, "triton")
    assert w.data_ptr() == ptr and w.requires_grad
    torch.testing.assert_close(w.detach().norm(dim=0), torch.ones(30))


def test_compile_fullgraph_no_graph_break():
    def f(x, scale, h, alpha):
        q = ops.norm_scale(x, scale, EPS, "triton")
        out = ops.residual_update(h, q.flatten(-2), alpha, EPS, "triton")
        res, y = ops.add_norm(h, out, alpha, EPS, "triton")
        return (res * y).sum()

    torch._dynamo.reset()
    args = [torch.randn(3, 2, 16, requires_grad=True), torch.randn(2, 16, requires_grad=True),
            torch.nn.functional.normalize(torch.randn(3, 32), dim=-1).requires_grad_(), torch.rand(32, requires_grad=True)]
    assert torch._dynamo.explain(f)(*args).graph_break_count == 0
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(*args)
    got = torch.autograd.grad(loss, args)
    ref_loss = f(*args)
    torch.testing.assert_close(loss, ref_loss)
    for g, g_ref in zip(got, torch.autograd.grad(ref_loss, args)):
        torch.testing.assert_close(g, g_ref)


MODELS = [(train_gpt2, []), (train_ngpt2, []), (train_gpt2, ["--qk_norm=1"])]


@pytest.mark.parametrize("module, extra", MODELS, ids=["gpt", "ngpt", "gpt-qk_norm"])
def test_tiny_model_triton_matches_torch(module, extra):
    # the whole model: same loss, gradients and post-step weights with either kernel set
    losses, grad_sets, weights = [], [], []
    torch.manual_seed(1)
    x, y = torch.randint(64, (2, 2, 8)).unbind(0)
    for kernels in ("triton", "torch"):
        torch.manual_seed(0)
        hp = module.parse_args(["--n_layer=1", "--n_head=2", "--n_embd=32", "--vocab_size=64", "--mup_base_width=32",
                                f"--kernels={kernels}"] + extra)
        model = module.GPT(hp)
        for block in model.blocks:  # QK-norm gains away from 1, a different one per channel
            if getattr(block.attn, "qk_gain", None) is not None:
                block.attn.qk_gain.data = torch.linspace(0.7, 1.3, 32) / block.attn.qk_mult
        loss = model(x, y)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        model.post_step()
        losses.append(loss.detach())
        grad_sets.append([p.grad for p in model.parameters()])
        weights.append([p.detach() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(grad_sets[0] + weights[0], grad_sets[1] + weights[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "ngpt2"])
def test_few_training_steps_triton_match_torch(name, tmp_path):
    # the command-line training loop end to end, once per kernel set (under the interpreter on CPU)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for split in ("train_000001", "val_000000"):
        write_shard(tmp_path / f"k_{split}.bin", np.arange(3000) * 7 % 64)
    losses = {}
    for kernels in ("triton", "torch"):
        out = subprocess.run(
            [sys.executable, os.path.join(root, f"train_{name}.py"), f"--input_bin={tmp_path}/k_train_*.bin",
             f"--input_val_bin={tmp_path}/k_val_*.bin", "--vocab_size=64", "--n_layer=1", "--n_head=2", "--n_embd=32",
             "--mup_base_width=32", "--sequence_length=16", "--batch_size=2", "--device_batch_size=2",
             "--val_tokens=64", "--num_iterations=3", "--warmup_iters=0", "--warmdown_iters=1", "--val_loss_every=0",
             "--save_every=0", f"--kernels={kernels}", f"--log_dir={tmp_path}"],
            capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert ("kernels_check:ok max_err:" in out.stdout) == (kernels == "triton")  # checked before the first step
        losses[kernels] = [float(v) for v in re.findall(r"(?:train|val)_loss:([\d.]+)", out.stdout)]
    assert len(losses["torch"]) == 5  # val at 0, three steps, val at 3
    np.testing.assert_allclose(losses["triton"], losses["torch"], atol=2e-4)


def test_ngpt_model_builds_on_cpu_with_triton_kernels(monkeypatch):
    # main() builds the model on the CPU before moving it to the GPU: construction must not launch a kernel
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # as on a CUDA machine: CPU tensors can't run Triton
    hp = train_ngpt2.parse_args(["--n_layer=1", "--n_head=2", "--n_embd=32", "--vocab_size=64", "--kernels=triton"])
    model = train_ngpt2.GPT(hp)
    torch.testing.assert_close(model.embed.weight.norm(dim=1), torch.ones(64))


@pytest.mark.parametrize("module, extra", MODELS, ids=["gpt", "ngpt", "gpt-qk_norm"])
def test_whole_model_traces_without_graph_break(module, extra):
    hp = module.parse_args(["--n_layer=1", "--n_head=2", "--n_embd=32", "--vocab_size=64", "--kernels=triton"] + extra)
    model = module.GPT(hp)
    idx = torch.randint(64, (2, 8))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(idx, idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# ---------------------------------------------------------------------------- the self-check before training
def run_check():
    lines = []
    ops.check("cuda" if CUDA else "cpu", lambda s, console=True: lines.append(s))
    return lines


def test_self_check_passes_with_small_errors():
    lines = run_check()
    assert len(lines) == 1 and lines[0].startswith("kernels_check:ok max_err:"), lines
    fp32, bf16 = (float(v) for v in re.findall(r"max_err(?:_bf16)?:(\S+)", lines[0]))
    assert fp32 < 1e-5 and bf16 < 3e-2, lines


@pytest.mark.parametrize("fault", ["wrong", "raises"])
def test_self_check_stops_on_a_broken_kernel_naming_the_fallback(monkeypatch, fault):
    forward = ops._residual_fwd_op

    def broken(h, b, alpha, eps):
        if fault == "raises":
            raise RuntimeError("no kernel image is available for execution on the device\nmore")
        out, rstd_b, rstd_u = forward(h, b, alpha, eps)
        return out * 1.01, rstd_b, rstd_u  # off by 1%: a silent bug training would not notice at first

    monkeypatch.setattr(ops, "_residual_fwd_op", broken)
    with pytest.raises(SystemExit) as err:
        run_check()
    message = str(err.value)
    assert message.startswith("error: kernels_check: residual_update") and "\n" not in message
    assert "--kernels=torch" in message and ("raised RuntimeError" in message) == (fault == "raises")


def test_a_run_on_a_broken_kernel_stops_before_training(monkeypatch, tmp_path):
    for split in ("train_000001", "val_000000"):
        write_shard(tmp_path / f"k_{split}.bin", np.arange(3000) * 7 % 64)
    monkeypatch.setattr(ops, "_add_norm_fwd_op", lambda x, b, scale, eps, y_dtype: (x + b, x + b, x.new_ones(1)))
    with pytest.raises(SystemExit) as err:
        train_gpt2.main([f"--input_bin={tmp_path}/k_train_*.bin", f"--input_val_bin={tmp_path}/k_val_*.bin",
                         "--vocab_size=64", "--n_layer=1", "--n_head=2", "--n_embd=32", "--sequence_length=16",
                         "--batch_size=2", "--device_batch_size=2", "--val_tokens=64", "--num_iterations=2",
                         "--warmup_iters=0", "--warmdown_iters=1", "--kernels=triton", "--run_id=broken",
                         f"--log_dir={tmp_path}"])
    assert "add_norm" in str(err.value) and "--kernels=torch" in str(err.value)
    after_sources = (tmp_path / "broken.txt").read_text().split("=" * 100 + "\n")[1]
    assert "error: kernels_check: add_norm" in after_sources and "step:" not in after_sources
