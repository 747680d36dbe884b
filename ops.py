"""The hand-written Triton kernels of both training scripts, each with its launcher (shape and stride checks), its
torch.library op (fake for tracing, autograd for the backward kernel) and its plain-torch reference:

norm_scale(x, scale, eps, kernels)          x * rsqrt(sum(x^2, -1) + eps) * scale      RMSNorm, QK-norm, nGPT's norms
add_norm(x, b, scale, eps, kernels)         (x + b, norm_scale(x + b, scale, eps))     GPT-2's residual add + RMSNorm
residual_update(h, b, alpha, eps, kernels)  norm(h + alpha * (norm(b) - h))            nGPT's residual step (eq. 10-11)
norm_rows_(vs, eps, kernels)                rows of each v to unit norm, in place      nGPT's post-step weight norm

kernels="triton" runs the kernel, "torch" the reference (same math in fp32). Under autocast, the outputs that go to
a matmul (norm_scale's y, add_norm's y) are written in the autocast dtype; residuals keep theirs. check() compares
the two on small inputs; the scripts run it before the first step whenever they use the kernels. custom_op with register_fake and
register_autograd is what torch.compile traces with fullgraph (a plain autograd.Function around the launch, or
triton_op with wrap_triton, did not: measured under Triton's interpreter, torch 2.13).
"""
import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the plain-torch references still work
    triton = None

OPS_NAMESPACE = "ngpt_ab"  # torch.ops.ngpt_ab.*; every tool imports this file as the module `kernels`

# ---------------------------------------------------------------------------- norm_scale, and the shared helpers
# Rows are the flattened leading dims of x; row r uses scale[r % G] for scale of shape (G, D) or (D,) (G=1).
# Triton path: one program per tile of ROWS rows, fp32 math, rstd saved per row.

if triton is not None:

    @triton.jit
    def _norm_scale_fwd_kernel(X, S, Y, RSTD, n_rows, D, G, eps,
                               stride_xr, stride_xc, stride_yr, stride_yc,
                               HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        rmask = r < n_rows
        mask = rmask[:, None] & (cols < D)[None, :]
        r64 = r.to(tl.int64)  # row * stride can exceed 2**31 elements
        x = tl.load(X + r64[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) + eps)
        y = x * rstd[:, None]
        if HAS_SCALE:
            y = y * tl.load(S + (r % G)[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + r64[:, None] * stride_yr + cols[None, :] * stride_yc, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + r, rstd, mask=rmask)

    @triton.jit
    def _norm_scale_bwd_kernel(DY, X, S, RSTD, DX, DS_PART, n_rows, D, G, rows_per_prog,
                               stride_dyr, stride_dyc, stride_xr, stride_xc,
                               HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
        # program (p, g) owns rows g + G*k, k in [p*rows_per_prog, (p+1)*rows_per_prog): all use scale[g],
        # so its dscale partial is a plain register sum, written once to DS_PART[p, g]
        p, g = tl.program_id(0), tl.program_id(1)
        cols = tl.arange(0, BLOCK)
        cmask = cols < D
        if HAS_SCALE:
            s = tl.load(S + g * D + cols, mask=cmask, other=0.0).to(tl.float32)
        else:
            s = tl.full([BLOCK], 1.0, tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        k0 = p * rows_per_prog  # a while loop: Triton 3.6's interpreter fails on range() of run-time
        end = k0 + rows_per_prog  # bounds (scalars there are 1-element arrays, NumPy >= 2.4)
        while k0 < end:
            r = g + G * (k0 + tl.arange(0, ROWS)).to(tl.int64)
            rmask = r < n_rows
            mask = rmask[:, None] & cmask[None, :]
            dy = tl.load(DY + r[:, None] * stride_dyr + cols[None, :] * stride_dyc, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(X + r[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + r, mask=rmask, other=0.0)
            xhat = x * rstd[:, None]
            gs = dy * s[None, :]
            # d/dx of x*rstd(x): rstd * (g - xhat * <g, xhat>)
            dx = rstd[:, None] * (gs - xhat * tl.sum(gs * xhat, axis=1)[:, None])
            tl.store(DX + r[:, None] * D + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
            acc += tl.sum(dy * xhat, axis=0)
            k0 += ROWS
        if HAS_SCALE:
            tl.store(DS_PART + (p * G + g) * D + cols, acc, mask=cmask)

def _check_triton(t):
    if triton is None:
        raise RuntimeError("kernels='triton' needs the triton package (pip install triton); or pass --kernels=torch")
    if t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"kernels='triton' needs CUDA tensors (got {t.device}); pass --kernels=torch "
                           "or set TRITON_INTERPRET=1 to run Triton's (slow) interpreter on CPU")

def _tile_config(D, rows_adjacent=False):
    # fixed heuristics, no autotune: ~2048-element tiles (several rows when D is small), 8 warps per 2048;
    # rows adjacent in memory (a weight's columns): >= 16 rows per tile so each load coalesces across rows
    block = triton.next_power_of_2(D)
    rows = max(16 if rows_adjacent else 1, 2048 // block)
    return block, rows, min(32, max(4, block * rows // 256))

def _bwd_grid(n_rows, G, rows, device):
    # persistent backward: ~4 programs per SM so per-program partial sums stay few
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    per_group = triton.cdiv(n_rows, G)
    n_prog = max(1, min(triton.cdiv(per_group, rows), target // G))
    rows_per_prog = triton.cdiv(triton.cdiv(per_group, n_prog), rows) * rows
    return triton.cdiv(per_group, rows_per_prog), rows_per_prog

def _norm_scale_launch(x2, scale, eps, out_dtype):
    """Forward on a 2-D (rows, D) view with any strides: (y, contiguous in out_dtype, rstd)."""
    _check_triton(x2)
    n_rows, D = x2.shape
    out = torch.empty((n_rows, D), device=x2.device, dtype=out_dtype)
    s = scale.reshape(-1, D).contiguous() if scale is not None else x2  # dummy pointer when HAS_SCALE=False
    rstd = torch.empty(n_rows, device=x2.device, dtype=torch.float32)
    block, rows, num_warps = _tile_config(D, rows_adjacent=x2.stride(0) == 1 and D > 1)
    _norm_scale_fwd_kernel[(triton.cdiv(n_rows, rows),)](
        x2, s, out, rstd, n_rows, D, s.shape[0], eps, x2.stride(0), x2.stride(1), out.stride(0), out.stride(1),
        HAS_SCALE=scale is not None, BLOCK=block, ROWS=rows, num_warps=num_warps)
    return out, rstd

def _norm_scale_bwd_launch(dy2, x2, scale, rstd):
    _check_triton(x2)
    n_rows, D = x2.shape
    G = scale.numel() // D if scale is not None else 1
    block, rows, num_warps = _tile_config(D)
    n_prog, rows_per_prog = _bwd_grid(n_rows, G, rows, x2.device)
    dx = torch.empty((n_rows, D), device=x2.device, dtype=x2.dtype)
    ds_part = torch.empty((n_prog, G, D) if scale is not None else (0,), device=x2.device, dtype=torch.float32)
    s = scale.reshape(G, D).contiguous() if scale is not None else x2
    _norm_scale_bwd_kernel[(n_prog, G)](
        dy2, x2, s, rstd, dx, ds_part, n_rows, D, G, rows_per_prog,
        dy2.stride(0), dy2.stride(1), x2.stride(0), x2.stride(1),
        HAS_SCALE=scale is not None, BLOCK=block, ROWS=rows, num_warps=num_warps)
    dscale = ds_part.sum(0).to(scale.dtype) if scale is not None else ds_part
    return dx, dscale

@torch.library.custom_op(f"{OPS_NAMESPACE}::norm_scale_fwd", mutates_args=())
def _norm_scale_fwd_op(x: torch.Tensor, scale: Optional[torch.Tensor], eps: float,
                       out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    y, rstd = _norm_scale_launch(x.reshape(-1, x.shape[-1]), scale, eps, out_dtype)  # copies only if not viewable
    return y.view(x.shape), rstd

@_norm_scale_fwd_op.register_fake
def _(x, scale, eps, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)

@torch.library.custom_op(f"{OPS_NAMESPACE}::norm_scale_bwd", mutates_args=())
def _norm_scale_bwd_op(dy: torch.Tensor, x: torch.Tensor, scale: Optional[torch.Tensor],
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    D = x.shape[-1]
    dx, dscale = _norm_scale_bwd_launch(dy.reshape(-1, D), x.reshape(-1, D), scale, rstd)
    return dx.view(x.shape), dscale.view(scale.shape) if scale is not None else dscale

@_norm_scale_bwd_op.register_fake
def _(dy, x, scale, rstd):
    if scale is None:
        return x.new_empty(x.shape), x.new_empty(0, dtype=torch.float32)
    return x.new_empty(x.shape), scale.new_empty(scale.shape)

def _norm_scale_setup(ctx, inputs, output):
    x, scale, _, _ = inputs
    ctx.save_for_backward(x, scale, output[1])

def _norm_scale_backward(ctx, dy, _drstd):
    x, scale, rstd = ctx.saved_tensors
    dx, dscale = _norm_scale_bwd_op(dy, x, scale, rstd)
    return dx, dscale if scale is not None else None, None, None

_norm_scale_fwd_op.register_autograd(_norm_scale_backward, setup_context=_norm_scale_setup)

def norm_scale_torch(x, scale, eps, out_dtype=None):
    """Plain-torch reference: fp32 math, output in out_dtype (None: x.dtype)."""
    D = x.shape[-1]
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)
    if scale is not None:
        y = (y.reshape(-1, scale.numel() // D, D) * scale.float().reshape(-1, D)).reshape(x.shape)
    return y.to(out_dtype or x.dtype)

def _out_dtype(x, dtype):
    """The dtype a norm writes its output in: under autocast the autocast dtype, since the matmul that reads it
    would cast it there anyway (the same rounding, in a separate kernel, with an fp32 gradient back); else dtype."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else dtype

def norm_scale(x, scale, eps, kernels):
    """y = x * rsqrt(sum(x^2, -1) + eps) * scale; scale None, (D,) or (G, D) with row r using scale[r % G].
    y is in x.dtype, or under autocast in the autocast dtype."""
    D = x.shape[-1]
    if scale is not None and (scale.shape[-1] != D or scale.dim() > 2 or (x.numel() // D) % (scale.numel() // D)):
        raise ValueError(f"norm_scale: scale must be (D,) or (G, D) with D={D} and G dividing the row count "
                         f"{x.numel() // D}; got scale {tuple(scale.shape)} for x {tuple(x.shape)}")
    if not eps > 0:
        raise ValueError(f"norm_scale: eps must be > 0 (zero rows would give NaN), got {eps}")
    out_dtype = _out_dtype(x, x.dtype)
    if kernels == "triton":
        return _norm_scale_fwd_op(x, scale, eps, out_dtype)[0]
    return norm_scale_torch(x, scale, eps, out_dtype)

# ---------------------------------------------------------------------------- add_norm (train_gpt2.py)
# Fused residual add + RMSNorm: res = x + b and y = res * rsqrt(sum(res^2) + eps) * scale in one pass.

if triton is not None:

    @triton.jit
    def _add_norm_fwd_kernel(X, B, S, RES, Y, RSTD, n_rows, D, eps, stride_xr, stride_xc, stride_br, stride_bc,
                             BLOCK: tl.constexpr, ROWS: tl.constexpr):
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        rmask = r < n_rows
        mask = rmask[:, None] & (cols < D)[None, :]
        r64 = r.to(tl.int64)[:, None]
        x = tl.load(X + r64 * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + r64 * stride_br + cols[None, :] * stride_bc, mask=mask, other=0.0).to(tl.float32)
        res = (x + b).to(RES.dtype.element_ty)
        tl.store(RES + r64 * D + cols[None, :], res, mask=mask)
        v = res.to(tl.float32)  # the norm reads the stored residual, as the unfused add-then-norm does
        rstd = tl.rsqrt(tl.sum(v * v, axis=1) + eps)
        s = tl.load(S + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + r64 * D + cols[None, :], (v * rstd[:, None] * s).to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + r, rstd, mask=rmask)

    @triton.jit
    def _add_norm_bwd_kernel(DRES, DY, RES, S, RSTD, DX, DB, DS_PART, n_rows, D, rows_per_prog,
                             stride_dr, stride_dc, stride_dyr, stride_dyc, BLOCK: tl.constexpr, ROWS: tl.constexpr):
        # dx = db = dres + d(norm)/d(res)^T dy; dscale partial per program, as in _norm_scale_bwd_kernel
        p = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        cmask = cols < D
        s = tl.load(S + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        k0 = p * rows_per_prog  # a while loop, not range(): see _norm_scale_bwd_kernel
        end = k0 + rows_per_prog
        while k0 < end:
            r = (k0 + tl.arange(0, ROWS)).to(tl.int64)
            rmask = r < n_rows
            mask = rmask[:, None] & cmask[None, :]
            dy = tl.load(DY + r[:, None] * stride_dyr + cols[None, :] * stride_dyc, mask=mask, other=0.0)
            dy = dy.to(tl.float32)
            res = tl.load(RES + r[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + r, mask=rmask, other=0.0)[:, None]
            xhat = res * rstd
            acc += tl.sum(dy * xhat, axis=0)
            gs = dy * s
            dot = tl.sum(gs * xhat, axis=1)[:, None]
            # dres read after the reduction, not kept across it: at width 5120 (an 8192 tile at 32 warps, 64
            # registers a thread) one more live row array spills
            dres = tl.load(DRES + r[:, None] * stride_dr + cols[None, :] * stride_dc, mask=mask, other=0.0)
            d = dres.to(tl.float32) + rstd * (gs - xhat * dot)
            tl.store(DX + r[:, None] * D + cols[None, :], d.to(DX.dtype.element_ty), mask=mask)
            tl.store(DB + r[:, None] * D + cols[None, :], d.to(DB.dtype.element_ty), mask=mask)
            k0 += ROWS
        tl.store(DS_PART + p * D + cols, acc, mask=cmask)

@torch.library.custom_op(f"{OPS_NAMESPACE}::add_norm_fwd", mutates_args=())
def _add_norm_fwd_op(x: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, eps: float,
                     y_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_triton(x)
    D = x.shape[-1]
    x2, b2 = x.reshape(-1, D), b.reshape(-1, D)  # views when possible, any strides
    n_rows = x2.shape[0]
    res = torch.empty((n_rows, D), device=x.device, dtype=torch.promote_types(x.dtype, b.dtype))  # as x + b
    y = torch.empty((n_rows, D), device=x.device, dtype=y_dtype)
    rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32)
    block, rows, num_warps = _tile_config(D)
    _add_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](
        x2, b2, scale.contiguous(), res, y, rstd, n_rows, D, eps, x2.stride(0), x2.stride(1), b2.stride(0),
        b2.stride(1), BLOCK=block, ROWS=rows, num_warps=num_warps)
    return res.view(x.shape), y.view(x.shape), rstd

@_add_norm_fwd_op.register_fake
def _(x, b, scale, eps, y_dtype):
    res = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, b.dtype))
    return res, x.new_empty(x.shape, dtype=y_dtype), x.new_empty(x.numel() // x.shape[-1], dtype=torch.float32)

@torch.library.custom_op(f"{OPS_NAMESPACE}::add_norm_bwd", mutates_args=())
def _add_norm_bwd_op(dres: torch.Tensor, dy: torch.Tensor, res: torch.Tensor, scale: torch.Tensor, rstd: torch.Tensor,
                     x_dtype: torch.dtype, b_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_triton(res)
    D = res.shape[-1]
    dr2, dy2 = dres.reshape(-1, D), dy.reshape(-1, D)
    n_rows = dr2.shape[0]
    block, rows, num_warps = _tile_config(D)
    n_prog, rows_per_prog = _bwd_grid(n_rows, 1, rows, res.device)
    dx = torch.empty((n_rows, D), device=res.device, dtype=x_dtype)
    db = torch.empty((n_rows, D), device=res.device, dtype=b_dtype)
    ds_part = torch.empty((n_prog, D), device=res.device, dtype=torch.float32)
    _add_norm_bwd_kernel[(n_prog,)](
        dr2, dy2, res, scale.contiguous(), rstd, dx, db, ds_part, n_rows, D, rows_per_prog,
        dr2.stride(0), dr2.stride(1), dy2.stride(0), dy2.stride(1), BLOCK=block, ROWS=rows, num_warps=num_warps)
    return dx.view(res.shape), db.view(res.shape), ds_part.sum(0).to(scale.dtype)

@_add_norm_bwd_op.register_fake
def _(dres, dy, res, scale, rstd, x_dtype, b_dtype):
    return res.new_empty(res.shape, dtype=x_dtype), res.new_empty(res.shape, dtype=b_dtype), torch.empty_like(scale)

def _add_norm_setup(ctx, inputs, output):
    x, b, scale, _, _ = inputs
    ctx.dtypes = x.dtype, b.dtype
    ctx.save_for_backward(output[0], scale, output[2])  # the residual and rstd: x and b are not needed

def _add_norm_backward(ctx, dres, dy, _drstd):
    res, scale, rstd = ctx.saved_tensors
    dx, db, dscale = _add_norm_bwd_op(dres, dy, res, scale, rstd, *ctx.dtypes)
    return dx, db, dscale, None, None

_add_norm_fwd_op.register_autograd(_add_norm_backward, setup_context=_add_norm_setup)

def add_norm(x, b, scale, eps, kernels):
    """(res, y): res = x + b and y = res * rsqrt(sum(res^2, -1) + eps) * scale, scale of shape (D,). res is in
    the promoted dtype of x and b (the fp32 residual stays fp32), y too, or under autocast in the autocast dtype."""
    if x.shape != b.shape or scale.shape != (x.shape[-1],):
        raise ValueError(f"add_norm: x and b must have the same shape (..., D) and scale shape (D,); "
                         f"got x {tuple(x.shape)}, b {tuple(b.shape)}, scale {tuple(scale.shape)}")
    y_dtype = _out_dtype(x, torch.promote_types(x.dtype, b.dtype))
    if kernels == "triton":
        return _add_norm_fwd_op(x, b, scale, eps, y_dtype)[:2]
    return add_norm_torch(x, b, scale, eps, y_dtype)

def add_norm_torch(x, b, scale, eps, y_dtype=None):
    """Plain-torch reference: the add in the inputs' dtypes, then norm_scale_torch of the sum into y_dtype."""
    res = x + b
    return res, norm_scale_torch(res, scale, eps, y_dtype)

# ---------------------------------------------------------------------------- residual_update (train_ngpt2.py)
# Fused nGPT residual update h <- norm(h + alpha * (norm(b) - h)), norm(v) = v * rsqrt(sum(v^2) + eps).

if triton is not None:

    @triton.jit
    def _residual_fwd_kernel(H, B, A, OUT, RSTD_B, RSTD_U, n_rows, D, eps,
                             stride_hr, stride_hc, stride_br, stride_bc,
                             BLOCK: tl.constexpr, ROWS: tl.constexpr):
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        rmask = r < n_rows
        mask = rmask[:, None] & (cols < D)[None, :]
        r64 = r.to(tl.int64)[:, None]
        h = tl.load(H + r64 * stride_hr + cols[None, :] * stride_hc, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + r64 * stride_br + cols[None, :] * stride_bc, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(A + cols, mask=cols < D, other=0.0).to(tl.float32)[None, :]
        rstd_b = tl.rsqrt(tl.sum(b * b, axis=1) + eps)
        u = h + a * (b * rstd_b[:, None] - h)
        rstd_u = tl.rsqrt(tl.sum(u * u, axis=1) + eps)
        tl.store(OUT + r64 * D + cols[None, :], (u * rstd_u[:, None]).to(OUT.dtype.element_ty), mask=mask)
        tl.store(RSTD_B + r, rstd_b, mask=rmask)
        tl.store(RSTD_U + r, rstd_u, mask=rmask)

    @triton.jit
    def _residual_bwd_kernel(DO, H, B, A, RSTD_B, RSTD_U, DH, DB, DA_PART, n_rows, D, rows_per_prog,
                             stride_dor, stride_doc, stride_hr, stride_hc, stride_br, stride_bc,
                             BLOCK: tl.constexpr, ROWS: tl.constexpr):
        # recomputes norm(b), u and out from h, b and the two saved rstd; dalpha partial per program
        p = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        cmask = cols < D
        a = tl.load(A + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        k0 = p * rows_per_prog  # a while loop, not range(): see _norm_scale_bwd_kernel
        end = k0 + rows_per_prog
        while k0 < end:
            r = (k0 + tl.arange(0, ROWS)).to(tl.int64)
            rmask = r < n_rows
            mask = rmask[:, None] & cmask[None, :]
            hb_ptrs = (H + r[:, None] * stride_hr + cols[None, :] * stride_hc,
                       B + r[:, None] * stride_br + cols[None, :] * stride_bc)
            do = tl.load(DO + r[:, None] * stride_dor + cols[None, :] * stride_doc, mask=mask, other=0.0).to(tl.float32)
            h = tl.load(hb_ptrs[0], mask=mask, other=0.0).to(tl.float32)
            b = tl.load(hb_ptrs[1], mask=mask, other=0.0).to(tl.float32)
            rstd_b = tl.load(RSTD_B + r, mask=rmask, other=0.0)[:, None]
            rstd_u = tl.load(RSTD_U + r, mask=rmask, other=0.0)[:, None]
            o = (h + a * (b * rstd_b - h)) * rstd_u
            du = rstd_u * (do - o * tl.sum(do * o, axis=1)[:, None])  # through the outer norm
            tl.store(DH + r[:, None] * D + cols[None, :], (du * (1.0 - a)).to(DH.dtype.element_ty), mask=mask)
            # h and b read again (from cache) rather than kept across the reduction above: fewer row arrays live
            # at once, or at width 5120 (an 8192 tile at 32 warps, 64 registers a thread) registers spill
            h = tl.load(hb_ptrs[0], mask=mask, other=0.0).to(tl.float32)
            bn = tl.load(hb_ptrs[1], mask=mask, other=0.0).to(tl.float32) * rstd_b
            acc += tl.sum(du * (bn - h), axis=0)
            dbn = du * a
            db = rstd_b * (dbn - bn * tl.sum(dbn * bn, axis=1)[:, None])  # through the inner norm
            tl.store(DB + r[:, None] * D + cols[None, :], db.to(DB.dtype.element_ty), mask=mask)
            k0 += ROWS
        tl.store(DA_PART + p * D + cols, acc, mask=cmask)

@torch.library.custom_op(f"{OPS_NAMESPACE}::residual_update_fwd", mutates_args=())
def _residual_fwd_op(h: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_triton(h)
    D = h.shape[-1]
    h2, b2 = h.reshape(-1, D), b.reshape(-1, D)  # views when possible, any strides
    n_rows = h2.shape[0]
    out = torch.empty((n_rows, D), device=h.device, dtype=h.dtype)
    rstd_b = torch.empty(n_rows, device=h.device, dtype=torch.float32)
    rstd_u = torch.empty_like(rstd_b)
    block, rows, num_warps = _tile_config(D)
    _residual_fwd_kernel[(triton.cdiv(n_rows, rows),)](
        h2, b2, alpha.contiguous(), out, rstd_b, rstd_u, n_rows, D, eps,
        h2.stride(0), h2.stride(1), b2.stride(0), b2.stride(1), BLOCK=block, ROWS=rows, num_warps=num_warps)
    return out.view(h.shape), rstd_b, rstd_u

@_residual_fwd_op.register_fake
def _(h, b, alpha, eps):
    n_rows = h.numel() // h.shape[-1]
    return h.new_empty(h.shape), h.new_empty(n_rows, dtype=torch.float32), h.new_empty(n_rows, dtype=torch.float32)

@torch.library.custom_op(f"{OPS_NAMESPACE}::residual_update_bwd", mutates_args=())
def _residual_bwd_op(dout: torch.Tensor, h: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor,
                     rstd_b: torch.Tensor, rstd_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_triton(h)
    D = h.shape[-1]
    do2, h2, b2 = dout.reshape(-1, D), h.reshape(-1, D), b.reshape(-1, D)
    n_rows = h2.shape[0]
    block, rows, num_warps = _tile_config(D)
    n_prog, rows_per_prog = _bwd_grid(n_rows, 1, rows, h.device)
    dh = torch.empty((n_rows, D), device=h.device, dtype=h.dtype)
    db = torch.empty((n_rows, D), device=h.device, dtype=b.dtype)
    da_part = torch.empty((n_prog, D), device=h.device, dtype=torch.float32)
    _residual_bwd_kernel[(n_prog,)](
        do2, h2, b2, alpha.contiguous(), rstd_b, rstd_u, dh, db, da_part, n_rows, D, rows_per_prog,
        do2.stride(0), do2.stride(1), h2.stride(0), h2.stride(1), b2.stride(0), b2.stride(1),
        BLOCK=block, ROWS=rows, num_warps=num_warps)
    return dh.view(h.shape), db.view(b.shape), da_part.sum(0).to(alpha.dtype)

@_residual_bwd_op.register_fake
def _(dout, h, b, alpha, rstd_b, rstd_u):
    return h.new_empty(h.shape), b.new_empty(b.shape), alpha.new_empty(alpha.shape)

def _residual_setup(ctx, inputs, output):
    h, b, alpha, _ = inputs
    ctx.save_for_backward(h, b, alpha, output[1], output[2])

def _residual_backward(ctx, dout, _drb, _dru):
    dh, db, dalpha = _residual_bwd_op(dout, *ctx.saved_tensors)
    return dh, db, dalpha, None

_residual_fwd_op.register_autograd(_residual_backward, setup_context=_residual_setup)

def residual_update_torch(h, b, alpha, eps):
    """Plain-torch reference: fp32 math, output in h.dtype."""
    hf, bf = h.float(), b.float()
    bn = bf * torch.rsqrt(bf.pow(2).sum(-1, keepdim=True) + eps)
    u = hf + alpha.float() * (bn - hf)
    return (u * torch.rsqrt(u.pow(2).sum(-1, keepdim=True) + eps)).to(h.dtype)

def residual_update(h, b, alpha, eps, kernels):
    """nGPT residual step norm(h + alpha * (norm(b) - h)); alpha is the effective (D,) step size."""
    if h.shape != b.shape or alpha.shape != (h.shape[-1],):
        raise ValueError(f"residual_update: h and b must have the same shape (..., D) and alpha shape (D,); "
                         f"got h {tuple(h.shape)}, b {tuple(b.shape)}, alpha {tuple(alpha.shape)}")
    if kernels == "triton":
        return _residual_fwd_op(h, b, alpha, eps)[0]
    return residual_update_torch(h, b, alpha, eps)

# ---------------------------------------------------------------------------- norm_rows_ (train_ngpt2.py)
# nGPT's post-step projection of its matrices' rows or columns onto the sphere, in place, one launch per group of
# same-shape matrices (2 + 4L matrices of 4 or 5 shapes): the program's matrix is its offset from the group's first.

if triton is not None:

    @triton.jit
    def _norm_rows_kernel(X, OFFSETS, n_rows, D, eps, stride_r, stride_c,
                          BLOCK: tl.constexpr, ROWS: tl.constexpr, CHUNKED: tl.constexpr, ALIGN: tl.constexpr):
        # program (i, m): rows [i*ROWS, (i+1)*ROWS) of matrix m, which starts OFFSETS[m] elements after X
        X += tl.multiple_of(tl.load(OFFSETS + tl.program_id(1)), ALIGN)
        r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rmask = r < n_rows
        rows = X + r.to(tl.int64)[:, None] * stride_r
        cols = tl.arange(0, BLOCK)
        if CHUNKED:  # rows too long for registers: the sum of squares chunk by chunk, then a second read to scale
            sum_sq = tl.zeros([ROWS], dtype=tl.float32)
            c0 = 0  # while loops, not range(): see _norm_scale_bwd_kernel
            while c0 < D:
                mask = rmask[:, None] & (c0 + cols < D)[None, :]
                x = tl.load(rows + (c0 + cols)[None, :] * stride_c, mask=mask, other=0.0).to(tl.float32)
                sum_sq += tl.sum(x * x, axis=1)
                c0 += BLOCK
            rstd = tl.rsqrt(sum_sq + eps)[:, None]
            c0 = 0
            while c0 < D:
                mask = rmask[:, None] & (c0 + cols < D)[None, :]
                ptrs = rows + (c0 + cols)[None, :] * stride_c
                x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
                tl.store(ptrs, (x * rstd).to(X.dtype.element_ty), mask=mask)
                c0 += BLOCK
        else:
            mask = rmask[:, None] & (cols < D)[None, :]
            ptrs = rows + cols[None, :] * stride_c
            x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.rsqrt(tl.sum(x * x, axis=1) + eps)
            tl.store(ptrs, (x * rstd[:, None]).to(X.dtype.element_ty), mask=mask)

def _norm_rows_tile(D, rows_adjacent):
    """(block, rows, num_warps, chunked): _tile_config's tile while it is at most 32 fp32 values per thread (at 32
    warps a thread gets 64 registers: an SM's 65,536 over 1,024 threads); a larger one (a weight's columns above
    width 2048: 16 adjacent rows of next_pow2(D)) spills, so its rows go in chunks of 1,024 columns."""
    block, rows, num_warps = _tile_config(D, rows_adjacent)
    if block * rows <= 32 * 32 * 32:
        return block, rows, num_warps, False
    block = 1024
    return block, rows, min(32, max(4, block * rows // 256)), True

@functools.lru_cache(maxsize=64)
def _offsets_table(offsets, device):
    """A group's element offsets on the device, built once: parameters keep their storage from step to step, and a
    copy to the GPU at each step would wait for the GPU."""
    return torch.tensor(offsets, dtype=torch.int64, device=device)

def _norm_rows_launch(group, eps):
    """One launch for 2-D tensors of one shape, strides and dtype whose addresses are equal modulo 16 bytes."""
    v0 = group[0]
    _check_triton(v0)
    n_rows, D = v0.shape
    size = v0.element_size()
    offsets = _offsets_table(tuple((v.data_ptr() - v0.data_ptr()) // size for v in group), v0.device)
    block, rows, num_warps, chunked = _norm_rows_tile(D, rows_adjacent=v0.stride(0) == 1 and D > 1)
    _norm_rows_kernel[(triton.cdiv(n_rows, rows), len(group))](
        v0, offsets, n_rows, D, eps, v0.stride(0), v0.stride(1),
        BLOCK=block, ROWS=rows, CHUNKED=chunked, ALIGN=16 // size, num_warps=num_warps)

@torch.no_grad()
def norm_rows_(vs, eps, kernels):
    """In place: each row of each 2-D tensor in vs gets unit norm; any strides (w.t() normalizes w's columns).
    Triton: one launch per group of tensors with the same shape, strides and dtype. Returns vs."""
    if any(v.dim() != 2 for v in vs):
        raise ValueError(f"norm_rows_: expected 2-D tensors, got shapes {[tuple(v.shape) for v in vs]}")
    if kernels != "triton":
        for v in vs:
            v.copy_(norm_scale_torch(v, None, eps))
        return vs
    groups = {}
    for v in vs:  # same address modulo 16 bytes: offsets in whole 16-byte units, the kernel's ALIGN
        groups.setdefault((v.shape, v.stride(), v.dtype, v.device, v.data_ptr() % 16), []).append(v)
    for group in groups.values():
        _norm_rows_launch(group, eps)
    return vs

# ---------------------------------------------------------------------------- the loss (both scripts)
LOSS_CHUNK = 2**27  # logits per chunk of the loss, 0.5 GiB in fp32: the speedrun's 64 x 1024 x 50304 in 25 chunks

def _chunk_loss(head, h, targets):
    return F.cross_entropy(head(h).float(), targets, reduction="sum")

def chunked_cross_entropy(head, h, targets, vocab_size):
    """Mean cross-entropy of the fp32 logits head(h) (rows: h's leading dims) against targets, computed over chunks
    of rows of at most LOSS_CHUNK logits: a chunk's logits, fp32 copy and log-softmax live only while it is computed,
    in the forward pass and again in the backward (recomputed under torch.utils.checkpoint), never all rows' at
    once (at the speedrun's 64 x 1024 tokens: 13 GB of fp32 logits, as much again in log-softmax). Rows that fit
    in one chunk: F.cross_entropy(head(h).float(), targets) itself."""
    h, targets = h.flatten(0, -2), targets.flatten()
    rows = max(1, LOSS_CHUNK // vocab_size)
    if len(targets) <= rows:
        return F.cross_entropy(head(h).float(), targets)
    total = sum(checkpoint(_chunk_loss, head, h_rows, t_rows, use_reentrant=False)
                for h_rows, t_rows in zip(h.split(rows), targets.split(rows)))
    return total / len(targets)

# ---------------------------------------------------------------------------- self-check
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 6e-2}  # bf16: a few units in the last place of outputs near 1

def check(device, log):
    """Each op, Triton against its torch reference, forward and backward, on small inputs in fp32 and bf16 (the
    dtypes training feeds them). log() gets "kernels_check:ok max_err:..."; a difference over TOLERANCE, or a
    kernel that fails to run, stops the run with a one-line error naming --kernels=torch."""
    gen = torch.Generator().manual_seed(0)  # its own generator: the run's random stream is untouched
    errors = {dtype: 0.0 for dtype in TOLERANCE}
    for dtype, tol in TOLERANCE.items():
        def rand(*shape, scale=1.0):
            return (scale * torch.randn(*shape, generator=gen)).to(device, dtype)

        cases = {  # name: (op(inputs, kernels) -> outputs, inputs)
            "norm_scale": (lambda t, k: [norm_scale(t[0], t[1], 1e-6, k)], [rand(6, 40), rand(40)]),
            "norm_scale per group": (lambda t, k: [norm_scale(t[0], t[1], 1e-6, k)], [rand(6, 40), rand(3, 40)]),
            "norm_scale columns": (lambda t, k: [norm_scale(t[0].t(), None, 1e-6, k)], [rand(40, 6)]),
            "add_norm": (lambda t, k: add_norm(t[0], t[1], t[2], 1e-6, k), [rand(6, 40), rand(6, 40), rand(40)]),
            "residual_update": (lambda t, k: [residual_update(t[0], t[1], t[2], 1e-6, k)],
                                [rand(6, 40), rand(6, 40), rand(40, scale=0.1).abs()]),
            "norm_rows_": (lambda t, k: norm_rows_([t[0].detach().clone().t(), t[1].detach().clone(),
                                                    t[2].detach().clone().t()], 1e-6, k),
                           [rand(40, 6), rand(6, 40), rand(40, 6)]),  # columns twice: one launch for both
            "norm_rows_ chunked": (lambda t, k: norm_rows_([t[0].detach().clone().t()], 1e-6, k), [rand(2100, 16)]),
        }
        for name, (op, inputs) in cases.items():
            try:
                diff = _compare(op, inputs, gen)
            except Exception as err:  # a kernel that does not compile or launch on this machine
                first_line = (str(err).strip().splitlines() or [""])[0]
                _fail(log, f"{name} ({dtype}) raised {type(err).__name__}: {first_line}")
            if not diff <= tol:  # also catches NaN
                _fail(log, f"{name} ({dtype}) differs from its torch reference by {diff:.1e} (tolerance {tol:.0e})")
            errors[dtype] = max(errors[dtype], diff)
    log(f"kernels_check:ok max_err:{errors[torch.float32]:.1e} max_err_bf16:{errors[torch.bfloat16]:.1e} "
        f"ops:{len(cases)}")

def _compare(op, inputs, gen):
    """The largest difference between the Triton and torch outputs and input gradients, relative to 1 + |torch|."""
    results, dys = [], None
    for kernels in ("triton", "torch"):
        leaves = [t.detach().requires_grad_() for t in inputs]
        outputs = op(leaves, kernels)
        grads = []
        if outputs[0].requires_grad:  # the same output gradients for both
            dys = dys or [torch.randn(y.shape, generator=gen).to(y.device, y.dtype) for y in outputs]
            grads = torch.autograd.grad(outputs, leaves, dys)
        results.append([t.float() for t in list(outputs) + list(grads)])
    return max(((a - b).abs() / (1 + b.abs())).max().item() for a, b in zip(*results))

def _fail(log, what):
    message = (f"error: kernels_check: {what}; train with --kernels=torch (the same math in plain PyTorch) "
               f"and report the kernel")
    log(message, console=False)
    raise SystemExit(message)
