/* quant_ref.h — the scalar reference quantizer and dequantizer of every block type (quant_ref.c), as entered
 * in the type table (quant_rows.c). Signatures are qrt_quantize_row_fn / qrt_dequantize_row_fn. */
#ifndef QRT_QUANT_REF_H
#define QRT_QUANT_REF_H

#include <stdint.h>

void qrt_quantize_row_f32(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_f32(const void *x, float *y, int64_t n);
void qrt_quantize_row_f16(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_f16(const void *x, float *y, int64_t n);
void qrt_quantize_row_bf16(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_bf16(const void *x, float *y, int64_t n);
void qrt_quantize_row_q4_0(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q4_0(const void *x, float *y, int64_t n);
void qrt_quantize_row_q4_1(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q4_1(const void *x, float *y, int64_t n);
void qrt_quantize_row_q5_0(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q5_0(const void *x, float *y, int64_t n);
void qrt_quantize_row_q5_1(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q5_1(const void *x, float *y, int64_t n);
void qrt_quantize_row_q8_0(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q8_0(const void *x, float *y, int64_t n);
void qrt_quantize_row_q8_1(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q8_1(const void *x, float *y, int64_t n);
void qrt_quantize_row_q2_K(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q2_K(const void *x, float *y, int64_t n);
void qrt_quantize_row_q3_K(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q3_K(const void *x, float *y, int64_t n);
void qrt_quantize_row_q4_K(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q4_K(const void *x, float *y, int64_t n);
void qrt_quantize_row_q5_K(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q5_K(const void *x, float *y, int64_t n);
void qrt_quantize_row_q6_K(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q6_K(const void *x, float *y, int64_t n);
void qrt_quantize_row_q8_K(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_q8_K(const void *x, float *y, int64_t n);
void qrt_quantize_row_iq4_nl(const float *x, void *y, int64_t n, const float *importance);
void qrt_dequantize_row_iq4_nl(const void *x, float *y, int64_t n);

#endif
