/* qrt_imatrix.h — activation statistics for importance matrices (llama.cpp imatrix semantics).
 *
 * Part of qrt.h (inlined into the cffi cdef: plain declarations only). While a collector is attached to a model,
 * every weight matmul adds, per input column j, the sum over its input rows of x[j]^2, and the number of rows
 * (tokens) it saw. The entry of a weight is keyed by its GGUF tensor name.
 */

typedef struct qrt_imatrix qrt_imatrix;

qrt_imatrix *qrt_imatrix_new(void);
void qrt_imatrix_free(qrt_imatrix *im);
/* Forget every entry. */
void qrt_imatrix_reset(qrt_imatrix *im);

/* Accumulate n_rows activation rows of cols floats (contiguous) feeding the weight whose name is the name_len
 * bytes at name (not necessarily NUL-terminated). -1 when out of memory or when the width differs from the
 * entry's earlier width. */
int qrt_imatrix_add(qrt_imatrix *im, const char *name, size_t name_len, const float *x, int n_rows, int64_t cols);

/* The same for a stacked expert tensor of n_experts: the rows routed to `expert` (llama-imatrix keeps a row of sums
 * and a count per expert). -1 also when the entry exists with another expert count. */
int qrt_imatrix_add_expert(qrt_imatrix *im, const char *name, size_t name_len, int expert, int n_experts,
                           const float *x, int n_rows, int64_t cols);

int qrt_imatrix_n_entries(const qrt_imatrix *im);
const char *qrt_imatrix_entry_name(const qrt_imatrix *im, int i);
int64_t qrt_imatrix_entry_cols(const qrt_imatrix *im, int i);
/* Rows (tokens) summed into the entry. */
int64_t qrt_imatrix_entry_count(const qrt_imatrix *im, int i);
/* Experts of the entry: 0 for a dense weight. */
int qrt_imatrix_entry_experts(const qrt_imatrix *im, int i);
/* Rows summed for one expert of an expert entry; -1 if out of range. */
int64_t qrt_imatrix_entry_expert_count(const qrt_imatrix *im, int i, int expert);
/* The entry's sums of squares (accumulated in double) as max(1, experts) x cols floats. -1 if i is out of range. */
int qrt_imatrix_entry_sums(const qrt_imatrix *im, int i, float *out);

/* Attach a collector to a model's weight matmuls (NULL detaches). The model does not own it. */
void qrt_model_set_imatrix(qrt_model *m, qrt_imatrix *im);
