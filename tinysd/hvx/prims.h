/* prims.h: the fixed-point primitives of docs/arithmetic.md §2 as HVX instruction sequences.
 *
 * Every function works on 32 word lanes at once (one 128-byte vector). A 64-bit value is a
 * word pair `P64 {hi, lo}`: value = hi * 2**32 + (uint32)lo in each lane. Parameters that may
 * differ per lane (per-channel multipliers and shifts) are vectors; a per-tensor parameter is
 * the same value splatted into every lane, so there is one code path.
 *
 * Shift amounts, as QEMU executes them (measured, docs/hvx.md §2):
 *   vasr(Vu.w, Vv.w), vasl(Vu.w, Vv.w), vlsr(Vu.w, Vv.w): the amount is the lane's low 6 bits,
 *     sign-extended: 0..31 shift the stated way, -32..-1 shift the other way (an amount of 32
 *     reads as -32: vasr and vlsr by 32 are left shifts by 32, giving 0).
 *   vasr(Vu.w, Rt): the amount is Rt & 31.
 * The sequences below only rely on these rules where a comment says so.
 */
#ifndef TSD_HVX_PRIMS_H
#define TSD_HVX_PRIMS_H

#include "rt.h"

typedef struct {
  V hi, lo;
} P64;

static inline V splat(int32_t x) { return Q6_V_vsplat_R(x); }
static inline V vzero(void) { return Q6_V_vzero(); }

/* Predicate true on the first n bytes (n clipped to [0, 128]). vsetq(Rt) sets Rt & 127 bytes,
 * so 128 needs vsetq2 (V62), which sets all 128 for Rt & 127 == 0. */
static inline Q q_first_bytes(int n) {
  if (n <= 0) return Q6_Q_vsetq_R(0);
  if (n >= VBYTES) return Q6_Q_vsetq2_R(VBYTES);
  return Q6_Q_vsetq_R(n);
}

/* ---------------------------------------------------------------------------------------- */
/* §2.2 srdhm(a, b) = sat32((a * b + 2**30) >> 31)                                            */
/* ---------------------------------------------------------------------------------------- */
/* vmpye(Vu.w, Vv.uh) multiplies a by the low (unsigned) halfword of b and keeps the high part;
 * vmpyo(Vu.w, Vv.h):<<1:rnd:sat:shift adds a times the high (signed) halfword of b, doubles,
 * rounds half up and saturates: together the 32x32 fractional multiply, exactly srdhm
 * (ties toward +inf, srdhm(-2**31, -2**31) = 2**31 - 1). 2 instructions. */
static inline V srdhm_v(V a, V b) {
  return Q6_Vw_vmpyoacc_VwVwVh_s1_rnd_sat_shift(Q6_Vw_vmpye_VwVuh(a, b), a, b);
}

/* ---------------------------------------------------------------------------------------- */
/* §2.3 rounding_shift_right, int32 form: (x + 2**(n-1)) >> n, n in [0, 31]                   */
/* ---------------------------------------------------------------------------------------- */
/* Without a wider register: floor(x / 2**n) plus bit n-1 of x (the rounding bit).
 *   q   = vasr(x, n)                 floor shift
 *   bit = vasr(x, n - 1) & 1         for n = 0 the amount -1 is a LEFT shift by 1, whose bit 0
 *                                    is 0: the same sequence is the identity for n = 0
 *   out = q + bit                    never overflows (q <= 2**30 - 1 when bit can be 1)
 * 4 instructions; n and n - 1 are per-lane vectors prepared once (`rsr_amounts`). */
typedef struct {
  V n, n1; /* n, n - 1 */
} RsrAmount;

static inline RsrAmount rsr_amounts(V n) {
  RsrAmount a = {n, Q6_Vw_vsub_VwVw(n, splat(1))};
  return a;
}

static inline V rsr_v(V x, RsrAmount a) {
  V q = Q6_Vw_vasr_VwVw(x, a.n);
  V bit = Q6_V_vand_VV(Q6_Vw_vasr_VwVw(x, a.n1), splat(1));
  return Q6_Vw_vadd_VwVw(q, bit);
}

/* ---------------------------------------------------------------------------------------- */
/* word pairs: sign extension, addition with carry, saturation to one word                   */
/* ---------------------------------------------------------------------------------------- */
static inline P64 p64_from_w(V x) { /* sign-extend: hi = x >> 31 */
  P64 p = {Q6_Vw_vasr_VwR(x, 31), x};
  return p;
}

static inline P64 p64_from_uw(V x) { /* zero-extend an unsigned word */
  P64 p = {vzero(), x};
  return p;
}

/* a + b: vaddcarry on the low words (carry out into a predicate), then on the high words
 * (carry in from it). 2 instructions. */
static inline P64 p64_add(P64 a, P64 b) {
  Q carry = Q6_Q_vsetq_R(0); /* all lanes false */
  P64 r;
  r.lo = Q6_Vw_vadd_VwVwQ_carry(a.lo, b.lo, &carry);
  r.hi = Q6_Vw_vadd_VwVwQ_carry(a.hi, b.hi, &carry);
  return r;
}

/* x * 2**s for a word x and 0 <= s <= 31, as an exact pair: vasrinto shifts (x * 2**32) right
 * by 32 - s into a pair. 1 instruction (+ the amount 32 - s, prepared once). */
static inline P64 p64_shl(V x, V amount_32_minus_s) {
  W w = Q6_Ww_vasrinto_WwVwVw(Q6_W_vzero(), x, amount_32_minus_s);
  P64 p = {Q6_V_hi_W(w), Q6_V_lo_W(w)};
  return p;
}

/* The sum of the 32 lanes of a non-negative pair, on the scalar core (once per row). */
static inline uint64_t p64_lane_sum(P64 s) {
  uint32_t hi[32] __attribute__((aligned(VBYTES))), lo[32] __attribute__((aligned(VBYTES)));
  *(V *)hi = s.hi;
  *(V *)lo = s.lo;
  uint64_t t = 0;
  for (int l = 0; l < 32; l++) t += ((uint64_t)hi[l] << 32) + lo[l];
  return t;
}

/* §2 saturate_i32: clip a pair to [-2**31, 2**31 - 1]: vsatdw (V66). 1 instruction. */
static inline V sat32_v(P64 x) { return Q6_Vw_vsatdw_VwVw(x.hi, x.lo); }

/* ---------------------------------------------------------------------------------------- */
/* §2.3 rounding_shift_right, 64-bit form, and §2.4 narrow_i64: n in [0, 62] per lane         */
/* ---------------------------------------------------------------------------------------- */
/* Prepared once per set of shift amounts (per output channel / per tensor):
 *   r_lo = 1 << (n - 1)   vasl(1, n - 1): n = 0 gives amount -1, a right shift of 1 by 1 = 0;
 *                         n >= 33 gives amounts 32..61, i.e. -32..-3, right shifts of 1 = 0
 *   r_hi = 1 << (n - 33)  vasl(1, max(n - 33, -1)): 0 for n <= 32
 *   n_lo = min(n, 32)     vlsr(lo, 32) is amount -32, a left shift by 32: 0, as needed
 * The rounding constant 2**(n-1) is the pair (r_hi, r_lo). */
typedef struct {
  V n, n_lo, r_hi, r_lo;
} PairShift;

static inline PairShift pair_shift_prepare(V n) {
  PairShift p;
  V one = splat(1);
  p.n = n;
  p.n_lo = Q6_Vw_vmin_VwVw(n, splat(32));
  p.r_lo = Q6_Vw_vasl_VwVw(one, Q6_Vw_vsub_VwVw(n, one));
  p.r_hi = Q6_Vw_vasl_VwVw(one, Q6_Vw_vmax_VwVw(Q6_Vw_vsub_VwVw(n, splat(33)), splat(-1)));
  return p;
}

/* (x + 2**(n-1)) >> n on a pair, |x| < 2**62:
 *   vaddcarry x2      add the rounding constant (no overflow: |x| + 2**61 < 2**63)
 *   vlsr(lo, n_lo)    the low word's surviving bits (0 when n >= 32)
 *   vasrinto(hi, n)   shifts (hi * 2**32) right by n into the pair and ORs the low word's bits in
 * 4 instructions. */
static inline P64 rsr64_v(P64 x, PairShift s) {
  P64 r = {s.r_hi, s.r_lo};
  x = p64_add(x, r);
  V lo_part = Q6_Vw_vlsr_VwVw(x.lo, s.n_lo);
  W w = Q6_Ww_vasrinto_WwVwVw(Q6_W_vcombine_VV(vzero(), lo_part), x.hi, s.n);
  P64 out = {Q6_V_hi_W(w), Q6_V_lo_W(w)};
  return out;
}

/* §2.4 narrow_i64(acc, n) = sat32(rsr64(acc, n)): 5 instructions. */
static inline V narrow64_v(P64 acc, PairShift s) { return sat32_v(rsr64_v(acc, s)); }

/* ---------------------------------------------------------------------------------------- */
/* §2.5 requantize(acc, multiplier, shift, zero_point, qmin, qmax)                            */
/* ---------------------------------------------------------------------------------------- */
/*   x = sat32(acc * 2**max(shift, 0))     vasrinto + vsatdw (HVX has no saturating word vasl)
 *   y = srdhm(x, multiplier)              vmpye + vmpyo:<<1:rnd:sat:shift
 *   y = rsr(y, max(-shift, 0))            vasr, vasr, vand, vadd
 *   out = clip(y + zero_point, qmin, qmax)  vadd:sat, vmax, vmin
 * 11 instructions per 32 outputs. Parameters prepared once (`rq_prepare`). */
typedef struct {
  V multiplier, left32; /* 32 - max(shift, 0) */
  RsrAmount right;      /* max(-shift, 0) */
  V zp, qmin, qmax;
} Requant;

static inline Requant rq_prepare(V multiplier, V shift, V zp, V qmin, V qmax) {
  Requant r;
  V zero = vzero();
  r.multiplier = multiplier;
  r.left32 = Q6_Vw_vsub_VwVw(splat(32), Q6_Vw_vmax_VwVw(shift, zero));
  r.right = rsr_amounts(Q6_Vw_vmax_VwVw(Q6_Vw_vsub_VwVw(zero, shift), zero));
  r.zp = zp;
  r.qmin = qmin;
  r.qmax = qmax;
  return r;
}

static inline Requant rq_prepare_scalar(int32_t multiplier, int32_t shift, int32_t zp, int32_t qmin,
                                        int32_t qmax) {
  return rq_prepare(splat(multiplier), splat(shift), splat(zp), splat(qmin), splat(qmax));
}

static inline V requantize_v(V acc, const Requant *r) {
  V x = sat32_v(p64_shl(acc, r->left32));
  V y = srdhm_v(x, r->multiplier);
  y = rsr_v(y, r->right);
  y = Q6_Vw_vadd_VwVw_sat(y, r->zp);
  return Q6_Vw_vmin_VwVw(Q6_Vw_vmax_VwVw(y, r->qmin), r->qmax);
}

/* ---------------------------------------------------------------------------------------- */
/* activations <-> word lanes, in natural element order                                      */
/* ---------------------------------------------------------------------------------------- */
/* A chunk is 64 consecutive activation codes (uint8 or uint16) held as two word vectors:
 * w0 = elements 0..31, w1 = elements 32..63. vunpack widens in natural order (the low vector of
 * the pair holds the first half); vpacke narrows back in natural order (its Vv operand fills the
 * low half of the result). vzxt / vshuffe would instead deal even and odd lanes apart
 * (docs/hvx.md §2). */
typedef struct {
  V w0, w1;
} Chunk;

static inline Chunk chunk_load(const void *p, int bits) {
  Chunk c;
  if (bits == 8) {
    W h = Q6_Wuh_vunpack_Vub(vloadu(p)); /* 128 bytes -> 128 halfwords; we use the first 64 */
    W w = Q6_Wuw_vunpack_Vuh(Q6_V_lo_W(h));
    c.w0 = Q6_V_lo_W(w);
    c.w1 = Q6_V_hi_W(w);
  } else {
    W w = Q6_Wuw_vunpack_Vuh(vloadu(p));
    c.w0 = Q6_V_lo_W(w);
    c.w1 = Q6_V_hi_W(w);
  }
  return c;
}

/* Lanes at index >= n (0 <= n <= 64) set to 0. */
static inline Chunk chunk_mask(Chunk c, int n) {
  if (n < 64) {
    c.w0 = Q6_V_vmux_QVV(q_first_bytes(4 * n), c.w0, vzero());
    c.w1 = Q6_V_vmux_QVV(q_first_bytes(4 * (n - 32)), c.w1, vzero());
  }
  return c;
}

/* Narrow two word vectors of values already in range to 64 codes and store the first n. */
static inline void chunk_store(void *p, int bits, Chunk c, int n) {
  V h = Q6_Vh_vpacke_VwVw(c.w1, c.w0); /* 64 halfwords, natural order */
  if (bits == 8) {
    V b = Q6_Vb_vpacke_VhVh(vzero(), h); /* 64 bytes, natural order, then 64 zeros */
    vstore_n(p, b, n);
  } else {
    vstore_n(p, h, 2 * n);
  }
}

#endif
