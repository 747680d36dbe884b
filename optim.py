"""The optimizer of both training scripts, built and stepped here alone: the scripts, bench.py and
tune/coord_check.py call build_optimizers and optimizer_step, so a change of optimizer is made once. Each model's
param_groups() (in its script's model section) says which parameters form which group, with which lr and decay.
"""
import sys

import torch

from runtime import gradient_norm

def build_optimizers(model, hp, fused=False):
    """[AdamW] over every group of model.param_groups(), or with --optimizer=muon [AdamW, Muon]: torch.optim.Muon on
    the groups marked muon=True (the blocks' attention and MLP matrices), AdamW on the rest (embedding, head,
    vectors). Each group keeps its lr as peak_lr, the schedule's 1.0.

    Muon's lr is learning_rate * muon_lr_ratio for every hidden matrix at any width, and its orthogonalized update
    (all singular values ~1) is scaled by sqrt(max(1, rows / cols)) (torch's adjust_lr_fn="original", Keller
    Jordan's): the update's spectral norm is then set by the matrix's aspect ratio, which a width change keeps, so
    its effect on a layer's output relative to that output is the same at any width (the spectral condition for
    muP, Yang, Simon and Bernstein 2023) and the lr found at a proxy width transfers. ("match_rms_adamw" scales it
    by 0.2 * sqrt(max(rows, cols)), which grows with the width.) Muon's weight decay is divided by the ratio: torch
    multiplies it by Muon's lr, and this way a matrix shrinks by learning_rate * weight_decay per step under
    either optimizer."""
    if hp.optimizer == "muon" and hp.muon_lr_ratio <= 0:
        sys.exit(f"error: --muon_lr_ratio must be > 0 (Muon's lr over --learning_rate), got {hp.muon_lr_ratio}")
    adamw, muon = [], []
    for group in model.param_groups():
        if group.pop("muon", False) and hp.optimizer == "muon":
            muon.append(dict(group, lr=hp.learning_rate * hp.muon_lr_ratio,
                             weight_decay=group["weight_decay"] / hp.muon_lr_ratio))
        else:
            adamw.append(group)
    optimizers = [torch.optim.AdamW(adamw, betas=(0.9, 0.95), eps=1e-8, fused=fused)]
    if muon:
        optimizers.append(torch.optim.Muon(muon, momentum=hp.muon_momentum, nesterov=bool(hp.muon_nesterov),
                                           ns_steps=hp.muon_ns_steps, adjust_lr_fn="original"))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers

def optimizer_step(model, optimizers, lr_multiplier, grad_clip, grad_norm=None):
    """One step at lr_multiplier times each group's peak lr: gradients clipped to grad_clip (0: off) by their global
    norm (grad_norm if the caller has it), every optimizer stepped, gradients freed, the model's post_step (nGPT's
    renormalization) applied."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * lr_multiplier
    if grad_clip:
        norm = gradient_norm(model) if grad_norm is None else grad_norm
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), grad_clip, norm)
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.post_step()
