"""Exact GEMM ops (linear, matmul of two activations): bit-equal to the int64 reference (spec §3, §4.2-4.3)."""
import numpy as np
import pytest

from tinysd.fixedpoint import accumulator_shift, quantize_multiplier
from tinysd.kernels import (
    linear,
    linear_accumulator,
    matmul,
    matmul_accumulator,
    plan_linear,
    plan_matmul,
    prepare_weight,
    set_debug,
    weight_bound,
)
from tinysd.kernels.gemm import activation_operand
from tinysd.kernels.reference import linear_ref, matmul_ref

QMAX = {np.uint8: 255, np.uint16: 65535}


def _first_mismatches(got, want, n=5):
    bad = np.argwhere(got != want)[:n]
    return "; ".join(f"pos {tuple(p)} / actual {got[tuple(p)]} / expected {want[tuple(p)]}" for p in bad)


def assert_bit_equal(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert np.array_equal(got, want), _first_mismatches(got, want)


def _problem(rng, lead, k, n, xdt, zp):
    """Random operands and per-channel (multiplier, shift, acc_shift) putting outputs mostly in range."""
    x = rng.integers(0, QMAX[xdt] + 1, lead + (k,)).astype(xdt)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    b = rng.integers(-(10**6), 10**6, n).astype(np.int32)
    acc = (x.reshape(-1, k).astype(np.int64) - zp) @ w.astype(np.int64).T + b  # (M, N)
    acc_shift = accumulator_shift(weight_bound(w, b, xdt))
    real = QMAX[xdt] / 8 / (acc.std(axis=0) + 1)
    mult, shift = quantize_multiplier(real * 2.0**acc_shift)
    return x, w, b, mult, shift, acc_shift


# --- the exactness bound of every plan ---------------------------------------------------------------
PLANS = [("linear", np.uint8, None), ("linear", np.uint16, "split"), ("linear", np.uint16, "f64"),
         ("matmul", np.uint8, np.uint8), ("matmul", np.uint16, np.uint16), ("matmul", np.uint8, np.uint16)]


@pytest.mark.parametrize("kind, a, b", PLANS)
def test_plan_chunks_satisfy_the_exactness_bound(kind, a, b):
    plan = plan_linear(a, b) if kind == "linear" else plan_matmul(a, b)
    limit = 2**24 if plan.dtype is np.float32 else 2**53
    assert plan.chunk * plan.a_bound * plan.b_bound <= limit
    assert plan.chunk >= 1024 or plan.dtype is np.float64
    # the operand representation really stays within the plan's bound, for every input value and zp
    x = np.arange(np.iinfo(a).max + 1).astype(a)[None, :]  # (1, all values)
    for zp in (0, 1, int(np.iinfo(a).max)):
        op = activation_operand(x, zp, plan)
        assert np.abs(op).max() <= max(plan.a_bound, plan.b_bound)
        assert np.array_equal(op, np.round(op))  # exact integers


# --- linear ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("xdt", [np.uint8, np.uint16])
@pytest.mark.parametrize("method", ["split", "f64"])
def test_linear_matches_reference_random(xdt, method):
    rng = np.random.default_rng(10)
    # K = 1100 spans three float32 chunks of 512; leading dims (2, 3) as in (B, T, C)
    for zp in (0, 77, QMAX[xdt]):
        x, w, b, mult, shift, acc_shift = _problem(rng, (2, 3), 1100, 24, xdt, zp)
        got = linear(x, zp, w, b, mult, shift, 5, 0, QMAX[xdt], acc_shift, method=method)
        assert_bit_equal(got, linear_ref(x, zp, w, b, mult, shift, 5, 0, QMAX[xdt], acc_shift))
    # prepared weights, no bias, scalar params, a signed int16 output range
    got = linear(x, 9, prepare_weight(w), None, int(mult[0]), int(shift[0]), -3, -32768, 32767, 7, method=method)
    assert got.dtype == np.int16
    assert_bit_equal(got, linear_ref(x, 9, w, None, int(mult[0]), int(shift[0]), -3, -32768, 32767, 7))


@pytest.mark.parametrize("xdt", [np.uint8, np.uint16])
def test_linear_worst_case_accumulators_are_exact(xdt):
    """All-extreme operands: |partial sums| far above 2**24 (and 2**31 for uint16) must stay exact."""
    k, n = 2100, 4
    x = np.full((3, k), QMAX[xdt], xdt)
    x[1] = 0
    x[2, ::2] = 0
    w = np.full((n, k), -128, np.int8)
    w[1] = 127
    w[2, ::3] = 127
    b = np.array([2**31 - 1, -(2**31), 0, 5], np.int32)
    for zp in (0, QMAX[xdt]):
        want = (x.astype(np.int64) - zp) @ w.astype(np.int64).T + b.astype(np.int64)
        assert np.abs(want).max() > 2**24
        np.testing.assert_array_equal(linear_accumulator(x, zp, w, b), want)
        acc_shift = accumulator_shift(weight_bound(w, b, xdt))
        real = QMAX[xdt] / np.abs(want).max() / 2  # outputs span about half the range, some clip
        mult, shift = quantize_multiplier(np.full(n, real) * 2.0**acc_shift)
        got = linear(x, zp, w, b, mult, shift, 1, 0, QMAX[xdt], acc_shift)
        assert_bit_equal(got, linear_ref(x, zp, w, b, mult, shift, 1, 0, QMAX[xdt], acc_shift))


def test_linear_saturating_narrow_matches_reference_and_debug_flag_raises():
    x = np.full((2, 3000), 65535, np.uint16)
    w = np.full((2, 3000), -128, np.int8)  # acc = -128 * 65535 * 3000 < -2**31
    args = (x, 0, w, None, 2**30, 0, 0, 0, 65535)
    assert_bit_equal(linear(*args, 0), linear_ref(*args, 0))
    set_debug(True)
    try:
        with pytest.raises(ValueError, match="acc_shift"):
            linear(*args, 0)
        linear(*args, accumulator_shift(int(weight_bound(w, None, np.uint16).max())))  # no saturation
    finally:
        set_debug(False)


def test_linear_within_one_lsb_of_float():
    """Output within 1 LSB of round(real result / s_out) + zp, real result computed in float64 from the
    dequantized operands (so only the kernel's rounding is measured; bound derivation in spec §4.2)."""
    rng = np.random.default_rng(11)
    for xdt in (np.uint8, np.uint16):
        qmax = QMAX[xdt]
        xf = rng.normal(0.3, 1.0, (64, 320))
        wf = rng.normal(0, 0.05, (40, 320))
        bf = rng.normal(0, 0.1, 40)
        s_x = (xf.max() - xf.min()) / qmax
        x_zp = int(np.clip(np.round(-xf.min() / s_x), 0, qmax))
        x = np.clip(np.round(xf / s_x) + x_zp, 0, qmax).astype(xdt)
        s_w = np.abs(wf).max(1) / 127
        w = np.round(wf / s_w[:, None]).astype(np.int8)
        b = np.round(bf / (s_x * s_w)).astype(np.int32)
        y = ((x.astype(np.float64) - x_zp) * s_x) @ (w * s_w[:, None]).T + b * s_x * s_w  # (64, 40)
        s_o = (y.max() - y.min()) / qmax
        o_zp = int(np.clip(np.round(-y.min() / s_o), 0, qmax))
        acc_shift = accumulator_shift(weight_bound(w, b, xdt))
        real = s_x * s_w / s_o
        assert np.max(real * 2.0 ** (acc_shift - 1.0) * (acc_shift > 0)) < 0.2  # narrowing error < 0.2 LSB
        mult, shift = quantize_multiplier(real * 2.0**acc_shift)
        got = linear(x, x_zp, w, b, mult, shift, o_zp, 0, qmax, acc_shift).astype(np.int64)
        want = np.clip(np.floor(y / s_o + 0.5) + o_zp, 0, qmax)
        assert np.max(np.abs(got - want)) <= 1


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(x_q=np.zeros((2, 8), np.float32)), "x_q"),
        (dict(x_q=np.zeros((2, 8), np.int8)), "x_q"),
        (dict(x_q=np.zeros((2, 9), np.uint8)), "x_q"),
        (dict(w_q=np.zeros((3, 8), np.uint8)), "w_q"),
        (dict(w_q=np.zeros((3, 8, 1), np.int8)), "w_q"),
        (dict(bias_q=np.zeros(3, np.int64)), "bias_q"),
        (dict(bias_q=np.zeros(4, np.int32)), "bias_q"),
        (dict(x_zp=256), "x_zp"),
        (dict(x_zp=-1), "x_zp"),
        (dict(multiplier=-5), "multiplier"),
        (dict(multiplier=np.array([1, 2], np.int32)), "multiplier"),
        (dict(shift=31), "shift"),
        (dict(out_zp=300), "out_zp"),
        (dict(qmin=10, qmax=0), "qmin"),
        (dict(acc_shift=63), "acc_shift"),
    ],
)
def test_linear_bad_input_names_argument(change, name):
    args = dict(x_q=np.zeros((2, 8), np.uint8), x_zp=0, w_q=np.zeros((3, 8), np.int8), bias_q=None,
                multiplier=2**30, shift=0, out_zp=0, qmin=0, qmax=255, acc_shift=0)
    args.update(change)
    with pytest.raises(ValueError, match=name):
        linear(**args)


# --- matmul of two activations ------------------------------------------------------------------------
@pytest.mark.parametrize("adt, bdt", [(np.uint8, np.uint8), (np.uint16, np.uint16), (np.uint8, np.uint16)])
def test_matmul_matches_reference(adt, bdt):
    rng = np.random.default_rng(12)
    # K = 1100 spans two uint8 x uint8 float32 chunks of 1024; batch dims broadcast (2, 3) x (1, 3)
    a = rng.integers(0, QMAX[adt] + 1, (2, 3, 17, 1100)).astype(adt)
    b = rng.integers(0, QMAX[bdt] + 1, (1, 3, 1100, 11)).astype(bdt)
    a_zp, b_zp = QMAX[adt] // 3, QMAX[bdt] // 2
    bound = 1100 * QMAX[adt] * QMAX[bdt]
    acc_shift = accumulator_shift(bound)
    want_acc = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
    mult, shift = quantize_multiplier(QMAX[bdt] / 8 / want_acc.std() * 2.0**acc_shift)
    np.testing.assert_array_equal(matmul_accumulator(a, a_zp, b, b_zp), want_acc)
    got = matmul(a, a_zp, b, b_zp, mult, shift, 100, 0, QMAX[bdt], acc_shift)
    assert_bit_equal(got, matmul_ref(a, a_zp, b, b_zp, mult, shift, 100, 0, QMAX[bdt], acc_shift))


def test_matmul_extremes_exact():
    a = np.full((1, 4, 5000), 255, np.uint8)
    b = np.zeros((1, 5000, 3), np.uint8)
    want = (a.astype(np.int64) - 0) @ (b.astype(np.int64) - 255)
    assert want.min() == -5000 * 255 * 255  # > 2**24 in magnitude
    np.testing.assert_array_equal(matmul_accumulator(a, 0, b, 255), want)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(a_q=np.zeros((4, 5), np.int8)), "a_q"),
        (dict(b_q=np.zeros((6, 3), np.uint8)), "b_q"),
        (dict(b_q=np.zeros((2, 5, 3), np.uint8), a_q=np.zeros((3, 4, 5), np.uint8)), "b_q"),
        (dict(a_zp=300), "a_zp"),
        (dict(b_zp=-2), "b_zp"),
        (dict(shift=-40), "shift"),
    ],
)
def test_matmul_bad_input_names_argument(change, name):
    args = dict(a_q=np.zeros((4, 5), np.uint8), a_zp=0, b_q=np.zeros((5, 3), np.uint8), b_zp=0,
                multiplier=2**30, shift=0, out_zp=0, qmin=0, qmax=255)
    args.update(change)
    with pytest.raises(ValueError, match=name):
        matmul(**args)
