/* packed_neon.c — the x16 kernels on baseline ARMv8 NEON (4-byte dots by widening multiplies), in the "neon"
 * slot: Raspberry Pi 4 (Cortex-A72) and other cores without SDOT. */
#if defined(__aarch64__)
#define QRT_PK_SDOT 0
#define K(name) name##_neon
#include "packed_neon.inc"

void qrt_packed_register_neon(qrt_packed_entry table[QRT_TYPE_COUNT]) { K(register_packed)(table, QRT_VARIANT_NEON); }
#else
typedef int qrt_packed_neon_empty; /* ISO C forbids an empty translation unit */
#endif
