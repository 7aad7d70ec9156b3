/* rt.h: the freestanding runtime of tinysd's HVX kernels (no libc); definitions in rt.c.
 *
 * The kernels run as a Linux user program under qemu-hexagon (QEMU 7.2: HVX up to v66,
 * 128-byte vectors). There is no C library, so rt.c supplies what a program needs:
 *
 *   _start        aligns the stack to 256 bytes (vector spills need 128) and calls main;
 *                 main's return value is the exit status (exit_group).
 *   syscalls      trap0(#1) with the number in r6 and arguments in r0..r2: read 63,
 *                 write 64, exit_group 94.
 *   memcpy/memset the compiler may emit calls to them.
 *   an arena      bump allocation from one static buffer, reset per request; every block
 *                 is 128-byte aligned so whole vectors can be loaded and stored.
 *   stdin/stdout  buffered exact-length reads and writes.
 *   udiv64        unsigned 64-bit division by shift-and-subtract: Hexagon has no divide
 *                 instruction and the compiler's helper (__hexagon_udivdi3) lives in the
 *                 runtime library we do not link, so `/` and `%` never appear in this code.
 */
#ifndef TSD_HVX_RT_H
#define TSD_HVX_RT_H

#include <stddef.h>
#include <stdint.h>
#include <hexagon_types.h>
#include <hvx_hexagon_protos.h>

#define VBYTES 128 /* one HVX vector: 128 bytes = 64 halfwords = 32 words */
#define VWORDS 32

typedef HVX_Vector V;
typedef HVX_VectorPair W;
typedef HVX_VectorPred Q;

/* ---------------------------------------------------------------------------------------- */
/* defined in rt.c                                                                           */
/* ---------------------------------------------------------------------------------------- */
#ifndef TSD_ARENA_BYTES
#define TSD_ARENA_BYTES (192u << 20)
#endif
extern size_t tsd_arena_top; /* bytes in use; main.c resets it to 0 after each request */
extern int tsd_arena_full;   /* set when an allocation failed */

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
__attribute__((noreturn)) void tsd_exit(int status);
int tsd_read(void *dst, size_t n);        /* 1: n bytes read; 0: clean end of input; exits on a short read */
void tsd_write(const void *src, size_t n); /* all n bytes, or exit */
void *tsd_alloc(size_t n);                 /* 128-byte aligned, two spare vectors after n; NULL when full */
void *tsd_zalloc(size_t n);
uint64_t udiv64(uint64_t n, uint64_t d);   /* floor(n / d), d > 0: restoring shift-and-subtract */

/* number of bits of v (0 for 0): 64 - cl0(v), the scalar core's count-leading-zeros. */
static inline int bit_length64(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

/* ---------------------------------------------------------------------------------------- */
/* vector memory helpers                                                                     */
/* ---------------------------------------------------------------------------------------- */
/* Unaligned vector load / store (vmemu). */
static inline V vloadu(const void *p) { return *(const HVX_UVector *)p; }
static inline void vstoreu(void *p, V v) { *(HVX_UVector *)p = v; }

/* Store the first n bytes (0 <= n <= 128) of v at p (any alignment): a whole unaligned store
 * when n = 128, else through an aligned scratch vector and a byte copy (a device would use a
 * predicated store, `if (Q) vmem`, after rotating v into place with vlalign). */
static inline void vstore_n(void *p, V v, int n) {
  if (n >= VBYTES) {
    vstoreu(p, v);
    return;
  }
  unsigned char tmp[VBYTES] __attribute__((aligned(VBYTES)));
  *(V *)tmp = v;
  memcpy(p, tmp, (size_t)n);
}

/* Copy n bytes with whole-vector unaligned loads and stores (the tail byte by byte). */
static void vcopy(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n >= VBYTES) {
    vstoreu(d, vloadu(s));
    d += VBYTES;
    s += VBYTES;
    n -= VBYTES;
  }
  memcpy(d, s, n);
}

#endif
