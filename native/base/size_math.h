/* size_math.h — byte counts computed from file values, saturating instead of wrapping.
 *
 * A GGUF's shape numbers multiply into allocation sizes. On a 32-bit board (armv7, 32-bit Raspberry Pi OS)
 * size_t wraps at 4 GiB, and a wrapped size allocates a small buffer that the forward pass then overruns. These
 * helpers saturate at SIZE_MAX instead, which no allocator grants (malloc, calloc, aligned_alloc and mmap all
 * fail), so an impossible size becomes an out-of-memory error at open rather than a write past a buffer.
 */
#ifndef QRT_SIZE_MATH_H
#define QRT_SIZE_MATH_H
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static inline size_t qrt_size_mul(size_t a, size_t b) {
    size_t r;
    return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}

static inline size_t qrt_size_add(size_t a, size_t b) {
    size_t r;
    return __builtin_add_overflow(a, b, &r) ? SIZE_MAX : r;
}

static inline size_t qrt_size_mul3(size_t a, size_t b, size_t c) { return qrt_size_mul(qrt_size_mul(a, b), c); }

/* A 64-bit count as a size: SIZE_MAX where it does not fit (a 32-bit size_t). */
static inline size_t qrt_size_from_u64(uint64_t n) { return n > (uint64_t)SIZE_MAX ? SIZE_MAX : (size_t)n; }

/* Bytes of an array of count elements of elem bytes each. */
static inline size_t qrt_array_bytes(uint64_t count, size_t elem) { return qrt_size_mul(qrt_size_from_u64(count), elem); }

/* Whether an allocator may be asked for n bytes: no C object is larger than PTRDIFF_MAX, and asking for a
 * saturated size is refused here rather than left to the allocator (and to compilers' size warnings). */
static inline int qrt_size_ok(size_t n) { return n <= (size_t)PTRDIFF_MAX; }

/* malloc and realloc that refuse a saturated size themselves. */
static inline void *qrt_malloc(size_t n) { return qrt_size_ok(n) ? malloc(n) : NULL; }
static inline void *qrt_realloc(void *p, size_t n) { return qrt_size_ok(n) ? realloc(p, n) : NULL; }

/* Rounded up to a multiple of 64 (the alignment of every buffer the kernels stream). */
static inline size_t qrt_size_round64(size_t n) {
    const size_t up = qrt_size_add(n, 63);
    return up == SIZE_MAX ? SIZE_MAX : up / 64 * 64;
}

#endif
