/* norm.c: group norm and layer norm (docs/arithmetic.md §6.3).
 *
 * Both normalise rows of N codes (group norm: the Cg channels x P positions of one group, contiguous
 * in NCHW; layer norm: one last-axis vector) and apply a per-channel affine map.
 *
 * Row statistics, per chunk of 64 codes as two word vectors (prims.h), tail lanes masked to 0:
 *   sum1 = sum q                    word-pair accumulation (vaddcarry), then the 32 lanes
 *   D2   = sum (q - a)**2           |q - a| by vabsdiff (<= 65535), squared by vmpyie (word times
 *                                   its own even halfword: exact, < 2**32), pair accumulation
 * then on the scalar core, once per row: a, b, e2, f, var, mean, W, k, Wn, S = isqrt(Wn),
 * R = recip31(S) (udiv64 and a digit-by-digit square root; Hexagon has no divider).
 *
 * Per channel (HVX over the channel arrays): M_c = srdhm(R, gamma_multiplier[c]) (vmpye/vmpyo),
 * e_c = k + gamma_shift[c] + 8 - H - 14 (vadd), and from e_c the shift amounts below.
 *
 * Per element (32 lanes):
 *   c = (q << H) - mean            vasl, vsub
 *   x = sat32(c * 2**min(max(e, 0), 31))   vasrinto + vsatdw (clamping the left shift at 31 changes
 *                                  nothing: any nonzero c saturates already, §6.3)
 *   v = rsr(srdhm(x, M), max(-e, 0))       vmpye/vmpyo, vasr/vand/vadd; 0 when the shift is >= 32 (vmux)
 *   t = sat32(v + beta_fx)         vadd:sat
 *   out = clip(rsr(t, 8), 0, 2**out_bits - 1)   vasr/vand/vadd, vmax, vmin
 * Group norm: the parameters of a channel are splatted over its P positions. Layer norm: the
 * channel is the element index, so the parameters are vectors loaded beside the data.
 */
#include "kernels.h"

#define Q_FRAC 8 /* BETA_FRAC_BITS */

typedef struct {
  int64_t mean; /* in 2**-H codes */
  int32_t R;    /* recip31(S) */
  int k;
} RowStats;

/* floor(sqrt(v)) for 0 <= v < 2**62, digit by digit (exact). */
static uint64_t isqrt64(uint64_t v) {
  uint64_t res = 0, bit = (uint64_t)1 << 62;
  while (bit > v) bit >>= 2;
  while (bit) {
    if (v >= res + bit) {
      v -= res + bit;
      res = (res >> 1) + bit;
    } else {
      res >>= 1;
    }
    bit >>= 2;
  }
  return res;
}

/* rdiv(p, N) = floor((2p + N) / (2N)): p / N rounded half up, p >= 0 (all bounds of §6.3 keep 2p + N < 2**63). */
static int64_t rdiv(uint64_t p, uint64_t N) { return (int64_t)udiv64(2 * p + N, 2 * N); }

static RowStats row_stats(const uint8_t *x, int64_t N, int bits, int64_t eps_fx) {
  int cb = code_bytes(bits), H = 31 - bits;
  V zero = vzero();
  P64 s1 = {zero, zero};
  for (int64_t i = 0; i < N; i += 64) {
    Chunk c = chunk_mask(chunk_load(x + i * cb, bits), (int)(N - i < 64 ? N - i : 64));
    s1 = p64_add(p64_add(s1, p64_from_uw(c.w0)), p64_from_uw(c.w1));
  }
  uint64_t sum1 = p64_lane_sum(s1);
  uint64_t a = udiv64(sum1, (uint64_t)N), b = sum1 - a * (uint64_t)N;
  V av = splat((int32_t)a);
  P64 s2 = {zero, zero};
  for (int64_t i = 0; i < N; i += 64) {
    Chunk c = chunk_load(x + i * cb, bits);
    Chunk d = {Q6_Vuw_vabsdiff_VwVw(c.w0, av), Q6_Vuw_vabsdiff_VwVw(c.w1, av)};
    d = chunk_mask(d, (int)(N - i < 64 ? N - i : 64));
    s2 = p64_add(s2, p64_from_uw(Q6_Vw_vmpyie_VwVuh(d.w0, d.w0)));
    s2 = p64_add(s2, p64_from_uw(Q6_Vw_vmpyie_VwVuh(d.w1, d.w1)));
  }
  uint64_t D2 = p64_lane_sum(s2);
  uint64_t u = udiv64(D2, (uint64_t)N), w = D2 - u * (uint64_t)N;
  int64_t e2 = (int64_t)(u << 32) + rdiv(w << 32, (uint64_t)N);
  int64_t f = rdiv(b << 31, (uint64_t)N);
  int64_t var = e2 - (int64_t)(((uint64_t)(f * f) + ((uint64_t)1 << 29)) >> 30);
  if (var < 0) var = 0;
  RowStats st;
  st.mean = (int64_t)(a << H) + rdiv(b << H, (uint64_t)N);
  int64_t Wv = var + eps_fx;
  st.k = (62 - bit_length64((uint64_t)Wv)) >> 1; /* floor: -1 when W >= 2**62 */
  uint64_t Wn = st.k >= 0 ? (uint64_t)Wv << (2 * st.k) : (uint64_t)Wv >> 2;
  st.R = (int32_t)udiv64(((uint64_t)1 << 61) - 1, isqrt64(Wn));
  return st;
}

/* Per-lane parameters of the per-element step, from M and e (vectors). */
typedef struct {
  V M, left32, beta, zero_out; /* zero_out: all-ones where the right shift is >= 32 */
  RsrAmount right;
} NormLane;

static inline NormLane norm_lane(V M, V e, V beta) {
  NormLane p;
  V zero = vzero(), s31 = splat(31);
  p.M = M;
  p.left32 = Q6_Vw_vsub_VwVw(splat(32), Q6_Vw_vmin_VwVw(Q6_Vw_vmax_VwVw(e, zero), s31));
  V right = Q6_Vw_vmax_VwVw(Q6_Vw_vsub_VwVw(zero, e), zero);
  p.zero_out = Q6_V_vand_QR(Q6_Q_vcmp_gt_VwVw(right, s31), -1);
  p.right = rsr_amounts(Q6_Vw_vmin_VwVw(right, s31));
  p.beta = beta;
  return p;
}

static inline V norm_element(V q, int H, V mean, const NormLane *p, const RsrAmount *eight, V qmax) {
  V c = Q6_Vw_vsub_VwVw(Q6_Vw_vasl_VwR(q, H), mean);
  V x = sat32_v(p64_shl(c, p->left32));
  V v = rsr_v(srdhm_v(x, p->M), p->right);
  v = Q6_V_vmux_QVV(Q6_Q_vand_VR(p->zero_out, -1), vzero(), v);
  V t = Q6_Vw_vadd_VwVw_sat(v, p->beta);
  return Q6_Vw_vmin_VwVw(Q6_Vw_vmax_VwVw(rsr_v(t, *eight), vzero()), qmax);
}

static int check_norm(const Request *r, int64_t rows, int64_t N, int64_t C, int in_bits, int out_bits, int64_t eps) {
  if ((in_bits != 8 && in_bits != 16) || (out_bits != 8 && out_bits != 16)) return ST_UNSUPPORTED;
  if (N < 1 || N >= ((int64_t)1 << 30) || eps < 1 || eps > ((int64_t)1 << 60)) return ST_UNSUPPORTED;
  if (r->size[0] != (uint64_t)(rows * N * code_bytes(in_bits))) return ST_BAD_REQUEST;
  for (int i = 1; i < 4; i++)
    if (r->size[i] != (uint64_t)(4 * C)) return ST_BAD_REQUEST;
  return ST_OK;
}

/* M_c and e_c of the n channels (HVX over the arrays), written to M[], e[] (n rounded up to 32). */
static void channel_params(int32_t R, int k, int H, const int32_t *gm, const int32_t *gs, int64_t n, int32_t *M,
                           int32_t *e) {
  V Rv = splat(R), ek = splat(k + Q_FRAC - H - 14);
  for (int64_t c = 0; c < n; c += 32) {
    *(V *)(M + c) = srdhm_v(Rv, vloadu(gm + c));
    *(V *)(e + c) = Q6_Vw_vadd_VwVw(ek, vloadu(gs + c));
  }
}

/* OP_LAYER_NORM. ints: rows, D, in_bits, out_bits, eps_fx. blobs: x (rows, D) codes, gamma_multiplier,
 * gamma_shift, beta_fx (D, int32). Output (rows, D) codes of out_bits. */
int op_layer_norm(Request *r) {
  if (r->n_ints != 5 || r->n_blobs != 4) return ST_BAD_REQUEST;
  int64_t rows = r->ints[0], D = r->ints[1], eps = r->ints[4];
  int in_bits = (int)r->ints[2], out_bits = (int)r->ints[3];
  int st = check_norm(r, rows, D, D, in_bits, out_bits, eps);
  if (st != ST_OK) return st;
  int ib = code_bytes(in_bits), ob = code_bytes(out_bits), H = 31 - in_bits;
  uint8_t *out = out_blob(r, (uint64_t)(rows * D * ob));
  int32_t *M = tsd_alloc((size_t)(D + 64) * 4), *e = tsd_alloc((size_t)(D + 64) * 4);
  if (!out || !M || !e) return ST_NO_MEMORY;
  const int32_t *gm = r->blob[1], *gs = r->blob[2], *beta = r->blob[3];
  RsrAmount eight = rsr_amounts(splat(Q_FRAC));
  V qmax = splat((1 << out_bits) - 1);
  for (int64_t row = 0; row < rows; row++) {
    const uint8_t *x = (const uint8_t *)r->blob[0] + row * D * ib;
    RowStats s = row_stats(x, D, in_bits, eps);
    channel_params(s.R, s.k, H, gm, gs, D, M, e);
    V mean = splat((int32_t)s.mean);
    for (int64_t j = 0; j < D; j += 64) {
      Chunk c = chunk_load(x + j * ib, in_bits);
      NormLane p0 = norm_lane(*(V *)(M + j), *(V *)(e + j), vloadu(beta + j));
      NormLane p1 = norm_lane(*(V *)(M + j + 32), *(V *)(e + j + 32), vloadu(beta + j + 32));
      c.w0 = norm_element(c.w0, H, mean, &p0, &eight, qmax);
      c.w1 = norm_element(c.w1, H, mean, &p1, &eight, qmax);
      chunk_store(out + (row * D + j) * ob, out_bits, c, (int)(D - j < 64 ? D - j : 64));
    }
  }
  return ST_OK;
}

/* OP_GROUP_NORM. ints: B, C, P, G, in_bits, out_bits, eps_fx. blobs: x (B, C, P) codes (P = H W),
 * gamma_multiplier, gamma_shift, beta_fx (C, int32). Output (B, C, P) codes of out_bits. */
int op_group_norm(Request *r) {
  if (r->n_ints != 7 || r->n_blobs != 4) return ST_BAD_REQUEST;
  int64_t B = r->ints[0], C = r->ints[1], P = r->ints[2], G = r->ints[3], eps = r->ints[6];
  int in_bits = (int)r->ints[4], out_bits = (int)r->ints[5];
  if (G < 1 || C < G) return ST_BAD_REQUEST;
  int64_t Cg = (int64_t)udiv64((uint64_t)C, (uint64_t)G);
  if (Cg * G != C) return ST_BAD_REQUEST;
  int st = check_norm(r, B * G, Cg * P, C, in_bits, out_bits, eps);
  if (st != ST_OK) return st;
  int ib = code_bytes(in_bits), ob = code_bytes(out_bits), H = 31 - in_bits;
  uint8_t *out = out_blob(r, (uint64_t)(B * C * P * ob));
  int32_t *M = tsd_alloc((size_t)(Cg + 64) * 4), *e = tsd_alloc((size_t)(Cg + 64) * 4);
  if (!out || !M || !e) return ST_NO_MEMORY;
  const int32_t *gm = r->blob[1], *gs = r->blob[2], *beta = r->blob[3];
  RsrAmount eight = rsr_amounts(splat(Q_FRAC));
  V qmax = splat((1 << out_bits) - 1);
  for (int64_t row = 0; row < B * G; row++) {
    int64_t g = row - (int64_t)udiv64((uint64_t)row, (uint64_t)G) * G, c0 = g * Cg;
    const uint8_t *x = (const uint8_t *)r->blob[0] + row * Cg * P * ib;
    RowStats s = row_stats(x, Cg * P, in_bits, eps);
    channel_params(s.R, s.k, H, gm + c0, gs + c0, Cg, M, e);
    V mean = splat((int32_t)s.mean);
    for (int64_t cl = 0; cl < Cg; cl++) {
      NormLane p = norm_lane(splat(M[cl]), splat(e[cl]), splat(beta[c0 + cl]));
      const uint8_t *xc = x + cl * P * ib;
      uint8_t *oc = out + (row * Cg + cl) * P * ob;
      for (int64_t j = 0; j < P; j += 64) {
        Chunk c = chunk_load(xc + j * ib, in_bits);
        c.w0 = norm_element(c.w0, H, mean, &p, &eight, qmax);
        c.w1 = norm_element(c.w1, H, mean, &p, &eight, qmax);
        chunk_store(oc + j * ob, out_bits, c, (int)(P - j < 64 ? P - j : 64));
      }
    }
  }
  return ST_OK;
}
