/* qrt.h — the public C API of libqrt, the qconv runtime.
 *
 * This header is the only one cffi and qrun-native see. cffi reads it as its cdef: preprocessor lines are
 * dropped and each `#include "qrt_*.h"` is inlined, so every declaration here and in those parts must be plain
 * C that cffi parses: no macros in declarations, no inline bodies. Errors come back as codes plus a message
 * string, never an abort.
 *
 * Parts: qrt_quant.h (block types, quantize/dequantize, dot kernels), qrt_model.h (GGUF loader, model,
 * forward pass), qrt_tokenizer.h (tokenizer, sampler).
 */
#ifndef QRT_H
#define QRT_H
#include <stddef.h>
#include <stdint.h>

const char *qrt_version(void);

#include "qrt_quant.h"
#include "qrt_model.h"
#include "qrt_tokenizer.h"
#include "qrt_blockwise.h"
#include "qrt_imatrix.h"
#include "qrt_kernel_probes.h"
#include "qrt_eval.h"
#include "qrt_mapped_file_guard.h"

#endif
