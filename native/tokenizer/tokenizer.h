/* tokenizer.h — internal view of the tokenizer (the public API is qrt_tokenizer.h).
 *
 * The model builds its tokenizer from the GGUF mapping it already has open with qrt_tokenizer_from_gguf()
 * (public, in qrt_tokenizer.h); it copies what it needs, so the gguf_file may be closed afterwards.
 */
#ifndef QRT_TOKENIZER_H
#define QRT_TOKENIZER_H
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "qrt.h"

/* Token attributes, llama.cpp's llama_token_attr bits. */
enum {
    TOK_ATTR_UNKNOWN = 1 << 0,
    TOK_ATTR_UNUSED = 1 << 1,
    TOK_ATTR_NORMAL = 1 << 2,
    TOK_ATTR_CONTROL = 1 << 3,
    TOK_ATTR_USER_DEFINED = 1 << 4,
    TOK_ATTR_BYTE = 1 << 5,
    TOK_ATTR_LSTRIP = 1 << 7,
    TOK_ATTR_RSTRIP = 1 << 8,
};


#endif
