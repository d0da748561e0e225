/* Attention over the paged KV cache on the CPU, float32, reading each sequence's
 * keys through its list of cache slots. A decode step (one new token per sequence)
 * also rotates the token's query and key (RoPE) and writes its key and value. */
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

/* Attention of any number of query tokens whose keys and values are already in
 * the cache (a prefill), each computed on its own, so that a token's result does
 * not depend on how many others share its call (a prompt computed whole or after a
 * prefix-cache hit gives the same output). */
typedef struct {
    int T, H, KVH, D;             /* query tokens, query heads, key/value heads, head size */
    const float *q;               /* [T, H, D], rotated */
    const float *k_cache, *v_cache;
    const int64_t *key_slots;     /* [B, Lk], each sequence's keys in position order */
    const int64_t *token_seqs;    /* [T]: the sequence (row of key_slots) of each token */
    const int64_t *token_lens;    /* [T]: keys each token sees (its position + 1) */
    int Lk, window;
    float scale;
    float *out;                   /* [T, H * D] */
} prefill_attention;

int attention_prefill(const prefill_attention *step);

#endif
