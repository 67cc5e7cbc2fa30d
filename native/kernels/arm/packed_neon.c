/* packed_neon.c — the x16 kernels on baseline NEON (4-byte dots by widening multiplies), in the "neon" slot:
 * Raspberry Pi 4 (Cortex-A72) and other cores without SDOT, and the 32-bit build on NEON + VFPv4 cores (this file
 * compiled for them, as kernels_neon.c). */
#if defined(__aarch64__) || defined(__arm__)
#if defined(__arm__)
#pragma GCC target("arch=armv7-a,fpu=neon-vfpv4")
#endif
#define QRT_PK_SDOT 0
#define K(name) name##_neon
#include "packed_neon.inc"

void qrt_packed_register_neon(qrt_packed_entry table[QRT_TYPE_COUNT]) {
    K(register_packed)(table, QRT_VARIANT_NEON);
    K(register_neon_tiles)(table, QRT_VARIANT_NEON);
}
#else
typedef int qrt_packed_neon_empty; /* ISO C forbids an empty translation unit */
#endif
