#include "kernels.h"
int op_table(Request *r) { (void)r; return ST_UNKNOWN_OP; }
