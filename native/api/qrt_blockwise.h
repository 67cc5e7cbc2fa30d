/* qrt_blockwise.h — block-wise integer quantization for ONNX DequantizeLinear (int4/uint4/int8/uint8).
 *
 * Part of qrt.h (inlined into the cffi cdef: plain declarations only). Each row of ncols values is cut into
 * blocks of block_size consecutive values (the last block may be shorter); each block gets one float32 scale
 * and, when asymmetric, one integer zero point, so that x ~ scale * (q - zero_point). Symmetric blocks use the
 * signed range [-2^(bits-1), 2^(bits-1) - 1] with zero point 0 (the scale may be negative, which lets the extra
 * negative level serve the block's largest value of either sign); asymmetric blocks use [0, 2^bits - 1] with an
 * integer zero point in the same range. Scales and zero points minimise sum_i w[i] * (x[i] - scale * (q[i] -
 * zp))^2 with w = importance[i] * sqrt(sigma2 + x[i]^2) (sigma2: the row's mean square) when importance is
 * given, w = 1 otherwise.
 */

/* src: nrows x ncols floats. Outputs, row-major: q (nrows x ncols bytes: int8 values for symmetric, uint8 for
 * asymmetric), scales and zero_points (nrows x ceil(ncols / block_size); zero_points may be NULL when
 * symmetric). bits: 4 or 8; block_size: a multiple of 8 from 8 to 256. importance: ncols non-negative weights
 * or NULL. nthreads <= 0: all CPUs; the result does not depend on nthreads. Returns 0, or a negative code with
 * a message in err (a NaN/Inf names its row and column). */
int qrt_quantize_blockwise(const float *src, int64_t nrows, int64_t ncols, int block_size, int bits, int symmetric,
                           const float *importance, void *q, float *scales, uint8_t *zero_points, int nthreads,
                           char *err, size_t errlen);

/* The importance-weighted squared error of one quantized row (for tests and reports). */
double qrt_blockwise_row_error(const float *x, int64_t ncols, int block_size, int symmetric, const void *q,
                               const float *scales, const uint8_t *zero_points, const float *importance);
