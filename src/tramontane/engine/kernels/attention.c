#include "attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "vector_math.h"

typedef struct {
    const decode_attention *step;
    _Atomic int failed;
} attention_job;

/* Heads this large or smaller keep their rotated query on the stack. */
#define MAX_HEAD_DIM 512

/* Eight partial sums, one per lane, so that the compiler vectorizes without
 * reassociating (no -ffast-math). */
static VECTORIZED float dot(const float *a, const float *b, int n) {
    float lanes[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) lanes[l] += a[i + l] * b[i + l];
    float s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static VECTORIZED void add_scaled(float *acc, const float *x, float w, int n) {
    for (int i = 0; i < n; i++) acc[i] += w * x[i];
}

/* x rotated by RoPE at one position: x * cos + rotate_half(x) * sin, the sign of
 * rotate_half being in the sine table. */
static VECTORIZED void rotate(float *out, const float *x, const float *cos, const float *sin, int D) {
    const int half = D / 2;
    for (int i = 0; i < half; i++) out[i] = x[i] * cos[i] + x[i + half] * sin[i];
    for (int i = half; i < D; i++) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

#if defined(__x86_64__)
/* The scores of 8 keys against q: the same sums as dot()'s, lane by lane and then
 * the same tree, so that a key's score does not depend on the keys beside it; the
 * trees of the 8 keys share their additions (horizontal adds, 4 keys per half). */
static VECTORIZED __m256 dot8(const float *q, const float *const keys[8], int D) {
    __m256 acc[8];
    for (int l = 0; l < 8; l++) acc[l] = _mm256_setzero_ps();
    for (int i = 0; i < D; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        for (int l = 0; l < 8; l++) acc[l] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys[l] + i), acc[l]);
    }
    const __m256 first = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    const __m256 second = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(first, second, 0x20), _mm256_permute2f128_ps(first, second, 0x31));
}

/* One key's score, computed as in dot8. */
static VECTORIZED float dot1(const float *q, const float *key, int D) {
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < D; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(key + i), acc);
    const __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(acc, acc), _mm256_hadd_ps(acc, acc));
    return _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1)));
}
#endif

/* scale * q . k_j for the n keys in `slots` of key head g, into scores. */
static VECTORIZED void score(const float *q, const float *k_cache, const int64_t *slots, int n, int KVH, int g, int D,
                             float scale, float *scores) {
    int j = 0;
#if defined(__x86_64__)
    if (D % 8 == 0) {
        for (; j + 8 <= n; j += 8) {
            const float *keys[8];
            for (int l = 0; l < 8; l++) keys[l] = k_cache + ((size_t)slots[j + l] * KVH + g) * D;
            _mm256_storeu_ps(scores + j, _mm256_mul_ps(_mm256_set1_ps(scale), dot8(q, keys, D)));
        }
        for (; j < n; j++) scores[j] = scale * dot1(q, k_cache + ((size_t)slots[j] * KVH + g) * D, D);
    }
#endif
    for (; j < n; j++) scores[j] = scale * dot(q, k_cache + ((size_t)slots[j] * KVH + g) * D, D);
}

/* out = softmax(scale * q . k_j) . v_j over the n keys in `slots` of key head g:
 * one query head, its keys in position order, summed in that order whatever else
 * is computed beside it (so a token's result does not depend on its batch). */
static VECTORIZED void attend(const float *q, const float *k_cache, const float *v_cache, const int64_t *slots, int n,
                              int KVH, int g, int D, float scale, float *scores, float *out) {
    score(q, k_cache, slots, n, KVH, g, D, scale, scores);
    float top = -INFINITY;
    for (int j = 0; j < n; j++) top = scores[j] > top ? scores[j] : top;
    for (int j = 0; j < n; j++) scores[j] -= top;
    exp_in_place(scores, n);
    float total = 0.0f;
    for (int j = 0; j < n; j++) total += scores[j];
    memset(out, 0, (size_t)D * sizeof(float));
    for (int j = 0; j < n; j++) add_scaled(out, v_cache + ((size_t)slots[j] * KVH + g) * D, scores[j] / total, D);
}

/* The keys a token at `len - 1` sees: all, or the last `window`. */
static int first_key(int len, int window) { return window > 0 && len > window ? len - window : 0; }

/* One sequence and one key head: rotates and stores the token's key and value,
 * then the query heads of the group attend. */
static VECTORIZED void decode_chunk(void *ctx, int chunk) {
    attention_job *job = ctx;
    const decode_attention *st = job->step;
    const int b = chunk / st->KVH, g = chunk % st->KVH;
    const int group = st->H / st->KVH, D = st->D;
    const float *token = st->qkv + (size_t)b * (st->H + 2 * st->KVH) * D;
    const float *cos = st->cos + (size_t)b * D, *sin = st->sin + (size_t)b * D;
    const size_t new_row = ((size_t)st->new_slots[b] * st->KVH + g) * D;
    rotate(st->k_cache + new_row, token + (size_t)(st->H + g) * D, cos, sin, D);
    memcpy(st->v_cache + new_row, token + (size_t)(st->H + st->KVH + g) * D, (size_t)D * sizeof(float));

    const int len = (int)st->context_lens[b], first = first_key(len, st->window);
    float *scores = malloc((size_t)(len - first) * sizeof(float));
    if (scores == NULL) {
        job->failed = 1;
        return;
    }
    float q[MAX_HEAD_DIM];
    for (int h = 0; h < group; h++) {
        const int head = g * group + h;
        rotate(q, token + (size_t)head * D, cos, sin, D);
        attend(q, st->k_cache, st->v_cache, st->key_slots + (size_t)b * st->Lk + first, len - first, st->KVH, g, D,
               st->scale, scores, st->out + ((size_t)b * st->H + head) * D);
    }
    free(scores);
}

int attention_decode(const decode_attention *step) {
    if (step->D > MAX_HEAD_DIM || step->D % 2) return -2;
    attention_job job = {.step = step};
    pool_run(decode_chunk, &job, step->B * step->KVH);
    return job.failed ? -1 : 0;
}

typedef struct {
    const prefill_attention *step;
    _Atomic int failed;
} prefill_job;

/* One query token and one key head. */
static void prefill_chunk(void *ctx, int chunk) {
    prefill_job *job = ctx;
    const prefill_attention *st = job->step;
    const int t = chunk / st->KVH, g = chunk % st->KVH;
    const int group = st->H / st->KVH, D = st->D;
    const int len = (int)st->token_lens[t], first = first_key(len, st->window);
    float *scores = malloc((size_t)(len - first) * sizeof(float));
    if (scores == NULL) {
        job->failed = 1;
        return;
    }
    const int64_t *slots = st->key_slots + (size_t)st->token_seqs[t] * st->Lk + first;
    for (int h = 0; h < group; h++) {
        const size_t row = (size_t)t * st->H + g * group + h;
        attend(st->q + row * D, st->k_cache, st->v_cache, slots, len - first, st->KVH, g, D, st->scale, scores,
               st->out + row * D);
    }
    free(scores);
}

int attention_prefill(const prefill_attention *step) {
    prefill_job job = {.step = step};
    pool_run(prefill_chunk, &job, step->T * step->KVH);
    return job.failed ? -1 : 0;
}
