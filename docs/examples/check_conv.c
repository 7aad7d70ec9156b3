/*
 * check_conv.c: check one tinysd golden conv2d case bit for bit, in plain C99.
 *
 * The case is a header written by `tinysd golden --format c --layers ...` (one header per
 * case, `{case id}.h`). This program re-implements the quantized convolution of
 * docs/arithmetic.md (section 4.1, with the primitives of sections 2.2-2.5) from the case's
 * integer inputs and parameters, with int64 accumulation and the requantize primitive (round
 * half up), and compares every output value with the golden `out` array:
 *
 *   acc[n,o,y,x] = bias_q[o] + sum_{c,i,j} w_q[o,c,i,j] * (xpad[n,c,y*sh+i,x*sw+j] - x_zp)
 *                  (padded positions contribute 0)
 *   a32          = sat32(rounding_shift_right(acc, acc_shift[o]))        narrow_i64
 *   out          = requantize(a32, multiplier[o], shift[o], out_zp, qmin, qmax)
 *
 * Build and run (see docs/golden.md):
 *   cc -std=c99 -O2 -DTSD_CASE_HEADER='"golden/p000/unet/step000/layers/conv_in.h"' \
 *      -o check_conv docs/examples/check_conv.c && ./check_conv
 * Exit status: 0 when every value matches, 1 otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifndef TSD_CASE_HEADER
#error "compile with -DTSD_CASE_HEADER='\"path/to/case.h\"' (a conv2d case written by tinysd golden --format c)"
#endif
#include TSD_CASE_HEADER

/* ---- fixed-point primitives (docs/arithmetic.md, sections 2.2-2.5) ------------------------ */

/* Arithmetic (floor) shift right of a signed 64-bit value, without relying on the
   implementation-defined behaviour of >> on negative numbers: floor(x / 2**n) = ~(~x >> n). */
static int64_t asr64(int64_t x, int n) {
    return x >= 0 ? (int64_t)((uint64_t)x >> n) : ~(int64_t)((uint64_t)~x >> n);
}

/* Rounding shift right, half up (toward +inf): (x + 2**(n-1)) >> n; x for n = 0.  HVX vasr:rnd */
static int64_t rounding_shift_right(int64_t x, int n) {
    return n == 0 ? x : asr64(x + ((int64_t)1 << (n - 1)), n);
}

/* Saturate to int32.  HVX vsat / :sat */
static int64_t sat32(int64_t x) {
    return x > INT32_MAX ? INT32_MAX : x < INT32_MIN ? INT32_MIN : x;
}

/* Saturating rounding doubling high multiply: sat32((a*b + 2**30) >> 31).  HVX vmpye/vmpyo:<<1:rnd:sat */
static int64_t srdhm(int64_t a, int64_t b) {
    return sat32(asr64(a * b + ((int64_t)1 << 30), 31)); /* |a*b| <= 2**62: exact in int64 */
}

/* requantize(acc, multiplier, shift, zero_point, qmin, qmax) of int32 acc (section 2.5). */
static int64_t requantize(int64_t acc, int64_t multiplier, int shift, int64_t zp, int64_t qmin, int64_t qmax) {
    int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    int64_t x = sat32(acc * ((int64_t)1 << left)); /* |acc| <= 2**31, left <= 30: exact */
    int64_t y = rounding_shift_right(srdhm(x, multiplier), right) + zp;
    return y < qmin ? qmin : y > qmax ? qmax : y;
}

/* ---- indexing in the case's layout ---------------------------------------------------------- */
#if TSD_LAYOUT_NHWC
/* x (N, H, W, C), weight_q (O, KH, KW, C), out (N, HO, WO, O) */
#define N_ tsd_x_shape[0]
#define C_ tsd_x_shape[3]
#define H_ tsd_x_shape[1]
#define W_ tsd_x_shape[2]
#define KH tsd_weight_q_shape[1]
#define KW tsd_weight_q_shape[2]
#define O_ tsd_out_shape[3]
#define HO tsd_out_shape[1]
#define WO tsd_out_shape[2]
#define X_AT(n, c, y, x) tsd_x[(((n) * H_ + (y)) * W_ + (x)) * C_ + (c)]
#define W_AT(o, c, i, j) tsd_weight_q[(((o) * KH + (i)) * KW + (j)) * C_ + (c)]
#define OUT_AT(n, o, y, x) tsd_out[(((n) * HO + (y)) * WO + (x)) * O_ + (o)]
#else
/* x (N, C, H, W), weight_q (O, C, KH, KW), out (N, O, HO, WO) */
#define N_ tsd_x_shape[0]
#define C_ tsd_x_shape[1]
#define H_ tsd_x_shape[2]
#define W_ tsd_x_shape[3]
#define KH tsd_weight_q_shape[2]
#define KW tsd_weight_q_shape[3]
#define O_ tsd_out_shape[1]
#define HO tsd_out_shape[2]
#define WO tsd_out_shape[3]
#define X_AT(n, c, y, x) tsd_x[(((n) * C_ + (c)) * H_ + (y)) * W_ + (x)]
#define W_AT(o, c, i, j) tsd_weight_q[(((o) * C_ + (c)) * KH + (i)) * KW + (j)]
#define OUT_AT(n, o, y, x) tsd_out[(((n) * O_ + (o)) * HO + (y)) * WO + (x)]
#endif

int main(void) {
    const long long sh = TSD_ATTR_STRIDE_0, sw = TSD_ATTR_STRIDE_1;
    const long long top = TSD_ATTR_PADDING_0, left = TSD_ATTR_PADDING_2; /* (top, bottom, left, right) */
    long long n, o, y, x, c, i, j, mismatches = 0, checked = 0;

    if (strcmp(TSD_OP, "conv2d") != 0) {
        fprintf(stderr, "%s: not a conv2d case (op %s)\n", TSD_CASE_ID, TSD_OP);
        return 2;
    }
    for (n = 0; n < N_; n++)
        for (o = 0; o < O_; o++)
            for (y = 0; y < HO; y++)
                for (x = 0; x < WO; x++) {
#ifdef TSD_BIAS_Q_SIZE
                    int64_t acc = tsd_bias_q[o];
#else
                    int64_t acc = 0;
#endif
                    int64_t got, want;
                    for (c = 0; c < C_; c++)
                        for (i = 0; i < KH; i++)
                            for (j = 0; j < KW; j++) {
                                long long iy = y * sh + i - top, ix = x * sw + j - left;
                                if (iy < 0 || iy >= H_ || ix < 0 || ix >= W_) continue; /* padding: x_zp - x_zp = 0 */
                                acc += (int64_t)W_AT(o, c, i, j) * ((int64_t)X_AT(n, c, iy, ix) - TSD_ATTR_X_ZP);
                            }
                    got = requantize(sat32(rounding_shift_right(acc, tsd_acc_shift[o])), tsd_multiplier[o],
                                     tsd_shift[o], TSD_ATTR_OUT_ZP, TSD_ATTR_QMIN, TSD_ATTR_QMAX);
                    want = OUT_AT(n, o, y, x);
                    checked++;
                    if (got != want) {
                        if (!mismatches)
                            printf("%s: first mismatch at n=%lld o=%lld y=%lld x=%lld: computed %lld, golden %lld\n",
                                   TSD_CASE_ID, n, o, y, x, (long long)got, (long long)want);
                        mismatches++;
                    }
                }
    printf("%s: %lld of %lld outputs differ\n", TSD_CASE_ID, mismatches, checked);
    return mismatches ? 1 : 0;
}
