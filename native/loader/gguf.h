/* gguf.h — the bounds-checked GGUF loader (internal header; nothing else in native/ parses files).
 *
 * The file is mmapped read-only; every count, string length, array length, offset and tensor extent is checked
 * against the file size with overflow-safe arithmetic before it is used, so a truncated or hostile file gives
 * an error string, never a crash or a giant allocation. Strings are (pointer, length) views into the mapping;
 * they are NOT NUL-terminated. Keys are matched by exact bytes.
 *
 * Typical use:
 *     char err[256];
 *     gguf_file *f = gguf_open(path, err, sizeof err);
 *     if (!f) { report(err); }
 *     uint32_t n_layers;
 *     if (gguf_get_u32(f, "llama.block_count", &n_layers) != GGUF_OK) ...
 *     int64_t tokens = gguf_find_key(f, "tokenizer.ggml.tokens");
 *     gguf_str piece = gguf_arr_str(f, tokens, 17);
 *     const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
 *     gguf_close(f);
 */
#ifndef QRT_GGUF_H
#define QRT_GGUF_H
#include <stddef.h>
#include <stdint.h>
/* internal symbols stay inside libqrt: a process may also load ggml, which exports gguf_* names */
#pragma GCC visibility push(hidden)

/* Metadata value types, as numbered by the GGUF specification. */
enum gguf_value_type {
    GGUF_VT_UINT8 = 0,
    GGUF_VT_INT8 = 1,
    GGUF_VT_UINT16 = 2,
    GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4,
    GGUF_VT_INT32 = 5,
    GGUF_VT_FLOAT32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8,
    GGUF_VT_ARRAY = 9,
    GGUF_VT_UINT64 = 10,
    GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12,
    GGUF_VT_COUNT = 13,
};

/* Results of the typed getters. */
enum gguf_status {
    GGUF_OK = 0,
    GGUF_MISSING = 1,    /* no such key / tensor */
    GGUF_WRONG_TYPE = 2, /* the key exists with a type that cannot be read as asked (or out of range) */
};

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

typedef struct {
    const char *ptr; /* into the mapping; not NUL-terminated */
    uint64_t len;
} gguf_str;

typedef struct {
    gguf_str key;
    uint32_t type; /* enum gguf_value_type */
    union {        /* scalars, decoded at load */
        uint64_t u64;
        int64_t i64;
        double f64;
    } num;
    gguf_str str; /* type == STRING */
    /* type == ARRAY: element type, length, raw little-endian elements (numeric arrays) */
    uint32_t arr_type;
    uint64_t arr_len;
    const uint8_t *arr_data;
    gguf_str *arr_strs; /* arr_type == STRING: one view per element (owned by the gguf_file) */
} gguf_kv;

typedef struct {
    gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the row length (fastest-varying); unused dims are 1 */
    uint32_t type;              /* GGUF/ggml tensor type id */
    uint64_t offset;            /* relative to the data section */
    uint64_t nbytes;
    const void *data; /* into the mapping */
} gguf_tensor;

typedef struct gguf_file {
    const uint8_t *map;
    size_t size;
    int owns_map; /* 1 when mapped from a path (munmap on close) */
    uint32_t version;
    uint64_t n_kv, n_tensors;
    gguf_kv *kvs;
    gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset;
} gguf_file;

/* Open and validate a file. On failure returns NULL and writes a one-line message naming the file and the
 * problem (e.g. "model.gguf: tensor 'blk.3.attn_q.weight' extends past the end of the file (...)"). */
gguf_file *gguf_open(const char *path, char *err, size_t err_size);
/* The same over a caller-owned buffer (kept alive until gguf_close); used by the fuzzer and tests. */
gguf_file *gguf_open_memory(const void *data, size_t size, const char *name, char *err, size_t err_size);
void gguf_close(gguf_file *f);

/* Metadata. gguf_find_key returns the index into f->kvs, or -1. */
int64_t gguf_find_key(const gguf_file *f, const char *key);
/* Integer getters accept any integer (or bool) type whose value fits the requested type. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out);
int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out);
/* Float getter accepts float32/float64 (and integers). */
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out);
/* Arrays: element type and length. */
int gguf_get_arr(const gguf_file *f, const char *key, uint32_t *elem_type, uint64_t *len);
/* Element access by kv index (from gguf_find_key) — the caller checks type/length first; out-of-range or
 * wrong-type access returns an empty string / 0. */
gguf_str gguf_arr_str(const gguf_file *f, int64_t kv, uint64_t i);
int64_t gguf_arr_int(const gguf_file *f, int64_t kv, uint64_t i); /* any integer/bool element type */
double gguf_arr_float(const gguf_file *f, int64_t kv, uint64_t i); /* float32/float64/integers */

/* Tensors. */
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Tensor type facts the loader needs to check extents: name, elements per block, bytes per block. Returns 0
 * for ids the loader does not know (those files are refused). */
const char *gguf_type_name(uint32_t type);
uint32_t gguf_type_block_size(uint32_t type);
uint32_t gguf_type_block_bytes(uint32_t type);

/* 1 when the string view equals the NUL-terminated s. */
int gguf_str_eq(gguf_str a, const char *s);

#pragma GCC visibility pop
#endif
