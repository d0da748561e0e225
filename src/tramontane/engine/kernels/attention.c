#include "attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

typedef struct {
    const decode_attention *step;
    _Atomic int failed;
} attention_job;

/* Heads this large or smaller keep their rotated query on the stack. */
#define MAX_HEAD_DIM 512

#if defined(__x86_64__)
#define VECTORIZED __attribute__((target("avx2,fma")))
#else
#define VECTORIZED
#endif

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

/* One sequence and one key head: rotates and stores the token's key and value,
 * then the query heads of the group read each key and value once. */
static VECTORIZED void attention_chunk(void *ctx, int chunk) {
    attention_job *job = ctx;
    const decode_attention *st = job->step;
    const int b = chunk / st->KVH, g = chunk % st->KVH;
    const int group = st->H / st->KVH, D = st->D;
    const float *token = st->qkv + (size_t)b * (st->H + 2 * st->KVH) * D;
    const float *cos = st->cos + (size_t)b * D, *sin = st->sin + (size_t)b * D;
    const size_t new_row = ((size_t)st->new_slots[b] * st->KVH + g) * D;
    rotate(st->k_cache + new_row, token + (size_t)(st->H + g) * D, cos, sin, D);
    memcpy(st->v_cache + new_row, token + (size_t)(st->H + st->KVH + g) * D, (size_t)D * sizeof(float));

    const int len = (int)st->context_lens[b];
    const int first = st->window > 0 && len > st->window ? len - st->window : 0;
    const int n = len - first;
    const int64_t *slots = st->key_slots + (size_t)b * st->Lk + first;
    float *scores = malloc((size_t)n * sizeof(float));
    if (scores == NULL) {
        job->failed = 1;
        return;
    }
    float q[MAX_HEAD_DIM];
    for (int h = 0; h < group; h++) {
        const int head = g * group + h;
        rotate(q, token + (size_t)head * D, cos, sin, D);
        float top = -INFINITY;
        for (int j = 0; j < n; j++) {
            scores[j] = st->scale * dot(q, st->k_cache + ((size_t)slots[j] * st->KVH + g) * D, D);
            top = scores[j] > top ? scores[j] : top;
        }
        float total = 0.0f;
        for (int j = 0; j < n; j++) total += (scores[j] = expf(scores[j] - top));
        float *o = st->out + ((size_t)b * st->H + head) * D;
        memset(o, 0, (size_t)D * sizeof(float));
        for (int j = 0; j < n; j++) add_scaled(o, st->v_cache + ((size_t)slots[j] * st->KVH + g) * D, scores[j] / total, D);
    }
    free(scores);
}

int attention_decode(const decode_attention *step) {
    if (step->D > MAX_HEAD_DIM || step->D % 2) return -2;
    attention_job job = {.step = step};
    pool_run(attention_chunk, &job, step->B * step->KVH);
    return job.failed ? -1 : 0;
}
