/* fuzz_file_main.h — the plain runner of a libFuzzer target that takes bytes (included by fuzz_*.c under
 * -DQRT_FUZZ_MAIN): `fuzz_X FILE...` feeds each file to LLVMFuzzerTestOneInput after LLVMFuzzerInitialize, as
 * libFuzzer would. It serves builds without libFuzzer: gcc or a cross compiler under sanitizers, and the
 * coverage build that replays a corpus (tests/fuzz_coverage.sh). A target that finds a broken contract aborts,
 * so the exit status says whether every file passed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The whole file in a buffer of exactly its size (so that ASan sees a read past the input), or NULL. */
static uint8_t *fuzz_read_file(const char *path, size_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    uint8_t *buf = NULL;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
        buf = malloc(n > 0 ? (size_t)n : 1);
        if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(fp);
    *size = n > 0 ? (size_t)n : 0;
    return buf;
}

int main(int argc, char **argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    int unreadable = 0;
    for (int i = 1; i < argc; i++) {
        size_t size;
        uint8_t *data = fuzz_read_file(argv[i], &size);
        if (!data) {
            fprintf(stderr, "%s: cannot read\n", argv[i]);
            unreadable = 1;
            continue;
        }
        LLVMFuzzerTestOneInput(data, size);
        free(data);
    }
    return unreadable;
}
