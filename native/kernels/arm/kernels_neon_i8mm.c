/* kernels_neon_i8mm.c — the NEON integer dot kernels with SMMLA (kernels_neon.inc), registered in the
 * "neon-i8mm" slot; dispatch.c only calls them when the CPU reports the feature (getauxval). The f32/f16
 * kernels stay in kernels_neon.c (this variant falls back to them per type). */
#if defined(__aarch64__)
#pragma GCC target("arch=armv8.2-a+dotprod+i8mm")
#include <math.h>
#include <string.h>

#include "kernels.h"

#define QRT_NEON_DOT4 3
#define QRT_SUFFIX neon_i8mm
#include "kernels_neon.inc"

void qrt_kernels_register_neon_i8mm(qrt_kernel_entry t[QRT_TYPE_COUNT]) {
    register_int_neon_i8mm(t, QRT_VARIANT_NEON_I8MM);
}
#else
typedef int qrt_kernels_neon_i8mm_empty; /* ISO C forbids an empty translation unit */
#endif
