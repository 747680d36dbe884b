"""Hugging Face configuration of nGPT, the Normalized Transformer (arXiv 2410.01131), as trained by train_ngpt2.py.

Written into every exported nGPT folder by `python -m evals.export`; loaded with trust_remote_code=True.
"""
from transformers import PretrainedConfig


class NGPTConfig(PretrainedConfig):
    model_type = "ngpt"

    def __init__(self, vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, sqk_per_head=True, norm_eps=1e-12, rope_theta=10000.0,
                 max_position_embeddings=1024, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size  # SwiGLU hidden width of each of the two input projections
        self.sqk_per_head = sqk_per_head  # each head its own s_qk vector, else one shared by all heads
        self.norm_eps = norm_eps  # added to the squared norm in every normalization
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings  # the training sequence length
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
