/* fp_flags.h — did this thread's floating-point arithmetic produce a NaN?
 *
 * The quantizers assume finite, moderate input. Finite extremes still break them: a bf16 weight of 1e20 squares
 * to inf, an importance near 3e38 times anything overflows, and inf - inf or 0 * inf then gives NaN scales that
 * either index a table with (int)NaN or quietly write blocks of garbage. Rather than audit every sum of every
 * search, each row is quantized between a clear and a test of the CPU's sticky "invalid operation" flag (per
 * thread on x86 and ARM): a NaN made from non-NaN operands, or a NaN compared or converted to an integer,
 * anywhere in the row's arithmetic marks the row, and the caller names it instead of writing it.
 * Overflow alone is not tested: a product of two large sums overflowing to inf in a candidate comparison only
 * loses that comparison (rows of values near 30000 do this) and the block written is still sound. Ordinary rows
 * never raise the flag; the quantizer tests run every type, with and without importance, on real weights.
 */
#ifndef QRT_FP_FLAGS_H
#define QRT_FP_FLAGS_H
#include <fenv.h>

static inline void qrt_fp_flags_clear(void) { feclearexcept(FE_INVALID); }
static inline int qrt_fp_flags_raised(void) { return fetestexcept(FE_INVALID) != 0; }

#endif
