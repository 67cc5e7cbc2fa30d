/* qrt_eval.h — public API of the evaluation numerics: per-position statistics of two models' logits.
 *
 * Part of qrt.h (inlined into the cffi cdef: plain declarations only).
 */

/* For each row i < n_rows of ref and quant (n_vocab float32 logits per row, rows n_vocab floats apart):
 *   kld[i]          KL(softmax(ref_i) || softmax(quant_i)) in nats, >= 0 (within 1e-6 relative of float64 math);
 *   argmax_ref[i]   first index of the largest ref logit, argmax_quant[i] the same for quant;
 *   nll_ref[i]      -log softmax(ref_i)[next_tokens[i]], nll_quant[i] the same for quant; NaN where
 *                   next_tokens[i] < 0 (no next token known) or next_tokens is NULL.
 * Any output pointer may be NULL. n_threads <= 0: all online CPUs. Returns 0, or -1 when n_vocab <= 0, n_rows < 0,
 * a next token is >= n_vocab, or a thread cannot start. */
int qrt_logit_stats(const float *ref, const float *quant, int64_t n_rows, int64_t n_vocab,
                    const int32_t *next_tokens, int n_threads, double *kld, int32_t *argmax_ref,
                    int32_t *argmax_quant, double *nll_ref, double *nll_quant);
