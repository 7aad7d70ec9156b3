/* main.c: reads requests from stdin, runs the kernel each names, writes its response.
 * The request format is in kernels.h. One request at a time: the arena is reset after each. */
#include "kernels.h"

#define MAGIC_REQUEST 0x48445354u  /* "TSDH" */
#define MAGIC_RESPONSE 0x52445354u /* "TSDR" */

static int dispatch(Request *r) {
  switch (r->op) {
    case OP_SRDHM:
    case OP_RSR32:
    case OP_RSR64:
    case OP_NARROW64:
    case OP_REQUANTIZE:
    case OP_SAT32:
    case OP_SHL_SAT:
    case OP_ADD_SAT: return prim_request(r);
    case OP_LINEAR: return op_linear(r);
    case OP_CONV2D: return op_conv2d(r);
    case OP_MATMUL: return op_matmul(r);
    case OP_REQUANTIZE_TENSOR: return op_requantize_tensor(r);
    case OP_ADD: return op_add(r);
    case OP_MUL: return op_mul(r);
    case OP_CONCAT: return op_concat(r);
    case OP_UPSAMPLE2X: return op_upsample2x(r);
    case OP_TABLE: return op_table(r);
    case OP_SOFTMAX: return op_softmax(r);
    case OP_GROUP_NORM: return op_group_norm(r);
    case OP_LAYER_NORM: return op_layer_norm(r);
    case OP_EMBEDDING: return op_embedding(r);
    default: return ST_UNKNOWN_OP;
  }
}

static void respond(const Request *r, int status) {
  uint32_t n = status == ST_OK ? r->n_out : 0;
  uint32_t head[4] = {MAGIC_RESPONSE, (uint32_t)status, n, 0};
  tsd_write(head, sizeof head);
  for (uint32_t i = 0; i < n; i++) tsd_write(&r->out_size[i], 8);
  static const unsigned char pad[8];
  for (uint32_t i = 0; i < n; i++) {
    tsd_write(r->out[i], (size_t)r->out_size[i]);
    tsd_write(pad, (size_t)((8 - (r->out_size[i] & 7)) & 7));
  }
}

static Request req;

int main(void) {
  uint32_t head[4];
  while (tsd_read(head, sizeof head)) {
    if (head[0] != MAGIC_REQUEST || head[2] > MAX_INTS || head[3] > MAX_BLOBS) return 5;
    tsd_arena_top = 0;
    tsd_arena_full = 0;
    req.op = head[1];
    req.n_ints = head[2];
    req.n_blobs = head[3];
    req.n_out = 0;
    if (req.n_ints && !tsd_read(req.ints, 8 * (size_t)req.n_ints)) return 3;
    if (req.n_blobs && !tsd_read(req.size, 8 * (size_t)req.n_blobs)) return 3;
    int status = ST_OK;
    for (uint32_t i = 0; i < req.n_blobs; i++) {
      uint64_t padded = (req.size[i] + 7) & ~(uint64_t)7;
      req.blob[i] = tsd_alloc((size_t)padded);
      if (!req.blob[i]) return 6; /* the request cannot even be held: stop */
      if (padded && !tsd_read(req.blob[i], (size_t)padded)) return 3;
    }
    status = dispatch(&req);
    if (status == ST_OK && tsd_arena_full) status = ST_NO_MEMORY;
    respond(&req, status);
  }
  return 0;
}
