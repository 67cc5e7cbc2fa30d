/* qrt_kernel_probes.h — test probes of the prompt tile and attention kernels: one call of the kernel a forward pass
 * would run, on caller data, so tests compare variants bit for bit.
 *
 * Part of qrt.h (inlined into the cffi cdef: plain declarations only).
 */

/* One prompt tile of the kernel a matmul of this GGUF type dispatches now (qrt_kernels_force applies): nr weight
 * rows (w_stride bytes apart, n values each) times 4 activation rows x (4 x n floats, converted as a matmul
 * converts them). Writes out[t * nr + r] and returns nr; 0 when the type has no tile under this variant; -1 on
 * bad arguments (n not a whole number of blocks, out_cap below 4 * nr). */
int qrt_kernel_tile(int type, const void *w_rows, size_t w_stride, const float *x, int64_t n, float *out,
                    int out_cap);

/* One attention head through a variant's kernels ("scalar", "avx512" or "neon"): att[t] = scale * q . k_t for
 * t < n_pos (k rows stride elements apart, f32, or f16 when f16 = 1), then out = sum_t w_t v_t with weights w (n_pos floats).
 * vecdot selects ggml's single-token order (1) or the prompt order (0), as in kernels.h. -1 if the variant does not
 * run here or hd is not a positive multiple of 16. */
int qrt_kernel_attn_scores(const char *variant, float *att, const float *q, const void *k, int n_pos, int stride,
                           int hd, int f16, int vecdot, float scale);
int qrt_kernel_attn_values(const char *variant, float *out, const float *w, const void *v, int n_pos, int stride,
                           int hd, int f16, int vecdot);
/* The same for n_q (1..4) heads that share the keys and values: att / w rows att_stride floats apart, q and out
 * rows hd apart; a variant without group kernels ("scalar", "neon") runs the heads one by one, as a forward pass
 * does. With f16 = 1 the weights in w are rounded to f16 in place. -1 on bad arguments, as above. */
int qrt_kernel_attn_scores_group(const char *variant, float *att, size_t att_stride, const float *q, int n_q,
                                 const void *k, int n_pos, int stride, int hd, int f16, int vecdot, float scale);
int qrt_kernel_attn_values_group(const char *variant, float *out, float *w, size_t att_stride, int n_q,
                                 const void *v, int n_pos, int stride, int hd, int f16, int vecdot);
/* gate = gelu(gate) * up (gelu's tanh form through ggml's f16 table) through a variant ("scalar" or "avx512"). */
int qrt_kernel_geglu(const char *variant, float *gate, const float *up, int n);
/* In-place softmax of n attention scores through a variant ("scalar", "avx512" or "neon"); -1 if it does not run
 * here. */
int qrt_kernel_attn_softmax(const char *variant, float *x, int n);
/* y = e^x over n floats (a multiple of 16) through a variant's 16-lane exp ("scalar", "avx512" or "neon": every
 * variant returns the scalar one's bits); -1 if the variant does not run here or n is not a multiple of 16. */
int qrt_kernel_expf16(const char *variant, float *y, const float *x, int n);
/* n floats converted to an activation type (GGUF type id: q8_0, q8_1 or q8_K) by a variant's own conversion
 * ("scalar": the reference; else byte-identical to it); -1 if the variant has none here or n is not a whole number
 * of blocks. y holds the converted row's bytes. */
int qrt_kernel_act_convert(const char *variant, int act_type, const float *x, void *y, int64_t n);
