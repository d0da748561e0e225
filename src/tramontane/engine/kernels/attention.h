/* Decode attention over the paged KV cache: one new query token per sequence,
 * attending to its context through its list of cache slots (float32). */
#ifndef TRAMONTANE_ATTENTION_H
#define TRAMONTANE_ATTENTION_H

#include <stdint.h>

/* q [B, H, D]; k_cache, v_cache [slots, KVH, D]; key_slots [B, Lk], of which the
 * first context_lens[b] are sequence b's keys in position order; window > 0 keeps
 * only the last `window` of them (sliding window). out [B, H, D]. Query heads share
 * key heads in groups of H / KVH. Returns 0, or -1 when out of memory. Runs on the
 * pool. */
int attention_decode(const float *q, const float *k_cache, const float *v_cache, const int64_t *key_slots,
                     const int64_t *context_lens, int B, int H, int KVH, int D, int Lk, int window, float scale,
                     float *out);

#endif
