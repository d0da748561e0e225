/* A decode step's attention on the CPU: one new token per sequence. For each
 * sequence it rotates the token's query and key (RoPE), writes its key and value
 * into the paged KV cache and attends to the sequence's context through its list
 * of cache slots. Float32 throughout. */
#ifndef TRAMONTANE_ATTENTION_H
#define TRAMONTANE_ATTENTION_H

#include <stdint.h>

typedef struct {
    int B, H, KVH, D; /* sequences, query heads, key/value heads, head size */
    /* [B, (H + 2 * KVH) * D]: each token's query heads, then its keys, then values. */
    const float *qkv;
    /* RoPE at each token's position [B, D], rotate-half layout, the sine's first half
     * negated. */
    const float *cos, *sin;
    float *k_cache, *v_cache;   /* [slots, KVH, D] */
    const int64_t *new_slots;   /* [B]: where this token's key and value go */
    const int64_t *key_slots;   /* [B, Lk]: the first context_lens[b] are sequence b's keys */
    const int64_t *context_lens; /* [B], the new token included */
    int Lk;
    int window; /* > 0: attend to the last `window` keys only (sliding window) */
    float scale;
    float *out; /* [B, H * D] */
} decode_attention;

/* Returns 0, or -1 when out of memory. Runs on the pool. */
int attention_decode(const decode_attention *step);

#endif
