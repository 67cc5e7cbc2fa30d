/* imatrix_collect.c — per-weight sums of squared input activations, the statistics llama-imatrix collects
 * (tools/imatrix/imatrix.cpp: for a dense matmul, acc[j] += x[j]^2 over every input row, count += rows).
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
    int64_t cols;
    int64_t count;
    double *sums;
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
    }
    im->n = 0;
}

void qrt_imatrix_free(qrt_imatrix *im) {
    if (!im) return;
    qrt_imatrix_reset(im);
    free(im->entries);
    free(im);
}

static imatrix_entry *find_or_add(qrt_imatrix *im, const char *name, size_t name_len, int64_t cols) {
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
    imatrix_entry e = {strndup(name, name_len), name, cols, 0, calloc((size_t)cols, sizeof(double))};
    if (!e.name || !e.sums) {
        free(e.name);
        free(e.sums);
        return NULL;
    }
    im->entries[im->n] = e;
    return &im->entries[im->n++];
}

int qrt_imatrix_add(qrt_imatrix *im, const char *name, size_t name_len, const float *x, int n_rows, int64_t cols) {
    if (!im || !name || !x || n_rows <= 0 || cols <= 0) return -1;
    imatrix_entry *e = find_or_add(im, name, name_len, cols);
    if (!e || e->cols != cols) return -1;
    double *restrict sums = e->sums;
    for (int r = 0; r < n_rows; r++) {
        const float *row = x + (size_t)r * (size_t)cols;
        for (int64_t j = 0; j < cols; j++) sums[j] += (double)row[j] * (double)row[j];
    }
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

int qrt_imatrix_entry_sums(const qrt_imatrix *im, int i, float *out) {
    if (!im || i < 0 || i >= im->n || !out) return -1;
    const imatrix_entry *e = &im->entries[i];
    for (int64_t j = 0; j < e->cols; j++) out[j] = (float)e->sums[j];
    return 0;
}
