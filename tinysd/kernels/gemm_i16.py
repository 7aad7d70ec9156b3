"""Exact int16 x int16 and uint8 x int8 -> int32 SIMD products for the "i16" and "u8" GEMM plans (spec §3.3,
CPU fast paths).

Mirrors the AVX-512 VNNI instruction `vpdpwssd` (and, without VNNI, `vpmaddwd` + `vpaddd`):
each 32-bit lane holds a pair of int16 values, and one instruction does, for its lanes l
(`LANES`: 16 in a 512-bit vector, 8 in a 256-bit one),

    acc[l] += a[2l] * b[2l] + a[2l+1] * b[2l+1]        (int32, wrapping)

and, for uint8 activations with AVX-512 VNNI or AVX-VNNI ("u8" plan), `vpdpbusd` (the CPU twin of HVX
`vrmpy`; zmm, or its VEX form on ymm): each lane
holds a quad of bytes, a unsigned and b signed,

    acc[l] += a[4l] b[4l] + a[4l+1] b[4l+1] + a[4l+2] b[4l+2] + a[4l+3] b[4l+3]   (int32, wrapping)

where each product |a b| <= 255 * 128 is exact in the instruction's 16-bit intermediates. The code
below is the same for both with a "word" of 2 int16 or 4 bytes (arguments named `npairs` count K in words).

The micro-kernel below is written as that portable LLVM IR pattern (sext, mul, even + odd lanes,
add); LLVM selects `vpdpwssd zmm` on CPUs with avx512_vnni and `vpmaddwd ymm` + `vpaddd ymm` on
AVX2 CPUs. It never relies on wrapping:

    Operands: activations a = x - offset with |a| <= A (uint16: x - 32768, A = 32768;
    uint8: x - 128, A = 128; "u8": a = x, A = 255); int8 weights |w| <= 128. A lane accumulates one output's
    products over a K-block of L values, so every partial sum is an integer of magnitude
    <= L * A * 128. With L <= block_length(A) = 2 * floor((2**31 - 1) // (A * 128) / 2)
    (uint16: 510; "u8": block_length(255, 128, 4) = 65792, a multiple of 4) that is < 2**31: the
    int32 lane holds the exact sum. Each K-block's
    int32 result is then added into an int64 tile (exact: |acc| < 2**62 is checked), or,
    where the caller has proven that the whole reduction fits int32 (`gemm.int32_exact`),
    into an int32 tile that `requant_tile` requantizes in int32 lanes (spec §3.3).

Weights are packed once (`pack_weight`) into int16 pairs, panel by panel (`PANEL` = LANES * NV
output channels: 64 with AVX-512, 16 with AVX2; the last panel a multiple of LANES, N padded to
one): word `p * width + c` of a panel holds
(w[c, 2p], w[c, 2p + 1]), zero beyond N and K. That is 2 bytes per weight (the float32 copy of
the "split"/"f64" plans is 4); packed as int8 quads (w[c, 4p], ..., w[c, 4p + 3]) for "u8", 1 byte.
Activations are written as an (Mp, Kp) int16 (uint8) matrix, Mp a multiple of `MR` and Kp a
multiple of 2 (4), padded with 0 (`block_product` reads words (a[r, 2p], a[r, 2p+1]) or 4 bytes).
"""
from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.extending import intrinsic

LANE_MAX = 2**31 - 1  # int32 lane
W_BOUND = 128  # |int8 weight|

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)


def target_features() -> set[str]:
    """The CPU features Numba compiles for (NUMBA_CPU_FEATURES, else the host's unless NUMBA_CPU_NAME is set)."""
    if config.CPU_FEATURES is not None:
        feats = config.CPU_FEATURES
    elif config.CPU_NAME is None:
        feats = llvm.get_host_cpu_features().flatten()
    else:
        feats = ""
    return {f[1:] for f in feats.split(",") if f.startswith("+")}


#: The micro-kernel compiles to `vpdpwssd zmm` with AVX-512 VNNI, to `vpmaddwd` + `vpaddd` with
#: AVX2. On other targets it is still exact (LLVM lowers the same IR to whatever the CPU has) but
#: its speed is unmeasured, so the float plans stay the default there (gemm.A16_METHOD).
VNNI = {"avx512vnni", "avx512bw"} <= target_features()
FAST = VNNI or "avx2" in target_features()
#: the "u8" plan (vpdpbusd, uint8 activations x int8 weights) is compiled where the CPU has it: AVX-512
#: VNNI (zmm), or AVX-VNNI (its VEX form on ymm: AVX2 CPUs such as Intel's since Alder Lake)
QUADS = VNNI or {"avxvnni", "avx2"} <= target_features()

#: int32 lanes per SIMD vector and the micro-tile (MR rows x NV vectors of output channels) for the
#: target: 512-bit vectors (16 lanes, 6 x 4 = 24 of the 32 zmm registers as accumulators) where
#: AVX-512 BW is there, else 256-bit vectors (8 lanes, AVX2: MR x NV accumulators plus NV weight
#: vectors and one broadcast activation pair within the 16 ymm registers, so nothing spills).
TILES = {16: (6, 4), 8: (6, 2)}
LANES = 16 if {"avx512f", "avx512bw"} <= target_features() else 8
MR, NV = TILES[LANES]
PANEL = LANES * NV  # output channels per weight panel


def block_length(a_bound: int, b_bound: int = W_BOUND, per_word: int = 2) -> int:
    """Longest K-block, a multiple of per_word (2: int16 pairs, 4: byte quads), with
    block * a_bound * b_bound <= 2**31 - 1 (int32 lanes stay exact; b_bound: 128 for int8 weights,
    255 for centred uint8 activations)."""
    n = LANE_MAX // (a_bound * b_bound)
    return max(per_word, n - n % per_word)


def _lanes(values):
    return ir.Constant(ir.VectorType(_I32, len(values)), [ir.Constant(_I32, v) for v in values])


def _dot_pairs(builder, acc, a, b):
    """acc + (a[2l] b[2l] + a[2l+1] b[2l+1]) per lane l; a, b <L x i32> holding int16 pairs:
    vpdpwssd (AVX-512 VNNI), vpmaddwd + vpaddd (AVX2, AVX-512 BW)."""
    lanes = a.type.count
    wide = ir.VectorType(_I32, 2 * lanes)
    ae = builder.sext(builder.bitcast(a, ir.VectorType(_I16, 2 * lanes)), wide)
    be = builder.sext(builder.bitcast(b, ir.VectorType(_I16, 2 * lanes)), wide)
    prod = builder.mul(ae, be)  # <2L x i32>, |.| <= 2**22: exact
    undef = ir.Constant(wide, ir.Undefined)
    even, odd = _lanes(range(0, 2 * lanes, 2)), _lanes(range(1, 2 * lanes, 2))
    pairs = builder.add(builder.shuffle_vector(prod, undef, even), builder.shuffle_vector(prod, undef, odd))
    return builder.add(acc, pairs)


def _vnni_quads(builder, acc, a, b):
    """acc + sum_{i < 4} a[4l + i] b[4l + i] per lane l; a (unsigned), b (signed) <L x i32> holding byte
    quads: vpdpbusd (AVX-512 VNNI; with 8 lanes also AVX-VNNI's VEX form), called by name."""
    lanes = a.type.count
    vi32, v8 = ir.VectorType(_I32, lanes), ir.VectorType(ir.IntType(8), 4 * lanes)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi32, [vi32, v8, v8]),
                                        f"llvm.x86.avx512.vpdpbusd.{32 * lanes}")
    return builder.call(fn, [acc, builder.bitcast(a, v8), builder.bitcast(b, v8)])


def _make_micro_kernel(mr, nv, lanes):
    """Intrinsic (a, a_off, lda, b, b_off, npairs, c, ldc, add) -> None for an mr x L*nv tile (L = lanes):

        s[r, Lv + l] = sum_{p < npairs} a[a_off + r*lda + 2p + i] * b[b_off + p*L*nv + Lv + l, i]
                       (sum over i in {0, 1}; int32 lanes; r < mr, v < nv, l < L)
        c[r, Lv + l] = c[r, Lv + l] + s (add != 0) or s (add == 0), in int64

    a: int16 C-contiguous (offsets in int16 elements); b: int16 packed pairs (offset in pairs); or, "u8",
    a uint8 and b int8 packed quads, the same with words of 4 (4p + i, i < 4; vpdpbusd);
    c: int64 C-contiguous (row stride ldc), each int32 lane sign-extended; or int32 (the int32 tile
    of the int32 epilogue, `requant_tile`: lanes added as int32, exact only where the caller has
    proven that every partial sum over all K-blocks fits int32). npairs >= 1 and
    npairs * 2 <= block_length(A).
    """
    width = lanes * nv
    vi32, vi64 = ir.VectorType(_I32, lanes), ir.VectorType(_I64, lanes)
    splat0 = _lanes([0] * lanes)

    @intrinsic
    def micro_kernel(typingctx, a, a_off, lda, b, b_off, npairs, c, ldc, add):
        sig = types.void(a, a_off, lda, b, b_off, npairs, c, ldc, add)

        def codegen(context, builder, signature, args):
            a_ptr = context.make_array(signature.args[0])(context, builder, args[0]).data  # i16* or i8*
            quads = signature.args[0].dtype.bitwidth == 8  # "u8": uint8 x int8 byte quads
            dot = _vnni_quads if quads else _dot_pairs
            b_ptr = builder.bitcast(context.make_array(signature.args[3])(context, builder, args[3]).data,
                                    _I32.as_pointer())  # int16 pairs as i32 words
            c_ptr = context.make_array(signature.args[6])(context, builder, args[6]).data  # i64* or i32*
            wide = signature.args[6].dtype.bitwidth == 64  # int64 tile: sext the lanes; int32 tile: as they are
            vc = vi64 if wide else vi32
            a_off, lda, b_off, npairs, ldc = args[1], args[2], args[4], args[5], args[7]
            add = builder.icmp_signed("!=", args[8], ir.Constant(args[8].type, 0))
            zero = ir.Constant(vi32, [ir.Constant(_I32, 0)] * lanes)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(mr)]
            undef = ir.Constant(vi32, ir.Undefined)
            with cgutils.for_range(builder, npairs) as loop:
                p = loop.index
                row = builder.add(b_off, builder.mul(p, ir.Constant(_I64, width)))
                bv = []
                for v in range(nv):
                    ptr = builder.gep(b_ptr, [builder.add(row, ir.Constant(_I64, lanes * v))])
                    bv.append(builder.load(builder.bitcast(ptr, vi32.as_pointer()), align=4))
                col = builder.add(a_off, builder.mul(p, ir.Constant(_I64, 4 if quads else 2)))
                for r in range(mr):
                    off = builder.add(col, builder.mul(ir.Constant(_I64, r), lda))
                    word = builder.load(builder.bitcast(builder.gep(a_ptr, [off]), _I32.as_pointer()), align=1)
                    bcast = builder.shuffle_vector(builder.insert_element(undef, word, ir.Constant(_I32, 0)),
                                                   undef, splat0)
                    for v in range(nv):
                        builder.store(dot(builder, builder.load(accs[r][v]), bcast, bv[v]), accs[r][v])
            ptrs = [[builder.bitcast(builder.gep(c_ptr, [builder.add(builder.mul(ir.Constant(_I64, r), ldc),
                                                                     ir.Constant(_I64, lanes * v))]),
                                     vc.as_pointer()) for v in range(nv)] for r in range(mr)]
            align = 8 if wide else 4

            def lanes_out(r, v):
                s = builder.load(accs[r][v])
                return builder.sext(s, vi64) if wide else s

            with builder.if_else(add) as (then, otherwise):
                with then:
                    for r in range(mr):
                        for v in range(nv):
                            total = builder.add(builder.load(ptrs[r][v], align=align), lanes_out(r, v))
                            builder.store(total, ptrs[r][v], align=align)
                with otherwise:
                    for r in range(mr):
                        for v in range(nv):
                            builder.store(lanes_out(r, v), ptrs[r][v], align=align)
            return context.get_dummy_value()

        return sig, codegen

    return micro_kernel


_MK = [_make_micro_kernel(MR, nv, LANES) for nv in range(1, 5)]  # nv = 1..4 vectors (NV <= 4)
_mk1, _mk2, _mk3, _mk4 = _MK
_NV3, _NV4 = NV >= 3, NV >= 4  # the widths a panel can have: 1..NV vectors

#: rows of the int32 parameter table of `requant_tile` (one column per output channel), as made by
#: `gemm.i32_requant_params`
REQUANT_ROWS = ("bias", "acc_shift", "acc_mask", "acc_half", "left", "mult", "right", "right_mask", "right_half")


def _round_shift_i32(builder, x, n, mask, half):
    """(x >> n) + ((x & mask) >= half) per int32 lane: x rounded-shifted right by n in [0, 31], half up,
    without overflow (mask = 2**n - 1, half = 2**(n-1), or mask = 0, half = 1 for n = 0)."""
    inc = builder.zext(builder.icmp_signed(">=", builder.and_(x, mask), half), x.type)
    return builder.add(builder.ashr(x, n), inc)


def _make_requant_tile(lanes, narrow=True, left=True):
    """Intrinsic (c, rows, width, ldc, prm, n0, lo, hi, zp, out, out_off, out_ld, n_valid) -> None: the
    int32 requantize epilogue of an int32 tile, `lanes` channels per vector (narrow / left False: the
    variant for tables whose acc_shift / left are all 0, without those steps, then identities):

        for r < rows, j < width (width a multiple of lanes), ch = n0 + j, P = prm[:, ch]:
          t = c[r*ldc + j] + P.bias                                   (the exact accumulator)
          u = (t >> P.acc_shift) + ((t & P.acc_mask) >= P.acc_half)   (narrow_i64: no saturation)
          x = sat32(u << P.left)                                      (selects on u vs INT32_MAX >> left)
          y = (sext64(x) * sext64(P.mult) + 2**30) >> 31              (srdhm: vpmuldq; high half)
          v = (y >> P.right) + ((y & P.right_mask) >= P.right_half)   (rounding shift right)
          out[out_off + r*out_ld + j] = min(max(v, lo), hi) + zp      (for j < n_valid; in out's dtype)

    c: int32 C-contiguous; prm: int32 (len(REQUANT_ROWS), >= n0 + width) C-contiguous; out: any integer
    dtype holding [lo + zp, hi + zp] (it may be c itself: in place, out_off 0, out_ld ldc). Exact (equal
    to requantize(narrow_i64(t, acc_shift), ...)) under the conditions proven in docs/arithmetic.md
    §3.3 (|t| <= 2**31 - 1, acc_shift <= 31, lo = max(qmin - zp, -2**31), hi = min(qmax - zp, 2**31 - 1)).
    """
    vi32, vi64 = ir.VectorType(_I32, lanes), ir.VectorType(_I64, lanes)

    def splat(v):
        return ir.Constant(vi32, [ir.Constant(_I32, v)] * lanes)

    @intrinsic
    def requant_tile(typingctx, c, rows, width, ldc, prm, n0, lo, hi, zp, out, out_off, out_ld, n_valid):
        sig = types.void(c, rows, width, ldc, prm, n0, lo, hi, zp, out, out_off, out_ld, n_valid)

        def codegen(context, builder, signature, args):
            c_ptr = context.make_array(signature.args[0])(context, builder, args[0]).data  # i32*
            parr = context.make_array(signature.args[4])(context, builder, args[4])
            p_ptr = parr.data  # i32*
            p_ld = cgutils.unpack_tuple(builder, parr.shape)[1]
            o_ptr = context.make_array(signature.args[9])(context, builder, args[9]).data  # iN*
            o_int = ir.IntType(signature.args[9].dtype.bitwidth)
            vo = ir.VectorType(o_int, lanes)
            rows, width, ldc, n0, out_off, out_ld, n_valid = (args[i] for i in (1, 2, 3, 5, 10, 11, 12))
            undef = ir.Constant(vi32, ir.Undefined)
            zeros = _lanes([0] * lanes)

            def bcast(value):
                v = builder.trunc(value, _I32) if value.type.width > 32 else value
                return builder.shuffle_vector(builder.insert_element(undef, v, ir.Constant(_I32, 0)), undef, zeros)

            lo, hi, zp = bcast(args[6]), bcast(args[7]), bcast(args[8])
            nvec = builder.udiv(width, ir.Constant(width.type, lanes))

            def vload(ptr, off):
                return builder.load(builder.bitcast(builder.gep(ptr, [off]), vi32.as_pointer()), align=4)

            with cgutils.for_range(builder, rows) as rloop:
                row = builder.mul(rloop.index, ldc)
                orow = builder.add(out_off, builder.mul(rloop.index, out_ld))
                with cgutils.for_range(builder, nvec) as vloop:
                    j = builder.mul(vloop.index, ir.Constant(_I64, lanes))
                    col = builder.add(n0, j)
                    p = {name: vload(p_ptr, builder.add(builder.mul(ir.Constant(_I64, i), p_ld), col))
                         for i, name in enumerate(REQUANT_ROWS)}
                    t = builder.add(vload(c_ptr, builder.add(row, j)), p["bias"])
                    u = _round_shift_i32(builder, t, p["acc_shift"], p["acc_mask"], p["acc_half"]) if narrow else t
                    x = u
                    if left:
                        top = builder.ashr(splat(2**31 - 1), p["left"])  # u > top: u << left > INT32_MAX
                        bottom = builder.ashr(splat(-(2**31)), p["left"])  # u < bottom: u << left < INT32_MIN
                        x = builder.select(builder.icmp_signed(">", u, top), splat(2**31 - 1),
                                           builder.select(builder.icmp_signed("<", u, bottom), splat(-(2**31)),
                                                          builder.shl(u, p["left"])))
                    prod = builder.mul(builder.sext(x, vi64), builder.sext(p["mult"], vi64))
                    y = builder.trunc(builder.ashr(builder.add(prod, ir.Constant(vi64, [ir.Constant(_I64, 2**30)]
                                                                                  * lanes)),
                                                   ir.Constant(vi64, [ir.Constant(_I64, 31)] * lanes)), vi32)
                    v = _round_shift_i32(builder, y, p["right"], p["right_mask"], p["right_half"])
                    v = builder.select(builder.icmp_signed("<", v, lo), lo, v)
                    v = builder.select(builder.icmp_signed(">", v, hi), hi, v)
                    v = builder.add(v, zp)
                    v = builder.trunc(v, vo) if o_int.width < 32 else v  # in [qmin, qmax]: fits out's dtype
                    optr = builder.gep(o_ptr, [builder.add(orow, j)])
                    full = builder.icmp_signed("<=", builder.add(j, ir.Constant(_I64, lanes)), n_valid)
                    with builder.if_else(full) as (whole, part):
                        with whole:
                            builder.store(v, builder.bitcast(optr, vo.as_pointer()), align=1)
                        with part:  # the last channels of a panel: lane by lane
                            for lane in range(lanes):
                                inside = builder.icmp_signed("<", builder.add(j, ir.Constant(_I64, lane)), n_valid)
                                with builder.if_then(inside):
                                    builder.store(builder.extract_element(v, ir.Constant(_I32, lane)),
                                                  builder.gep(optr, [ir.Constant(_I64, lane)]))
            return context.get_dummy_value()

        return sig, codegen

    return requant_tile


#: requant_tile variants indexed by 2 * (any acc_shift > 0) + (any left > 0)
_RQ = [_make_requant_tile(LANES, narrow, left) for narrow in (False, True) for left in (False, True)]
_rq0, _rq1, _rq2, _rq3 = _RQ


@njit(cache=True, inline="always")
def requant_tile(c, rows, width, ldc, prm, n0, lo, hi, zp, variant, out, out_off, out_ld, n_valid):
    """The int32 requantize epilogue of `_make_requant_tile` of c[:rows, :width] into out, variant
    2 * narrow + left (0-3; a variant without a step needs that step's shifts all 0 in prm)."""
    if variant == 0:
        _rq0(c, rows, width, ldc, prm, n0, lo, hi, zp, out, out_off, out_ld, n_valid)
    elif variant == 1:
        _rq1(c, rows, width, ldc, prm, n0, lo, hi, zp, out, out_off, out_ld, n_valid)
    elif variant == 2:
        _rq2(c, rows, width, ldc, prm, n0, lo, hi, zp, out, out_off, out_ld, n_valid)
    else:
        _rq3(c, rows, width, ldc, prm, n0, lo, hi, zp, out, out_off, out_ld, n_valid)


#: bytes of packed weights per K-block that `block_product` keeps in L1 while it runs over the row tiles
L1_WEIGHT_BYTES = 16 * 1024
#: K pairs per K-block (besides the plan's exact block): L1_WEIGHT_BYTES of one panel with the AVX2 tile
#: (256 pairs, measured faster); with the AVX-512 tile only the plan's block, as it was measured on the
#: VNNI machine (a 64-pair L1 block there is unmeasured)
L1_PAIRS = max(2, L1_WEIGHT_BYTES // (4 * PANEL)) if LANES == 8 else 1 << 30


@njit(cache=True, inline="always")
def block_product(a, t0, t1, wpk, panel, width, npairs_total, block_pairs, cblock):
    """cblock[(t - t0)*MR + r, :width] = sum_k a[t*MR + r, k] * w[PANEL*panel + c, k]   (exact in int64;
    in an int32 cblock exact where the caller has proven the sum fits int32) for the row tiles t0 <= t < t1.

    a: (Mp, 2*npairs_total) int16 or (Mp, 4*npairs_total) uint8 ("u8", npairs_total then counts quads);
    wpk: packed weights (see module docstring); cblock: (>= (t1-t0)*MR,
    >= width) int64 or int32 (see the micro-kernel), rows contiguous, any row stride (a column range
    of a wider tile); columns >= width untouched. K is processed in blocks of block_pairs pairs (at most
    the plan's exact block); each block of the panel's weights is used for all the tiles before the
    next (GotoBLAS order: it stays in L1), and each tile's block sum is added into cblock in int64.
    """
    lda = a.shape[1]
    per_word = 4 // a.itemsize  # a's elements per word: 2 (int16 pairs) or 4 (uint8 quads)
    ldc = cblock.strides[0] // cblock.itemsize
    base = PANEL * panel * npairs_total  # words before this panel
    nv = width // LANES
    for p0 in range(0, npairs_total, block_pairs):
        n = min(block_pairs, npairs_total - p0)
        b_off = base + p0 * width
        for t in range(t0, t1):
            a_off = t * MR * lda + per_word * p0
            c = cblock[(t - t0) * MR:]
            if _NV4 and nv == 4:  # _NV3, _NV4: compile-time constants (AVX2: False, the code is dropped)
                _mk4(a, a_off, lda, wpk, b_off, n, c, ldc, p0)
            elif _NV3 and nv == 3:
                _mk3(a, a_off, lda, wpk, b_off, n, c, ldc, p0)
            elif nv == 2:
                _mk2(a, a_off, lda, wpk, b_off, n, c, ldc, p0)
            else:
                _mk1(a, a_off, lda, wpk, b_off, n, c, ldc, p0)  # p0 > 0: add to the earlier blocks


#: words of a weight row copied together by `_pack_kernel` (a block of PANEL x WORD_BLOCK words: 16 KB, in L1)
WORD_BLOCK = 64


@njit(cache=True, parallel=True)
def _pack_kernel(words, n_pad, out):
    """out (words, laid out per panel) <- words (N, W) int32 (each the 2 int16 or 4 int8 values of one weight
    row's word): out[PANEL*j*W + p*width + c] = words[PANEL*j + c, p], zero for rows N..n_pad-1. A transpose
    of each panel, in blocks of WORD_BLOCK words."""
    n_out, nwords = words.shape
    n_panels = (n_pad + PANEL - 1) // PANEL
    nblk = (nwords + WORD_BLOCK - 1) // WORD_BLOCK
    for item in prange(n_panels * nblk):
        j = item // nblk
        p0 = (item - j * nblk) * WORD_BLOCK
        p1 = min(nwords, p0 + WORD_BLOCK)
        width = min(PANEL, n_pad - PANEL * j)
        base = PANEL * j * nwords
        for c in range(width):
            o = PANEL * j + c
            if o < n_out:
                src = words[o, p0:p1]
                for p in range(p1 - p0):
                    out[base + (p0 + p) * width + c] = src[p]
            else:
                for p in range(p0, p1):
                    out[base + p * width + c] = 0


@njit(cache=True, parallel=True)
def _weight_rows(w3, rows):
    """rows[o, s*C + c] = w3[o, c, s] (conv weights (N, C, KH*KW): K in (kh, kw, c) order; 2-D weights come as
    (N, K, 1)), converted to rows' dtype, and zeros from C*S to the end of each row."""
    n, c_in, taps = w3.shape
    for o in prange(n):
        src, dst = w3[o], rows[o]
        for s in range(taps):
            for c in range(c_in):
                dst[s * c_in + c] = src[c, s]
        dst[c_in * taps:] = 0


@njit(cache=True, parallel=True)
def _pack_centred_kernel(b, zp, npairs, n_pad, out):
    """out (words, laid out per panel) <- b (K, N) - zp; zeros beyond N and K (words of 2 int16 or 4 int8,
    out's dtype; npairs counts words)."""
    k, n_out = b.shape
    per = 4 // out.itemsize
    n_panels = (n_pad + PANEL - 1) // PANEL
    for j in prange(n_panels):
        width = min(PANEL, n_pad - PANEL * j)
        base = PANEL * j * npairs * per
        n1 = min(PANEL * j + width, n_out)
        for p in range(npairs):
            row = base + per * p * width
            for h in range(per):
                kk = per * p + h
                if kk < k:
                    for o in range(PANEL * j, n1):  # row kk of b, contiguous
                        out[row + per * (o - PANEL * j) + h] = np.int32(b[kk, o]) - zp
                    for o in range(n1, PANEL * j + width):
                        out[row + per * (o - PANEL * j) + h] = 0
                else:
                    for c in range(width):
                        out[row + per * c + h] = 0


def pack_centred(b, zp, dtype=np.int16):
    """Packed words (as `pack_weight` of the (N, K) matrix (b - zp).T) of an activation b (K, N): the right
    operand of an activation product, read row by row, without the transposed copy. int16 pairs (uint8 b,
    |b - zp| <= 255), or int8 quads ("u8": zp = 128, b - 128 in [-128, 127])."""
    k, n = b.shape
    per = 4 // np.dtype(dtype).itemsize
    nwords = -(-k // per)
    n_pad = -(-n // LANES) * LANES
    out = np.empty(n_pad * nwords * per, dtype)
    _pack_centred_kernel(np.ascontiguousarray(b), np.int32(zp), nwords, n_pad, out)
    return out


def pack_weight(w, dtype=np.int16):
    """Packed words (1-D, `PANEL`-wide panels, see module docstring) of an int8 weight: (N, K), or a conv
    weight (N, C, KH, KW) with K ordered (kh, kw, c) (as the SIMD im2col operand); int16 pairs, or int8 quads
    (dtype int8: the "u8" plan). Also takes int16 (N, K) values in int16 (the centred uint8 right operand of
    an activation product, in tests)."""
    n = w.shape[0]
    k = int(np.prod(w.shape[1:]))
    per = 4 // np.dtype(dtype).itemsize
    nwords = -(-k // per)
    n_pad = -(-n // LANES) * LANES
    if w.ndim == 2 and k % per == 0 and w.dtype == dtype and w.flags.c_contiguous and w.ctypes.data % 4 == 0:
        rows = w  # read in place as int32 words (an aligned view: no second compilation for unaligned arrays)
    else:  # one copy: widened to dtype, conv K in (kh, kw, c) order, K padded with zeros to whole words
        rows = np.empty((n, nwords * per), dtype)
        w3 = np.ascontiguousarray(w).reshape(n, w.shape[1], -1)  # (N, K, 1) or conv (N, C, KH*KW)
        _weight_rows(w3, rows)
    out = np.empty(n_pad * nwords, np.int32)
    _pack_kernel(rows.view(np.int32), n_pad, out)
    return out.view(dtype)


def padded_shape(rows: int, k: int, per_word: int = 2) -> tuple[int, int]:
    """(Mp, Kp): rows rounded up to a multiple of MR, K up to a multiple of per_word (2: int16, 4: uint8)."""
    return -(-rows // MR) * MR, -(-k // per_word) * per_word
