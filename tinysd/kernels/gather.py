"""The exp-table reads of softmax as word gathers: e[j] = E[min(m - x[j], last)] and S = sum_j e[j].

This is the step of spec §6.2 that HVX does with a word `vgather` (V65+). On x86 CPUs with AVX-512F one
`vpgatherdd` reads 16 table entries; LLVM does not emit gathers for AMD Zen on its own (its cost model),
so `exp_lookup` calls the instruction by name, for whole vectors of 16, and reads the rest of the row
with scalar loads. Elsewhere every element is a scalar load. A table read is exact and the sum is of
integers, so both give the same integers (tests compare them with the reference softmax).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .gemm_i16 import target_features

#: `vpgatherdd zmm` (16 int32 lanes) is used where Numba targets AVX-512F.
GATHER = "avx512f" in target_features()
LANES = 16

_I1, _I32, _I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)


@intrinsic
def _gather_rows(typingctx, table, x, m, last, e, n):
    """S = sum_{j < n} e[j] with e[j] = table[min(m - x[j], last)] for j < n (n a multiple of LANES), by
    vpgatherdd: table int32 (C-contiguous), x uint8/uint16 (C-contiguous), e int32 (C-contiguous),
    0 <= m - x[j] <= 65535, m, last, n int64; returns int64."""
    if not all(isinstance(a, types.Array) and a.layout == "C" for a in (table, x, e)):
        return None
    sig = types.int64(table, x, m, last, e, n)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 1, 4)]
        t_ptr, x_ptr, e_ptr = arrays
        vx = ir.VectorType(ir.IntType(signature.args[1].dtype.bitwidth), LANES)
        vi32, vi64 = ir.VectorType(_I32, LANES), ir.VectorType(_I64, LANES)
        i8p = ir.IntType(8).as_pointer()
        gather = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vi32, [vi32, i8p, vi32, ir.VectorType(_I1, LANES), _I32]),
            "llvm.x86.avx512.mask.gather.dpi.512")
        undef = ir.Constant(vi32, ir.Undefined)
        zeros = ir.Constant(vi32, [ir.Constant(_I32, 0)] * LANES)

        def splat(value):  # an int64 scalar as <LANES x i32>
            v = builder.insert_element(undef, builder.trunc(value, _I32), ir.Constant(_I32, 0))
            return builder.shuffle_vector(v, undef, zeros)

        m, last = splat(args[2]), splat(args[3])
        every = ir.Constant(ir.VectorType(_I1, LANES), [ir.Constant(_I1, 1)] * LANES)
        base = builder.bitcast(t_ptr, i8p)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vi64, [ir.Constant(_I64, 0)] * LANES))
        nvec = builder.udiv(args[5], ir.Constant(_I64, LANES))
        with cgutils.for_range(builder, nvec) as loop:
            off = builder.mul(loop.index, ir.Constant(_I64, LANES))
            xv = builder.zext(builder.load(builder.bitcast(builder.gep(x_ptr, [off]), vx.as_pointer()), align=1),
                              vi32)
            d = builder.sub(m, xv)  # >= 0
            k = builder.select(builder.icmp_signed(">", d, last), last, d)  # vpminsd
            ev = builder.call(gather, [undef, base, k, every, ir.Constant(_I32, 4)])  # 4-byte entries
            builder.store(ev, builder.bitcast(builder.gep(e_ptr, [off]), vi32.as_pointer()), align=4)
            builder.store(builder.add(builder.load(acc), builder.sext(ev, vi64)), acc)
        total = builder.load(acc)
        s = ir.Constant(_I64, 0)
        for lane in range(LANES):
            s = builder.add(s, builder.extract_element(total, ir.Constant(_I32, lane)))
        return s

    return sig, codegen


@njit(cache=True, inline="always")
def exp_lookup(table, x, m, last, e):
    """e[j] = table[min(m - x[j], last)] for j < len(x) and returns their sum (int64): table int32 (K,),
    x uint8/uint16 (T,) with m >= max(x), e int32 (>= T,), all C-contiguous."""
    n = x.shape[0]
    head = 0
    s = np.int64(0)
    if GATHER:  # a compile-time constant: without AVX-512 the branch, and the intrinsic, are dropped
        head = n - n % LANES
        s = _gather_rows(table, x, m, last, e, head)
    for j in range(head, n):
        v = table[min(m - x[j], last)]
        e[j] = v
        s += v
    return s
