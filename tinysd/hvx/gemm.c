/* gemm.c: linear, conv2d and the activation matmul (docs/arithmetic.md §3, §4.1-4.3).
 *
 * All three are sums of byte products done with vrmpy, which multiplies the 4 bytes of each
 * word lane of one vector by the 4 bytes of the same lane of another and adds the 4 products
 * to a 32-bit accumulator (exact; the accumulating form wraps, so the bounds below matter):
 *
 *   Vx.w  += vrmpy(Vu.ub, Vv.b)    unsigned x signed bytes     |sum| <= 255 * 128 * K < 2**31 for K <= 65793
 *   Vx.uw += vrmpy(Vu.ub, Vv.ub)   unsigned x unsigned bytes    sum <= 255 * 255 * K < 2**32 for K <= 66051
 *
 * Layout: the lanes are 32 output columns (output channels of linear/conv2d, columns n of a
 * matmul). The column side ("B": weights, or the matmul's right operand) is packed once so that
 * word lane l of vector (block nb, k-quad q) holds bytes k = 4q..4q+3 of column 32 nb + l. A row
 * of the other side ("A": activations) is read 4 bytes at a time and splatted to all lanes:
 *
 *   for each row m, k-quad q:  s = splat(A[m][4q..4q+3]);  for each block nb: C[m][nb] += vrmpy(s, B[nb][q])
 *
 * Zero points are not subtracted per product: sum_k w (x - zp) = sum_k w x - zp sum_k w, with
 * sum_k w per column from the same vrmpy (against splat(0x01010101)). §3.1 defines the exact
 * integer; this is one way of computing it.
 *
 * 16-bit activations (W8A16) use the byte split of §3.2: x = 256 x_hi + x_lo; vpacko / vpacke
 * give the high and low byte planes of a row, vrmpy accumulates sum w x_hi and sum w x_lo in two
 * int32 accumulators, and the epilogue forms 256 A_hi + A_lo + (bias - zp sum w) in a word pair.
 * The epilogue (per 32 outputs): word-pair additions (vaddcarry), narrow_i64 (vaddcarry, vlsr,
 * vasrinto, vsatdw) and requantize (prims.h), then vpacke to bytes or halfwords.
 *
 * The K bound: the kernels refuse K > 65536 (ST_UNSUPPORTED), inside both bounds above.
 * im2col, transposes and packing are data movement on the scalar core.
 */
#include "kernels.h"

#define K_MAX 65536

static inline int32_t load_u32(const uint8_t *p) {
  uint32_t x;
  memcpy(&x, p, 4);
  return (int32_t)x;
}

/* ---------------------------------------------------------------------------------------- */
/* packing and the vrmpy core                                                                */
/* ---------------------------------------------------------------------------------------- */
/* cols columns of K bytes (column c at src + c * ld) -> nblk * KQ vectors (see the layout above);
 * bytes past K or past cols are 0. */
static V *pack_columns(const uint8_t *src, int64_t ld, int cols, int K, int KQ, int nblk) {
  V *B = tsd_zalloc((size_t)nblk * KQ * VBYTES);
  if (!B) return NULL;
  for (int c = 0; c < cols; c++) {
    int nb = c >> 5, lane = c & 31;
    const uint8_t *s = src + c * ld;
    for (int k = 0; k < K; k++) ((uint8_t *)&B[(int64_t)nb * KQ + (k >> 2)])[4 * lane + (k & 3)] = s[k];
  }
  return B;
}

/* C[m * nblk + nb] = sum_q vrmpy(splat(A[m][4q..4q+3]), B[nb][q]) for M rows of 4 KQ bytes. */
static V *gemm_core(const uint8_t *A, int64_t M, int KQ, const V *B, int nblk, int b_unsigned) {
  V *C = tsd_zalloc((size_t)M * nblk * VBYTES);
  if (!C) return NULL;
  for (int64_t m = 0; m < M; m++) {
    const uint8_t *a = A + m * 4 * KQ;
    V *c = C + m * nblk;
    for (int q = 0; q < KQ; q++) {
      V s = splat(load_u32(a + 4 * q)); /* 4 activation bytes in every lane */
      const V *b = B + q;
      if (b_unsigned) {
        for (int nb = 0; nb < nblk; nb++) c[nb] = Q6_Vuw_vrmpyacc_VuwVubVub(c[nb], s, b[(int64_t)nb * KQ]);
      } else {
        for (int nb = 0; nb < nblk; nb++) c[nb] = Q6_Vw_vrmpyacc_VwVubVb(c[nb], s, b[(int64_t)nb * KQ]);
      }
    }
  }
  return C;
}

/* Per column: sum over k of B (vrmpy against splat(0x01010101)), 32 lanes per block -> int32[nblk*32]. */
static int32_t *column_sums(const V *B, int KQ, int nblk, int b_unsigned) {
  int32_t *s = tsd_alloc((size_t)nblk * VBYTES);
  if (!s) return NULL;
  V ones = splat(0x01010101);
  for (int nb = 0; nb < nblk; nb++) {
    V acc = vzero();
    for (int q = 0; q < KQ; q++) {
      V b = B[(int64_t)nb * KQ + q];
      acc = b_unsigned ? Q6_Vuw_vrmpyacc_VuwVubVub(acc, ones, b) : Q6_Vw_vrmpyacc_VwVubVb(acc, ones, b);
    }
    *(V *)(s + 32 * nb) = acc;
  }
  return s;
}

/* sum of n bytes: vrmpy(Vu.ub, Rt.ub = 0x01010101) adds 4 bytes per lane, then the 32 lanes. */
static uint64_t byte_sum(const uint8_t *p, int64_t n) {
  V acc = vzero();
  for (int64_t i = 0; i < n; i += VBYTES) {
    V v = Q6_V_vmux_QVV(q_first_bytes((int)(n - i < VBYTES ? n - i : VBYTES)), vloadu(p + i), vzero());
    acc = Q6_Vuw_vrmpyacc_VuwVubRub(acc, v, 0x01010101);
  }
  uint32_t lanes[32] __attribute__((aligned(VBYTES)));
  *(V *)lanes = acc;
  uint64_t s = 0;
  for (int l = 0; l < 32; l++) s += lanes[l];
  return s;
}

/* Rows of n uint16 codes -> byte planes hi = x >> 8, lo = x & 255 (vpacko / vpacke of two vectors
 * of 64 halfwords give 128 bytes in natural order). */
static void split16(const uint16_t *x, int64_t n, uint8_t *hi, uint8_t *lo) {
  for (int64_t i = 0; i < n; i += VBYTES) {
    V v0 = vloadu(x + i), v1 = vloadu(x + i + 64);
    int m = n - i < VBYTES ? (int)(n - i) : VBYTES;
    vstore_n(hi + i, Q6_Vb_vpacko_VhVh(v1, v0), m);
    vstore_n(lo + i, Q6_Vb_vpacke_VhVh(v1, v0), m);
  }
}

/* M rows of K codes (row stride K) -> rows of 4 KQ bytes, zero padded: one plane for uint8, two
 * (hi, lo) for uint16. */
static int row_planes(const void *x, int64_t M, int K, int KQ, int bits, uint8_t **hi, uint8_t **lo) {
  int64_t ld = 4 * (int64_t)KQ;
  *lo = tsd_zalloc((size_t)(M * ld));
  *hi = bits == 16 ? tsd_zalloc((size_t)(M * ld)) : NULL;
  if (!*lo || (bits == 16 && !*hi)) return ST_NO_MEMORY;
  for (int64_t m = 0; m < M; m++) {
    if (bits == 8) {
      vcopy(*lo + m * ld, (const uint8_t *)x + m * K, (size_t)K);
    } else {
      split16((const uint16_t *)x + m * K, K, *hi + m * ld, *lo + m * ld);
      memset(*hi + m * ld + K, 0, (size_t)(ld - K)); /* split16 may write whole vectors */
      memset(*lo + m * ld + K, 0, (size_t)(ld - K));
    }
  }
  return ST_OK;
}

/* 32 int32 values (n of them valid, the rest 0) as a vector. */
static V load_lanes(const int32_t *p, int n) {
  int32_t t[32] __attribute__((aligned(VBYTES)));
  for (int l = 0; l < 32; l++) t[l] = l < n ? p[l] : 0;
  return *(V *)t;
}

/* 32 int64 values as a word pair. */
static P64 load_pair_lanes(const int64_t *p, int n) {
  int32_t h[32] __attribute__((aligned(VBYTES))), l[32] __attribute__((aligned(VBYTES)));
  for (int i = 0; i < 32; i++) {
    int64_t v = i < n ? p[i] : 0;
    h[i] = (int32_t)(v >> 32);
    l[i] = (int32_t)(uint32_t)v;
  }
  P64 r = {*(V *)h, *(V *)l};
  return r;
}

/* ---------------------------------------------------------------------------------------- */
/* linear / conv2d: int8 weights                                                             */
/* ---------------------------------------------------------------------------------------- */
typedef struct {
  int K, KQ, OUT, nblk, bits;
  V *W;          /* packed weights */
  P64 *c;        /* per block: bias - x_zp * sum_k w, a word pair per lane */
  PairShift *ps; /* per block: acc_shift */
  Requant *rq;   /* per block: multiplier, shift, out_zp, qmin, qmax */
} WeightOp;

static int weight_prepare(WeightOp *op, const int8_t *w, int OUT, int K, const int32_t *bias, const int32_t *mult,
                          const int32_t *shift, const int32_t *acc_shift, int32_t x_zp, int32_t out_zp,
                          int32_t qmin, int32_t qmax, int bits) {
  op->K = K;
  op->KQ = (K + 3) >> 2;
  op->OUT = OUT;
  op->nblk = (OUT + 31) >> 5;
  op->bits = bits;
  op->W = pack_columns((const uint8_t *)w, K, OUT, K, op->KQ, op->nblk);
  op->c = tsd_alloc(op->nblk * sizeof(P64));
  op->ps = tsd_alloc(op->nblk * sizeof(PairShift));
  op->rq = tsd_alloc(op->nblk * sizeof(Requant));
  int32_t *sw = op->W ? column_sums(op->W, op->KQ, op->nblk, 0) : NULL;
  int64_t *c64 = tsd_alloc((size_t)op->nblk * 32 * 8);
  if (!op->W || !op->c || !op->ps || !op->rq || !sw || !c64) return ST_NO_MEMORY;
  for (int o = 0; o < OUT; o++) c64[o] = (bias ? bias[o] : 0) - (int64_t)x_zp * sw[o]; /* scalar, once per weight */
  for (int nb = 0; nb < op->nblk; nb++) {
    int o0 = 32 * nb, n = OUT - o0 < 32 ? OUT - o0 : 32;
    op->c[nb] = load_pair_lanes(c64 + o0, n);
    op->ps[nb] = pair_shift_prepare(load_lanes(acc_shift + o0, n));
    op->rq[nb] = rq_prepare(load_lanes(mult + o0, n), load_lanes(shift + o0, n), splat(out_zp), splat(qmin),
                            splat(qmax));
  }
  return ST_OK;
}

/* out[m][o] for M rows of K codes (contiguous), written as M x OUT codes. */
static int weight_apply(const WeightOp *op, const void *x, int64_t M, void *out) {
  uint8_t *hi, *lo;
  int st = row_planes(x, M, op->K, op->KQ, op->bits, &hi, &lo);
  if (st != ST_OK) return st;
  V *S_lo = gemm_core(lo, M, op->KQ, op->W, op->nblk, 0);                          /* sum w x (or w x_lo) */
  V *S_hi = op->bits == 16 ? gemm_core(hi, M, op->KQ, op->W, op->nblk, 0) : NULL; /* sum w x_hi */
  if (!S_lo || (op->bits == 16 && !S_hi)) return ST_NO_MEMORY;
  int cb = code_bytes(op->bits);
  for (int64_t m = 0; m < M; m++) {
    for (int nb = 0; nb < op->nblk; nb++) {
      int64_t i = m * op->nblk + nb;
      P64 acc = p64_from_w(S_lo[i]);
      if (op->bits == 16) acc = p64_add(p64_shl(S_hi[i], splat(32 - 8)), acc); /* 256 A_hi + A_lo */
      acc = p64_add(acc, op->c[nb]);
      Chunk y = {requantize_v(narrow64_v(acc, op->ps[nb]), &op->rq[nb]), vzero()};
      int o0 = 32 * nb, n = op->OUT - o0 < 32 ? op->OUT - o0 : 32;
      chunk_store((uint8_t *)out + (m * op->OUT + o0) * cb, op->bits, y, n);
    }
  }
  return ST_OK;
}

static int check_common(const Request *r, int bits, int64_t x_elems, int OUT, int64_t K, int has_bias) {
  if (bits != 8 && bits != 16) return ST_UNSUPPORTED;
  if (K > K_MAX || K < 1 || OUT < 1) return ST_UNSUPPORTED;
  if (r->size[0] != (uint64_t)(x_elems * code_bytes(bits)) || r->size[1] != (uint64_t)(OUT * K)) return ST_BAD_REQUEST;
  if (r->size[2] != (uint64_t)(has_bias ? 4 * OUT : 0)) return ST_BAD_REQUEST;
  for (int i = 3; i < 6; i++)
    if (r->size[i] != (uint64_t)(4 * OUT)) return ST_BAD_REQUEST;
  return ST_OK;
}

/* OP_LINEAR (§4.2). ints: M, K, OUT, bits, x_zp, out_zp, qmin, qmax, has_bias.
 * blobs: x (M, K) codes, weight_q (OUT, K) int8, bias_q (OUT) int32 or empty, multiplier, shift,
 * acc_shift (OUT) int32. Output (M, OUT) codes. */
int op_linear(Request *r) {
  if (r->n_ints != 9 || r->n_blobs != 6) return ST_BAD_REQUEST;
  int64_t M = r->ints[0], K = r->ints[1], OUT = r->ints[2];
  int bits = (int)r->ints[3], has_bias = (int)r->ints[8];
  int st = check_common(r, bits, M * K, (int)OUT, K, has_bias);
  if (st != ST_OK) return st;
  WeightOp op;
  st = weight_prepare(&op, r->blob[1], (int)OUT, (int)K, has_bias ? r->blob[2] : NULL, r->blob[3], r->blob[4],
                      r->blob[5], (int32_t)r->ints[4], (int32_t)r->ints[5], (int32_t)r->ints[6], (int32_t)r->ints[7],
                      bits);
  if (st != ST_OK) return st;
  void *out = out_blob(r, (uint64_t)(M * OUT * code_bytes(bits)));
  if (!out) return ST_NO_MEMORY;
  return weight_apply(&op, r->blob[0], M, out);
}

/* OP_CONV2D (§4.1). ints: N, C, H, W, OUT, KH, KW, sh, sw, top, bottom, left, right, bits, x_zp, out_zp,
 * qmin, qmax, has_bias. blobs: x (N, C, H, W) codes, weight_q (OUT, C, KH, KW) int8, bias_q, multiplier,
 * shift, acc_shift. Output (N, OUT, Ho, Wo) codes.
 * im2col: row (n, y, x) holds xpad[n][c][y sh + i][x sw + j] for k = (c, i, j) in the weight's own
 * order, padded positions holding x_zp (so they contribute w (x_zp - x_zp) = 0). */
int op_conv2d(Request *r) {
  if (r->n_ints != 19 || r->n_blobs != 6) return ST_BAD_REQUEST;
  const int64_t *a = r->ints;
  int64_t N = a[0], C = a[1], H = a[2], Wd = a[3], OUT = a[4], KH = a[5], KW = a[6];
  int64_t sh = a[7], sw = a[8], top = a[9], bottom = a[10], left = a[11], right = a[12];
  int bits = (int)a[13], has_bias = (int)a[18];
  int32_t x_zp = (int32_t)a[14];
  if (sh < 1 || sw < 1 || top < 0 || bottom < 0 || left < 0 || right < 0) return ST_UNSUPPORTED;
  int64_t Hp = H + top + bottom, Wp = Wd + left + right;
  if (Hp < KH || Wp < KW) return ST_UNSUPPORTED;
  int64_t Ho = (int64_t)udiv64((uint64_t)(Hp - KH), (uint64_t)sh) + 1;
  int64_t Wo = (int64_t)udiv64((uint64_t)(Wp - KW), (uint64_t)sw) + 1;
  int64_t K = C * KH * KW, M = N * Ho * Wo;
  int st = check_common(r, bits, N * C * H * Wd, (int)OUT, K, has_bias);
  if (st != ST_OK) return st;
  WeightOp op;
  st = weight_prepare(&op, r->blob[1], (int)OUT, (int)K, has_bias ? r->blob[2] : NULL, r->blob[3], r->blob[4],
                      r->blob[5], x_zp, (int32_t)a[15], (int32_t)a[16], (int32_t)a[17], bits);
  if (st != ST_OK) return st;
  int cb = code_bytes(bits);
  uint8_t *rows = tsd_alloc((size_t)(M * K * cb)), *tmp = tsd_alloc((size_t)(M * OUT * cb));
  void *out = out_blob(r, (uint64_t)(M * OUT * cb));
  if (!rows || !tmp || !out) return ST_NO_MEMORY;
  const uint8_t *x8 = r->blob[0];
  const uint16_t *x16 = r->blob[0];
  int64_t row = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t y = 0; y < Ho; y++)
      for (int64_t xo = 0; xo < Wo; xo++, row++) {
        int64_t k = 0;
        for (int64_t c = 0; c < C; c++)
          for (int64_t i = 0; i < KH; i++)
            for (int64_t j = 0; j < KW; j++, k++) {
              int64_t yy = y * sh + i - top, xx = xo * sw + j - left;
              int inside = yy >= 0 && yy < H && xx >= 0 && xx < Wd;
              int64_t src = ((n * C + c) * H + yy) * Wd + xx;
              if (bits == 8) rows[row * K + k] = inside ? x8[src] : (uint8_t)x_zp;
              else ((uint16_t *)rows)[row * K + k] = inside ? x16[src] : (uint16_t)x_zp;
            }
      }
  st = weight_apply(&op, rows, M, tmp);
  if (st != ST_OK) return st;
  /* (n, y, x) rows x OUT -> NCHW */
  int64_t P = Ho * Wo;
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < OUT; o++)
      for (int64_t p = 0; p < P; p++) {
        int64_t d = (n * OUT + o) * P + p, s = (n * P + p) * OUT + o;
        if (bits == 8) ((uint8_t *)out)[d] = tmp[s];
        else ((uint16_t *)out)[d] = ((uint16_t *)tmp)[s];
      }
  return ST_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* matmul of two activations (§4.3)                                                          */
/* ---------------------------------------------------------------------------------------- */
/* acc = sum_k (a - za)(b - zb), expanded around the offset representation of b:
 *   uint8:  b' = b - 128 = b ^ 0x80 (a signed byte);      with S = sum a b' (vrmpy ub x b),
 *           acc = S - za sum_k b' + (128 - zb)(sum_k a - K za)
 *   uint16: b' = b - 32768 = 256 bh' + bl, bh' = (b >> 8) - 128 (signed byte), bl = b & 255;
 *           a = 256 ah + al; sum a b' = 65536 P_hh + 256 (P_hl + P_lh) + P_ll with
 *           P_hh = sum ah bh', P_lh = sum al bh' (vrmpy ub x b, int32) and
 *           P_hl = sum ah bl, P_ll = sum al bl (vrmpy ub x ub, uint32);
 *           acc = sum a b' - za sum_k b' + (32768 - zb)(sum_k a - K za)
 * The column term (per lane) and the row term (per row) are int64 scalars computed once per
 * column / row from vrmpy sums; the products are added as word pairs. */
static int matmul_one(const uint8_t *a8, const uint8_t *b8, int64_t M, int64_t K, int64_t N, int bits, int32_t za,
                      int32_t zb, const PairShift *ps, const Requant *rq, uint8_t *out) {
  int KQ = (int)((K + 3) >> 2), nblk = (int)((N + 31) >> 5), cb = code_bytes(bits);
  int64_t ld = 4 * (int64_t)KQ;
  /* b (K, N) -> column planes (N, 4 KQ), transposed on the scalar core */
  uint8_t *bh = tsd_zalloc((size_t)(N * ld)), *bl = bits == 16 ? tsd_zalloc((size_t)(N * ld)) : NULL;
  if (!bh || (bits == 16 && !bl)) return ST_NO_MEMORY;
  for (int64_t k = 0; k < K; k++)
    for (int64_t n = 0; n < N; n++) {
      if (bits == 8) {
        bh[n * ld + k] = b8[k * N + n] ^ 0x80;
      } else {
        uint16_t v = ((const uint16_t *)b8)[k * N + n];
        bh[n * ld + k] = (uint8_t)((v >> 8) ^ 0x80);
        bl[n * ld + k] = (uint8_t)(v & 255);
      }
    }
  V *Bh = pack_columns(bh, ld, (int)N, (int)K, KQ, nblk);
  V *Bl = bits == 16 ? pack_columns(bl, ld, (int)N, (int)K, KQ, nblk) : NULL;
  uint8_t *ah, *al;
  int st = row_planes(a8, M, (int)K, KQ, bits, &ah, &al); /* uint8: al is the only plane */
  if (st != ST_OK) return st;
  int32_t *sh_ = Bh ? column_sums(Bh, KQ, nblk, 0) : NULL;
  int32_t *sl_ = Bl ? column_sums(Bl, KQ, nblk, 1) : NULL;
  int64_t *ccol = tsd_alloc((size_t)nblk * 32 * 8);
  if (!Bh || (bits == 16 && (!Bl || !sl_)) || !sh_ || !ccol) return ST_NO_MEMORY;
  for (int64_t n = 0; n < N; n++) {
    int64_t sb = bits == 8 ? sh_[n] : 256 * (int64_t)sh_[n] + (int64_t)(uint32_t)sl_[n]; /* sum_k b' */
    ccol[n] = -(int64_t)za * sb;
  }
  /* products */
  V *Phh = 0, *Phl = 0, *Plh = 0, *Pll = 0;
  if (bits == 8) {
    Plh = gemm_core(al, M, KQ, Bh, nblk, 0); /* S = sum a b' */
    if (!Plh) return ST_NO_MEMORY;
  } else {
    Phh = gemm_core(ah, M, KQ, Bh, nblk, 0);
    Phl = gemm_core(ah, M, KQ, Bl, nblk, 1);
    Plh = gemm_core(al, M, KQ, Bh, nblk, 0);
    Pll = gemm_core(al, M, KQ, Bl, nblk, 1);
    if (!Phh || !Phl || !Plh || !Pll) return ST_NO_MEMORY;
  }
  int64_t offset = bits == 8 ? 128 : 32768;
  for (int64_t m = 0; m < M; m++) {
    int64_t sa = bits == 8 ? (int64_t)byte_sum(al + m * ld, K)
                           : 256 * (int64_t)byte_sum(ah + m * ld, K) + (int64_t)byte_sum(al + m * ld, K);
    int64_t crow = (offset - zb) * (sa - K * za); /* scalar, once per row */
    P64 crow_v = {splat((int32_t)(crow >> 32)), splat((int32_t)(uint32_t)crow)};
    for (int nb = 0; nb < nblk; nb++) {
      int64_t i = m * nblk + nb;
      P64 acc;
      if (bits == 8) {
        acc = p64_from_w(Plh[i]);
      } else {
        acc = p64_shl(Phh[i], splat(32 - 16));                  /* 65536 P_hh */
        acc = p64_add(acc, p64_shl(Plh[i], splat(32 - 8)));     /* + 256 P_lh (signed) */
        P64 hl = {Q6_Vuw_vlsr_VuwR(Phl[i], 24), Q6_Vw_vasl_VwR(Phl[i], 8)};
        acc = p64_add(acc, hl);                                 /* + 256 P_hl (unsigned) */
        acc = p64_add(acc, p64_from_uw(Pll[i]));                /* + P_ll (unsigned) */
      }
      int n0 = 32 * nb, n = N - n0 < 32 ? (int)(N - n0) : 32;
      acc = p64_add(p64_add(acc, load_pair_lanes(ccol + n0, n)), crow_v);
      Chunk y = {requantize_v(narrow64_v(acc, *ps), rq), vzero()};
      chunk_store(out + (m * N + n0) * cb, bits, y, n);
    }
  }
  return ST_OK;
}

/* OP_MATMUL. ints: nd, a_shape[nd], b_shape[nd], bits, a_zp, b_zp, multiplier, shift, acc_shift, out_zp,
 * qmin, qmax. blobs: a (..., M, K), b (..., K, N) codes; batch axes broadcast (size 1 against any).
 * Output (..., M, N) codes. */
int op_matmul(Request *r) {
  if (r->n_ints < 1 || r->n_blobs != 2) return ST_BAD_REQUEST;
  int nd = (int)r->ints[0];
  if (nd < 2 || nd > 8 || r->n_ints != (uint32_t)(1 + 2 * nd + 9)) return ST_BAD_REQUEST;
  const int64_t *as = r->ints + 1, *bs = r->ints + 1 + nd, *p = r->ints + 1 + 2 * nd;
  int bits = (int)p[0];
  int32_t za = (int32_t)p[1], zb = (int32_t)p[2];
  int64_t M = as[nd - 2], K = as[nd - 1], N = bs[nd - 1];
  if (bits != 8 && bits != 16) return ST_UNSUPPORTED;
  if (bs[nd - 2] != K || K < 1 || K > K_MAX) return ST_UNSUPPORTED;
  int64_t os[8], nbatch = 1;
  for (int i = 0; i < nd - 2; i++) {
    if (as[i] != bs[i] && as[i] != 1 && bs[i] != 1) return ST_BAD_REQUEST;
    os[i] = as[i] > bs[i] ? as[i] : bs[i];
    nbatch *= os[i];
  }
  int cb = code_bytes(bits);
  if (r->size[0] != (uint64_t)(prod64(as, nd) * cb) || r->size[1] != (uint64_t)(prod64(bs, nd) * cb))
    return ST_BAD_REQUEST;
  uint8_t *out = out_blob(r, (uint64_t)(nbatch * M * N * cb));
  if (!out) return ST_NO_MEMORY;
  PairShift ps = pair_shift_prepare(splat((int32_t)p[5]));
  Requant rq = rq_prepare_scalar((int32_t)p[3], (int32_t)p[4], (int32_t)p[6], (int32_t)p[7], (int32_t)p[8]);
  size_t mark = tsd_arena_top;
  for (int64_t bi = 0; bi < nbatch; bi++) {
    int64_t rem = bi, ia = 0, ib = 0, sa = 1, sb = 1;
    for (int i = nd - 3; i >= 0; i--) { /* batch index -> offsets, broadcasting size-1 axes */
      int64_t q = (int64_t)udiv64((uint64_t)rem, (uint64_t)os[i]), idx = rem - q * os[i];
      rem = q;
      ia += (as[i] == 1 ? 0 : idx) * sa;
      ib += (bs[i] == 1 ? 0 : idx) * sb;
      sa *= as[i];
      sb *= bs[i];
    }
    int st = matmul_one((const uint8_t *)r->blob[0] + ia * M * K * cb, (const uint8_t *)r->blob[1] + ib * K * N * cb,
                        M, K, N, bits, za, zb, &ps, &rq, out + bi * M * N * cb);
    if (st != ST_OK) return st;
    tsd_arena_top = mark; /* the per-batch scratch is freed */
  }
  return ST_OK;
}
