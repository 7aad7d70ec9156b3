#include "kernels.h"
int op_requantize_tensor(Request *r) { (void)r; return ST_UNKNOWN_OP; }
int op_add(Request *r) { (void)r; return ST_UNKNOWN_OP; }
int op_mul(Request *r) { (void)r; return ST_UNKNOWN_OP; }
int op_concat(Request *r) { (void)r; return ST_UNKNOWN_OP; }
int op_upsample2x(Request *r) { (void)r; return ST_UNKNOWN_OP; }
int op_embedding(Request *r) { (void)r; return ST_UNKNOWN_OP; }
