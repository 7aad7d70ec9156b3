/* softmax.c: integer softmax over the last axis (docs/arithmetic.md §6.2).
 *
 * Per row of T scores (causal: row i of each (T, T) block uses j <= i; the rest output 0), on
 * chunks of 64 codes as two word vectors (prims.h):
 *
 *   m     = max_j x_j                       vmax over the chunks, then the 32 lanes (scalar)
 *   k_j   = min(m - x_j, len(E) - 1)        vsub, vmin
 *   e_j   = E[k_j]                          vgather(Rt = E, Mu = 4 len(E) - 1, Vv.w = 4 k_j) (V65+;
 *                                           the table in VTCM on a device), masked lanes set to 0
 *   S     = sum_j e_j                       word-pair accumulation (vaddcarry), then the lanes
 *   L, s31, R = recip31(s31), n             scalar, once per row (udiv64 for the division)
 *   out_j = min(rsr(srdhm(e_j, R), n), 2**out_bits - 1)   vmpye/vmpyo, vasr/vand/vadd, vmin;
 *                                           all 0 when n >= 32 (n is per row: a scalar branch)
 * Masked lanes have e_j = 0, hence output 0 (srdhm(0, R) = 0).
 */
#include "kernels.h"

/* the largest of the 32 lanes (scalar, once per row) */
static int32_t lane_max(V v) {
  int32_t w[32] __attribute__((aligned(VBYTES)));
  *(V *)w = v;
  int32_t m = w[0];
  for (int l = 1; l < 32; l++) m = w[l] > m ? w[l] : m;
  return m;
}

/* OP_SOFTMAX. ints: rows, T, in_bits, out_bits, causal_T (the T of the (T, T) mask, 0: none).
 * blobs: x (rows, T) codes, exp_table (int32, 1 <= len <= 2**in_bits). Output (rows, T) codes of out_bits. */
int op_softmax(Request *r) {
  if (r->n_ints != 5 || r->n_blobs != 2) return ST_BAD_REQUEST;
  int64_t rows = r->ints[0], T = r->ints[1], causal = r->ints[4];
  int in_bits = (int)r->ints[2], out_bits = (int)r->ints[3];
  if ((in_bits != 8 && in_bits != 16) || (out_bits != 8 && out_bits != 16) || T < 1) return ST_UNSUPPORTED;
  int ib = code_bytes(in_bits), ob = code_bytes(out_bits);
  int64_t len = (int64_t)(r->size[1] >> 2);
  if (r->size[0] != (uint64_t)(rows * T * ib) || len < 1 || len > ((int64_t)1 << in_bits) || (r->size[1] & 3))
    return ST_BAD_REQUEST;
  uint8_t *out = out_blob(r, (uint64_t)(rows * T * ob));
  int32_t *e = tsd_alloc((size_t)(T + 64) * 4);
  if (!out || !e) return ST_NO_MEMORY;
  const int32_t *E = r->blob[1];
  static V g0 __attribute__((aligned(VBYTES))), g1 __attribute__((aligned(VBYTES))); /* gather destinations */
  V last = splat((int32_t)(len - 1)), qmax = splat((1 << out_bits) - 1), zero = vzero();
  int64_t ci = 0; /* row index within the causal block */
  for (int64_t row = 0; row < rows; row++) {
    const uint8_t *x = (const uint8_t *)r->blob[0] + row * T * ib;
    int64_t width = causal ? ci + 1 : T;
    if (causal && ++ci == causal) ci = 0;
    /* max over the unmasked scores (codes >= 0, so masked lanes read as 0 cannot win) */
    V vm = zero;
    for (int64_t j = 0; j < width; j += 64) {
      Chunk c = chunk_mask(chunk_load(x + j * ib, in_bits), (int)(width - j < 64 ? width - j : 64));
      vm = Q6_Vw_vmax_VwVw(vm, Q6_Vw_vmax_VwVw(c.w0, c.w1));
    }
    V m = splat(lane_max(vm));
    /* e_j = E[min(m - x_j, len - 1)], S = sum e_j */
    P64 S = {zero, zero};
    for (int64_t j = 0; j < width; j += 64) {
      int valid = (int)(width - j < 64 ? width - j : 64);
      Chunk c = chunk_load(x + j * ib, in_bits);
      V k0 = Q6_Vw_vmin_VwVw(Q6_Vw_vsub_VwVw(m, c.w0), last), k1 = Q6_Vw_vmin_VwVw(Q6_Vw_vsub_VwVw(m, c.w1), last);
      Q6_vgather_ARMVw(&g0, (size_t)E, (size_t)(4 * len - 1), Q6_Vw_vasl_VwR(k0, 2));
      Q6_vgather_ARMVw(&g1, (size_t)E, (size_t)(4 * len - 1), Q6_Vw_vasl_VwR(k1, 2));
      Chunk ec = chunk_mask((Chunk){g0, g1}, valid);
      *(V *)(e + j) = ec.w0; /* e is 128-byte aligned and j a multiple of 64 */
      *(V *)(e + j + 32) = ec.w1;
      S = p64_add(S, p64_from_uw(ec.w0));
      S = p64_add(S, p64_from_uw(ec.w1));
    }
    uint64_t s = p64_lane_sum(S); /* >= E[0] = 2**30 */
    int L = bit_length64(s);
    int64_t s31 = (int64_t)(s >> (L - 31));
    int32_t R = (int32_t)udiv64(((uint64_t)1 << 61) - 1, (uint64_t)s31); /* recip31 */
    int n = L - 1 - out_bits;                                              /* >= 14 */
    RsrAmount amt = rsr_amounts(splat(n < 32 ? n : 0));
    V Rv = splat(R);
    for (int64_t j = 0; j < T; j += 64) {
      Chunk y = {zero, zero};
      if (j < width && n < 32) {
        y.w0 = Q6_Vw_vmin_VwVw(rsr_v(srdhm_v(*(V *)(e + j), Rv), amt), qmax);
        y.w1 = Q6_Vw_vmin_VwVw(rsr_v(srdhm_v(*(V *)(e + j + 32), Rv), amt), qmax);
      }
      chunk_store(out + (row * T + j) * ob, out_bits, y, (int)(T - j < 64 ? T - j : 64));
    }
  }
  return ST_OK;
}
