/* A whole dense decoder layer (Llama/Mistral) for a decode step on the CPU, in
 * one call: at batch 1 a step is otherwise bound by the Python and operator
 * dispatch around its kernels, not by the kernels. */
#ifndef TRAMONTANE_LAYER_H
#define TRAMONTANE_LAYER_H

#include "attention.h"
#include "matmul.h"

typedef struct {
    int hidden, intermediate;
    float eps;
    const float *input_norm, *post_attention_norm; /* RMSNorm weights [hidden] */
    qweight qkv, o, gate_up, down; /* fused Q/K/V rows; gate rows then up rows */
} dense_layer;

/* x [B, hidden] += attention(rms_norm(x)), then x += mlp(rms_norm(x)), in place.
 * `attention` describes the step (cache, slots, RoPE); its B, qkv and out are set
 * here. Returns 0, -1 when out of memory, -2 for a head size attention refuses. */
int dense_layer_decode(const dense_layer *layer, float *x, int B, decode_attention *attention);

#endif
