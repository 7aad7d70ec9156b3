"""Compute the worked numeric examples of docs/arithmetic.md with the reference code.

    python3 tools/spec_examples.py            # print every example block (markdown)
    python3 tools/spec_examples.py linear     # print one

Every number in the examples comes from `tinysd.fixedpoint` / `tinysd.kernels.reference`, never
typed by hand; tests/fixedpoint/test_spec_examples.py checks that each block printed here
appears verbatim in docs/arithmetic.md. Uses numpy and tinysd only.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tinysd.fixedpoint import accumulator_shift, quantize, quantize_multiplier  # noqa: E402
from tinysd.fixedpoint.reference import (  # noqa: E402
    narrow_i64_ref,
    requantize_ref,
    rounding_shift_right_ref,
    sat32,
    srdhm_ref,
)
from tinysd.kernels.reference import (  # noqa: E402
    add_ref,
    concat_ref,
    conv2d_ref,
    embedding_ref,
    linear_ref,
    matmul_ref,
    mul_ref,
    upsample_nearest2x_ref,
)


def _l(a):
    """Compact list text of an integer array."""
    return np.array2string(np.asarray(a), separator=", ", max_line_width=100).replace("\n", "\n    ")


def _requant_steps(acc, m, s, zp, qmin, qmax):
    x = sat32(acc * 2 ** max(s, 0))
    y1 = srdhm_ref(x, m)
    y2 = rounding_shift_right_ref(y1, max(-s, 0))
    out = requantize_ref(acc, m, s, zp, qmin, qmax)
    return (f"x = sat32({acc} * 2**{max(s, 0)}) = {x}; srdhm(x, {m}) = {y1}; "
            f"rounding_shift_right({y1}, {max(-s, 0)}) = {y2}; clip({y2} + {zp}, {qmin}, {qmax}) = {out}")


def ex_primitives():
    real = 0.0123
    m, s = quantize_multiplier(real)
    mm, e = math.frexp(real)
    lines = [
        f"quantize_multiplier({real}): frexp -> m = {mm!r}, e = {e}; round(m * 2**31) = {m}; "
        f"shift = {s}",
        f"  check: {m} * 2**({s} - 31) = {m * 2.0 ** (s - 31)!r}",
        f"quantize_multiplier(1 - 2**-33): m * 2**31 rounds to 2**31 -> {quantize_multiplier(1 - 2.0**-33)}",
        f"srdhm(1000, {m}) = ({1000 * m} + 2**30) >> 31 = {srdhm_ref(1000, m)}",
        f"srdhm(1, 2**30) = {srdhm_ref(1, 2**30)} (tie 0.5 -> 1);  srdhm(-1, 2**30) = {srdhm_ref(-1, 2**30)} "
        f"(tie -0.5 -> 0);  srdhm(-2**31, -2**31) = {srdhm_ref(-(2**31), -(2**31))} (saturated)",
        f"rounding_shift_right(5, 1) = {rounding_shift_right_ref(5, 1)};  rounding_shift_right(-5, 1) = "
        f"{rounding_shift_right_ref(-5, 1)};  rounding_shift_right(-6, 2) = {rounding_shift_right_ref(-6, 2)}",
        f"requantize(12345, {m}, {s}, 10, 0, 255): {_requant_steps(12345, m, s, 10, 0, 255)}",
        f"  (real product 12345 * {real} = {12345 * real!r})",
        f"requantize(-7, 2**30, -1, 0, -100, 100): {_requant_steps(-7, 2**30, -1, 0, -100, 100)}",
        "  (real product -1.75: the two roundings give -1, within 1 LSB)",
    ]
    bound = 23040 * 128 * 65535 + 2**31 - 1
    p = accumulator_shift(bound)
    acc = -23040 * 128 * 65535
    lines.append(f"accumulator_shift({bound}) = {p};  narrow_i64({acc}, {p}) = {narrow_i64_ref(acc, p)}")
    return "\n".join(lines)


def ex_linear():
    x = np.array([[0, 100, 255], [37, 128, 3]], np.uint8)  # (M=2, K=3)
    x_zp = 128
    w = np.array([[127, -64, 5], [-128, 0, 77]], np.int8)  # (OUT=2, K=3)
    s_x, s_w, s_o = 0.02, np.array([0.004, 0.001]), 0.05
    bias_f = np.array([0.1, -0.3])
    b = np.floor(bias_f / (s_x * s_w) + 0.5).astype(np.int32)
    m, s = quantize_multiplier(s_x * s_w / s_o)
    acc = (x.astype(np.int64) - x_zp) @ w.astype(np.int64).T + b
    out = linear_ref(x, x_zp, w, b, m, s, 120, 0, 255)
    lines = [
        f"x_q = {_l(x)}  (uint8, s_x = {s_x}, x_zp = {x_zp})",
        f"w_q = {_l(w)}  (int8, s_w = {_l(s_w)})",
        f"bias_q = round([0.1, -0.3] / (s_x * s_w)) = {_l(b)}  (int32)",
        f"s_out = {s_o}, out_zp = 120; real multipliers s_x*s_w/s_out = {_l(s_x * s_w / s_o)}",
        f"multiplier = {_l(m)}, shift = {_l(s)}, acc_shift = 0 (bound 255*sum|w| + |bias| < 2**31)",
        f"acc = bias + (x - x_zp) @ w.T = {_l(acc)}",
        f"acc[0, 0] = {b[0]} + (0-128)*127 + (100-128)*(-64) + (255-128)*5 = {acc[0, 0]}",
        f"out[0, 0]: {_requant_steps(int(acc[0, 0]), int(m[0]), int(s[0]), 120, 0, 255)}",
        f"out = {_l(out)}",
        f"float check: (acc * s_x * s_w / s_out) + 120 = {_l(np.round(acc * s_x * s_w / s_o + 120, 3))}",
    ]
    return "\n".join(lines)


def ex_linear_a16():
    k = 5120
    rng = np.random.default_rng(7)
    w = rng.integers(-127, 128, (2, k)).astype(np.int8)
    w[1] = -127
    x = rng.integers(0, 65536, (1, k)).astype(np.uint16)
    x[0, k // 2:] = 65535
    x_zp = 32768
    b = np.array([123456, -5], np.int32)
    bound = 65535 * np.abs(w.astype(np.int64)).sum(1) + np.abs(b.astype(np.int64))
    p = accumulator_shift(bound)
    acc = (x.astype(np.int64) - x_zp) @ w.astype(np.int64).T + b
    real = np.array([3e-6, 1e-6])
    m, s = quantize_multiplier(real * 2.0**p)
    out = linear_ref(x, x_zp, w, b, m, s, 30000, 0, 65535, p)
    lines = [
        f"K = {k}, x_q uint16 (seeded random, second half 65535), x_zp = {x_zp}, w_q int8 (row 1 all -127)",
        f"worst |acc| bound = 65535 * sum|w| + |bias| = {_l(bound)} -> acc_shift = {_l(p)}",
        f"acc (exact int64) = {_l(acc)}",
        f"narrow_i64(acc, acc_shift) = {_l([narrow_i64_ref(int(a), int(n)) for a, n in zip(acc[0], p)])}",
        f"real multipliers {_l(real)} * 2**acc_shift -> multiplier = {_l(m)}, shift = {_l(s)}",
        f"out (out_zp = 30000) = {_l(out)};  float: acc * real + 30000 = {_l(np.round(acc * real + 30000, 3))}",
    ]
    return "\n".join(lines)


def ex_conv():
    x = np.array([[[[10, 20, 30], [40, 50, 60], [70, 80, 90]]]], np.uint8)  # (1, 1, 3, 3)
    x_zp = 50
    w = np.array([[[[1, 0, -1], [2, 0, -2], [1, 0, -1]]]], np.int8)  # (1, 1, 3, 3) Sobel
    b = np.array([7], np.int32)
    m, s = quantize_multiplier(0.25)
    out = conv2d_ref(x, x_zp, w, b, m, s, 128, 0, 255, 1, 1)
    out2 = conv2d_ref(x, x_zp, w, b, m, s, 128, 0, 255, 2, (0, 1, 0, 1))
    xp = np.pad(x[0, 0].astype(np.int64), 1, constant_values=x_zp)
    acc = np.zeros((3, 3), np.int64)
    for i in range(3):
        for j in range(3):
            acc[i, j] = b[0] + ((xp[i:i + 3, j:j + 3] - x_zp) * w[0, 0]).sum()
    lines = [
        f"x_q[0, 0] = {_l(x[0, 0])}, x_zp = {x_zp};  w_q[0, 0] = {_l(w[0, 0])};  bias_q = {b[0]}",
        "stride 1, padding 1: padded with x_zp = 50, so x - x_zp is",
        f"    {_l(xp - x_zp)}",
        f"acc = bias + correlation = {_l(acc)}",
        f"multiplier, shift = quantize_multiplier(0.25) = ({m}, {s}); out_zp = 128",
        f"out[0, 0, 0, 0]: {_requant_steps(int(acc[0, 0]), m, s, 128, 0, 255)}",
        f"out[0, 0] = {_l(out[0, 0])}",
        f"stride 2, padding (0, 1, 0, 1): out[0, 0] = {_l(out2[0, 0])}",
    ]
    return "\n".join(lines)


def ex_matmul():
    a = np.array([[[200, 10, 128], [0, 255, 99]]], np.uint8)  # (1, M=2, K=3) queries
    b = np.array([[[130, 120], [128, 255], [0, 128]]], np.uint8)  # (1, K=3, N=2) keys^T
    a_zp, b_zp = 128, 128
    s_a, s_b, s_o, alpha = 0.03, 0.02, 0.01, 1 / math.sqrt(40)
    m, s = quantize_multiplier(alpha * s_a * s_b / s_o)
    acc = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
    out = matmul_ref(a, a_zp, b, b_zp, m, s, 100, 0, 255)
    lines = [
        f"a_q = {_l(a[0])} (a_zp = {a_zp}, s_a = {s_a});  b_q = {_l(b[0])} (b_zp = {b_zp}, s_b = {s_b})",
        f"alpha = 1/sqrt(40), s_out = {s_o}, out_zp = 100: real = alpha*s_a*s_b/s_out = {alpha * s_a * s_b / s_o!r}",
        f"multiplier, shift = ({m}, {s}); acc = (a - a_zp) @ (b - b_zp) = {_l(acc[0])}",
        f"out[0, 0, 0]: {_requant_steps(int(acc[0, 0, 0]), m, s, 100, 0, 255)}",
        f"out = {_l(out[0])}",
    ]
    return "\n".join(lines)


def ex_add():
    a = np.array([0, 100, 200, 255], np.uint8)
    b = np.array([255, 128, 30, 0], np.uint8)
    s_a, a_zp, s_b, b_zp, s_o, o_zp, ls = 0.02, 128, 0.05, 3, 0.06, 100, 20
    twice = 2 * max(s_a, s_b)
    am, ash = quantize_multiplier(s_a / twice)
    bm, bsh = quantize_multiplier(s_b / twice)
    om, osh = quantize_multiplier(twice / (2**ls * s_o))
    out = add_ref(a, a_zp, am, ash, b, b_zp, bm, bsh, om, osh, o_zp, 0, 255, ls)
    a0 = (int(a[1]) - a_zp) << ls
    b0 = (int(b[1]) - b_zp) << ls
    a_s = requantize_ref(a0, am, ash, 0, -(2**31), 2**31 - 1)
    b_s = requantize_ref(b0, bm, bsh, 0, -(2**31), 2**31 - 1)
    real = (s_a * (a.astype(float) - a_zp) + s_b * (b.astype(float) - b_zp)) / s_o + o_zp
    lines = [
        f"a_q = {_l(a)} (s_a = {s_a}, a_zp = {a_zp});  b_q = {_l(b)} (s_b = {s_b}, b_zp = {b_zp})",
        f"s_out = {s_o}, out_zp = {o_zp}, left_shift = {ls}; 2*max(s_a, s_b) = {twice}",
        f"a: s_a/(2 max) = {s_a / twice!r} -> ({am}, {ash});  b: {s_b / twice!r} -> ({bm}, {bsh})",
        f"out: 2 max / (2**20 s_out) = {twice / (2**ls * s_o)!r} -> ({om}, {osh})",
        f"element 1: (100-128) << 20 = {a0} -> a_s = {a_s};  (128-3) << 20 = {b0} -> b_s = {b_s}",
        f"  sum = {a_s + b_s}; {_requant_steps(a_s + b_s, om, osh, o_zp, 0, 255)}",
        f"out = {_l(out)};  float: {_l(np.round(real, 3))}",
    ]
    return "\n".join(lines)


def ex_mul():
    a = np.array([0, 100, 200, 255], np.uint8)
    b = np.array([255, 128, 30, 0], np.uint8)
    s_a, a_zp, s_b, b_zp, s_o, o_zp = 0.02, 128, 0.05, 3, 0.06, 100
    m, s = quantize_multiplier(s_a * s_b / s_o)
    prod = (a.astype(np.int64) - a_zp) * (b.astype(np.int64) - b_zp)
    out = mul_ref(a, a_zp, b, b_zp, m, s, o_zp, 0, 255)
    n16 = [narrow_i64_ref(int(v), 1) for v in (-(65535**2), 65535**2)]
    lines = [
        f"a_q = {_l(a)} (s_a = {s_a}, a_zp = {a_zp});  b_q = {_l(b)} (s_b = {s_b}, b_zp = {b_zp})",
        f"real = s_a*s_b/s_out = {s_a * s_b / s_o!r} -> ({m}, {s}); out_zp = {o_zp}, acc_shift = 0",
        f"prod = (a - a_zp)(b - b_zp) = {_l(prod)}",
        f"out = {_l(out)};  float: {_l(np.round(prod * s_a * s_b / s_o + o_zp, 3))}",
        f"uint16 worst case: |prod| <= 65535**2 = {65535**2} > 2**31 - 1 -> acc_shift = "
        f"{accumulator_shift(65535**2)}; narrow_i64(-65535**2, 1) = {n16[0]}, narrow_i64(65535**2, 1) = {n16[1]}",
    ]
    return "\n".join(lines)


def ex_concat():
    x1 = np.array([[0, 40, 255]], np.uint8)
    x2 = np.array([[0, 200, 255]], np.uint8)
    s1, z1, s2, z2, s_o, o_zp = 0.05, 40, 0.043, 200, 0.05, 40
    m2, sh2 = quantize_multiplier(s2 / s_o)
    out = concat_ref([x1, x2], [z1, z2], [2**30, m2], [1, sh2], 1, o_zp, 0, 255)
    lines = [
        f"x1 = {_l(x1)} (s = {s1}, zp = {z1}, already the output encoding: (2**30, 1) = quantize_multiplier(1.0))",
        f"x2 = {_l(x2)} (s = {s2}, zp = {z2}); s2/s_out = {s2 / s_o!r} -> ({m2}, {sh2})",
        f"x2 element 0: {_requant_steps(0 - z2, m2, sh2, o_zp, 0, 255)}",
        f"concat on axis 1 -> {_l(out)}",
    ]
    return "\n".join(lines)


def ex_geglu():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (1, 4)).astype(np.uint8)
    w = rng.integers(-127, 128, (4, 4)).astype(np.int8)  # OUT = 2 * inner, inner = 2
    s_x, x_zp, s_w, s_h, h_zp = 0.05, 128, 0.002, 0.03, 128
    m, s = quantize_multiplier(np.full(4, s_x * s_w / s_h))
    h = linear_ref(x, x_zp, w, None, m, s, h_zp, 0, 255)  # (1, 4)
    hidden, gate = h[:, :2], h[:, 2:]
    lines = [
        f"x_q = {_l(x)} (s = {s_x}, zp = {x_zp}); w_q (4, 4) int8 = {_l(w)}; proj out s = {s_h}, zp = {h_zp}",
        f"proj = linear(...) = {_l(h)} -> hidden = {_l(hidden)}, gate = {_l(gate)} (split: no arithmetic)",
    ]
    try:
        from tinysd.kernels.tables import make_table

        s_g, g_zp = 0.02, 10
        table = make_table("gelu", s_h, h_zp, 8, s_g, g_zp, 8)
        g = table[gate]
        mm, ms = quantize_multiplier(s_h * s_g / 0.05)
        y = mul_ref(hidden, h_zp, g, g_zp, mm, ms, 128, 0, 255)
        lines += [
            f"gelu table (8-bit, out s = {s_g}, zp = {g_zp}): table[gate] = {_l(g)}",
            f"mul(hidden, gelu) with s_out = 0.05, out_zp = 128: real = {s_h * s_g / 0.05!r} -> ({mm}, {ms})",
            f"  out = {_l(y)}",
        ]
    except ImportError:
        lines.append("(gelu table: tinysd.kernels.tables not available)")
    return "\n".join(lines)


def ex_upsample():
    x = np.array([[[[1, 2], [3, 4]]]], np.uint8)
    return f"x_q[0, 0] = {_l(x[0, 0])} -> out[0, 0] = {_l(upsample_nearest2x_ref(x)[0, 0])}"


def ex_inputs():
    t = 999
    half = 2
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    feats = np.concatenate([np.cos(t * freqs), np.sin(t * freqs)])  # flip_sin_to_cos layout
    q = quantize(feats, 2 / 65535, 32768, 0, 65535)
    tok = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90], [5, 6, 7]], np.uint8)  # (V=4, D=3)
    pos = np.array([[128, 129, 127], [100, 150, 200]], np.uint8)  # (T=2, D=3)
    ids = np.array([3, 1])
    e_tok = embedding_ref(ids, tok)
    e_pos = embedding_ref(np.arange(2), pos)
    s_t, z_t, s_p, z_p, s_o, z_o = 0.01, 50, 0.002, 128, 0.01, 60
    twice = 2 * max(s_t, s_p)
    am, ash = quantize_multiplier(s_t / twice)
    bm, bsh = quantize_multiplier(s_p / twice)
    om, osh = quantize_multiplier(twice / (2**20 * s_o))
    out = add_ref(e_tok, z_t, am, ash, e_pos, z_p, bm, bsh, om, osh, z_o, 0, 255, 20)
    lines = [
        f"timestep t = {t}, 4 features (cos, sin; freqs exp(-ln(10000) * i / 2)) = {_l(np.round(feats, 6))}",
        f"quantize(features, scale = 2/65535, zero_point = 32768, 0, 65535) = {_l(q)}",
        f"token ids {_l(ids)} -> gather rows of token table = {_l(e_tok)} (s = {s_t}, zp = {z_t})",
        f"position rows 0..1 = {_l(e_pos)} (s = {s_p}, zp = {z_p})",
        f"add -> (s = {s_o}, zp = {z_o}) with left_shift 20: {_l(out)}",
    ]
    return "\n".join(lines)


def ex_budgets():
    """Worst-case |acc| by dtype bound (no bias) for the largest reductions of SD 1.5, and acc_shift."""
    rows = [
        ("conv2d 3x3, C_in = 2560 (UNet up_blocks.0)", 23040, 128, {"A8": 255, "A16": 65535}),
        ("conv2d 3x3, C_in = 512 (VAE decoder)", 4608, 128, {"A8": 255, "A16": 65535}),
        ("linear ff.net.2, K = 5120", 5120, 128, {"A8": 255, "A16": 65535}),
        ("linear CLIP fc2, K = 3072", 3072, 128, {"A8": 255, "A16": 65535}),
        ("matmul q @ k^T, K = head_dim 160", 160, None, {"A8": 255, "A16": 65535}),
        ("matmul probs @ v, K = T 4096", 4096, None, {"A8": 255, "A16": 65535}),
    ]
    lines = [f"{'reduction':44} {'K':>6} {'A8 bound':>14} {'shift':>5} {'A16 bound':>16} {'shift':>5}"]
    for name, k, wb, bounds in rows:
        cells = []
        for key in ("A8", "A16"):
            b = k * (wb if wb else bounds[key]) * bounds[key]
            cells += [b, accumulator_shift(b)]
        lines.append(f"{name:44} {k:>6} {cells[0]:>14} {cells[1]:>5} {cells[2]:>16} {cells[3]:>5}")
    return "\n".join(lines)


EXAMPLES = {
    "primitives": ex_primitives,
    "linear": ex_linear,
    "linear_a16": ex_linear_a16,
    "conv2d": ex_conv,
    "matmul": ex_matmul,
    "add": ex_add,
    "mul": ex_mul,
    "concat": ex_concat,
    "geglu": ex_geglu,
    "upsample": ex_upsample,
    "inputs": ex_inputs,
    "budgets": ex_budgets,
}


def block(name: str) -> str:
    """The markdown block of one example, exactly as it appears in docs/arithmetic.md."""
    return f"```text\n{EXAMPLES[name]()}\n```"


def main(argv):
    names = argv or list(EXAMPLES)
    for name in names:
        print(f"<!-- example: {name} (tools/spec_examples.py) -->")
        print(block(name))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
