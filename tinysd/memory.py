"""How much working memory one generation needs, estimated before any work (`check_generation_memory`).

The estimate counts the largest tensors of each network call at the requested size, in bytes:

* UNet (batch 2B with classifier-free guidance): the skip stack (every down-block resnet and
  downsampler output, kept until the up path reads it), ACTIVATION_COPIES tensors of the widest
  activation of a level (an up-path concat doubles the channels), and per attention level
  three (2B x heads, HW, HW) tensors (scores, probabilities, one temporary), or three tiles of
  query rows when the scores have more than ATTENTION_TILE_ELEMENTS (the integer interpreter then tiles);
  the float engine (itemsize 4) fuses attention and holds one tile of at most FLOAT_ATTENTION_TILE_SCORES
  scores per thread;
* VAE decoder (one image at a time): ACTIVATION_COPIES tensors of the largest level
  (channels x height x width) and three (HW, HW) tensors of the mid block's single-head attention
  at the latent size (at most three tiles; the float engine: its tiles, as in the UNet);
* each level's convolution also holds an im2col band (at most IM2COL_ELEMENTS) and its product
  (float engine), or work buffers of at most CONV_WORK_BYTES (integer engines, `tinysd.kernels.conv`).

Elements are 4 bytes (float32) for the float engine and 8 for the integer engines (their
accumulators are int64). The larger of the two networks (plus `param_bytes`, 0 from the pipeline,
whose parameters are already loaded when it checks) must fit in the machine's physical memory;
otherwise the size or batch is refused with one line instead of a failed allocation deep in a
kernel. tests/test_bad_values.py checks that the estimate lies between 1x and 3x the peak NumPy
allocation measured with tracemalloc.
"""
from __future__ import annotations

import math
import os

from .errors import TinySDError

ACTIVATION_COPIES = 12  # float32-sized tensors alive in one op: a group norm keeps float64 temporaries
IM2COL_ELEMENTS = 1 << 24  # the float engine's im2col band (tinysd.interp.float._IM2COL_BUDGET)
ATTENTION_TILE_ELEMENTS = 1 << 25  # larger attention scores are computed in query tiles (interpreters' `attention`)
FLOAT_ATTENTION_TILE_SCORES = 1 << 19  # the float engine's attention: scores of one query tile per thread (2 MiB)
# the integer engines' tile in a low-memory pipeline (tinysd.offload): SD 1.5 512 x 512 UNet, 256 query rows
LOW_MEMORY_ATTENTION_TILE_ELEMENTS = 1 << 24
CONV_WORK_BYTES = 64 << 20  # integer conv2d's work buffers (im2col band, padded copy, products): tinysd.kernels.conv
GiB = 1 << 30


def physical_memory() -> int | None:
    """Bytes of physical memory (None when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _attention_tile(bh: int, t: int, s: int) -> int:
    """Elements of the scores the interpreters hold at once for `bh` (batch x heads) (t, s) attentions: all
    of them up to ATTENTION_TILE_ELEMENTS, otherwise one tile of max(1, tile // (bh * s)) query rows."""
    if bh * t * s <= ATTENTION_TILE_ELEMENTS:
        return bh * t * s
    return bh * s * min(t, max(1, ATTENTION_TILE_ELEMENTS // (bh * s)))


def _float_attention_tiles(t: int, s: int) -> int:
    """Elements of the scores the float engine holds at once for (t, s) attentions: one tile of
    max(1, min(t, FLOAT_ATTENTION_TILE_SCORES // s)) query rows per thread."""
    from .kernels.threads import thread_count

    return thread_count() * s * max(1, min(t, FLOAT_ATTENTION_TILE_SCORES // s))


def _conv_elements(elements: int, itemsize: int) -> int:
    """Elements (of `itemsize` bytes) a convolution with `elements` im2col entries holds besides its
    input and output: the float engine's band and its product (IM2COL_ELEMENTS each at most), or
    the integer engines' work buffers (CONV_WORK_BYTES at most)."""
    if itemsize == 4:
        return 2 * min(elements, IM2COL_ELEMENTS)
    return min(2 * elements, CONV_WORK_BYTES // itemsize)


def estimate_generation_bytes(config, width: int, height: int, batch: int, itemsize: int = 4) -> dict[str, int]:
    """{"unet": bytes, "vae": bytes} of working memory for `batch` images of width x height (see module docstring)."""
    u, v = config.unet, config.vae
    f = 2 ** (len(v.block_out_channels) - 1)
    h, w = max(1, height // f), max(1, width // f)
    layers = u.layers_per_block if isinstance(u.layers_per_block, tuple) else (u.layers_per_block,) * len(u.block_out_channels)
    attention = {i for i, _ in u.attention_widths()}
    skips = work = attn = 0
    for i, c in enumerate(u.block_out_channels):
        n = math.ceil(h / 2**i) * math.ceil(w / 2**i)  # positions at level i
        skips += (layers[i] + 1) * c * n
        work = max(work, ACTIVATION_COPIES * 2 * c * n + _conv_elements(9 * 2 * c * n, itemsize))
        if i in attention:  # integer: scores, probabilities, one temporary, of one tile of query rows (all of
            # them if small); float: one tile of scores per thread
            attn = max(attn, _float_attention_tiles(n, n) if itemsize == 4 else 3 * _attention_tile(2 * batch * u.heads(i), n, n))
    unet = (2 * batch * (skips + work) + attn) * itemsize
    vae_work = 0
    for j, c in enumerate(v.block_out_channels):
        n = math.ceil(height / 2**j) * math.ceil(width / 2**j)
        c_in = v.block_out_channels[min(j + 1, len(v.block_out_channels) - 1)]  # the upsampler's conv reads the wider level
        vae_work = max(vae_work, ACTIVATION_COPIES * c_in * n + _conv_elements(9 * c_in * n, itemsize))
    vae_attn = 0
    if v.mid_block_add_attention:
        vae_attn = _float_attention_tiles(h * w, h * w) if itemsize == 4 else 3 * _attention_tile(1, h * w, h * w)
    vae = (vae_work + vae_attn) * itemsize
    return {"unet": unet, "vae": vae}


def check_generation_memory(config, width: int, height: int, batch: int, *, itemsize: int = 4,
                            param_bytes: int = 0, limit: int | None = None) -> None:
    """TinySDError when the estimate plus `param_bytes` exceeds `limit` (default: the physical memory)."""
    limit = physical_memory() if limit is None else limit
    if limit is None:
        return
    est = estimate_generation_bytes(config, width, height, batch, itemsize)
    net = max(est, key=est.get)
    need = est[net] + param_bytes
    if need > limit:
        raise TinySDError(f"{width}x{height} with batch {batch} needs about {need / GiB:.1f} GiB of memory (mostly the "
                          f"{net}'s working memory at this size), more than this machine's {limit / GiB:.1f} GiB; "
                          f"use a smaller --width/--height or --batch")
