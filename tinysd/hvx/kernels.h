/* kernels.h: the request format shared by main.c and every kernel, and the op numbers.
 *
 * The host (tinysd/hvx/runner.py) sends requests on stdin and reads one response per request
 * on stdout; every integer is little-endian.
 *
 *   request:  u32 magic "TSDH", u32 op, u32 n_ints, u32 n_blobs,
 *             i64 ints[n_ints], u64 sizes[n_blobs], then each blob's bytes padded to 8
 *   response: u32 magic "TSDR", i32 status, u32 n_blobs, u32 0,
 *             u64 sizes[n_blobs], then each blob's bytes padded to 8
 *
 * status 0 is success; other values are the ST_* codes below (the host names them). The op
 * numbers and the meaning of each op's ints and blobs are listed with the op in runner.py and
 * docs/hvx.md; they are kept in one place on the host side (OPS in runner.py) and here.
 */
#ifndef TSD_HVX_KERNELS_H
#define TSD_HVX_KERNELS_H

#include "prims.h"

#define MAX_INTS 64
#define MAX_BLOBS 32

enum {
  ST_OK = 0,
  ST_BAD_REQUEST = 1, /* wrong number of ints/blobs, sizes that do not match the shapes */
  ST_NO_MEMORY = 2,   /* the arena is exhausted */
  ST_UNSUPPORTED = 3, /* a parameter outside what the kernel implements (named in docs/hvx.md) */
  ST_UNKNOWN_OP = 4,
};

enum {
  /* primitives (§2), elementwise over n lanes */
  OP_SRDHM = 1,
  OP_RSR32 = 2,
  OP_RSR64 = 3,
  OP_NARROW64 = 4,
  OP_REQUANTIZE = 5,
  OP_SAT32 = 6,
  OP_SHL_SAT = 7,
  OP_ADD_SAT = 8,
  /* ops (§4, §6) */
  OP_LINEAR = 20,
  OP_CONV2D = 21,
  OP_MATMUL = 22,
  OP_REQUANTIZE_TENSOR = 23,
  OP_ADD = 24,
  OP_MUL = 25,
  OP_CONCAT = 26,
  OP_UPSAMPLE2X = 27,
  OP_TABLE = 28,
  OP_SOFTMAX = 29,
  OP_GROUP_NORM = 30,
  OP_LAYER_NORM = 31,
  OP_EMBEDDING = 32,
};

typedef struct {
  uint32_t op, n_ints, n_blobs;
  int64_t ints[MAX_INTS];
  void *blob[MAX_BLOBS];
  uint64_t size[MAX_BLOBS];
  /* outputs, filled by the kernel with out_blob() */
  uint32_t n_out;
  void *out[MAX_BLOBS];
  uint64_t out_size[MAX_BLOBS];
} Request;

/* A new output blob of `size` bytes (arena), registered as the request's next output. */
static inline void *out_blob(Request *r, uint64_t size) {
  if (r->n_out >= MAX_BLOBS) return NULL;
  void *p = tsd_alloc((size_t)size);
  if (!p) return NULL;
  r->out[r->n_out] = p;
  r->out_size[r->n_out] = size;
  r->n_out++;
  return p;
}

/* Activation codes: uint8 for 8 bits, uint16 for 16. */
static inline int code_bytes(int bits) { return bits == 8 ? 1 : 2; }

static inline int64_t prod64(const int64_t *dims, int n) {
  int64_t p = 1;
  for (int i = 0; i < n; i++) p *= dims[i];
  return p;
}

/* each returns a ST_* status */
int prim_request(Request *r);
int op_linear(Request *r);
int op_conv2d(Request *r);
int op_matmul(Request *r);
int op_requantize_tensor(Request *r);
int op_add(Request *r);
int op_mul(Request *r);
int op_concat(Request *r);
int op_upsample2x(Request *r);
int op_table(Request *r);
int op_softmax(Request *r);
int op_group_norm(Request *r);
int op_layer_norm(Request *r);
int op_embedding(Request *r);

/* shared elementwise helpers (eltwise.c) */
void requantize_codes(const void *x, int in_bits, int32_t x_zp, const Requant *rq, void *out, int out_bits,
                      int64_t n);

#endif
