#include "attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

typedef struct {
    const float *q, *k_cache, *v_cache;
    const int64_t *key_slots, *context_lens;
    int H, KVH, D, Lk, window;
    float scale;
    float *out;
    _Atomic int failed;
} attention_job;

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

/* One sequence and one key head: the query heads of its group read each key and
 * value once. */
static VECTORIZED void attention_chunk(void *ctx, int chunk) {
    attention_job *job = ctx;
    const int b = chunk / job->KVH, g = chunk % job->KVH;
    const int group = job->H / job->KVH, D = job->D;
    const int len = (int)job->context_lens[b];
    const int first = job->window > 0 && len > job->window ? len - job->window : 0;
    const int n = len - first;
    const int64_t *slots = job->key_slots + (size_t)b * job->Lk + first;
    float *scores = malloc((size_t)group * n * sizeof(float));
    if (scores == NULL) {
        job->failed = 1;
        return;
    }
    for (int h = 0; h < group; h++) {
        const int head = g * group + h;
        const float *q = job->q + ((size_t)b * job->H + head) * D;
        float *s = scores + (size_t)h * n, top = -INFINITY;
        for (int j = 0; j < n; j++) {
            s[j] = job->scale * dot(q, job->k_cache + ((size_t)slots[j] * job->KVH + g) * D, D);
            top = s[j] > top ? s[j] : top;
        }
        float total = 0.0f;
        for (int j = 0; j < n; j++) total += (s[j] = expf(s[j] - top));
        for (int j = 0; j < n; j++) s[j] /= total;
        float *o = job->out + ((size_t)b * job->H + head) * D;
        memset(o, 0, (size_t)D * sizeof(float));
        for (int j = 0; j < n; j++) add_scaled(o, job->v_cache + ((size_t)slots[j] * job->KVH + g) * D, s[j], D);
    }
    free(scores);
}

int attention_decode(const float *q, const float *k_cache, const float *v_cache, const int64_t *key_slots,
                     const int64_t *context_lens, int B, int H, int KVH, int D, int Lk, int window, float scale,
                     float *out) {
    attention_job job = {.q = q, .k_cache = k_cache, .v_cache = v_cache, .key_slots = key_slots,
                         .context_lens = context_lens, .H = H, .KVH = KVH, .D = D, .Lk = Lk,
                         .window = window, .scale = scale, .out = out};
    pool_run(attention_chunk, &job, B * KVH);
    return job.failed ? -1 : 0;
}
