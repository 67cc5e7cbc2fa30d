#include "kernels.h"
void qrt_kernels_register_avx512(qrt_kernel_entry table[QRT_TYPE_COUNT]) { (void)table; }
