/* What matmul.c shares with the kernels of each instruction set
 * (matmul_avx2.c, matmul_vnni.c): the quantized rows of x, the job, and the
 * functions that compute a part of y. Internal to the kernels. */
#ifndef TRAMONTANE_MATMUL_KERNELS_H
#define TRAMONTANE_MATMUL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "matmul.h"

/* x rounded to 8 bits: q[M, K], and per block its scale and scale * sum(q) (what
 * Q4_1's offset m multiplies), laid out as the active instruction set's kernels
 * multiply them:
 *   AVX2, per group of 4 blocks: scales s0..s3 twice over (one copy per 128-bit
 *         half of a block's sums), then sums S0..S3 and 4 zeros; [M, groups, 8] each.
 *   VNNI, per block: its scale [M, K / 32] and its sum [M, K / 32]. */
typedef struct {
    int8_t *q;
    float *scales;
    float *sums;
} quantized_rows;

/* Blocks per AVX2 group and groups per row. */
#define GROUP 4
#define GROUPS(nb) (((nb) + GROUP - 1) / GROUP)
/* Weight rows per vector in the VNNI kernels that give each row a lane. */
#define LANES 16

typedef struct {
    quantized_rows x;
    enum isa isa;
    int M, K, N;
    const uint8_t *qs; /* Q4_1 or Q8_0 bytes */
    const uint16_t *d, *m;
    float *y;
    int n_tile, n_tiles;
} matmul_job;

/* Computes y[m0..m1, n0..n1]. */
typedef void (*rows_fn)(const matmul_job *job, int n0, int n1, int m0, int m1);

#if defined(__x86_64__)
void q4_1_avx2(const matmul_job *job, int n0, int n1, int m0, int m1);
void q8_0_avx2(const matmul_job *job, int n0, int n1, int m0, int m1);
void q4_1_vnni(const matmul_job *job, int n0, int n1, int m0, int m1);
void q8_0_vnni(const matmul_job *job, int n0, int n1, int m0, int m1);
#endif

#endif
