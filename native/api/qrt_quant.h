/* qrt_quant.h — public API of the quantization engine: GGUF block types, quantize and dequantize rows.
 *
 * Part of qrt.h (inlined into the cffi cdef: plain declarations only). Types are GGUF type ids (0 f32, 1 f16,
 * 2 q4_0, 3 q4_1, 6 q5_0, 7 q5_1, 8 q8_0, 10 q2_K, 11 q3_K, 12 q4_K, 13 q5_K, 14 q6_K, 15 q8_K, 20 iq4_nl,
 * 30 bf16); f32/f16/bf16 count as types (plain conversion). Functions return 0 on success, a negative code on
 * error with a message in err (when err is not NULL).
 */

typedef struct {
    const char *name;  /* "Q4_K", "F16", ...: as gguf-py spells it */
    int block_size;    /* values per block */
    int block_bytes;   /* bytes per block */
    int is_quantized;  /* 0 for f32/f16/bf16 */
    int takes_importance; /* 1 if the quantizer minimises an importance-weighted error */
} qrt_type_info_t;

/* 0 and *out filled if type is supported, -1 otherwise. */
int qrt_type_info(int type, qrt_type_info_t *out);

/* Bytes of one row of n values; 0 if the type is unknown or n is not a multiple of its block size. */
size_t qrt_row_bytes(int type, int64_t n);

/* Quantize nrows rows of ncols floats (row-major, contiguous) into dst (nrows * qrt_row_bytes(type, ncols)
 * bytes). importance: ncols non-negative weights (E[x^2] of the activations feeding each column) or NULL.
 * nthreads <= 0: all CPUs. The result does not depend on nthreads. Fails (dst then undefined) if a row holds
 * NaN/Inf (the message names the first such row and column) or values so large that the type's fp16 scales
 * overflow (the message names the row). Groups of columns whose importance is all zero are weighted uniformly. */
int qrt_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t ncols, const float *importance,
                      int nthreads, char *err, size_t errlen);

/* Dequantize n values (a multiple of the block size) from one row of blocks. */
int qrt_dequantize_row(int type, const void *src, float *dst, int64_t n);

/* Dequantize nrows rows of ncols values, threaded over rows. */
int qrt_dequantize_rows(int type, const void *src, float *dst, int64_t nrows, int64_t ncols, int nthreads);
