/* tables.c: table nonlinearities (SiLU, GELU, quick_gelu; docs/arithmetic.md §6.1): out[i] = table[x[i]].
 *
 * 8-bit codes, 256-entry uint8 table: vlut32. In 128-byte mode vlut32(Vu.b, Vv.b, Rt) looks up
 * every byte index of Vu whose top 3 bits equal Rt & 7 (a "segment" of 32 entries) and writes 0
 * for the others; vlut32or ORs further segments in. One table vector holds 4 segments, entry j of
 * segment s (s = 0..3) at byte 2 j + 64 (s & 1) + ((s >> 1) & 1) (measured under QEMU, docs/hvx.md
 * §2): so two vectors hold the 256 entries (segments 0-3 and 4-7) and 8 instructions look up
 * 128 codes. The two table vectors are laid out once per table.
 *
 * 16-bit codes, 65536-entry uint16 table (128 KiB): vgather. `vgather(Rt, Mu, Vvv.w).h` reads 64
 * halfwords at byte offsets Rt + Vvv.w[i] (word offsets, so the whole 128 KiB region is
 * reachable; halfword offsets would reach 64 KiB) into a vector: element 2i from the low offset
 * vector's lane i, element 2i + 1 from the high one's. vzxt deals a vector of 64 codes into
 * exactly those two word vectors (even codes, odd codes), so offsets = vzxt(x) << 1 give the
 * results back in natural order. On a device the table and the gather destination live in VTCM;
 * QEMU 7.2 executes the gather on ordinary memory.
 *
 * Other input/output widths are not used by the integer networks (a table's input and output
 * have the network's activation width) and answer ST_UNSUPPORTED.
 */
#include "kernels.h"

static void lut8(const uint8_t *x, const uint8_t *table, uint8_t *out, int64_t n) {
  uint8_t lay[2][VBYTES] __attribute__((aligned(VBYTES)));
  for (int s = 0; s < 8; s++)
    for (int j = 0; j < 32; j++) lay[s >> 2][2 * j + 64 * (s & 1) + ((s >> 1) & 1)] = table[32 * s + j];
  V lo = *(V *)lay[0], hi = *(V *)lay[1];
  for (int64_t i = 0; i < n; i += VBYTES) {
    V idx = vloadu(x + i);
    V y = Q6_Vb_vlut32_VbVbR(idx, lo, 0);
    y = Q6_Vb_vlut32or_VbVbVbR(y, idx, lo, 1);
    y = Q6_Vb_vlut32or_VbVbVbR(y, idx, lo, 2);
    y = Q6_Vb_vlut32or_VbVbVbR(y, idx, lo, 3);
    y = Q6_Vb_vlut32or_VbVbVbR(y, idx, hi, 4);
    y = Q6_Vb_vlut32or_VbVbVbR(y, idx, hi, 5);
    y = Q6_Vb_vlut32or_VbVbVbR(y, idx, hi, 6);
    y = Q6_Vb_vlut32or_VbVbVbR(y, idx, hi, 7);
    vstore_n(out + i, y, (int)(n - i < VBYTES ? n - i : VBYTES));
  }
}

static void gather16(const uint16_t *x, const uint16_t *table, uint16_t *out, int64_t n) {
  static V dst __attribute__((aligned(VBYTES))); /* VTCM on a device */
  for (int64_t i = 0; i < n; i += 64) {
    W idx = Q6_Wuw_vzxt_Vuh(vloadu(x + i)); /* lo: codes 0, 2, 4, ...; hi: codes 1, 3, 5, ... */
    W offs = Q6_W_vcombine_VV(Q6_Vw_vasl_VwR(Q6_V_hi_W(idx), 1), Q6_Vw_vasl_VwR(Q6_V_lo_W(idx), 1));
    Q6_vgather_ARMWw(&dst, (size_t)table, 65536 * 2 - 1, offs);
    vstore_n(out + i, dst, (int)(2 * (n - i < 64 ? n - i : 64)));
  }
}

/* OP_TABLE. ints: n, in_bits, out_bits. blobs: x (n codes), table (2**in_bits entries of out_bits). */
int op_table(Request *r) {
  if (r->n_ints != 3 || r->n_blobs != 2) return ST_BAD_REQUEST;
  int64_t n = r->ints[0];
  int in_bits = (int)r->ints[1], out_bits = (int)r->ints[2];
  if (in_bits != out_bits || (in_bits != 8 && in_bits != 16)) return ST_UNSUPPORTED;
  int cb = code_bytes(in_bits);
  if (r->size[0] != (uint64_t)(n * cb) || r->size[1] != (uint64_t)(((int64_t)1 << in_bits) * cb)) return ST_BAD_REQUEST;
  void *out = out_blob(r, (uint64_t)(n * cb));
  if (!out) return ST_NO_MEMORY;
  if (in_bits == 8) lut8(r->blob[0], r->blob[1], out, n);
  else gather16(r->blob[0], r->blob[1], out, n);
  return ST_OK;
}
