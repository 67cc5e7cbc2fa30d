/* qrt_kernel_tiles.h — test probe of the prompt tile kernels (kernels_float_tiles.c).
 *
 * Part of qrt.h (inlined into the cffi cdef: plain declarations only).
 */

/* One prompt tile of the kernel a matmul of this GGUF type dispatches now (qrt_kernels_force applies): nr weight
 * rows (w_stride bytes apart, n values each) times 4 activation rows x (4 x n floats, converted as a matmul
 * converts them). Writes out[t * nr + r] and returns nr; 0 when the type has no tile under this variant; -1 on
 * bad arguments (n not a whole number of blocks, out_cap below 4 * nr). */
int qrt_kernel_tile(int type, const void *w_rows, size_t w_stride, const float *x, int64_t n, float *out,
                    int out_cap);
