/* imatrix_collect.c — per-weight sums of squared input activations, the statistics llama-imatrix collects
 * (tools/imatrix/imatrix.cpp: for a dense matmul, acc[j] += x[j]^2 over every input row, count += rows; for a
 * stacked expert tensor, one such row of sums and one count per expert, over the rows routed to it).
 *
 * Entries are found by name; the model passes the same name pointer for a weight every time, so a pointer
 * comparison finds it before any string comparison. Sums are kept in double: a calibration run adds a few
 * hundred thousand positive terms per column.
 */
#include <stdlib.h>
#include <string.h>

#include "qrt.h"

typedef struct {
    char *name;
    const char *last_ptr; /* the caller's name pointer seen last */
    int64_t cols;         /* values per row of sums */
    int64_t count;        /* rows summed (all experts together) */
    double *sums;         /* [max(1, n_experts)][cols] */
    int n_experts;        /* 0: a dense weight */
    int64_t *expert_counts; /* [n_experts] rows summed per expert */
} imatrix_entry;

struct qrt_imatrix {
    imatrix_entry *entries;
    int n, cap;
};

qrt_imatrix *qrt_imatrix_new(void) { return calloc(1, sizeof(qrt_imatrix)); }

void qrt_imatrix_reset(qrt_imatrix *im) {
    if (!im) return;
    for (int i = 0; i < im->n; i++) {
        free(im->entries[i].name);
        free(im->entries[i].sums);
        free(im->entries[i].expert_counts);
    }
    im->n = 0;
}

void qrt_imatrix_free(qrt_imatrix *im) {
    if (!im) return;
    qrt_imatrix_reset(im);
    free(im->entries);
    free(im);
}

static imatrix_entry *find_or_add(qrt_imatrix *im, const char *name, size_t name_len, int64_t cols, int n_experts) {
    for (int i = 0; i < im->n; i++)
        if (im->entries[i].last_ptr == name) return &im->entries[i];
    for (int i = 0; i < im->n; i++)
        if (strlen(im->entries[i].name) == name_len && memcmp(im->entries[i].name, name, name_len) == 0) {
            im->entries[i].last_ptr = name;
            return &im->entries[i];
        }
    if (im->n == im->cap) {
        const int cap = im->cap ? 2 * im->cap : 64;
        imatrix_entry *grown = realloc(im->entries, (size_t)cap * sizeof *grown);
        if (!grown) return NULL;
        im->entries = grown;
        im->cap = cap;
    }
    const size_t rows = n_experts > 0 ? (size_t)n_experts : 1;
    imatrix_entry e = {strndup(name, name_len), name, cols, 0, calloc(rows * (size_t)cols, sizeof(double)), n_experts,
                       n_experts > 0 ? calloc(rows, sizeof(int64_t)) : NULL};
    if (!e.name || !e.sums || (n_experts > 0 && !e.expert_counts)) {
        free(e.name);
        free(e.sums);
        free(e.expert_counts);
        return NULL;
    }
    im->entries[im->n] = e;
    return &im->entries[im->n++];
}

static void add_squares(double *restrict sums, const float *x, int n_rows, int64_t cols) {
    for (int r = 0; r < n_rows; r++) {
        const float *row = x + (size_t)r * (size_t)cols;
        for (int64_t j = 0; j < cols; j++) sums[j] += (double)row[j] * (double)row[j];
    }
}

int qrt_imatrix_add(qrt_imatrix *im, const char *name, size_t name_len, const float *x, int n_rows, int64_t cols) {
    if (!im || !name || !x || n_rows <= 0 || cols <= 0) return -1;
    imatrix_entry *e = find_or_add(im, name, name_len, cols, 0);
    if (!e || e->cols != cols || e->n_experts != 0) return -1;
    add_squares(e->sums, x, n_rows, cols);
    e->count += n_rows;
    return 0;
}

int qrt_imatrix_add_expert(qrt_imatrix *im, const char *name, size_t name_len, int expert, int n_experts,
                           const float *x, int n_rows, int64_t cols) {
    if (!im || !name || !x || n_rows <= 0 || cols <= 0 || n_experts <= 0 || expert < 0 || expert >= n_experts)
        return -1;
    imatrix_entry *e = find_or_add(im, name, name_len, cols, n_experts);
    if (!e || e->cols != cols || e->n_experts != n_experts) return -1;
    add_squares(e->sums + (size_t)expert * (size_t)cols, x, n_rows, cols);
    e->expert_counts[expert] += n_rows;
    e->count += n_rows;
    return 0;
}

int qrt_imatrix_n_entries(const qrt_imatrix *im) { return im ? im->n : 0; }

const char *qrt_imatrix_entry_name(const qrt_imatrix *im, int i) {
    return im && i >= 0 && i < im->n ? im->entries[i].name : NULL;
}

int64_t qrt_imatrix_entry_cols(const qrt_imatrix *im, int i) {
    return im && i >= 0 && i < im->n ? im->entries[i].cols : -1;
}

int64_t qrt_imatrix_entry_count(const qrt_imatrix *im, int i) {
    return im && i >= 0 && i < im->n ? im->entries[i].count : -1;
}

int qrt_imatrix_entry_experts(const qrt_imatrix *im, int i) {
    return im && i >= 0 && i < im->n ? im->entries[i].n_experts : -1;
}

int64_t qrt_imatrix_entry_expert_count(const qrt_imatrix *im, int i, int expert) {
    if (!im || i < 0 || i >= im->n || expert < 0 || expert >= im->entries[i].n_experts) return -1;
    return im->entries[i].expert_counts[expert];
}

int qrt_imatrix_entry_sums(const qrt_imatrix *im, int i, float *out) {
    if (!im || i < 0 || i >= im->n || !out) return -1;
    const imatrix_entry *e = &im->entries[i];
    const int64_t n = (e->n_experts > 0 ? e->n_experts : 1) * e->cols;
    for (int64_t j = 0; j < n; j++) out[j] = (float)e->sums[j];
    return 0;
}
