"""The CLIP text transformer (transformers' `CLIPTextModel`), written against `ops`.

Parameter names carry the `text_model.` prefix, as SD 1.x checkpoints and
transformers 4.x write them (transformers 5 saves them without it; the
checkpoint loader adds it).
"""
from __future__ import annotations

import numpy as np

from ..config import CLIPTextConfig
from ..errors import TinySDError
from .layers import Embedding, LayerNorm, Linear, Module, multihead_attention

PREFIX = "text_model"


class CLIPAttention(Module):
    """Causal self-attention: q_proj, k_proj, v_proj (all with bias), out_proj."""

    def __init__(self, name: str, dim: int, heads: int):
        super().__init__(name)
        self.heads = heads
        self.q_proj = self.add(Linear(self.sub("q_proj"), dim, dim))
        self.k_proj = self.add(Linear(self.sub("k_proj"), dim, dim))
        self.v_proj = self.add(Linear(self.sub("v_proj"), dim, dim))
        self.out_proj = self.add(Linear(self.sub("out_proj"), dim, dim))

    def __call__(self, ops, x):
        q = self.q_proj(ops, x)  # (B, T, D)
        k = self.k_proj(ops, x)
        v = self.v_proj(ops, x)
        h = multihead_attention(ops, q, k, v, self.heads, self.name, causal=True)  # (B, T, D)
        return self.out_proj(ops, h)


class CLIPEncoderLayer(Module):
    """Pre-norm transformer layer: x + attn(ln1(x)), then x + fc2(act(fc1(ln2(x))))."""

    def __init__(self, name: str, cfg: CLIPTextConfig):
        super().__init__(name)
        D = cfg.hidden_size
        self.act = cfg.hidden_act
        self.layer_norm1 = self.add(LayerNorm(self.sub("layer_norm1"), D, cfg.layer_norm_eps))
        self.self_attn = self.add(CLIPAttention(self.sub("self_attn"), D, cfg.num_attention_heads))
        self.layer_norm2 = self.add(LayerNorm(self.sub("layer_norm2"), D, cfg.layer_norm_eps))
        self.fc1 = self.add(Linear(self.sub("mlp.fc1"), D, cfg.intermediate_size))
        self.fc2 = self.add(Linear(self.sub("mlp.fc2"), cfg.intermediate_size, D))

    def __call__(self, ops, x):
        h = self.layer_norm1(ops, x)
        h = self.self_attn(ops, h)
        x = ops.add(x, h, self.sub("add1"))
        h = self.layer_norm2(ops, x)
        h = self.fc1(ops, h)  # (B, T, I)
        if self.act == "quick_gelu":
            h = ops.quick_gelu(h, self.sub("mlp.act"))
        else:
            h = ops.gelu(h, self.sub("mlp.act"))
        h = self.fc2(ops, h)  # (B, T, D)
        return ops.add(x, h, self.sub("add2"))


class CLIPTextModel(Module):
    """transformers' `CLIPTextModel` up to `last_hidden_state` (no pooling)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__(PREFIX)
        self.cfg = cfg
        D = cfg.hidden_size
        self.token_embedding = self.add(Embedding(self.sub("embeddings.token_embedding"), cfg.vocab_size, D))
        self.position_embedding = self.add(Embedding(self.sub("embeddings.position_embedding"), cfg.max_position_embeddings, D))
        self.layers = [self.add(CLIPEncoderLayer(self.sub(f"encoder.layers.{i}"), cfg)) for i in range(cfg.num_hidden_layers)]
        self.final_layer_norm = self.add(LayerNorm(self.sub("final_layer_norm"), D, cfg.layer_norm_eps))

    def __call__(self, ops, ids, clip_skip: int | None = None) -> np.ndarray:
        """Text features for token ids.

        ids: integer array (B, T), T <= max_position_embeddings, values in [0, vocab_size).
        clip_skip: None or 0 -> transformers' `last_hidden_state` (all layers, then the
        final layer norm). k >= 1 -> diffusers' `clip_skip=k`: the output of the
        transformer after skipping its last k layers (k=1: the penultimate layer's
        output), then the final layer norm, as diffusers' `encode_prompt` does.
        Returns float32 (B, T, hidden_size).
        """
        ids = np.asarray(ids)
        cfg = self.cfg
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise TinySDError(f"text encoder: token ids must be an integer array (batch, tokens), got {ids.dtype} {ids.shape}")
        B, T = ids.shape
        if not 1 <= T <= cfg.max_position_embeddings:
            raise TinySDError(f"text encoder: {T} tokens; must be 1..{cfg.max_position_embeddings}")
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise TinySDError(f"text encoder: token id {int(ids.max()) if ids.max() >= cfg.vocab_size else int(ids.min())} is outside the vocabulary (0..{cfg.vocab_size - 1})")
        skip = 0 if clip_skip is None else int(clip_skip)
        if not 0 <= skip < cfg.num_hidden_layers:
            raise TinySDError(f"clip_skip={clip_skip} must be between 0 and {cfg.num_hidden_layers - 1}")

        tok = self.token_embedding(ops, ids)  # (B, T, D)
        pos = self.position_embedding(ops, np.arange(T, dtype=np.int64)[None, :])  # (1, T, D)
        h = ops.add(tok, pos, self.sub("embeddings.add"))  # (B, T, D)
        for layer in self.layers[: cfg.num_hidden_layers - skip]:
            h = layer(ops, h)
        h = self.final_layer_norm(ops, h)
        return ops.output(h, "last_hidden_state")
