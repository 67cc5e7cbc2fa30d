/* sampler.c — token sampling: repetition penalties, then top-k, top-p, min-p, temperature, a seeded draw.
 *
 * The order and the definitions are llama.cpp's default chain (common/sampling.cpp, src/llama-sampler.cpp):
 *   penalties: for each token among the last N accepted, logit <= 0 ? logit * repeat : logit / repeat, then
 *              logit -= count * frequency + presence;
 *   top-k:     keep the k highest logits;
 *   top-p:     softmax over what is left, keep the smallest best-first prefix whose mass reaches p;
 *   min-p:     keep logits >= max logit + ln(min_p) (probability >= min_p * the highest probability);
 *   temperature, softmax, draw. temperature <= 0 is greedy: the argmax after penalties.
 * Every buffer is allocated in qrt_sampler_new; sampling a token allocates nothing. Selection is by
 * quickselect, and top-p sorts only as large a best-first prefix as it needs, so a 262k vocabulary costs a
 * few linear passes per token, not a full sort.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "size_math.h"

/* ---- PCG32 ---------------------------------------------------------------------------------------------- */

void pcg32_seed(pcg32 *rng, uint64_t seed) {
    rng->state = 0;
    rng->inc = (seed << 1) | 1u;
    pcg32_next(rng);
    rng->state += seed ^ 0x853C49E6748FEA9Bull;
    pcg32_next(rng);
}

uint32_t pcg32_next(pcg32 *rng) {
    uint64_t old = rng->state;
    rng->state = old * 6364136223846793005ull + rng->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

double pcg32_uniform(pcg32 *rng) {
    uint64_t hi = pcg32_next(rng) >> 5, lo = pcg32_next(rng) >> 6; /* 27 + 26 bits */
    return (double)(hi * 67108864u + lo) * (1.0 / 9007199254740992.0);
}

/* ---- selection ------------------------------------------------------------------------------------------ */

static inline int better(const sampler_candidate *a, const sampler_candidate *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static inline void swap_candidates(sampler_candidate *a, sampler_candidate *b) {
    sampler_candidate t = *a;
    *a = *b;
    *b = t;
}

/* A heap with the worst candidate at the root (children are better than their parent). */
static void sift_down_worst_root(sampler_candidate *c, int32_t root, int32_t n) {
    for (;;) {
        int32_t child = 2 * root + 1;
        if (child >= n) return;
        if (child + 1 < n && better(&c[child], &c[child + 1])) child++;
        if (!better(&c[root], &c[child])) return;
        swap_candidates(&c[root], &c[child]);
        root = child;
    }
}

void sampler_select_top(sampler_candidate *c, int32_t n, int32_t k) {
    if (k <= 0 || k >= n) return;
    if (k <= 1024) {
        /* small k (top-k sampling): one pass against the worst of the best k so far; most candidates lose
         * that single comparison, so this is a near-branchless linear scan */
        for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down_worst_root(c, i, k);
        for (int32_t i = k; i < n; i++)
            if (better(&c[i], &c[0])) {
                swap_candidates(&c[i], &c[0]);
                sift_down_worst_root(c, 0, k);
            }
        return;
    }
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        /* median of three as the pivot, moved to hi */
        int32_t mid = lo + (hi - lo) / 2;
        if (better(&c[mid], &c[lo])) swap_candidates(&c[mid], &c[lo]);
        if (better(&c[hi], &c[lo])) swap_candidates(&c[hi], &c[lo]);
        if (better(&c[mid], &c[hi])) swap_candidates(&c[mid], &c[hi]);
        sampler_candidate pivot = c[hi];
        int32_t store = lo;
        for (int32_t i = lo; i < hi; i++)
            if (better(&c[i], &pivot)) swap_candidates(&c[i], &c[store++]);
        swap_candidates(&c[store], &c[hi]);
        /* c[lo..store) beat the pivot, c[store] is the pivot */
        if (store == k || store == k - 1) return;
        if (store > k) hi = store - 1;
        else lo = store + 1;
    }
}

/* ---- the sampler ---------------------------------------------------------------------------------------- */

struct qrt_sampler {
    qrt_sampler_params params;
    int32_t n_vocab;
    sampler_candidate *candidates; /* n_vocab */
    float *logits;                 /* n_vocab: the penalized copy */
    uint32_t *counts;              /* n_vocab: occurrences in the window */
    uint32_t *applied;             /* n_vocab: round stamp, so each token is penalized once per round */
    uint32_t round;
    int32_t *window; /* ring of the last repeat_last_n accepted tokens */
    int32_t window_len, window_head;
    pcg32 rng;
};

qrt_sampler_params qrt_sampler_default_params(void) {
    qrt_sampler_params p;
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.seed = 0;
    return p;
}

void qrt_sampler_free(qrt_sampler *s) {
    if (!s) return;
    free(s->candidates);
    free(s->logits);
    free(s->counts);
    free(s->applied);
    free(s->window);
    free(s);
}

qrt_sampler *qrt_sampler_new(const qrt_sampler_params *params, int32_t n_vocab) {
    if (!params || n_vocab <= 0 || params->repeat_last_n < 0 || params->repeat_penalty <= 0.0f ||
        isnan(params->temperature) || isnan(params->top_p) || isnan(params->min_p))
        return NULL;
    qrt_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->params = *params;
    s->n_vocab = n_vocab;
    s->candidates = malloc((size_t)n_vocab * sizeof *s->candidates);
    s->logits = malloc((size_t)n_vocab * sizeof *s->logits);
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    s->applied = calloc((size_t)n_vocab, sizeof *s->applied);
    s->window = qrt_malloc(qrt_array_bytes((uint64_t)params->repeat_last_n + 1, sizeof *s->window)); /* no wrap on 32-bit */
    if (!s->candidates || !s->logits || !s->counts || !s->applied || !s->window) {
        qrt_sampler_free(s);
        return NULL;
    }
    qrt_sampler_reset(s);
    return s;
}

void qrt_sampler_reset(qrt_sampler *s) {
    memset(s->counts, 0, (size_t)s->n_vocab * sizeof *s->counts);
    s->window_len = s->window_head = 0;
    pcg32_seed(&s->rng, s->params.seed);
}

void qrt_sampler_accept(qrt_sampler *s, int32_t token) {
    int32_t cap = s->params.repeat_last_n;
    if (cap == 0 || token < 0 || token >= s->n_vocab) return;
    if (s->window_len == cap) { /* the oldest token leaves the window */
        int32_t old = s->window[s->window_head];
        s->counts[old]--;
        s->window[s->window_head] = token;
        s->window_head = (s->window_head + 1) % cap;
    } else {
        s->window[(s->window_head + s->window_len) % cap] = token;
        s->window_len++;
    }
    s->counts[token]++;
}

static int penalties_apply(const qrt_sampler_params *p) {
    return p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
}

/* The first index of the largest logit (a NaN never wins; index 0 when logits[0] is NaN, as a plain scan gives).
 * Two passes of independent operations instead of one dependent scan: greedy decoding of a batch samples every
 * stream's row between two forward calls, and the scan was a tenth of a step. */
static int32_t argmax_first(const float *logits, int32_t n) {
    float lane[8];
    for (int k = 0; k < 8; k++) lane[k] = logits[0];
    int32_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) lane[k] = logits[i + k] > lane[k] ? logits[i + k] : lane[k];
    float best = lane[0];
    for (int k = 1; k < 8; k++) best = lane[k] > best ? lane[k] : best;
    for (; i < n; i++) best = logits[i] > best ? logits[i] : best;
    if (best != best) return 0;
    for (i = 0; i < n; i++)
        if (logits[i] == best) return i;
    return 0;
}

static void apply_penalties(qrt_sampler *s) {
    const qrt_sampler_params *p = &s->params;
    if (!penalties_apply(p)) return;
    if (++s->round == 0) { /* stamp wrapped: clear it */
        memset(s->applied, 0, (size_t)s->n_vocab * sizeof *s->applied);
        s->round = 1;
    }
    for (int32_t i = 0; i < s->window_len; i++) {
        int32_t id = s->window[i];
        if (s->applied[id] == s->round) continue;
        s->applied[id] = s->round;
        float logit = s->logits[id];
        logit = logit <= 0.0f ? logit * p->repeat_penalty : logit / p->repeat_penalty;
        uint32_t count = s->counts[id];
        logit -= (float)count * p->frequency_penalty + (float)(count > 0) * p->presence_penalty;
        s->logits[id] = logit;
    }
}

static float max_logit_of(const sampler_candidate *c, int32_t n) {
    float m = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if (c[i].logit > m) m = c[i].logit;
    return m;
}

/* Move the candidates with logit >= min_logit to the front; returns how many there are. */
static int32_t keep_at_least(sampler_candidate *c, int32_t n, float min_logit) {
    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++)
        if (c[i].logit >= min_logit) swap_candidates(&c[kept++], &c[i]);
    return kept;
}

/* top-p over the distribution of c[0..n), searching only c[0..m) (the min-p survivors, a best-first prefix of
 * the same order, so the final set is the shorter of the two prefixes). Moves the smallest set of best
 * candidates whose mass reaches p to the front and returns its size (m if c[0..m) holds less than p). A
 * quickselect on mass instead of a sort: expected linear time even when the set is most of the vocabulary. */
static int32_t top_p_prefix(sampler_candidate *c, int32_t n, int32_t m, float p) {
    float max_logit = max_logit_of(c, n);
    double total = 0.0, kept_mass = 0.0;
    for (int32_t i = 0; i < n; i++) {
        c[i].weight = expf(c[i].logit - max_logit);
        total += c[i].weight;
        if (i < m) kept_mass += c[i].weight;
    }
    double target = (double)p * total;
    if (kept_mass < target) return m;
    /* invariant: c[0..lo) beat everything in c[lo..hi), acc is their mass, acc + mass(c[lo..hi)) >= target */
    int32_t lo = 0, hi = m;
    double acc = 0.0;
    while (hi - lo > 1) {
        int32_t mid = lo + (hi - lo) / 2, last = hi - 1;
        if (better(&c[mid], &c[lo])) swap_candidates(&c[mid], &c[lo]);
        if (better(&c[last], &c[lo])) swap_candidates(&c[last], &c[lo]);
        if (better(&c[mid], &c[last])) swap_candidates(&c[mid], &c[last]);
        sampler_candidate pivot = c[last];
        int32_t store = lo;
        double better_mass = 0.0;
        for (int32_t i = lo; i < last; i++)
            if (better(&c[i], &pivot)) {
                better_mass += c[i].weight;
                swap_candidates(&c[i], &c[store++]);
            }
        swap_candidates(&c[store], &c[last]);
        if (acc + better_mass >= target) {
            hi = store;
        } else {
            acc += better_mass + pivot.weight;
            if (acc >= target) return store + 1;
            lo = store + 1;
        }
    }
    return lo + 1;
}

int32_t qrt_sampler_sample(qrt_sampler *s, const float *logits, int32_t n_vocab) {
    if (n_vocab != s->n_vocab) return -1;
    const qrt_sampler_params *p = &s->params;
    if (p->temperature <= 0.0f && !penalties_apply(p)) return argmax_first(logits, n_vocab);
    memcpy(s->logits, logits, (size_t)n_vocab * sizeof *logits);
    apply_penalties(s);
    if (p->temperature <= 0.0f) return argmax_first(s->logits, n_vocab);

    sampler_candidate *c = s->candidates;
    for (int32_t i = 0; i < n_vocab; i++) {
        c[i].logit = s->logits[i];
        c[i].id = i;
    }
    int32_t n = n_vocab;
    if (p->top_k > 0 && p->top_k < n) {
        sampler_select_top(c, n, p->top_k);
        n = p->top_k;
    }
    /* min-p keeps logit >= max + ln(min_p); the max survives top-p, so applying it after top-p (llama.cpp's
     * order) or restricting top-p's search to its survivors gives the same set */
    int32_t m = n;
    if (p->min_p > 0.0f) m = keep_at_least(c, n, max_logit_of(c, n) + logf(p->min_p));
    if (m == 0) { /* min_p > 1 asks for more than the best token has: keep the best */
        sampler_select_top(c, n, 1);
        m = 1;
    }
    n = p->top_p < 1.0f ? top_p_prefix(c, n, m, p->top_p) : m;

    float max_logit = max_logit_of(c, n);
    double total = 0.0;
    for (int32_t i = 0; i < n; i++) {
        /* the probability of each survivor, kept in its logit slot */
        c[i].logit = expf((c[i].logit - max_logit) / p->temperature);
        total += c[i].logit;
    }
    double r = pcg32_uniform(&s->rng) * total, cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += c[i].logit;
        if (r < cum) return c[i].id;
    }
    return c[n - 1].id; /* rounding left r at the very top */
}
