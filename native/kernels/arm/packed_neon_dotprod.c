/* packed_neon_dotprod.c — the x16 kernels with SDOT (one instruction per 4 rows x 4 values), in the
 * "neon-dotprod" slot and in "neon-i8mm" too (every core with I8MM has SDOT: dispatch.c requires both): Raspberry
 * Pi 5 (Cortex-A76), Jetson Orin (Cortex-A78AE). */
#if defined(__aarch64__)
#pragma GCC target("arch=armv8.2-a+dotprod")
#define QRT_PK_SDOT 1
#define K(name) name##_neon_dotprod
#include "packed_neon.inc"

void qrt_packed_register_neon_dotprod(qrt_packed_entry table[QRT_TYPE_COUNT], int variant) {
    K(register_packed)(table, variant);
    K(register_neon_tiles)(table, variant);
}
#else
typedef int qrt_packed_neon_dotprod_empty; /* ISO C forbids an empty translation unit */
#endif
