/* fuzz_model.c — fuzz target for what a GGUF reaches past the loader: model open (config, weights, repacking,
 * run state), tokenizer load, a short prompt eval, sampling and detokenizing (not part of libqrt; not in SOURCES).
 *
 * libFuzzer:  bash tests/fuzz.sh model SECONDS (builds it under ASan/UBSan, seeds it with small GGUFs of every
 *             weight type that qconv writes, runs).
 * Plain run over files (any C compiler, with -DQRT_FUZZ_MAIN): `fuzz_model [-c N] FILE...` prints "ok" or the
 * first error per file. The 32-bit test builds this form for armv7 and runs it under qemu.
 *
 * libFuzzer hands over bytes, the model opens a path: each input is written to a memfd and opened through
 * /proc/self/fd, so nothing touches the disk. Contexts stay small (64 tokens) so that a plausible shape
 * allocates little; the shapes that do not fit are the point of the 32-bit run.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qrt.h"

static const char PROMPT[] = "Hello, world! <s> 12345 über ünïcödé 你好 \xf0\x9f\x98\x80 \t\n  end";

static volatile uint64_t sink;

/* Open, tokenize, eval up to 8 prompt tokens and 2 sampled ones, then a batch of both sequences (a decode step of
sequence 0 beside a prompt of sequence 1); "ok" or the first error in err. */
static int exercise(const char *path, int n_ctx, char *err, size_t errlen) {
    qrt_model_params p = qrt_model_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = 1;
    p.n_batch = 4; /* two forward chunks for an 8-token prompt */
    p.n_seq = 2;
    qrt_model *m = qrt_model_open(path, &p, err, errlen);
    if (!m) return -1;
    sink += qrt_model_kv_bytes(m) + strlen(qrt_model_describe(m));
    qrt_tokenizer *tok = qrt_tokenizer_from_gguf(qrt_model_gguf(m), path, err, errlen);
    int rc = -1;
    if (!tok) goto done;
    int32_t ids[256]; /* room for every byte of the prompt as a token, and BOS/EOS */
    int32_t n = qrt_tokenizer_encode(tok, PROMPT, sizeof PROMPT - 1, 1, 1, ids, 256);
    if (n < 0) {
        snprintf(err, errlen, "%s: cannot tokenize", path);
        goto done;
    }
    const int32_t n_vocab = qrt_model_n_vocab(m);
    for (int32_t i = 0; i < n; i++) /* a vocabulary larger than the embedding can give ids past it */
        if (ids[i] < 0 || ids[i] >= n_vocab) ids[i] = 0;
    if (n > 8) n = 8;
    if (n == 0) ids[n++] = 0;
    if (qrt_model_eval(m, ids, n, NULL) != 0) {
        snprintf(err, errlen, "%s", qrt_model_error(m));
        goto done;
    }
    qrt_sampler_params sp = qrt_sampler_default_params();
    sp.seed = 7;
    qrt_sampler *s = qrt_sampler_new(&sp, n_vocab);
    qrt_detokenizer *d = qrt_detokenizer_new(tok, 1);
    for (int step = 0; s && d && step < 2; step++) {
        int32_t next = qrt_sampler_sample(s, qrt_model_logits(m), n_vocab);
        if (next < 0 || next >= n_vocab) break;
        qrt_sampler_accept(s, next);
        size_t len;
        const char *piece = qrt_detokenizer_feed(d, next, &len);
        if (piece && len) sink += (uint8_t)piece[len - 1];
        if (qrt_model_eval(m, &next, 1, NULL) != 0) break;
    }
    const int past = qrt_model_seq_n_past(m, 0);
    const qrt_batch_entry batch[3] = {{ids[0], 1, 0, 0}, {ids[n - 1], 0, past, 1}, {ids[0], 1, 1, 1}};
    float *rows = malloc(2 * (size_t)n_vocab * sizeof *rows);
    if (rows && past < n_ctx && qrt_model_decode(m, batch, 3, rows) == 0) sink += (uint64_t)(rows[0] != rows[n_vocab]);
    free(rows);
    char text[256];
    sink += (uint64_t)qrt_tokenizer_decode(tok, ids, n, text, sizeof text, 0, 1);
    qrt_detokenizer_free(d);
    qrt_sampler_free(s);
    rc = 0;
done:
    qrt_tokenizer_free(tok);
    qrt_model_free(m);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz.gguf", 0);
    if (fd < 0) return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        char path[64], err[512];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        exercise(path, 64, err, sizeof err);
    }
    close(fd);
    return 0;
}

#ifdef QRT_FUZZ_MAIN
/* fuzz_model [-c N] FILE...: -c sets the context of the files after it (default 64). */
int main(int argc, char **argv) {
    int n_ctx = 64;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            n_ctx = atoi(argv[++i]);
            continue;
        }
        char err[512];
        if (exercise(argv[i], n_ctx, err, sizeof err) == 0)
            printf("ok\n");
        else
            printf("%s\n", err);
    }
    return 0;
}
#endif
