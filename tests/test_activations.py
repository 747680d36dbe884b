"""Activation memory under bf16 autocast: what autograd saves per token per layer, GPT-2 vs nGPT (eager, CPU).

An fp32 scaler multiplying bf16 activations promotes them (and what autograd saves of them) to fp32 under
autocast: nGPT's MLP scalers s_u, s_v did, and nGPT saved 1.86x GPT's bytes (2.00x with the torch kernels);
with the scalers cast to the activations' dtype, 1.43x (1.63x). The bounds below catch such a promotion.
On CPU the Triton path runs under the interpreter.
"""
import pytest
import torch

import train_gpt2
import train_ngpt2

T = 32


def saved_bytes(module, n_layer, batch, kernels):
    """Bytes of the distinct storages autograd saves in one forward under CPU bf16 autocast."""
    torch.manual_seed(0)
    hp = module.parse_args([f"--n_layer={n_layer}", "--n_head=2", "--n_embd=64", "--vocab_size=256",
                            "--mup_base_width=64", f"--kernels={kernels}"])
    model = module.GPT(hp)
    idx = torch.randint(256, (batch, T))
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx, idx)
    return sum(storages.values())


def bytes_per_token_per_layer(module, kernels):
    # double difference over layers and batch: weights (and their bf16 copies) and the head cancel out
    s = {(L, B): saved_bytes(module, L, B, kernels) for L in (1, 2) for B in (1, 2)}
    return ((s[2, 2] - s[1, 2]) - (s[2, 1] - s[1, 1])) / T


# the Triton kernels (training's default on CUDA) save inputs and a per-row rstd; the torch references also
# save fp32 intermediates, four normalizations per nGPT layer against GPT's two, hence the looser bound
@pytest.mark.parametrize("kernels, bound", [("triton", 1.5), ("torch", 1.75)])
def test_ngpt_saves_at_most_a_small_multiple_of_gpt(kernels, bound):
    if kernels == "triton":
        pytest.importorskip("triton")
    gpt = bytes_per_token_per_layer(train_gpt2, kernels)
    ngpt = bytes_per_token_per_layer(train_ngpt2, kernels)
    print(f"saved_bytes_per_token_per_layer kernels:{kernels} gpt:{gpt:.0f} ngpt:{ngpt:.0f} ratio:{ngpt / gpt:.2f}")
    assert 0 < gpt and ngpt <= bound * gpt
