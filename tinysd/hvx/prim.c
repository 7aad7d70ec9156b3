/* prim.c: the primitives of docs/arithmetic.md §2 applied lane by lane to host arrays, so the
 * host can compare each instruction sequence of prims.h with tinysd.fixedpoint on many vectors.
 *
 * Every request holds n lanes: int32 blobs of n words, or int64 blobs of n double words
 * (little-endian, low word first). 64-bit lanes are split into word pairs with vdeal and joined
 * again with vshuff (word granularity, docs/hvx.md §2).
 *
 *   OP_SRDHM      a, b (int32)                        -> srdhm(a, b)
 *   OP_RSR32      x (int32), n (int32, 0..31)          -> rounding_shift_right(x, n)
 *   OP_RSR64      x (int64, |x| < 2**62), n (0..62)    -> rounding_shift_right(x, n) (int64)
 *   OP_NARROW64   acc (int64, |acc| < 2**62), n (0..62) -> narrow_i64(acc, n)
 *   OP_REQUANTIZE acc, multiplier, shift, zp, qmin, qmax (int32) -> requantize(...)
 *   OP_SAT32      x (int64)                            -> saturate_i32(x)
 *   OP_SHL_SAT    x (int32), s (int32, 0..31)          -> sat32(x * 2**s)
 *   OP_ADD_SAT    a, b (int32)                         -> sat32(a + b)  (vadd:sat)
 */
#include "kernels.h"

/* 32 int64 lanes (256 bytes) -> pair: vdeal by words puts the low words of values 0..31 in the
 * low vector and the high words in the high vector. */
static inline P64 load_i64x32(const int64_t *p) {
  W w = Q6_W_vdeal_VVR(vloadu(p + 16), vloadu(p), -4);
  P64 x = {Q6_V_hi_W(w), Q6_V_lo_W(w)};
  return x;
}

static inline void store_i64x32(int64_t *p, P64 x, int n) {
  W w = Q6_W_vshuff_VVR(x.hi, x.lo, -4); /* lo, hi, lo, hi, ... */
  vstore_n(p, Q6_V_lo_W(w), 8 * (n < 16 ? n : 16));
  if (n > 16) vstore_n(p + 16, Q6_V_hi_W(w), 8 * (n - 16));
}

int prim_request(Request *r) {
  static const int n_in[] = {[OP_SRDHM] = 2, [OP_RSR32] = 2, [OP_RSR64] = 2, [OP_NARROW64] = 2,
                             [OP_REQUANTIZE] = 6, [OP_SAT32] = 1, [OP_SHL_SAT] = 2, [OP_ADD_SAT] = 2};
  int wide_in = r->op == OP_RSR64 || r->op == OP_NARROW64 || r->op == OP_SAT32; /* first blob int64 */
  if (r->n_ints != 1 || r->n_blobs != (uint32_t)n_in[r->op]) return ST_BAD_REQUEST;
  int64_t n = r->ints[0];
  for (uint32_t i = 0; i < r->n_blobs; i++) {
    uint64_t want = (uint64_t)n * (i == 0 && wide_in ? 8 : 4);
    if (r->size[i] != want) return ST_BAD_REQUEST;
  }
  int wide_out = r->op == OP_RSR64;
  void *out = out_blob(r, (uint64_t)n * (wide_out ? 8 : 4));
  if (!out) return ST_NO_MEMORY;
  const int32_t *b[6];
  for (uint32_t i = 0; i < r->n_blobs; i++) b[i] = r->blob[i];

  for (int64_t i = 0; i < n; i += VWORDS) {
    int m = n - i < VWORDS ? (int)(n - i) : VWORDS;
    V y;
    switch (r->op) {
      case OP_SRDHM: y = srdhm_v(vloadu(b[0] + i), vloadu(b[1] + i)); break;
      case OP_RSR32: y = rsr_v(vloadu(b[0] + i), rsr_amounts(vloadu(b[1] + i))); break;
      case OP_RSR64: {
        P64 x = load_i64x32((const int64_t *)b[0] + i);
        store_i64x32((int64_t *)out + i, rsr64_v(x, pair_shift_prepare(vloadu(b[1] + i))), m);
        continue;
      }
      case OP_NARROW64:
        y = narrow64_v(load_i64x32((const int64_t *)b[0] + i), pair_shift_prepare(vloadu(b[1] + i)));
        break;
      case OP_REQUANTIZE: {
        Requant rq = rq_prepare(vloadu(b[1] + i), vloadu(b[2] + i), vloadu(b[3] + i), vloadu(b[4] + i),
                                vloadu(b[5] + i));
        y = requantize_v(vloadu(b[0] + i), &rq);
        break;
      }
      case OP_SAT32: y = sat32_v(load_i64x32((const int64_t *)b[0] + i)); break;
      case OP_SHL_SAT:
        y = sat32_v(p64_shl(vloadu(b[0] + i), Q6_Vw_vsub_VwVw(splat(32), vloadu(b[1] + i))));
        break;
      default: y = Q6_Vw_vadd_VwVw_sat(vloadu(b[0] + i), vloadu(b[1] + i)); break;
    }
    vstore_n((int32_t *)out + i, y, 4 * m);
  }
  return ST_OK;
}
