#include "layer.h"

#include <math.h>
#include <stdlib.h>

#include "vector_math.h"

/* out = x / rms(x) * weight, per row, the mean of squares summed in double so that
 * it does not depend on the summation order (it matches PyTorch's to float32). */
static void rms_norm(const float *x, const float *weight, int B, int n, float eps, float *out) {
    for (int b = 0; b < B; b++) {
        const float *row = x + (size_t)b * n;
        double squares = 0.0;
        for (int i = 0; i < n; i++) squares += (double)row[i] * row[i];
        const float inv = 1.0f / sqrtf((float)(squares / n) + eps);
        for (int i = 0; i < n; i++) out[(size_t)b * n + i] = row[i] * inv * weight[i];
    }
}

static void add(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* SwiGLU: silu(gate) * up, gate and up the two halves of each row of gate_up;
 * e^-gate through the shared vector exp. */
static VECTORIZED void swiglu(const float *gate_up, int B, int n, float *out) {
    for (int b = 0; b < B; b++) {
        const float *gate = gate_up + (size_t)b * 2 * n, *up = gate + n;
        float *row = out + (size_t)b * n;
        for (int i = 0; i < n; i++) row[i] = -gate[i];
        exp_in_place(row, n);
        for (int i = 0; i < n; i++) row[i] = gate[i] / (1.0f + row[i]) * up[i];
    }
}

int dense_layer_decode(const dense_layer *layer, float *x, int B, decode_attention *attention) {
    const int hidden = layer->hidden, inter = layer->intermediate;
    /* Per row: the normed input, the Q/K/V or gate/up projection, the attention or
     * SwiGLU output, and the residual branch. */
    const size_t wide_n = (size_t)(layer->qkv.N > 2 * inter ? layer->qkv.N : 2 * inter);
    const size_t narrow_n = (size_t)(layer->o.K > inter ? layer->o.K : inter);
    float *normed = malloc(sizeof(float) * B * (2 * (size_t)hidden + wide_n + narrow_n));
    if (normed == NULL) return -1;
    float *wide = normed + (size_t)B * hidden, *narrow = wide + (size_t)B * wide_n;
    float *branch = narrow + (size_t)B * narrow_n;
    int status = 0;

    rms_norm(x, layer->input_norm, B, hidden, layer->eps, normed);
    if ((status = matmul(normed, B, &layer->qkv, wide))) goto done;
    attention->B = B;
    attention->qkv = wide;
    attention->out = narrow;
    if ((status = attention_decode(attention))) goto done;
    if ((status = matmul(narrow, B, &layer->o, branch))) goto done;
    add(x, branch, (size_t)B * hidden);

    rms_norm(x, layer->post_attention_norm, B, hidden, layer->eps, normed);
    if ((status = matmul(normed, B, &layer->gate_up, wide))) goto done;
    swiglu(wide, B, inter, narrow);
    if ((status = matmul(narrow, B, &layer->down, branch))) goto done;
    add(x, branch, (size_t)B * hidden);
done:
    free(normed);
    return status;
}
