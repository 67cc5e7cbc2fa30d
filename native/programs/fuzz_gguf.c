/* fuzz_gguf.c — fuzz target for the GGUF loader (not part of libqrt; not in SOURCES).
 *
 * libFuzzer:  clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Inative/loader -Inative/base \
 *                   native/programs/fuzz_gguf.c native/loader/gguf.c -o fuzz_gguf && ./fuzz_gguf -runs=1000000 corpus/
 * Plain run over files (any C compiler, e.g. gcc -fsanitize=address,undefined -DQRT_FUZZ_MAIN): each argument
 * is a file fed to the same entry point; prints "ok" / the loader's error per file. The tests use this form.
 *
 * Each input is parsed, then every accessor is walked over every key and tensor, so an out-of-range view
 * or a bad offset surfaces as a sanitizer report rather than a silent read.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

static volatile uint64_t sink;

static void touch(const void *p, uint64_t n) {
    const uint8_t *b = p;
    if (n) sink += b[0] + b[n - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    gguf_file *f = gguf_open_memory(data, size, "fuzz", err, sizeof err);
    if (!f) return 0;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kvs[i];
        touch(kv->key.ptr, kv->key.len);
        if (kv->type == GGUF_VT_STRING) touch(kv->str.ptr, kv->str.len);
        if (kv->type == GGUF_VT_ARRAY) {
            for (uint64_t j = 0; j < kv->arr_len && j < 4096; j++) {
                if (kv->arr_type == GGUF_VT_STRING) {
                    gguf_str s = gguf_arr_str(f, (int64_t)i, j);
                    touch(s.ptr, s.len);
                } else {
                    sink += (uint64_t)gguf_arr_int(f, (int64_t)i, j);
                    float v = (float)gguf_arr_float(f, (int64_t)i, j);
                    uint32_t bits; /* the value's bits: converting an out-of-range float to an integer is UB */
                    memcpy(&bits, &v, sizeof bits);
                    sink += bits;
                }
            }
        }
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 63 ? kv->key.len : 63), kv->key.ptr);
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        float f32;
        int b;
        gguf_str s;
        uint32_t et;
        uint64_t len;
        sink += (uint64_t)gguf_get_u32(f, key, &u32) + (uint64_t)gguf_get_i32(f, key, &i32) +
                (uint64_t)gguf_get_u64(f, key, &u64) + (uint64_t)gguf_get_f32(f, key, &f32) +
                (uint64_t)gguf_get_bool(f, key, &b) + (uint64_t)gguf_get_str(f, key, &s) +
                (uint64_t)gguf_get_arr(f, key, &et, &len);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        touch(t->name.ptr, t->name.len);
        touch(t->data, t->nbytes);
    }
    sink += gguf_find_tensor(f, "token_embd.weight") != NULL;
    gguf_close(f);
    return 0;
}

#ifdef QRT_FUZZ_MAIN
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        FILE *fp = fopen(argv[i], "rb");
        if (!fp) {
            printf("%s: cannot open\n", argv[i]);
            continue;
        }
        fseek(fp, 0, SEEK_END);
        long n = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
        if (!buf || fread(buf, 1, (size_t)n, fp) != (size_t)n) {
            printf("%s: cannot read\n", argv[i]);
            fclose(fp);
            free(buf);
            continue;
        }
        fclose(fp);
        char err[256];
        gguf_file *f = gguf_open_memory(buf, (size_t)n, argv[i], err, sizeof err);
        if (f) gguf_close(f);
        printf("%s\n", f ? "ok" : err);
        LLVMFuzzerTestOneInput(buf, (size_t)n);
        free(buf);
    }
    return 0;
}
#endif
