/* Quantized matmuls for CPU inference: 4-bit (asymmetric, GGUF's Q4_1) and
 * 8-bit (symmetric, GGUF's Q8_0) weights in blocks of 32 along the input, with
 * activations rounded to 8 bits per block of 32 with a scale of their own; the
 * products are summed in integers (AVX2's u8*s8 pairs, or AVX-512 VNNI's dot
 * products) and each block's sum is scaled once in float. Keeping GGUF's block
 * formats keeps a GGUF file's own weights exactly.
 *
 * Weights are stored as arrays (not GGUF's interleaved blocks), so that scales
 * load as vectors:
 *   Q4_1: qs  uint8 [N, K / 2], d and m IEEE half [N, K / 32]; w = d * q + m.
 *         Blocks go in pairs: byte i of a pair's 32 holds element i of the first
 *         block in its low nibble and element i of the second in its high one,
 *         so that one mask and one shift unpack two whole blocks.
 *   Q8_0: qs  int8 [N, K], d IEEE half [N, K / 32]; w = d * q.
 */
#ifndef TRAMONTANE_MATMUL_H
#define TRAMONTANE_MATMUL_H

#include <stdint.h>

#define QBLOCK 32

enum isa { ISA_NONE = 0, ISA_AVX2 = 1, ISA_AVX512_VNNI = 2 };

/* The best instruction set this CPU has for the kernels. */
enum isa matmul_detect_isa(void);

/* The instruction set the kernels run with (at most the detected one). */
void matmul_set_isa(enum isa isa);
enum isa matmul_isa(void);

/* A weight matrix [N, K] in one of the two formats (m is NULL for Q8_0). */
typedef struct {
    int N, K;
    const uint8_t *qs;
    const uint16_t *d, *m;
} qweight;

/* y[M, N] = x[M, K] @ w^T; x and y float32, row-major. Q4_1 needs K to be a
 * multiple of 64 (whole pairs of blocks), Q8_0 of 32. Returns 0, or -1 when out
 * of memory. Runs on the pool. */
int matmul(const float *x, int M, const qweight *w, float *y);

#endif
