/* kernels_neon_dotprod.c — the NEON integer dot kernels with SDOT (kernels_neon.inc), registered in the
 * "neon-dotprod" slot; dispatch.c only calls them when the CPU reports the feature (getauxval). The f32/f16
 * kernels stay in kernels_neon.c (this variant falls back to them per type). */
#if defined(__aarch64__)
#pragma GCC target("arch=armv8.2-a+dotprod")
#include <math.h>
#include <string.h>

#include "kernels.h"

#define QRT_NEON_DOT4 2
#define QRT_SUFFIX neon_dotprod
#include "kernels_neon.inc"

void qrt_kernels_register_neon_dotprod(qrt_kernel_entry t[QRT_TYPE_COUNT]) {
    register_int_neon_dotprod(t, QRT_VARIANT_NEON_DOTPROD);
}
#else
typedef int qrt_kernels_neon_dotprod_empty; /* ISO C forbids an empty translation unit */
#endif
