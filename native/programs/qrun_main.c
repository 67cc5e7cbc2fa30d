/* qrun_main.c — qrun-native: the device CLI over qrt.h, for boards without Python (Raspberry Pi, Jetson).
 *
 *   qrun-native MODEL.gguf -p "Why is the sky blue?"        # one chat turn (ChatML, llama-2/3, Gemma, Phi-3 prompt)
 *   qrun-native MODEL.gguf -p "Hi" --assistant "Hello!" -p "Why is the sky blue?"   # earlier turns given
 *   qrun-native MODEL.gguf --raw -p "Once upon a time" -n 32 --temp 0
 *   qrun-native MODEL.gguf --embed "a sentence"             # its embedding: one JSON array on stdout
 *   qrun-native MODEL.gguf --embed-file texts.txt           # one text per line -> one JSON array per line
 *
 * Follows qrun (runtime/cli.py): stdout gets only the generated text, streamed, then a newline; the speed line
 * ("prompt: N tokens, X tok/s | generation: ...") goes to stderr; same flags and defaults, same sampler. With
 * --raw the output equals qrun's for the same arguments. Chat prompts are rendered by the C templates below (the
 * GGUF's Jinja template is not run; its family is recognised from its marker tokens, and a default system
 * message written in it, as SmolLM2's, is used when --system is not given). --print-prompt writes the rendered
 * prompt and exits: tests compare it with the Jinja template's rendering. --embed/--embed-file print what qrun's
 * do, byte for byte (each float the shortest %g text that reads back as the same float32), and on stderr the
 * texts per second of the embed calls alone (this program's timer: tokenizing, printing and one warm-up run of the
 * first text excluded).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qrt.h"

#define MAX_TURNS 64

typedef struct {
    const char *model, *system, *kernel;
    const char *embed_text, *embed_file; /* embed instead of generating */
    const char *turns[MAX_TURNS]; /* user, assistant, user, ...: each -p a user turn, each --assistant a reply */
    int n_turns;
    int raw, print_prompt, n_predict, top_k, repeat_last_n, threads, ctx, kv_f32, ignore_eos, verbose;
    float temp, top_p, min_p, repeat_penalty;
    unsigned long long seed;
} options;

static void usage(FILE *out) {
    fprintf(out,
            "usage: qrun-native MODEL.gguf -p PROMPT [--raw] [--system TEXT] [-n N] [--temp T] [--top-k K]\n"
            "                   [--top-p P] [--min-p P] [--repeat-penalty R] [--repeat-last-n N] [--seed S]\n"
            "                   [--ignore-eos] [-t THREADS] [-c CTX] [--kv-f32] [--kernel VARIANT] [-v]\n"
            "                   [--assistant REPLY -p PROMPT]... [--print-prompt]\n"
            "       qrun-native MODEL.gguf --embed TEXT | --embed-file TEXTS_FILE [-t THREADS] [-c CTX]\n"
            "  earlier turns: -p and --assistant alternate, the last one a -p\n"
            "  --print-prompt: write the rendered chat prompt to stdout and exit\n"
            "  VARIANT: auto, scalar, neon, neon-dotprod, neon-i8mm, avx2, avx512 (also env QRT_KERNEL)\n");
}

static int fail(const char *msg, const char *arg) {
    fprintf(stderr, "qrun-native: error: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    return 1;
}

static int parse_args(int argc, char **argv, options *o) {
    *o = (options){.n_predict = 256, .top_k = 40, .repeat_last_n = 64, .ctx = 2048, .temp = 0.8f,
                   .top_p = 0.95f, .min_p = 0.05f, .repeat_penalty = 1.0f};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define FLAG(s) (strcmp(a, s) == 0)
#define VALUE(s, l) ((FLAG(s) || FLAG(l)) && v && ++i)
        if (FLAG("-h") || FLAG("--help")) {
            usage(stdout);
            exit(0);
        } else if (FLAG("--raw")) o->raw = 1;
        else if (FLAG("--ignore-eos")) o->ignore_eos = 1;
        else if (FLAG("--kv-f32")) o->kv_f32 = 1;
        else if (FLAG("-v") || FLAG("--verbose")) o->verbose = 1;
        else if (FLAG("--print-prompt")) o->print_prompt = 1;
        else if (VALUE("-p", "--prompt") || VALUE("--assistant", "--assistant")) {
            const int user = FLAG("-p") || FLAG("--prompt");
            if (user != (o->n_turns % 2 == 0))
                return fail(user ? "two -p in a row (earlier turns alternate -p and --assistant)"
                                 : "--assistant must follow a -p",
                            v);
            if (o->n_turns == MAX_TURNS) return fail("too many turns", v);
            o->turns[o->n_turns++] = v;
        }
        else if (VALUE("--system", "--system")) o->system = v;
        else if (VALUE("--embed", "--embed")) o->embed_text = v;
        else if (VALUE("--embed-file", "--embed-file")) o->embed_file = v;
        else if (VALUE("--kernel", "--kernel")) o->kernel = v;
        else if (VALUE("-n", "--n-predict")) o->n_predict = atoi(v);
        else if (VALUE("--temp", "--temp")) o->temp = strtof(v, NULL);
        else if (VALUE("--top-k", "--top-k")) o->top_k = atoi(v);
        else if (VALUE("--top-p", "--top-p")) o->top_p = strtof(v, NULL);
        else if (VALUE("--min-p", "--min-p")) o->min_p = strtof(v, NULL);
        else if (VALUE("--repeat-penalty", "--repeat-penalty")) o->repeat_penalty = strtof(v, NULL);
        else if (VALUE("--repeat-last-n", "--repeat-last-n")) o->repeat_last_n = atoi(v);
        else if (VALUE("--seed", "--seed")) o->seed = strtoull(v, NULL, 10);
        else if (VALUE("-t", "--threads")) o->threads = atoi(v);
        else if (VALUE("-c", "--ctx")) o->ctx = atoi(v);
        else if (a[0] == '-' && a[1]) return fail("unknown or incomplete option", a);
        else if (!o->model) o->model = a;
        else return fail("unexpected argument", a);
#undef FLAG
#undef VALUE
    }
    if (!o->model) {
        usage(stderr);
        return 1;
    }
    if (o->embed_text && o->embed_file) return fail("give the texts with --embed or --embed-file, not both", NULL);
    if (o->embed_text || o->embed_file) {
        if (o->n_turns) return fail("--embed/--embed-file and a prompt (-p) are different jobs: give one", NULL);
        if (o->ctx <= 0 || o->threads < 0) return fail("-c and -t must be positive", NULL);
        return 0;
    }
    if (!o->n_turns) return fail("-p PROMPT is required (qrun-native has no interactive chat)", NULL);
    if (o->n_turns % 2 == 0) return fail("the last turn must be a -p, not --assistant", NULL);
    if (o->raw && o->n_turns > 1) return fail("--raw takes one -p and no --assistant", NULL);
    if (o->n_predict < 0 || o->ctx <= 0 || o->threads < 0) return fail("-n must be >= 0, -c and -t positive", NULL);
    return 0;
}

/* ---- chat templates ---- */

typedef struct {
    char *s;
    size_t len, cap;
} text;

static void put(text *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->s = realloc(t->s, t->cap);
        if (!t->s) abort();
    }
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = 0;
}
static void puts_(text *t, const char *s) { put(t, s, strlen(s)); }

/* A default system message written literally in a ChatML template: the text between "<|im_start|>system" plus
 * its newline (a real one, or the two characters of a Jinja "\\n" escape) and "<|im_end|>" (SmolLM2's "You are
 * a helpful AI assistant named SmolLM, ..."). */
static int default_system(const char *tmpl, size_t n, const char **start, size_t *len) {
    static const char open[] = "<|im_start|>system";
    const char *end = tmpl + n, *p = NULL;
    for (size_t i = 0; i + sizeof open - 1 <= n; i++)
        if (memcmp(tmpl + i, open, sizeof open - 1) == 0) {
            p = tmpl + i + sizeof open - 1;
            break;
        }
    if (!p) return 0;
    if (p < end && *p == '\n') p++;
    else if (p + 1 < end && p[0] == '\\' && p[1] == 'n') p += 2;
    else return 0; /* "<|im_start|>system" followed by a variable, not literal text */
    const char *q = p;
    while (q + 10 <= end && memcmp(q, "<|im_end|>", 10) != 0) {
        if (*q == '{' || *q == '\'') return 0; /* a Jinja expression, not a literal message */
        q++;
    }
    if (q + 10 > end || q == p) return 0;
    *start = p;
    *len = (size_t)(q - p);
    return 1;
}

static int contains(const char *s, size_t n, const char *needle) {
    const size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, needle, m) == 0) return 1;
    return 0;
}

/* A chat family: how its Jinja templates lay out the messages, as data. Rendering follows llama.cpp's
 * common/chat.cpp in one respect: a template that starts with bos_token leaves it out when the vocabulary adds BOS
 * itself (tokenizer.ggml.add_bos_token), so the prompt gets one BOS, not two. */
typedef struct {
    const char *name;
    const char *system_open, *system_close; /* NULL: no system role, the system text opens the first user turn */
    const char *fold_open, *fold_close;     /* around that folded system text */
    const char *user_open, *user_close, *assistant_open, *assistant_close, *generation;
    int trim;              /* message text stripped of surrounding whitespace (Jinja's `| trim`, `.strip()`) */
    int trim_with_fold;    /* stripped together with the folded system text (llama-2): its start is kept then */
    int template_bos;      /* the template starts with bos_token */
    int bos_per_user;      /* and writes it again before every later user turn (llama-2) */
    int eos_per_assistant; /* eos_token after each assistant turn (llama-2) */
} chat_family;

static const chat_family CHATML = {
    .name = "chatml", .system_open = "<|im_start|>system\n", .system_close = "<|im_end|>\n",
    .user_open = "<|im_start|>user\n", .user_close = "<|im_end|>\n", .assistant_open = "<|im_start|>assistant\n",
    .assistant_close = "<|im_end|>\n", .generation = "<|im_start|>assistant\n"};
static const chat_family LLAMA3 = {
    .name = "llama-3", .system_open = "<|start_header_id|>system<|end_header_id|>\n\n", .system_close = "<|eot_id|>",
    .user_open = "<|start_header_id|>user<|end_header_id|>\n\n", .user_close = "<|eot_id|>",
    .assistant_open = "<|start_header_id|>assistant<|end_header_id|>\n\n", .assistant_close = "<|eot_id|>",
    .generation = "<|start_header_id|>assistant<|end_header_id|>\n\n", .trim = 1, .template_bos = 1};
/* Gemma (google/gemma-3-*-it): no system role; the system text and a blank line open the first user turn, the
 * assistant is "model", and only the turns' own text is trimmed. */
static const chat_family GEMMA = {
    .name = "gemma", .fold_open = "", .fold_close = "\n\n", .user_open = "<start_of_turn>user\n",
    .user_close = "<end_of_turn>\n", .assistant_open = "<start_of_turn>model\n", .assistant_close = "<end_of_turn>\n",
    .generation = "<start_of_turn>model\n", .trim = 1, .template_bos = 1};
/* Phi-3 / Phi-3.5 (microsoft/Phi-3.5-mini-instruct): a newline after each role tag and each <|end|>. */
static const chat_family PHI3 = {
    .name = "phi-3", .system_open = "<|system|>\n", .system_close = "<|end|>\n", .user_open = "<|user|>\n",
    .user_close = "<|end|>\n", .assistant_open = "<|assistant|>\n", .assistant_close = "<|end|>\n",
    .generation = "<|assistant|>\n"};
/* Phi-4-mini (microsoft/Phi-4-mini-instruct): the same tags with no newlines. */
static const chat_family PHI4_MINI = {
    .name = "phi-4-mini", .system_open = "<|system|>", .system_close = "<|end|>", .user_open = "<|user|>",
    .user_close = "<|end|>", .assistant_open = "<|assistant|>", .assistant_close = "<|end|>",
    .generation = "<|assistant|>"};
/* Llama-2 (meta-llama/Llama-2-7b-chat-hf): the system text inside the first [INST], BOS before each user turn and
 * EOS after each reply; no generation prompt (the prompt ends with " [/INST]"). */
static const chat_family LLAMA2 = {
    .name = "llama-2", .fold_open = "<<SYS>>\n", .fold_close = "\n<</SYS>>\n\n", .user_open = "[INST] ",
    .user_close = " [/INST]", .assistant_open = " ", .assistant_close = " ", .trim = 1, .trim_with_fold = 1,
    .template_bos = 1, .bos_per_user = 1, .eos_per_assistant = 1};

/* After a phi template's first "<|end|>": a newline, written in the string literal or as a Jinja "\n" escape,
 * possibly in a separate literal ('<|end|>' + '\n'), or the end of the expression (Phi-4-mini). */
static int newline_after_end_tag(const char *tmpl, size_t n) {
    static const char tag[] = "<|end|>";
    for (size_t i = 0; i + sizeof tag - 1 <= n; i++) {
        if (memcmp(tmpl + i, tag, sizeof tag - 1) != 0) continue;
        size_t j = i + sizeof tag - 1;
        while (j < n && (tmpl[j] == '\'' || tmpl[j] == '"' || tmpl[j] == ' ' || tmpl[j] == '+')) j++;
        return j < n && (tmpl[j] == '\n' || (tmpl[j] == '\\' && j + 1 < n && tmpl[j + 1] == 'n'));
    }
    return 0;
}

/* The family of the GGUF's chat template, recognised by its marker tokens; NULL if none. */
static const chat_family *chat_family_of(const char *tmpl, size_t n) {
    if (contains(tmpl, n, "<|im_start|>")) return &CHATML;
    if (contains(tmpl, n, "<|start_header_id|>")) return &LLAMA3;
    if (contains(tmpl, n, "<start_of_turn>")) return &GEMMA;
    if (contains(tmpl, n, "<|assistant|>") && contains(tmpl, n, "<|end|>"))
        return newline_after_end_tag(tmpl, n) ? &PHI3 : &PHI4_MINI;
    if (contains(tmpl, n, "[INST]")) return &LLAMA2;
    return NULL;
}

static int is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

/* A message's text, stripped of ASCII whitespace at its start and end as asked (Python's str.strip also strips
 * Unicode spaces such as U+00A0; a message starting or ending with one renders differently). */
static void put_message(text *out, const char *s, int trim_start, int trim_end) {
    size_t n = strlen(s);
    while (trim_start && n && is_space(*s)) s++, n--;
    while (trim_end && n && is_space(s[n - 1])) n--;
    put(out, s, n);
}

static void put_token(text *out, const qrt_tokenizer *tok, int32_t id) {
    size_t len = 0;
    const char *piece = id >= 0 ? qrt_tokenizer_token_text(tok, id, &len) : NULL;
    if (piece) put(out, piece, len);
}

/* Render the turns (plus system) in the template family of the GGUF; 0 if the file has no template of a known
 * family (the prompt is then fed as plain text). */
static int render_chat(const qrt_model *m, const qrt_tokenizer *tok, const options *o, text *out) {
    const char *tmpl;
    size_t n;
    if (qrt_model_meta_str(m, "tokenizer.chat_template", &tmpl, &n) != 0) return 0;
    const chat_family *f = chat_family_of(tmpl, n);
    if (!f) {
        fprintf(stderr, "qrun-native: the file's chat template is not ChatML, llama, Gemma or Phi-3 style: using "
                        "--raw\n");
        return 0;
    }
    if (o->verbose) fprintf(stderr, "qrun-native: chat prompt: %s\n", f->name);
    /* An empty --system is no system message, as in qrun; ChatML templates may then write their own. */
    const char *sys = o->system && *o->system ? o->system : NULL;
    size_t sys_len = sys ? strlen(sys) : 0;
    if (!sys && f == &CHATML) default_system(tmpl, n, &sys, &sys_len);

    if (f->template_bos && !qrt_tokenizer_add_bos(tok)) put_token(out, tok, qrt_tokenizer_bos(tok));
    if (sys && f->system_open) {
        puts_(out, f->system_open);
        put(out, sys, sys_len);
        puts_(out, f->system_close);
    }
    for (int i = 0; i < o->n_turns; i++) {
        if (i % 2 == 0) {
            if (i > 0 && f->bos_per_user) put_token(out, tok, qrt_tokenizer_bos(tok));
            puts_(out, f->user_open);
            const int folded = i == 0 && sys && !f->system_open;
            if (folded) {
                puts_(out, f->fold_open);
                put(out, sys, sys_len);
                puts_(out, f->fold_close);
            }
            put_message(out, o->turns[i], f->trim && !(folded && f->trim_with_fold), f->trim);
            puts_(out, f->user_close);
        } else {
            puts_(out, f->assistant_open);
            put_message(out, o->turns[i], f->trim, f->trim);
            puts_(out, f->assistant_close);
            if (f->eos_per_assistant) put_token(out, tok, qrt_tokenizer_eos(tok));
        }
    }
    if (f->generation) puts_(out, f->generation);
    return 1;
}

/* ---- embeddings ---- */

#define EMBED_BATCH 32 /* texts per qrt_model_embed call, as Model.embed's default batch */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A float as qrun prints it: the shortest %g text that reads back as the same float32; null if not finite. */
static void print_float(float v) {
    if (!isfinite(v)) {
        fputs("null", stdout);
        return;
    }
    char buf[32];
    for (int precision = 1; precision <= 9; precision++) {
        snprintf(buf, sizeof buf, "%.*g", precision, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    fputs(buf, stdout);
}

static int read_whole_file(const char *path, text *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) put(out, chunk, n);
    const int bad = ferror(f);
    fclose(f);
    if (!out->s) put(out, "", 0);
    return bad ? -1 : 0;
}

/* Embed each text (--embed's one, or each line of --embed-file: split on newlines only, a CR before a newline
 * dropped, nothing after a final newline) in batches of EMBED_BATCH and print one JSON array per text. */
static int run_embed(qrt_model *m, const qrt_tokenizer *tok, const options *o) {
    text file = {0};
    const char *data = o->embed_text;
    size_t size = data ? strlen(data) : 0;
    if (o->embed_file) {
        if (read_whole_file(o->embed_file, &file) != 0) return fail("cannot read the texts file", o->embed_file);
        data = file.s;
        size = file.len;
    }
    const int dim = qrt_model_n_embd(m), max_tokens = qrt_model_embed_max_tokens(m);
    int32_t *ids = malloc(sizeof *ids * (size_t)max_tokens * EMBED_BATCH);
    float *vectors = malloc(sizeof *vectors * (size_t)dim * EMBED_BATCH);
    if (!ids || !vectors) return fail("out of memory", NULL);
    int32_t lens[EMBED_BATCH];
    double seconds = 0.0;
    long n_texts = 0, n_tokens = 0;
    size_t pos = 0;
    int done = 0;
    while (!done) {
        int n = 0, n_ids = 0;
        while (n < EMBED_BATCH && !done) {
            size_t end = pos;
            if (o->embed_file) {
                if (pos == size) { /* no text after a final newline (or in an empty file) */
                    done = 1;
                    break;
                }
                while (end < size && data[end] != '\n') end++;
            } else {
                end = size;
            }
            size_t len = end - pos;
            if (o->embed_file && len > 0 && data[end - 1] == '\r' && end < size) len--;
            const int32_t got = qrt_tokenizer_encode_truncated(tok, data + pos, len, max_tokens, ids + n_ids, max_tokens);
            if (got < 0) return fail("cannot tokenize a text (out of memory)", NULL);
            lens[n++] = got;
            n_ids += got;
            pos = end < size ? end + 1 : end;
            if (!o->embed_file || pos == size) done = 1;
        }
        if (n == 0) break;
        /* one untimed warm-up run of the first text (its pages and the pool's threads), as llama.cpp's tools
         * warm up before they time */
        if (n_texts == 0 && qrt_model_embed(m, ids, lens, 1, vectors) != 0) return fail(qrt_model_error(m), NULL);
        const double t0 = now_s();
        if (qrt_model_embed(m, ids, lens, n, vectors) != 0) return fail(qrt_model_error(m), NULL);
        seconds += now_s() - t0;
        n_texts += n;
        n_tokens += n_ids;
        for (int i = 0; i < n; i++) {
            fputc('[', stdout);
            for (int d = 0; d < dim; d++) {
                if (d) fputc(',', stdout);
                print_float(vectors[(size_t)i * dim + d]);
            }
            fputs("]\n", stdout);
        }
    }
    if (fflush(stdout) != 0) return fail("cannot write the output", NULL);
    fprintf(stderr, "embed: %ld texts, %ld tokens, %.2f ms, %.1f texts/s\n", n_texts, n_tokens, 1e3 * seconds,
            seconds > 0 ? (double)n_texts / seconds : 0.0);
    free(ids);
    free(vectors);
    free(file.s);
    return 0;
}

/* ---- generation ---- */

int main(int argc, char **argv) {
    options o;
    if (parse_args(argc, argv, &o) != 0) return 1;
    qrt_mapped_file_guard_install("qrun-native"); /* a model file truncated while mapped: one line, not SIGBUS */
    if (o.kernel && qrt_kernels_force(o.kernel) != 0)
        fprintf(stderr, "qrun-native: kernel variant '%s' not available on this CPU: using the best one\n",
                o.kernel);

    qrt_model_params params = qrt_model_default_params();
    params.n_ctx = o.ctx;
    params.n_threads = o.threads;
    params.kv_f32 = o.kv_f32;
    char err[1024];
    qrt_model *m = qrt_model_open(o.model, &params, err, sizeof err);
    if (!m) return fail(err, NULL);
    qrt_tokenizer *tok = qrt_tokenizer_from_gguf(qrt_model_gguf(m), o.model, err, sizeof err);
    if (!tok) return fail(err, NULL);
    if (o.verbose) {
        fprintf(stderr, "qrun-native: %s: %s\n", o.model, qrt_model_describe(m));
        fprintf(stderr, "qrun-native: %d threads, context %d, KV cache %zu MiB\n", qrt_model_n_threads(m),
                qrt_model_n_ctx(m), qrt_model_kv_bytes(m) >> 20);
        int types[32];
        const int nt = qrt_model_weight_types(m, types, 32);
        for (int i = 0; i < nt; i++) {
            qrt_type_info_t info;
            const char *variant = qrt_kernel_variant_for_type(types[i]);
            if (qrt_type_info(types[i], &info) == 0)
                fprintf(stderr, "qrun-native: kernel %s: %s%s\n", info.name, variant ? variant : "none",
                        qrt_model_type_packed(m, types[i]) ? ", packed x16" : "");
        }
    }

    if (o.embed_text || o.embed_file) {
        const int status = run_embed(m, tok, &o);
        qrt_tokenizer_free(tok);
        qrt_model_free(m);
        return status;
    }
    if (qrt_model_is_encoder(m)) return fail("the model is an embedding model: use --embed TEXT or --embed-file FILE", o.model);

    text prompt = {0};
    if (o.raw || !render_chat(m, tok, &o, &prompt)) {
        if (o.n_turns > 1) return fail("earlier turns (--assistant) need a chat template the file lacks", NULL);
        puts_(&prompt, o.turns[0]);
    }
    if (o.print_prompt) {
        if (prompt.len) fwrite(prompt.s, 1, prompt.len, stdout);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    int32_t cap = (int32_t)prompt.len + 8;
    int32_t *ids = malloc(sizeof *ids * (size_t)cap);
    int32_t n_ids = ids ? qrt_tokenizer_encode(tok, prompt.s, prompt.len, 1, 1, ids, cap) : INT32_MIN;
    if (n_ids < 0 && n_ids != INT32_MIN) {
        cap = -n_ids;
        ids = realloc(ids, sizeof *ids * (size_t)cap);
        n_ids = ids ? qrt_tokenizer_encode(tok, prompt.s, prompt.len, 1, 1, ids, cap) : INT32_MIN;
    }
    if (n_ids < 0) return fail("out of memory tokenizing the prompt", NULL);
    if (n_ids == 0) return fail("empty prompt", NULL);
    if (n_ids > qrt_model_n_ctx(m)) return fail("the prompt does not fit the context (use a larger -c)", NULL);

    qrt_sampler_params sp = qrt_sampler_default_params();
    sp.temperature = o.temp;
    sp.top_k = o.top_k;
    sp.top_p = o.top_p;
    sp.min_p = o.min_p;
    sp.repeat_penalty = o.repeat_penalty;
    sp.repeat_last_n = o.repeat_last_n;
    sp.seed = o.seed;
    const int n_vocab = qrt_model_n_vocab(m);
    qrt_sampler *s = qrt_sampler_new(&sp, n_vocab);
    qrt_detokenizer *detok = qrt_detokenizer_new(tok, 0);
    if (!s || !detok) return fail("bad sampler parameters or out of memory", NULL);
    for (int i = 0; i < n_ids; i++) qrt_sampler_accept(s, ids[i]);
    if (qrt_model_eval(m, ids, n_ids, NULL) != 0) return fail(qrt_model_error(m), NULL);

    for (int i = 0; i < o.n_predict; i++) {
        const int32_t token = qrt_sampler_sample(s, qrt_model_logits(m), n_vocab);
        if (!o.ignore_eos && qrt_tokenizer_is_eog(tok, token)) break;
        qrt_sampler_accept(s, token);
        size_t len;
        const char *piece = qrt_detokenizer_feed(detok, token, &len);
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
        if (qrt_model_n_past(m) >= qrt_model_n_ctx(m)) break;
        if (qrt_model_eval(m, &token, 1, NULL) != 0) return fail(qrt_model_error(m), NULL);
    }
    size_t len;
    const char *tail = qrt_detokenizer_flush(detok, &len);
    fwrite(tail, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);

    double ps, gs;
    int pt, gt;
    qrt_model_timings(m, &ps, &pt, &gs, &gt);
    fprintf(stderr, "prompt: %d tokens, %.1f tok/s | generation: %d tokens, %.1f tok/s\n", pt, ps > 0 ? pt / ps : 0.0,
            gt, gs > 0 ? gt / gs : 0.0);
    if (o.verbose && ps + gs > 0)
        fprintf(stderr, "qrun-native: serial share %.1f%% (eval time with the calling thread working alone)\n",
                100.0 * (1.0 - qrt_model_pool_seconds(m) / (ps + gs)));
    qrt_detokenizer_free(detok);
    qrt_sampler_free(s);
    qrt_tokenizer_free(tok);
    qrt_model_free(m);
    free(ids);
    free(prompt.s);
    return 0;
}
