"""Module-lite building blocks shared by the CLIP, UNet and VAE graphs.

A `Module` is plain data: a dotted name (the diffusers / transformers module
path), the parameters it declares with their shapes, and its sub-modules.
It holds no weights. Calling a module, `m(ops, x, ...)`, emits its
computation through the ops interface (`tinysd/nn/ops.py`); the interpreter
behind `ops` owns the weights and decides the arithmetic.

Operation names. A parameterised op is named by its module path
(`down_blocks.0.resnets.1.conv1`); every other op is named
`{module path}.{role}` (`down_blocks.0.resnets.1.act1`), so every name is
unique within one network call.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import TinySDError


def join(prefix: str, name: str) -> str:
    """`prefix.name`, or `name` when the prefix is empty."""
    return f"{prefix}.{name}" if prefix else name


class Module:
    """A named node of a network: declared parameters plus child modules."""

    def __init__(self, name: str):
        self.name = name
        self._params: dict[str, tuple[int, ...]] = {}
        self._children: list[Module] = []

    def sub(self, suffix: str) -> str:
        """The full name of `suffix` under this module."""
        return join(self.name, suffix)

    def declare(self, suffix: str, shape: Sequence[int]) -> None:
        """Declare parameter `{name}.{suffix}` of the given shape."""
        self._params[self.sub(suffix)] = tuple(int(s) for s in shape)

    def add(self, child: "Module") -> "Module":
        """Register and return a child module."""
        self._children.append(child)
        return child

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter name of this module and its children -> shape, in declaration order."""
        out = dict(self._params)
        for c in self._children:
            out.update(c.param_shapes())
        return out


# --- leaf layers -------------------------------------------------------------


class Linear(Module):
    """y = x @ W.T + b; weight (out_f, in_f), bias (out_f,) when `bias`."""

    def __init__(self, name: str, in_f: int, out_f: int, bias: bool = True):
        super().__init__(name)
        self.in_f, self.out_f = in_f, out_f
        self.declare("weight", (out_f, in_f))
        if bias:
            self.declare("bias", (out_f,))

    def __call__(self, ops, x):
        return ops.linear(x, self.name)  # (..., in_f) -> (..., out_f)


class Conv2d(Module):
    """NCHW convolution; weight (cout, cin, k, k), bias (cout,) when `bias`.

    `padding` is one int for all sides or (top, bottom, left, right).
    """

    def __init__(self, name: str, cin: int, cout: int, k: int, stride: int = 1, padding=0, bias: bool = True):
        super().__init__(name)
        self.cin, self.cout, self.stride, self.padding = cin, cout, stride, padding
        self.declare("weight", (cout, cin, k, k))
        if bias:
            self.declare("bias", (cout,))

    def __call__(self, ops, x):
        return ops.conv2d(x, self.name, stride=self.stride, padding=self.padding)


class GroupNorm(Module):
    """GroupNorm(groups, channels, eps) with affine weight and bias (channels,)."""

    def __init__(self, name: str, groups: int, channels: int, eps: float):
        super().__init__(name)
        if channels % groups:
            raise TinySDError(f"{name}: {channels} channels cannot be split into {groups} groups")
        self.groups, self.eps = groups, eps
        self.declare("weight", (channels,))
        self.declare("bias", (channels,))

    def __call__(self, ops, x):
        return ops.group_norm(x, self.name, self.groups, self.eps)


class LayerNorm(Module):
    """LayerNorm over the last axis (dim,) with affine weight and bias."""

    def __init__(self, name: str, dim: int, eps: float):
        super().__init__(name)
        self.eps = eps
        self.declare("weight", (dim,))
        self.declare("bias", (dim,))

    def __call__(self, ops, x):
        return ops.layer_norm(x, self.name, self.eps)


class Embedding(Module):
    """Lookup table weight (num, dim) indexed by host integer ids."""

    def __init__(self, name: str, num: int, dim: int):
        super().__init__(name)
        self.num, self.dim = num, dim
        self.declare("weight", (num, dim))

    def __call__(self, ops, ids):
        return ops.embedding(ids, self.name)  # (...,) -> (..., dim)


# --- attention -----------------------------------------------------------------


def multihead_attention(ops, q, k, v, heads: int, name: str, causal: bool = False):
    """softmax(q_h k_h^T / sqrt(d) [causal]) v_h for each of `heads` heads, heads re-joined.

    q (B, T, C), k and v (B, S, C), d = C // heads -> (B, T, C). The scale is
    applied to the q k^T product (`matmul` alpha), as torch's attention does.
    Ops: `{name}.scores`, `{name}.probs`, `{name}.context`. When the scores have more than
    `ops.attention_tile_elements` elements and the interpreter's class has an `attention` method (float,
    integer), the three run as one `ops.attention` call, in tiles of query rows; an interpreter with a true
    `fuse_attention` (float) gets every attention as one `ops.attention` call; a proxy whose class has
    none (the recording interpreter) always sees the three ops.
    """
    B, T, C = q.shape
    S = k.shape[1]
    d = C // heads
    q = ops.transpose(ops.reshape(q, (B, T, heads, d)), (0, 2, 1, 3))  # (B, H, T, d)
    k = ops.transpose(ops.reshape(k, (B, S, heads, d)), (0, 2, 3, 1))  # (B, H, d, S)
    v = ops.transpose(ops.reshape(v, (B, S, heads, d)), (0, 2, 1, 3))  # (B, H, S, d)
    tile = getattr(ops, "attention_tile_elements", 0) if getattr(type(ops), "attention", None) else 0
    fuse = bool(getattr(ops, "fuse_attention", False)) and getattr(type(ops), "attention", None) is not None
    if fuse or (tile and B * heads * T * S > tile):  # the three ops in one call (fused, or in query tiles)
        ctx = ops.attention(q, k, v, name, alpha=float(d) ** -0.5, causal=causal)  # (B, H, T, d)
    else:
        scores = ops.matmul(q, k, f"{name}.scores", alpha=float(d) ** -0.5)  # (B, H, T, S)
        probs = ops.softmax(scores, f"{name}.probs", causal=causal)
        ctx = ops.matmul(probs, v, f"{name}.context")  # (B, H, T, d)
    return ops.reshape(ops.transpose(ctx, (0, 2, 1, 3)), (B, T, heads * d))  # (B, T, C)


class Attention(Module):
    """diffusers' `Attention`: to_q, to_k, to_v, multi-head attention, to_out.0.

    Query from x (B, T, query_dim); keys and values from `context`
    (B, S, context_dim) or, when None, from x. `qkv_bias`: whether to_q/to_k/to_v
    have biases (False in the UNet, True in the VAE); to_out.0 always has one.
    """

    def __init__(self, name: str, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None, qkv_bias: bool = False):
        super().__init__(name)
        inner = heads * dim_head
        self.heads = heads
        self.to_q = self.add(Linear(self.sub("to_q"), query_dim, inner, bias=qkv_bias))
        self.to_k = self.add(Linear(self.sub("to_k"), context_dim or query_dim, inner, bias=qkv_bias))
        self.to_v = self.add(Linear(self.sub("to_v"), context_dim or query_dim, inner, bias=qkv_bias))
        self.to_out = self.add(Linear(self.sub("to_out.0"), inner, query_dim))

    def __call__(self, ops, x, context=None):
        src = x if context is None else context
        q = self.to_q(ops, x)  # (B, T, inner)
        k = self.to_k(ops, src)  # (B, S, inner)
        v = self.to_v(ops, src)  # (B, S, inner)
        h = multihead_attention(ops, q, k, v, self.heads, self.name)  # (B, T, inner)
        return self.to_out(ops, h)  # (B, T, query_dim)


# --- convolutional blocks -----------------------------------------------------


class ResnetBlock2D(Module):
    """diffusers' `ResnetBlock2D` (pre-norm, "default" time embedding norm).

    out = (shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + temb_proj)))) / output_scale_factor

    `temb_channels` None: no time embedding (VAE). The caller passes the time
    embedding already through SiLU (diffusers applies the same SiLU inside
    every resnet; the UNet graph computes it once). A 1x1 `conv_shortcut`
    exists when in_ch != out_ch.
    """

    def __init__(self, name: str, in_ch: int, out_ch: int, temb_channels: int | None, groups: int, eps: float, output_scale_factor: float = 1.0):
        super().__init__(name)
        self.output_scale_factor = output_scale_factor
        self.norm1 = self.add(GroupNorm(self.sub("norm1"), groups, in_ch, eps))
        self.conv1 = self.add(Conv2d(self.sub("conv1"), in_ch, out_ch, 3, padding=1))
        self.time_emb_proj = self.add(Linear(self.sub("time_emb_proj"), temb_channels, out_ch)) if temb_channels else None
        self.norm2 = self.add(GroupNorm(self.sub("norm2"), groups, out_ch, eps))
        self.conv2 = self.add(Conv2d(self.sub("conv2"), out_ch, out_ch, 3, padding=1))
        self.conv_shortcut = self.add(Conv2d(self.sub("conv_shortcut"), in_ch, out_ch, 1)) if in_ch != out_ch else None

    def __call__(self, ops, x, temb_act=None):
        h = self.norm1(ops, x)
        h = ops.silu(h, self.sub("act1"))
        h = self.conv1(ops, h)  # (B, out, H, W)
        if self.time_emb_proj is not None:
            t = self.time_emb_proj(ops, temb_act)  # (B, out)
            t = ops.reshape(t, (t.shape[0], t.shape[1], 1, 1))  # (B, out, 1, 1)
            h = ops.add(h, t, self.sub("add_temb"))
        h = self.norm2(ops, h)
        h = ops.silu(h, self.sub("act2"))
        h = self.conv2(ops, h)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(ops, x)
        out = ops.add(x, h, self.sub("add"))
        if self.output_scale_factor != 1.0:
            out = ops.scale(out, 1.0 / self.output_scale_factor, self.sub("rescale"))
        return out


class Downsample2D(Module):
    """3x3 stride-2 convolution `{name}.conv`.

    `padding` 0 means diffusers' asymmetric padding: one zero row at the bottom
    and one zero column at the right, i.e. (top, bottom, left, right) = (0, 1, 0, 1).
    """

    def __init__(self, name: str, channels: int, padding: int):
        super().__init__(name)
        pad = (0, 1, 0, 1) if padding == 0 else padding
        self.conv = self.add(Conv2d(self.sub("conv"), channels, channels, 3, stride=2, padding=pad))

    def __call__(self, ops, x):
        return self.conv(ops, x)


class Upsample2D(Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution `{name}.conv`."""

    def __init__(self, name: str, channels: int):
        super().__init__(name)
        self.conv = self.add(Conv2d(self.sub("conv"), channels, channels, 3, padding=1))

    def __call__(self, ops, x):
        x = ops.upsample_nearest2x(x, self.sub("upsample"))  # (B, C, 2H, 2W)
        return self.conv(ops, x)
