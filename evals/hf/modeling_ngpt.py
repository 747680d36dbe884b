"""Hugging Face model of nGPT, the Normalized Transformer (arXiv 2410.01131), as trained by train_ngpt2.py.

Written into every exported nGPT folder by `python -m evals.export`; load it with
AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).

Every scaler is stored as its effective value, the vector the forward pass multiplies by: training keeps s_qk,
alpha and s_z as s with s * s_init / s_scale in use (sec 2.5), the export stores s * s_init / s_scale. Matrices are
the trained unit-norm ones (rows of embed, lm_head, qkv and fc; columns of the two output projections).
generate() recomputes the whole prefix at each step (no key/value cache) and padding masks are not applied:
pass unpadded sequences (right padding is fine for scoring, as every position sees only earlier ones).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_ngpt import NGPTConfig


def norm(x, eps):
    """x / ||x|| along the last dim, in fp32, as train_ngpt2.py's kernels compute it."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def rotary(x, theta):
    """RoPE over (batch, time, head, head_dim), train_ngpt2.py's convention (halves, not interleaved pairs)."""
    head_dim = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=x.device).float() / head_dim)
    angles = torch.outer(torch.arange(x.shape[1], device=x.device).float(), inv_freq)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)


class NGPTAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.n_head = config.num_attention_heads
        self.head_dim = d // self.n_head
        self.eps = config.norm_eps
        self.theta = config.rope_theta
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.s_qk = nn.Parameter(torch.ones(d if config.sqk_per_head else self.head_dim))

    def forward(self, h):
        B, T, C = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = rotary(q, self.theta), rotary(k, self.theta)
        s_qk = self.s_qk.view(-1, self.head_dim)  # one row per head, or one row for all heads
        q = (norm(q, self.eps) * s_qk.float()).to(v.dtype)  # eq. 15: q <- Norm(q) s_qk, after RoPE
        k = (norm(k, self.eps) * s_qk.float()).to(v.dtype)  # eq. 16
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           scale=math.sqrt(self.head_dim))  # eq. 17: softmax scale sqrt(d_k)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class NGPTMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = config.intermediate_size
        self.fc = nn.Linear(config.hidden_size, 2 * hidden, bias=False)
        self.proj = nn.Linear(hidden, config.hidden_size, bias=False)
        self.s_u = nn.Parameter(torch.ones(hidden))
        self.s_v = nn.Parameter(torch.ones(hidden))
        self.sqrt_d = math.sqrt(config.hidden_size)

    def forward(self, h):
        u, v = self.fc(h).chunk(2, dim=-1)
        u = u * self.s_u.to(u.dtype)  # eq. 20: u <- u s_u
        v = v * (self.s_v * self.sqrt_d).to(v.dtype)  # eq. 21: v <- v s_v sqrt(d_model)
        return self.proj(u * F.silu(v))


class NGPTBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = NGPTAttention(config)
        self.mlp = NGPTMLP(config)
        self.alpha_attn = nn.Parameter(torch.ones(config.hidden_size))
        self.alpha_mlp = nn.Parameter(torch.ones(config.hidden_size))
        self.eps = config.norm_eps

    def update(self, h, branch, alpha):
        """h <- Norm(h + |alpha| (Norm(branch) - h)) (eq. 10-11; train_ngpt2.py steps by |alpha|)."""
        h32 = h.float()
        return norm(h32 + alpha.abs().float() * (norm(branch, self.eps) - h32), self.eps).to(h.dtype)

    def forward(self, h):
        h = self.update(h, self.attn(h), self.alpha_attn)  # eq. 10
        return self.update(h, self.mlp(h), self.alpha_mlp)  # eq. 11


class NGPTPreTrainedModel(PreTrainedModel):
    config_class = NGPTConfig
    base_model_prefix = "ngpt"
    _no_split_modules = ["NGPTBlock"]
    _supports_sdpa = True

    def _init_weights(self, module):
        """Random matrices of train_ngpt2.py's init scale, for a model built without weights; from_pretrained
        overwrites every one (this class is for trained models: training is train_ngpt2.py's)."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1 / math.sqrt(self.config.hidden_size))
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1 / math.sqrt(self.config.hidden_size))


class NGPTForCausalLM(NGPTPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([NGPTBlock(config) for _ in range(config.num_hidden_layers)])
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.s_z = nn.Parameter(torch.ones(config.vocab_size))
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def get_output_embeddings(self):
        return self.lm_head

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}  # no cache: the whole prefix each step

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, **kwargs):
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # unit rows: h starts on the sphere
        for block in self.blocks:
            h = block(h)
        logits = self.lm_head(h)
        logits = logits * self.s_z.to(logits.dtype)  # eq. 3: z = E_output h * s_z; no final norm
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
