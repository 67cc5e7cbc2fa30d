/* gguf.c — the bounds-checked GGUF loader.
 *
 * Layout (GGUF v2/v3, little endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
 * (key string, u32 type, value), then n_tensors (name string, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset),
 * padding to general.alignment, then the data section. Every read goes through a cursor that refuses to move
 * past the end; every count is bounded by the bytes left before anything is allocated.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "size_math.h"

/* ---- tensor type table (file-format facts: elements and bytes per block) ---- */

typedef struct {
    const char *name;
    uint32_t block_size;
    uint32_t block_bytes;
} gguf_type_info;

static const gguf_type_info TYPE_INFO[] = {
    [0] = {"f32", 1, 4},        [1] = {"f16", 1, 2},       [2] = {"q4_0", 32, 18},    [3] = {"q4_1", 32, 20},
    [6] = {"q5_0", 32, 22},     [7] = {"q5_1", 32, 24},    [8] = {"q8_0", 32, 34},    [9] = {"q8_1", 32, 36},
    [10] = {"q2_K", 256, 84},   [11] = {"q3_K", 256, 110}, [12] = {"q4_K", 256, 144}, [13] = {"q5_K", 256, 176},
    [14] = {"q6_K", 256, 210},  [15] = {"q8_K", 256, 292}, [16] = {"iq2_xxs", 256, 66}, [17] = {"iq2_xs", 256, 74},
    [18] = {"iq3_xxs", 256, 98}, [19] = {"iq1_s", 256, 50}, [20] = {"iq4_nl", 32, 18}, [21] = {"iq3_s", 256, 110},
    [22] = {"iq2_s", 256, 82},  [23] = {"iq4_xs", 256, 136}, [24] = {"i8", 1, 1},     [25] = {"i16", 1, 2},
    [26] = {"i32", 1, 4},       [27] = {"i64", 1, 8},      [28] = {"f64", 1, 8},      [29] = {"iq1_m", 256, 56},
    [30] = {"bf16", 1, 2},      [34] = {"tq1_0", 256, 54}, [35] = {"tq2_0", 256, 66}, [39] = {"mxfp4", 32, 17},
};
#define N_TYPE_INFO (sizeof TYPE_INFO / sizeof TYPE_INFO[0])

const char *gguf_type_name(uint32_t type) {
    return type < N_TYPE_INFO && TYPE_INFO[type].name ? TYPE_INFO[type].name : NULL;
}
uint32_t gguf_type_block_size(uint32_t type) { return type < N_TYPE_INFO ? TYPE_INFO[type].block_size : 0; }
uint32_t gguf_type_block_bytes(uint32_t type) { return type < N_TYPE_INFO ? TYPE_INFO[type].block_bytes : 0; }

static const char *const VALUE_TYPE_NAME[GGUF_VT_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64",
    "float64",
};
static const uint32_t VALUE_TYPE_SIZE[GGUF_VT_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* ---- reading cursor ---- */

typedef struct {
    const uint8_t *base;
    size_t size;
    size_t pos;
    const char *name; /* file name for messages */
    char *err;
    size_t err_size;
} cursor;

static int fail(cursor *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(cursor *c, const char *fmt, ...) {
    if (c->err && c->err_size) {
        int n = snprintf(c->err, c->err_size, "%s: ", c->name);
        if (n < 0) n = 0;
        if ((size_t)n < c->err_size) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + n, c->err_size - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

static size_t remaining(const cursor *c) { return c->size - c->pos; }

static int read_bytes(cursor *c, void *out, size_t n, const char *what) {
    if (remaining(c) < n)
        return fail(c, "file truncated while reading %s at offset %zu (need %zu bytes, %zu left)", what, c->pos, n,
                    remaining(c));
    memcpy(out, c->base + c->pos, n);
    c->pos += n;
    return 0;
}

static int read_u32(cursor *c, uint32_t *v, const char *what) { return read_bytes(c, v, 4, what); }
static int read_u64(cursor *c, uint64_t *v, const char *what) { return read_bytes(c, v, 8, what); }

static int read_str(cursor *c, gguf_str *s, const char *what) {
    uint64_t len = 0;
    size_t at = c->pos;
    if (read_u64(c, &len, what)) return -1;
    if (len > remaining(c))
        return fail(c, "%s at offset %zu has length %llu, more than the %zu bytes left in the file", what, at,
                    (unsigned long long)len, remaining(c));
    s->ptr = (const char *)(c->base + c->pos);
    s->len = len;
    c->pos += (size_t)len;
    return 0;
}

/* Key text for messages: printable, bounded. */
static void describe(gguf_str s, char *out, size_t out_size) {
    size_t n = 0;
    for (uint64_t i = 0; i < s.len && n + 4 < out_size; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        out[n++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (s.len > 0 && n + 4 >= out_size && n >= 3) {
        out[n - 3] = out[n - 2] = out[n - 1] = '.';
    }
    out[n] = 0;
}

int gguf_str_eq(gguf_str a, const char *s) {
    size_t n = strlen(s);
    return a.len == n && memcmp(a.ptr, s, n) == 0;
}

/* ---- parsing ---- */

static int read_scalar(cursor *c, uint32_t type, gguf_kv *kv, const char *what) {
    uint8_t raw[8] = {0};
    if (read_bytes(c, raw, VALUE_TYPE_SIZE[type], what)) return -1;
    switch (type) {
    case GGUF_VT_UINT8: kv->num.u64 = raw[0]; break;
    case GGUF_VT_BOOL: kv->num.u64 = raw[0] != 0; break;
    case GGUF_VT_INT8: kv->num.i64 = (int8_t)raw[0]; break;
    case GGUF_VT_UINT16: { uint16_t v; memcpy(&v, raw, 2); kv->num.u64 = v; } break;
    case GGUF_VT_INT16: { int16_t v; memcpy(&v, raw, 2); kv->num.i64 = v; } break;
    case GGUF_VT_UINT32: { uint32_t v; memcpy(&v, raw, 4); kv->num.u64 = v; } break;
    case GGUF_VT_INT32: { int32_t v; memcpy(&v, raw, 4); kv->num.i64 = v; } break;
    case GGUF_VT_FLOAT32: { float v; memcpy(&v, raw, 4); kv->num.f64 = v; } break;
    case GGUF_VT_UINT64: memcpy(&kv->num.u64, raw, 8); break;
    case GGUF_VT_INT64: memcpy(&kv->num.i64, raw, 8); break;
    case GGUF_VT_FLOAT64: memcpy(&kv->num.f64, raw, 8); break;
    default: return fail(c, "internal: not a scalar type %u", type);
    }
    return 0;
}

static int read_kv(cursor *c, gguf_kv *kv, uint64_t index) {
    char what[160];
    snprintf(what, sizeof what, "metadata key #%llu", (unsigned long long)index);
    if (read_str(c, &kv->key, what)) return -1;
    char key[80];
    describe(kv->key, key, sizeof key);
    snprintf(what, sizeof what, "value of '%s'", key);
    if (read_u32(c, &kv->type, what)) return -1;
    if (kv->type >= GGUF_VT_COUNT) return fail(c, "metadata '%s' has unknown value type %u", key, kv->type);
    if (kv->type == GGUF_VT_STRING) return read_str(c, &kv->str, what);
    if (kv->type != GGUF_VT_ARRAY) return read_scalar(c, kv->type, kv, what);

    if (read_u32(c, &kv->arr_type, what) || read_u64(c, &kv->arr_len, what)) return -1;
    if (kv->arr_type >= GGUF_VT_COUNT || kv->arr_type == GGUF_VT_ARRAY)
        return fail(c, "metadata array '%s' has unsupported element type %u", key, kv->arr_type);
    if (kv->arr_type == GGUF_VT_STRING) {
        /* each element needs at least its 8-byte length, so this bounds the allocation by the file size */
        if (kv->arr_len > remaining(c) / 8)
            return fail(c, "metadata array '%s' claims %llu strings but only %zu bytes are left", key,
                        (unsigned long long)kv->arr_len, remaining(c));
        kv->arr_strs = malloc((size_t)(kv->arr_len ? kv->arr_len : 1) * sizeof(gguf_str));
        if (!kv->arr_strs) return fail(c, "out of memory for metadata array '%s'", key);
        for (uint64_t i = 0; i < kv->arr_len; i++) {
            if (read_str(c, &kv->arr_strs[i], "a string array element")) {
                size_t n = strlen(c->err ? c->err : "");
                if (c->err && n < c->err_size)
                    snprintf(c->err + n, c->err_size - n, " (element %llu of '%s')", (unsigned long long)i, key);
                return -1;
            }
        }
        return 0;
    }
    uint32_t elem = VALUE_TYPE_SIZE[kv->arr_type];
    if (kv->arr_len > remaining(c) / elem)
        return fail(c, "metadata array '%s' claims %llu elements of %s but only %zu bytes are left", key,
                    (unsigned long long)kv->arr_len, VALUE_TYPE_NAME[kv->arr_type], remaining(c));
    kv->arr_data = c->base + c->pos;
    c->pos += (size_t)(kv->arr_len * elem);
    return 0;
}

static int read_tensor_info(cursor *c, gguf_tensor *t, uint64_t index) {
    char what[160];
    snprintf(what, sizeof what, "tensor info #%llu", (unsigned long long)index);
    if (read_str(c, &t->name, what)) return -1;
    char name[80];
    describe(t->name, name, sizeof name);
    snprintf(what, sizeof what, "tensor info of '%s'", name);
    if (read_u32(c, &t->n_dims, what)) return -1;
    if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
        return fail(c, "tensor '%s' has %u dimensions (expected 1..%d)", name, t->n_dims, GGUF_MAX_DIMS);
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        if (read_u64(c, &t->ne[d], what)) return -1;
    if (read_u32(c, &t->type, what) || read_u64(c, &t->offset, what)) return -1;
    const char *tname = gguf_type_name(t->type);
    if (!tname) return fail(c, "tensor '%s' has unknown tensor type id %u", name, t->type);
    /* element count with overflow checks: each dim < 2^62 and the product stays below 2^62 */
    uint64_t n = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        if (t->ne[d] >= (1ull << 62)) return fail(c, "tensor '%s' dimension %d is too large (%llu)", name, d,
                                                  (unsigned long long)t->ne[d]);
        if (t->ne[d] != 0 && n > ((1ull << 62) / t->ne[d]))
            return fail(c, "tensor '%s' element count overflows", name);
        n *= t->ne[d];
    }
    uint32_t bs = gguf_type_block_size(t->type);
    if (t->ne[0] % bs != 0)
        return fail(c, "tensor '%s' of type %s has row length %llu, not a multiple of the block size %u", name, tname,
                    (unsigned long long)t->ne[0], bs);
    if (n / bs > UINT64_MAX / gguf_type_block_bytes(t->type)) return fail(c, "tensor '%s' byte size overflows", name);
    t->nbytes = n / bs * gguf_type_block_bytes(t->type);
    return 0;
}

static void free_kvs(gguf_kv *kvs, uint64_t n) {
    if (!kvs) return;
    for (uint64_t i = 0; i < n; i++) free(kvs[i].arr_strs);
    free(kvs);
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    free_kvs(f->kvs, f->n_kv);
    free(f->tensors);
    if (f->owns_map && f->map) munmap((void *)f->map, f->size);
    free(f);
}

/* ---- whole-file checks: unique names, disjoint tensors ---- */

typedef struct {
    gguf_str name;
} named;

static int compare_named(const void *a, const void *b) {
    const gguf_str *x = &((const named *)a)->name, *y = &((const named *)b)->name;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return memcmp(x->ptr, y->ptr, x->len);
}

/* A name that occurs twice among n (sorted, so any count costs n log n), or NULL. llama.cpp refuses duplicate
 * metadata keys and tensor names: readers that keep the first copy and readers that keep the last would
 * otherwise see different models in one file. */
static const gguf_str *find_duplicate(named *names, uint64_t n) {
    qsort(names, (size_t)n, sizeof *names, compare_named);
    for (uint64_t i = 1; i < n; i++)
        if (compare_named(&names[i - 1], &names[i]) == 0) return &names[i].name;
    return NULL;
}

typedef struct {
    uint64_t begin, end;
    const gguf_tensor *tensor;
} extent;

static int compare_extents(const void *a, const void *b) {
    const extent *x = a, *y = b;
    return x->begin != y->begin ? (x->begin < y->begin ? -1 : 1) : (x->end > y->end) - (x->end < y->end);
}

/* Tensors whose bytes overlap, or 0. Overlapping tensors are no model llama.cpp loads, and they multiply work:
 * a 17.9 MB file whose tensors all share one offset made repacking copy the same bytes for each of them. */
static int find_overlap(const gguf_file *f, extent *extents, const gguf_tensor **a, const gguf_tensor **b) {
    uint64_t n = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].nbytes) { /* offset + nbytes was checked against the file size */
            const gguf_tensor *t = &f->tensors[i];
            extents[n++] = (extent){t->offset, t->offset + t->nbytes, t};
        }
    qsort(extents, (size_t)n, sizeof *extents, compare_extents);
    for (uint64_t i = 1; i < n; i++) {
        if (extents[i].begin < extents[i - 1].end) {
            *a = extents[i - 1].tensor;
            *b = extents[i].tensor;
            return 1;
        }
    }
    return 0;
}

static int check_whole_file(cursor *c, const gguf_file *f) {
    const uint64_t most = f->n_kv > f->n_tensors ? f->n_kv : f->n_tensors;
    const size_t item = sizeof(extent) > sizeof(named) ? sizeof(extent) : sizeof(named);
    void *scratch = qrt_malloc(qrt_array_bytes(most ? most : 1, item));
    if (!scratch) return fail(c, "out of memory");
    named *names = scratch;
    char what[80];
    for (uint64_t i = 0; i < f->n_kv; i++) names[i].name = f->kvs[i].key;
    const gguf_str *dup = find_duplicate(names, f->n_kv);
    if (dup) {
        describe(*dup, what, sizeof what);
        free(scratch);
        return fail(c, "metadata key '%s' appears more than once", what);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) names[i].name = f->tensors[i].name;
    dup = find_duplicate(names, f->n_tensors);
    if (dup) {
        describe(*dup, what, sizeof what);
        free(scratch);
        return fail(c, "duplicate tensor name '%s'", what);
    }
    const gguf_tensor *a, *b;
    if (find_overlap(f, scratch, &a, &b)) {
        char other[80];
        describe(a->name, what, sizeof what);
        describe(b->name, other, sizeof other);
        free(scratch);
        return fail(c, "tensors '%s' (data bytes %llu..%llu) and '%s' (from %llu) overlap", what,
                    (unsigned long long)a->offset, (unsigned long long)(a->offset + a->nbytes), other,
                    (unsigned long long)b->offset);
    }
    free(scratch);
    return 0;
}

static gguf_file *parse(const uint8_t *base, size_t size, const char *name, char *err, size_t err_size) {
    cursor c = {base, size, 0, name, err, err_size};
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        fail(&c, "out of memory");
        return NULL;
    }
    f->map = base;
    f->size = size;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;

    char magic[4] = {0};
    if (read_bytes(&c, magic, 4, "the magic")) goto bad;
    if (memcmp(magic, "GGUF", 4) != 0) {
        fail(&c, "not a GGUF file (magic %02x %02x %02x %02x, expected 'GGUF')", (unsigned char)magic[0],
             (unsigned char)magic[1], (unsigned char)magic[2], (unsigned char)magic[3]);
        goto bad;
    }
    if (read_u32(&c, &f->version, "the version")) goto bad;
    if (f->version != 2 && f->version != 3) {
        fail(&c, "unsupported GGUF version %u (supported: 2, 3)", f->version);
        goto bad;
    }
    uint64_t n_tensors = 0, n_kv = 0;
    if (read_u64(&c, &n_tensors, "the tensor count") || read_u64(&c, &n_kv, "the metadata count")) goto bad;
    /* a kv takes >= 8 (key length) + 4 (type) + 1 bytes; a tensor info >= 8 + 4 + 8 + 4 + 8 */
    if (n_kv > remaining(&c) / 13) {
        fail(&c, "metadata count %llu is impossible for a file of %zu bytes", (unsigned long long)n_kv, size);
        goto bad;
    }
    if (n_tensors > remaining(&c) / 32) {
        fail(&c, "tensor count %llu is impossible for a file of %zu bytes", (unsigned long long)n_tensors, size);
        goto bad;
    }
    f->kvs = calloc((size_t)(n_kv ? n_kv : 1), sizeof(gguf_kv));
    f->tensors = calloc((size_t)(n_tensors ? n_tensors : 1), sizeof(gguf_tensor));
    if (!f->kvs || !f->tensors) {
        fail(&c, "out of memory");
        goto bad;
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        f->n_kv = i + 1; /* so gguf_close frees what was read so far */
        if (read_kv(&c, &f->kvs[i], i)) goto bad;
    }
    f->n_kv = n_kv;

    int64_t ai = gguf_find_key(f, "general.alignment");
    if (ai >= 0) {
        uint32_t a;
        if (gguf_get_u32(f, "general.alignment", &a) != GGUF_OK || a == 0 || (a & (a - 1)) != 0) {
            fail(&c, "general.alignment must be a power-of-two integer");
            goto bad;
        }
        f->alignment = a;
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        if (read_tensor_info(&c, &f->tensors[i], i)) goto bad;
        f->n_tensors = i + 1;
    }
    f->n_tensors = n_tensors;

    /* data section starts at the next multiple of the alignment */
    uint64_t data = c.pos;
    uint64_t pad = (f->alignment - data % f->alignment) % f->alignment;
    if (n_tensors > 0 && pad > size - data) {
        fail(&c, "file truncated before the tensor data (header ends at %llu, file is %zu bytes)",
             (unsigned long long)data, size);
        goto bad;
    }
    f->data_offset = data + pad;
    uint64_t data_size = f->data_offset <= size ? size - f->data_offset : 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        char tn[80];
        describe(t->name, tn, sizeof tn);
        if (t->offset % f->alignment != 0) {
            fail(&c, "tensor '%s' offset %llu is not a multiple of the alignment %llu", tn,
                 (unsigned long long)t->offset, (unsigned long long)f->alignment);
            goto bad;
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            fail(&c, "tensor '%s' (%llu bytes at data offset %llu) extends past the end of the file (data section "
                     "is %llu bytes)",
                 tn, (unsigned long long)t->nbytes, (unsigned long long)t->offset, (unsigned long long)data_size);
            goto bad;
        }
        t->data = base + f->data_offset + t->offset;
    }
    if (check_whole_file(&c, f)) goto bad;
    return f;
bad:
    f->owns_map = 0;
    gguf_close(f);
    return NULL;
}

gguf_file *gguf_open_memory(const void *data, size_t size, const char *name, char *err, size_t err_size) {
    return parse(data, size, name ? name : "<memory>", err, err_size);
}

gguf_file *gguf_open(const char *path, char *err, size_t err_size) {
    cursor c = {NULL, 0, 0, path, err, err_size};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(&c, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        fail(&c, "not a regular file");
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    if (size < 24) {
        close(fd);
        fail(&c, "file too small to be GGUF (%zu bytes)", size);
        return NULL;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fail(&c, "mmap failed: %s", strerror(errno));
        return NULL;
    }
    gguf_file *f = parse(map, size, path, err, err_size);
    if (!f) {
        munmap(map, size);
        return NULL;
    }
    f->owns_map = 1;
    return f;
}

/* ---- accessors ---- */

int64_t gguf_find_key(const gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (gguf_str_eq(f->kvs[i].key, key)) return (int64_t)i;
    return -1;
}

static int is_signed(uint32_t t) {
    return t == GGUF_VT_INT8 || t == GGUF_VT_INT16 || t == GGUF_VT_INT32 || t == GGUF_VT_INT64;
}
static int is_unsigned(uint32_t t) {
    return t == GGUF_VT_UINT8 || t == GGUF_VT_UINT16 || t == GGUF_VT_UINT32 || t == GGUF_VT_UINT64 || t == GGUF_VT_BOOL;
}

/* An integer kv as a signed value with a flag saying whether it is non-negative and fits int64. */
static int kv_int(const gguf_kv *kv, int64_t *v, uint64_t *u, int *neg) {
    if (is_signed(kv->type)) {
        *v = kv->num.i64;
        *neg = *v < 0;
        *u = *neg ? 0 : (uint64_t)*v;
        return 1;
    }
    if (is_unsigned(kv->type)) {
        *u = kv->num.u64;
        *neg = 0;
        *v = *u > INT64_MAX ? INT64_MAX : (int64_t)*u;
        return 1;
    }
    return 0;
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out) {
    int64_t i = gguf_find_key(f, key);
    if (i < 0) return GGUF_MISSING;
    int64_t v = 0;
    uint64_t u = 0;
    int neg = 0;
    if (!kv_int(&f->kvs[i], &v, &u, &neg) || neg) return GGUF_WRONG_TYPE;
    *out = u;
    return GGUF_OK;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    uint64_t u = 0;
    int r = gguf_get_u64(f, key, &u);
    if (r != GGUF_OK) return r;
    if (u > UINT32_MAX) return GGUF_WRONG_TYPE;
    *out = (uint32_t)u;
    return GGUF_OK;
}

int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out) {
    int64_t i = gguf_find_key(f, key);
    if (i < 0) return GGUF_MISSING;
    int64_t v = 0;
    uint64_t u = 0;
    int neg = 0;
    if (!kv_int(&f->kvs[i], &v, &u, &neg)) return GGUF_WRONG_TYPE;
    if (!neg && u > INT32_MAX) return GGUF_WRONG_TYPE;
    if (v < INT32_MIN) return GGUF_WRONG_TYPE;
    *out = (int32_t)v;
    return GGUF_OK;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out) {
    int64_t i = gguf_find_key(f, key);
    if (i < 0) return GGUF_MISSING;
    const gguf_kv *kv = &f->kvs[i];
    if (kv->type == GGUF_VT_FLOAT32 || kv->type == GGUF_VT_FLOAT64) {
        *out = (float)kv->num.f64;
        return GGUF_OK;
    }
    int64_t v = 0;
    uint64_t u = 0;
    int neg = 0;
    if (!kv_int(kv, &v, &u, &neg)) return GGUF_WRONG_TYPE;
    *out = (float)v;
    return GGUF_OK;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out) {
    int64_t i = gguf_find_key(f, key);
    if (i < 0) return GGUF_MISSING;
    int64_t v = 0;
    uint64_t u = 0;
    int neg = 0;
    if (!kv_int(&f->kvs[i], &v, &u, &neg)) return GGUF_WRONG_TYPE;
    *out = v != 0;
    return GGUF_OK;
}

int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out) {
    int64_t i = gguf_find_key(f, key);
    if (i < 0) return GGUF_MISSING;
    if (f->kvs[i].type != GGUF_VT_STRING) return GGUF_WRONG_TYPE;
    *out = f->kvs[i].str;
    return GGUF_OK;
}

int gguf_get_arr(const gguf_file *f, const char *key, uint32_t *elem_type, uint64_t *len) {
    int64_t i = gguf_find_key(f, key);
    if (i < 0) return GGUF_MISSING;
    if (f->kvs[i].type != GGUF_VT_ARRAY) return GGUF_WRONG_TYPE;
    *elem_type = f->kvs[i].arr_type;
    *len = f->kvs[i].arr_len;
    return GGUF_OK;
}

gguf_str gguf_arr_str(const gguf_file *f, int64_t kv, uint64_t i) {
    gguf_str empty = {"", 0};
    if (kv < 0 || (uint64_t)kv >= f->n_kv) return empty;
    const gguf_kv *k = &f->kvs[kv];
    if (k->type != GGUF_VT_ARRAY || k->arr_type != GGUF_VT_STRING || i >= k->arr_len) return empty;
    return k->arr_strs[i];
}

static int arr_elem(const gguf_file *f, int64_t kv, uint64_t i, gguf_kv *tmp) {
    if (kv < 0 || (uint64_t)kv >= f->n_kv) return 0;
    const gguf_kv *k = &f->kvs[kv];
    if (k->type != GGUF_VT_ARRAY || k->arr_type == GGUF_VT_STRING || i >= k->arr_len) return 0;
    cursor c = {k->arr_data + i * VALUE_TYPE_SIZE[k->arr_type], VALUE_TYPE_SIZE[k->arr_type], 0, "", NULL, 0};
    tmp->type = k->arr_type;
    return read_scalar(&c, k->arr_type, tmp, "") == 0;
}

int64_t gguf_arr_int(const gguf_file *f, int64_t kv, uint64_t i) {
    gguf_kv tmp;
    if (!arr_elem(f, kv, i, &tmp)) return 0;
    if (tmp.type == GGUF_VT_FLOAT32 || tmp.type == GGUF_VT_FLOAT64) {
        /* A float from the file may be NaN or beyond int64: converting those is undefined, so they read as 0. */
        double d = tmp.num.f64;
        return d > -9.2e18 && d < 9.2e18 ? (int64_t)d : 0;
    }
    int64_t v = 0;
    uint64_t u = 0;
    int neg = 0;
    kv_int(&tmp, &v, &u, &neg);
    return v;
}

double gguf_arr_float(const gguf_file *f, int64_t kv, uint64_t i) {
    gguf_kv tmp;
    if (!arr_elem(f, kv, i, &tmp)) return 0;
    if (tmp.type == GGUF_VT_FLOAT32 || tmp.type == GGUF_VT_FLOAT64) return tmp.num.f64;
    int64_t v = 0;
    uint64_t u = 0;
    int neg = 0;
    kv_int(&tmp, &v, &u, &neg);
    return (double)v;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (gguf_str_eq(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}
