/* rt.c: the freestanding runtime: start-up, system calls, memory functions, the arena, stdin/stdout,
 * 64-bit division. See rt.h. */
#include "rt.h"

/* ---------------------------------------------------------------------------------------- */
/* start-up and system calls                                                                 */
/* ---------------------------------------------------------------------------------------- */
__asm__(".globl _start\n"
        "_start:\n"
        "  r29 = and(r29, #-256)\n"
        "  call main\n"
        "  r6 = #94\n"
        "  trap0(#1)\n");

static long tsd_sys3(long n, long a, long b, long c) {
  register long r0 __asm__("r0") = a;
  register long r1 __asm__("r1") = b;
  register long r2 __asm__("r2") = c;
  register long r6 __asm__("r6") = n;
  __asm__ volatile("trap0(#1)" : "+r"(r0) : "r"(r1), "r"(r2), "r"(r6) : "memory");
  return r0;
}

__attribute__((noreturn)) void tsd_exit(int status) {
  tsd_sys3(94, status, 0, 0);
  for (;;) {
  }
}

void *memcpy(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}

/* ---------------------------------------------------------------------------------------- */
/* stdin / stdout                                                                            */
/* ---------------------------------------------------------------------------------------- */
static unsigned char tsd_inbuf[1 << 16];
static size_t tsd_in_pos, tsd_in_len;

/* Read exactly n bytes from stdin; returns 0 at a clean end of input before any byte, 1 when
 * all n bytes were read; exits with status 3 on a truncated stream. */
int tsd_read(void *dst, size_t n) {
  unsigned char *d = dst;
  size_t got = 0;
  while (got < n) {
    if (tsd_in_pos == tsd_in_len) {
      long r = tsd_sys3(63, 0, (long)tsd_inbuf, sizeof tsd_inbuf);
      if (r <= 0) {
        if (got == 0) return 0;
        tsd_exit(3);
      }
      tsd_in_pos = 0;
      tsd_in_len = (size_t)r;
    }
    size_t k = tsd_in_len - tsd_in_pos;
    if (k > n - got) k = n - got;
    memcpy(d + got, tsd_inbuf + tsd_in_pos, k);
    tsd_in_pos += k;
    got += k;
  }
  return 1;
}

void tsd_write(const void *src, size_t n) {
  const unsigned char *s = src;
  while (n) {
    long r = tsd_sys3(64, 1, (long)s, (long)n);
    if (r <= 0) tsd_exit(4);
    s += r;
    n -= (size_t)r;
  }
}

/* ---------------------------------------------------------------------------------------- */
/* arena                                                                                     */
/* ---------------------------------------------------------------------------------------- */
static unsigned char tsd_arena[TSD_ARENA_BYTES] __attribute__((aligned(VBYTES)));
size_t tsd_arena_top;
int tsd_arena_full;

/* n bytes, 128-byte aligned, plus two spare vectors so that whole-vector loads (of one or two
 * vectors) that start inside a tensor stay inside the block. NULL (and tsd_arena_full set) when
 * the arena is exhausted. */
void *tsd_alloc(size_t n) {
  size_t size = (n + 3 * VBYTES - 1) & ~(size_t)(VBYTES - 1); /* n + at least 2 spare vectors */
  if (size > TSD_ARENA_BYTES - tsd_arena_top) {
    tsd_arena_full = 1;
    return NULL;
  }
  void *p = tsd_arena + tsd_arena_top;
  tsd_arena_top += size;
  return p;
}

void *tsd_zalloc(size_t n) {
  void *p = tsd_alloc(n);
  if (p) memset(p, 0, n);
  return p;
}

/* ---------------------------------------------------------------------------------------- */
/* scalar integer helpers (the scalar core: no divide instruction)                          */
/* ---------------------------------------------------------------------------------------- */
/* floor(n / d) for d > 0, by restoring shift-and-subtract division (64 steps). */
uint64_t udiv64(uint64_t n, uint64_t d) {
  uint64_t q = 0, r = 0;
  for (int i = 63; i >= 0; i--) {
    r = (r << 1) | ((n >> i) & 1);
    if (r >= d) {
      r -= d;
      q |= (uint64_t)1 << i;
    }
  }
  return q;
}


