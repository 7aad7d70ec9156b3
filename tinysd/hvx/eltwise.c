/* eltwise.c: requantize_tensor / scale, add, mul, concat, nearest upsample and embedding
 * (docs/arithmetic.md §4.4-4.10, §5).
 *
 * The elementwise ops work on chunks of 64 codes held as two word vectors in natural order
 * (prims.h: vunpack to widen, vpacke to narrow), with per-tensor parameters splatted once.
 * Broadcast operands (add/mul, e.g. the resnet time embedding (B, C, 1, 1) against (B, C, H, W))
 * are first expanded to the output shape on the scalar core (data movement).
 */
#include "kernels.h"

/* ---------------------------------------------------------------------------------------- */
/* §4.4 requantize_tensor: out = requantize(x - x_zp, multiplier, shift, out_zp, qmin, qmax)  */
/* ---------------------------------------------------------------------------------------- */
/* per chunk: vunpack x2, vsub, requantize (11 instructions per 32 lanes), vpacke x2 */
void requantize_codes(const void *x, int in_bits, int32_t x_zp, const Requant *rq, void *out, int out_bits,
                      int64_t n) {
  int ib = code_bytes(in_bits), ob = code_bytes(out_bits);
  V zp = splat(x_zp);
  for (int64_t i = 0; i < n; i += 64) {
    Chunk c = chunk_load((const uint8_t *)x + i * ib, in_bits);
    c.w0 = requantize_v(Q6_Vw_vsub_VwVw(c.w0, zp), rq);
    c.w1 = requantize_v(Q6_Vw_vsub_VwVw(c.w1, zp), rq);
    chunk_store((uint8_t *)out + i * ob, out_bits, c, n - i < 64 ? (int)(n - i) : 64);
  }
}

/* OP_REQUANTIZE_TENSOR. ints: n, in_bits, x_zp, multiplier, shift, out_zp, qmin, qmax, out_bits.
 * blobs: x (n codes). Output n codes of out_bits. */
int op_requantize_tensor(Request *r) {
  if (r->n_ints != 9 || r->n_blobs != 1) return ST_BAD_REQUEST;
  const int64_t *a = r->ints;
  int64_t n = a[0];
  int in_bits = (int)a[1], out_bits = (int)a[8];
  if ((in_bits != 8 && in_bits != 16) || (out_bits != 8 && out_bits != 16)) return ST_UNSUPPORTED;
  if (r->size[0] != (uint64_t)(n * code_bytes(in_bits))) return ST_BAD_REQUEST;
  void *out = out_blob(r, (uint64_t)(n * code_bytes(out_bits)));
  if (!out) return ST_NO_MEMORY;
  Requant rq = rq_prepare_scalar((int32_t)a[3], (int32_t)a[4], (int32_t)a[5], (int32_t)a[6], (int32_t)a[7]);
  requantize_codes(r->blob[0], in_bits, (int32_t)a[2], &rq, out, out_bits, n);
  return ST_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* broadcasting (scalar data movement)                                                       */
/* ---------------------------------------------------------------------------------------- */
/* src of shape ss (nd axes) expanded to shape os (each ss[d] is os[d] or 1); returns src itself
 * when the shapes are equal. */
static const void *broadcast_to(const void *src, const int64_t *ss, const int64_t *os, int nd, int cb) {
  int same = 1;
  for (int d = 0; d < nd; d++) same &= ss[d] == os[d];
  if (same) return src;
  int64_t n = prod64(os, nd), stride[8], idx[8], off = 0;
  uint8_t *dst = tsd_alloc((size_t)(n * cb));
  if (!dst) return NULL;
  int64_t s = 1;
  for (int d = nd - 1; d >= 0; d--) {
    stride[d] = ss[d] == 1 ? 0 : s;
    s *= ss[d];
    idx[d] = 0;
  }
  for (int64_t i = 0; i < n; i++) {
    if (cb == 1) dst[i] = ((const uint8_t *)src)[off];
    else ((uint16_t *)dst)[i] = ((const uint16_t *)src)[off];
    for (int d = nd - 1; d >= 0; d--) { /* odometer over the output index */
      off += stride[d];
      if (++idx[d] < os[d]) break;
      off -= stride[d] * os[d];
      idx[d] = 0;
    }
  }
  return dst;
}

/* The operands of add and mul. ints: nd, a's shape, b's shape (nd each), then n_params op parameters
 * starting with bits; blobs: a, b. On success *p points at the op parameters, a and b are expanded to
 * the broadcast shape (n elements) and *out is the output blob. Returns a ST_* status. */
typedef struct {
  const int64_t *p;
  int bits, cb;
  int64_t n;
  const void *a, *b;
  uint8_t *out;
} Binary;

static int binary_operands(Request *r, int n_params, Binary *o) {
  if (r->n_blobs != 2 || r->n_ints < 1) return ST_BAD_REQUEST;
  int nd = (int)r->ints[0];
  if (nd < 1 || nd > 8 || r->n_ints != (uint32_t)(1 + 2 * nd + n_params)) return ST_BAD_REQUEST;
  const int64_t *sa = r->ints + 1, *sb = r->ints + 1 + nd;
  o->p = r->ints + 1 + 2 * nd;
  o->bits = (int)o->p[0];
  if (o->bits != 8 && o->bits != 16) return ST_UNSUPPORTED;
  o->cb = code_bytes(o->bits);
  int64_t os[8];
  for (int d = 0; d < nd; d++) {
    if (sa[d] != sb[d] && sa[d] != 1 && sb[d] != 1) return ST_BAD_REQUEST;
    os[d] = sa[d] > sb[d] ? sa[d] : sb[d];
  }
  if (r->size[0] != (uint64_t)(prod64(sa, nd) * o->cb) || r->size[1] != (uint64_t)(prod64(sb, nd) * o->cb))
    return ST_BAD_REQUEST;
  o->n = prod64(os, nd);
  o->a = broadcast_to(r->blob[0], sa, os, nd, o->cb);
  o->b = broadcast_to(r->blob[1], sb, os, nd, o->cb);
  o->out = out_blob(r, (uint64_t)(o->n * o->cb));
  return o->a && o->b && o->out ? ST_OK : ST_NO_MEMORY;
}

/* ---------------------------------------------------------------------------------------- */
/* §4.5 add                                                                                  */
/* ---------------------------------------------------------------------------------------- */
/* OP_ADD. ints: nd, a_shape, b_shape, bits, a_zp, a_multiplier, a_shift, b_zp, b_multiplier, b_shift,
 * multiplier, shift, out_zp, qmin, qmax, left_shift. Per 32 lanes:
 *   a_s = requantize((a - a_zp) << left_shift, a_multiplier, a_shift, 0, INT32_MIN, INT32_MAX)   vsub, vasl, 11
 *   b_s = the same for b
 *   out = requantize(a_s + b_s, multiplier, shift, out_zp, qmin, qmax)                            vadd, 11
 * (|a_s|, |b_s| < 2**30 for the parameters of §4.5, so the plain vadd is exact.) */
int op_add(Request *r) {
  Binary o;
  int st = binary_operands(r, 13, &o);
  if (st != ST_OK) return st;
  const int64_t *p = o.p;
  int bits = o.bits, cb = o.cb;
  int64_t n = o.n;
  V a_zp = splat((int32_t)p[1]), b_zp = splat((int32_t)p[4]);
  int32_t ls = (int32_t)p[12];
  Requant ra = rq_prepare_scalar((int32_t)p[2], (int32_t)p[3], 0, INT32_MIN, INT32_MAX);
  Requant rb = rq_prepare_scalar((int32_t)p[5], (int32_t)p[6], 0, INT32_MIN, INT32_MAX);
  Requant ro = rq_prepare_scalar((int32_t)p[7], (int32_t)p[8], (int32_t)p[9], (int32_t)p[10], (int32_t)p[11]);
  for (int64_t i = 0; i < n; i += 64) {
    Chunk ca = chunk_load((const uint8_t *)o.a + i * cb, bits), cbv = chunk_load((const uint8_t *)o.b + i * cb, bits);
    V *wa[2] = {&ca.w0, &ca.w1}, *wb[2] = {&cbv.w0, &cbv.w1};
    for (int h = 0; h < 2; h++) {
      V as = requantize_v(Q6_Vw_vasl_VwR(Q6_Vw_vsub_VwVw(*wa[h], a_zp), ls), &ra);
      V bs = requantize_v(Q6_Vw_vasl_VwR(Q6_Vw_vsub_VwVw(*wb[h], b_zp), ls), &rb);
      *wa[h] = requantize_v(Q6_Vw_vadd_VwVw(as, bs), &ro);
    }
    chunk_store(o.out + i * cb, bits, ca, n - i < 64 ? (int)(n - i) : 64);
  }
  return ST_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* §4.6 mul                                                                                  */
/* ---------------------------------------------------------------------------------------- */
/* OP_MUL. ints: nd, a_shape, b_shape, bits, a_zp, b_zp, multiplier, shift, acc_shift, out_zp, qmin, qmax.
 * prod = (a - a_zp)(b - b_zp) reaches 65535**2 > 2**31 for uint16, so it is formed as a word pair
 * from magnitudes and a sign:
 *   |a - a_zp|, |b - b_zp|     vabsdiff (unsigned words <= 65535)
 *   mag = |a - a_zp| |b - b_zp|  vmpyie(Vu.w, Vv.uh): low 32 bits of a word times the even halfword,
 *                                exact here (< 2**32)
 *   sign = (a < a_zp) xor (b < b_zp)   vcmp.gt x2, Q xor
 *   pair = sign ? -(0:mag) : (0:mag)   vsub, vcmp.eq, vmux x3
 *   out = requantize(narrow_i64(pair, acc_shift), ...) */
int op_mul(Request *r) {
  Binary o;
  int st = binary_operands(r, 9, &o);
  if (st != ST_OK) return st;
  const int64_t *p = o.p;
  int bits = o.bits, cb = o.cb;
  int64_t n = o.n;
  V a_zp = splat((int32_t)p[1]), b_zp = splat((int32_t)p[2]), zero = vzero(), minus1 = splat(-1);
  PairShift ps = pair_shift_prepare(splat((int32_t)p[5]));
  Requant rq = rq_prepare_scalar((int32_t)p[3], (int32_t)p[4], (int32_t)p[6], (int32_t)p[7], (int32_t)p[8]);
  for (int64_t i = 0; i < n; i += 64) {
    Chunk ca = chunk_load((const uint8_t *)o.a + i * cb, bits), cbv = chunk_load((const uint8_t *)o.b + i * cb, bits);
    V *wa[2] = {&ca.w0, &ca.w1}, *wb[2] = {&cbv.w0, &cbv.w1};
    for (int h = 0; h < 2; h++) {
      V da = Q6_Vuw_vabsdiff_VwVw(*wa[h], a_zp), db = Q6_Vuw_vabsdiff_VwVw(*wb[h], b_zp);
      V mag = Q6_Vw_vmpyie_VwVuh(da, db);
      Q neg = Q6_Q_xor_QQ(Q6_Q_vcmp_gt_VwVw(a_zp, *wa[h]), Q6_Q_vcmp_gt_VwVw(b_zp, *wb[h]));
      V neg_hi = Q6_V_vmux_QVV(Q6_Q_vcmp_eq_VwVw(mag, zero), zero, minus1);
      P64 prod = {Q6_V_vmux_QVV(neg, neg_hi, zero), Q6_V_vmux_QVV(neg, Q6_Vw_vsub_VwVw(zero, mag), mag)};
      *wa[h] = requantize_v(narrow64_v(prod, ps), &rq);
    }
    chunk_store(o.out + i * cb, bits, ca, n - i < 64 ? (int)(n - i) : 64);
  }
  return ST_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* §4.7 concat                                                                               */
/* ---------------------------------------------------------------------------------------- */
/* OP_CONCAT. ints: nd, axis, n_in, bits, out_zp, qmin, qmax, then per input: shape[nd], x_zp, multiplier,
 * shift. blobs: the inputs. Each input is requantize_tensor'ed into its slice of the output
 * (viewed as (outer, sum of n_i * inner)). */
int op_concat(Request *r) {
  if (r->n_ints < 7) return ST_BAD_REQUEST;
  const int64_t *a = r->ints;
  int nd = (int)a[0], axis = (int)a[1], n_in = (int)a[2], bits = (int)a[3];
  if (nd < 1 || nd > 8 || axis < 0 || axis >= nd || n_in < 1 || n_in != (int)r->n_blobs ||
      r->n_ints != (uint32_t)(7 + n_in * (nd + 3)))
    return ST_BAD_REQUEST;
  if (bits != 8 && bits != 16) return ST_UNSUPPORTED;
  int cb = code_bytes(bits);
  const int64_t *s0 = a + 7;
  int64_t outer = prod64(s0, axis), inner = prod64(s0 + axis + 1, nd - axis - 1), total = 0;
  for (int i = 0; i < n_in; i++) {
    const int64_t *s = a + 7 + i * (nd + 3);
    for (int d = 0; d < nd; d++)
      if (d != axis && s[d] != s0[d]) return ST_BAD_REQUEST;
    if (r->size[i] != (uint64_t)(prod64(s, nd) * cb)) return ST_BAD_REQUEST;
    total += s[axis];
  }
  uint8_t *out = out_blob(r, (uint64_t)(outer * total * inner * cb));
  if (!out) return ST_NO_MEMORY;
  int64_t offset = 0;
  for (int i = 0; i < n_in; i++) {
    const int64_t *s = a + 7 + i * (nd + 3);
    Requant rq = rq_prepare_scalar((int32_t)s[nd + 1], (int32_t)s[nd + 2], (int32_t)a[4], (int32_t)a[5], (int32_t)a[6]);
    int64_t seg = s[axis] * inner;
    for (int64_t o = 0; o < outer; o++)
      requantize_codes((const uint8_t *)r->blob[i] + o * seg * cb, bits, (int32_t)s[nd], &rq,
                       out + (o * total * inner + offset) * cb, bits, seg);
    offset += seg;
  }
  return ST_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* §4.9 nearest upsample 2x                                                                  */
/* ---------------------------------------------------------------------------------------- */
/* OP_UPSAMPLE2X. ints: N, C, H, W, bits, has_requant, x_zp, multiplier, shift, out_zp, qmin, qmax.
 * Each input row is widened by vshuff(v, v): interleaving a vector with itself repeats every
 * element (byte granularity -1 for uint8, halfword -2 for uint16): 64 input bytes -> 128 output
 * bytes. The widened row is stored at output rows 2y and 2y + 1. When the output encoding
 * differs, requantize_tensor follows (in place). */
int op_upsample2x(Request *r) {
  if (r->n_ints != 12 || r->n_blobs != 1) return ST_BAD_REQUEST;
  const int64_t *a = r->ints;
  int64_t N = a[0], C = a[1], H = a[2], Wd = a[3];
  int bits = (int)a[4];
  if (bits != 8 && bits != 16) return ST_UNSUPPORTED;
  int cb = code_bytes(bits);
  if (r->size[0] != (uint64_t)(N * C * H * Wd * cb)) return ST_BAD_REQUEST;
  uint8_t *out = out_blob(r, (uint64_t)(N * C * 4 * H * Wd * cb));
  if (!out) return ST_NO_MEMORY;
  const uint8_t *x = r->blob[0];
  int64_t row_in = Wd * cb, row_out = 2 * row_in;
  for (int64_t rr = 0; rr < N * C * H; rr++) {
    const uint8_t *src = x + rr * row_in;
    uint8_t *d0 = out + 2 * rr * row_out, *d1 = d0 + row_out;
    for (int64_t j = 0; j < row_in; j += 64) {
      V v = vloadu(src + j);
      V dup = Q6_V_lo_W(Q6_W_vshuff_VVR(v, v, -cb)); /* x0 x0 x1 x1 ... */
      int m = (int)(row_out - 2 * j < VBYTES ? row_out - 2 * j : VBYTES);
      vstore_n(d0 + 2 * j, dup, m);
      vstore_n(d1 + 2 * j, dup, m);
    }
  }
  if (a[5]) {
    Requant rq = rq_prepare_scalar((int32_t)a[7], (int32_t)a[8], (int32_t)a[9], (int32_t)a[10], (int32_t)a[11]);
    requantize_codes(out, bits, (int32_t)a[6], &rq, out, bits, N * C * 4 * H * Wd);
  }
  return ST_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* §5 embedding: out[i, :] = table[ids[i], :]                                                */
/* ---------------------------------------------------------------------------------------- */
/* OP_EMBEDDING. ints: n_ids, V, D, bits. blobs: ids (int64), table (V, D) codes. Row copies with
 * vector loads and stores; an id outside [0, V) is ST_BAD_REQUEST. */
int op_embedding(Request *r) {
  if (r->n_ints != 4 || r->n_blobs != 2) return ST_BAD_REQUEST;
  int64_t n = r->ints[0], Vn = r->ints[1], D = r->ints[2];
  int bits = (int)r->ints[3];
  if (bits != 8 && bits != 16) return ST_UNSUPPORTED;
  int cb = code_bytes(bits);
  if (r->size[0] != (uint64_t)(8 * n) || r->size[1] != (uint64_t)(Vn * D * cb)) return ST_BAD_REQUEST;
  uint8_t *out = out_blob(r, (uint64_t)(n * D * cb));
  if (!out) return ST_NO_MEMORY;
  const int64_t *ids = r->blob[0];
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= Vn) return ST_BAD_REQUEST;
    vcopy(out + i * D * cb, (const uint8_t *)r->blob[1] + ids[i] * D * cb, (size_t)(D * cb));
  }
  return ST_OK;
}
