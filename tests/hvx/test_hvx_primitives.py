"""Every primitive of docs/arithmetic.md §2, as the HVX instruction sequence of tinysd/hvx/prims.h run under
qemu-hexagon, equals tinysd.fixedpoint on more than 100,000 edge and random lanes each."""
import itertools

import numpy as np
import pytest

from tinysd import fixedpoint as fp
from tinysd.hvx.runner import OP, Request

N_RANDOM = 100_000
I32 = (-(2**31), 2**31 - 1)
EDGE32 = np.array([0, 1, -1, 2, -2, 3, -3, 2**15, -(2**15), 2**16 - 1, 2**30 - 1, 2**30, -(2**30), 2**30 + 1,
                   2**31 - 2, 2**31 - 1, -(2**31), -(2**31) + 1, 12345, -12345], np.int64)


def rng_for(name):
    return np.random.default_rng(sum(map(ord, name)))


def mixed_i32(rng, n):
    """Uniform over int32, small values, powers of two +- 1 and edge values, in equal parts."""
    parts = [rng.integers(*I32, n // 4, endpoint=True), rng.integers(-1000, 1001, n // 4),
             (np.int64(1) << rng.integers(0, 31, n // 4)) * rng.choice([-1, 1], n // 4) + rng.integers(-1, 2, n // 4),
             rng.choice(EDGE32, n - 3 * (n // 4))]
    return np.clip(np.concatenate(parts), *I32)


def mixed_i62(rng, n):
    lim = 2**62 - 1
    parts = [rng.integers(-lim, lim, n // 3, endpoint=True),
             rng.integers(-(2**40), 2**40, n // 3) * rng.choice([1, 2**20], n // 3),
             rng.choice(np.array([0, 1, -1, lim, -lim, 2**61, -(2**61), 2**31, -(2**31), 2**32 - 1, -(2**32)]),
                        n - 2 * (n // 3))]
    return np.concatenate(parts)


def run_prim(hvx, op, n, *blobs):
    [resp] = hvx.run([Request(OP[op], [n], [np.ascontiguousarray(b) for b in blobs])])
    assert resp.status == 0, resp.status
    return resp


def assert_equal_lanes(got, want, what, *inputs):
    got, want = np.asarray(got).astype(np.int64), np.asarray(want).astype(np.int64)
    assert got.shape == want.shape
    bad = np.flatnonzero(got != want)
    if bad.size:
        i = bad[0]
        args = ", ".join(str(int(np.asarray(a).reshape(-1)[i])) for a in inputs)
        pytest.fail(f"{what}: {bad.size} of {got.size} lanes differ; first at lane {i}: {what}({args}) "
                    f"= {int(got[i])} on HVX, {int(want[i])} in tinysd.fixedpoint")


def shl_sat(x, s):
    return fp.saturate_i32(x.astype(np.int64) << s.astype(np.int64))


def add_sat(a, b):
    return fp.saturate_i32(a.astype(np.int64) + b)


@pytest.mark.parametrize("op,fn", [("srdhm", fp.srdhm), ("add_sat", add_sat)])
def test_two_int32_operands(hvx, op, fn):
    """srdhm and the saturating add: every pair of edge values, then 100,000 mixed pairs."""
    rng = rng_for(op)
    edge = np.array(list(itertools.product(EDGE32, EDGE32))).T
    a = np.concatenate([edge[0], mixed_i32(rng, N_RANDOM)]).astype(np.int32)
    b = np.concatenate([edge[1], mixed_i32(rng, N_RANDOM)]).astype(np.int32)
    got = run_prim(hvx, op, a.size, a, b).array(0, np.int32)
    assert_equal_lanes(got, fn(a, b), op, a, b)


@pytest.mark.parametrize("op,fn", [("rsr32", fp.rounding_shift_right), ("shl_sat", shl_sat)])
def test_int32_shifts(hvx, op, fn):
    """rounding_shift_right and sat32(x << s) (requantize's first step; HVX has no saturating word vasl):
    every edge value with every shift in [0, 31], then 100,000 mixed values and shifts."""
    rng = rng_for(op)
    edge = np.array(list(itertools.product(EDGE32, range(32)))).T
    x = np.concatenate([edge[0], mixed_i32(rng, N_RANDOM)]).astype(np.int32)
    n = np.concatenate([edge[1], rng.integers(0, 32, N_RANDOM)]).astype(np.int32)
    got = run_prim(hvx, op, x.size, x, n).array(0, np.int32)
    assert_equal_lanes(got, fn(x, n), op, x, n)


@pytest.mark.parametrize("op,fn,dtype", [("rsr64", fp.rounding_shift_right, np.int64),
                                         ("narrow64", fp.narrow_i64, np.int32)])
def test_word_pair_shifts(hvx, op, fn, dtype):
    """The 64-bit rounding_shift_right and narrow_i64 (|x| < 2**62, n in [0, 62]) on word pairs."""
    rng = rng_for(op)
    edge_x = np.array([0, 1, -1, 2**62 - 1, -(2**62) + 1, 2**61, -(2**61), 2**32, -(2**32), 2**31, -(2**31),
                       2**31 - 1, -(2**31) - 1, 2**32 - 1])
    edge = np.array(list(itertools.product(edge_x, range(63)))).T
    x = np.concatenate([edge[0], mixed_i62(rng, N_RANDOM)]).astype(np.int64)
    n = np.concatenate([edge[1], rng.integers(0, 63, N_RANDOM)]).astype(np.int32)
    got = run_prim(hvx, op, x.size, x, n).array(0, dtype)
    assert_equal_lanes(got, fn(x, n), op, x, n)


def test_rounding_shift_right_ties(hvx):
    rng = rng_for("ties")
    n = rng.integers(1, 32, N_RANDOM)
    k = rng.integers(-(2**30), 2**30, N_RANDOM) >> np.minimum(n, 30)
    x = np.clip((2 * k + 1) << (n - 1), *I32).astype(np.int32)  # exactly halfway between two results
    n = n.astype(np.int32)
    got = run_prim(hvx, "rsr32", x.size, x, n).array(0, np.int32)
    assert_equal_lanes(got, fp.rounding_shift_right(x, n), "rounding_shift_right", x, n)


def test_requantize(hvx):
    rng = rng_for("requantize")
    m = N_RANDOM
    edge_m = np.array([0, 1, 2**30, 2**30 + 1, 2**31 - 1, 1518500250])
    edge = np.array(list(itertools.product(EDGE32, edge_m, [-31, -30, -1, 0, 1, 2, 29, 30]))).T
    acc = np.concatenate([edge[0], mixed_i32(rng, m)])
    mult = np.concatenate([edge[1], rng.integers(2**30, 2**31, m // 2), rng.integers(0, 2**31, m - m // 2)])
    shift = np.concatenate([edge[2], rng.integers(-31, 31, m)])
    k = acc.size
    lo = rng.choice(np.array([0, -128, -(2**31), -(2**15), -100]), k)
    hi = lo + rng.choice(np.array([255, 65535, 2**31 - 1, 0, 200]), k)
    hi = np.minimum(hi, 2**31 - 1)
    zp = lo + ((hi - lo) * rng.random(k)).astype(np.int64)
    args = [a.astype(np.int32) for a in (acc, mult, shift, zp, lo, hi)]
    got = run_prim(hvx, "requantize", k, *args).array(0, np.int32)
    assert_equal_lanes(got, fp.requantize(*args), "requantize", *args)


def test_saturate_i32(hvx):
    rng = rng_for("sat")
    x = np.concatenate([np.array([0, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63)]),
                        rng.integers(-(2**63), 2**63 - 1, N_RANDOM // 2, endpoint=True),
                        rng.integers(-(2**33), 2**33, N_RANDOM // 2)]).astype(np.int64)
    got = run_prim(hvx, "sat32", x.size, x).array(0, np.int32)
    assert_equal_lanes(got, fp.saturate_i32(x), "saturate_i32", x)
