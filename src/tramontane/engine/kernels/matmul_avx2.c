/* The AVX2 kernels: x's 8-bit rows against weight rows, u8 * s8 products in
 * pairs (maddubs), summed per group of 4 blocks before their scales. */
#include "matmul_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* Defines `name`, a rows_fn that covers its part of y with tiles of `tile`, each
 * call inlined with constant sizes: NR weight rows by MR rows of x, or for a
 * single row of x (decode) 4 weight rows, which gives the core 4 independent
 * sums; the edges get the smaller tiles they need. */
#define TILED_KERNEL(name, tile, NR, MR)                                                 \
    void name(const matmul_job *job, int n0, int n1, int m0, int m1) {                  \
        if (m1 - m0 == 1) {                                                              \
            int n = n0;                                                                  \
            for (; n + 4 <= n1; n += 4) tile(job, n, m0, 4, 1);                          \
            for (; n < n1; n++) tile(job, n, m0, 1, 1);                                  \
            return;                                                                      \
        }                                                                                \
        for (int n = n0; n < n1; n += NR) {                                              \
            const int nr = n1 - n < NR ? n1 - n : NR;                                    \
            int r = m0;                                                                  \
            for (; r + MR <= m1; r += MR) {                                              \
                if (nr == NR) tile(job, n, r, NR, MR);                                   \
                else for (int i = 0; i < nr; i++) tile(job, n + i, r, 1, MR);            \
            }                                                                            \
            for (; r < m1; r++)                                                          \
                for (int i = 0; i < nr; i++) tile(job, n + i, r, 1, 1);                  \
        }                                                                                \
    }

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* A group's 4 (or, at a row's end, `n` < 4) half-precision values, converted and
 * repeated in both 128-bit halves: the order of a group's block sums. */
static inline __m256 group_halves(const uint16_t *h, int n) {
    __m128i raw;
    if (n == GROUP) raw = _mm_loadl_epi64((const __m128i *)h);
    else if (n == 2) raw = _mm_cvtsi32_si128(*(const int *)h);
    else {
        uint16_t part[GROUP] = {0};
        for (int i = 0; i < n; i++) part[i] = h[i];
        raw = _mm_loadl_epi64((const __m128i *)part);
    }
    const __m128 v = _mm_cvtph_ps(raw);
    return _mm256_set_m128(v, v);
}

/* A group's 4 block sums, as lane j < 4: block j's over the low 128-bit half of
 * its products, lane 4 + j: over the high half (the order group_halves gives
 * their scales), from products summed in 16-bit (Q4_1) or 32-bit (Q8_0) lanes.
 * Three horizontal adds instead of a conversion and a multiply-add per block.
 * Q4_1: w in 0..15 and x in -127..127 keep the u8*s8 pair sums within 3,810, so
 * two rounds of 16-bit adds (15,240 at most) are exact before they are widened. */
static inline __m256 q4_1_group_avx2(const __m256i w[GROUP], const int8_t *xq, int n) {
    __m256i p[GROUP];
    for (int j = 0; j < GROUP; j++)
        p[j] = j < n ? _mm256_maddubs_epi16(w[j], _mm256_loadu_si256((const __m256i *)(xq + j * QBLOCK)))
                     : _mm256_setzero_si256();
    const __m256i sums16 = _mm256_hadd_epi16(_mm256_hadd_epi16(p[0], p[1]), _mm256_hadd_epi16(p[2], p[3]));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(sums16, _mm256_set1_epi16(1)));
}

/* Q8_0: u8*s8 pair sums reach 32,258, so each block's are widened first. */
static inline __m256 q8_0_group_avx2(const __m256i w[GROUP], const int8_t *xq, int n) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a[GROUP];
    for (int j = 0; j < GROUP; j++) {
        if (j >= n) {
            a[j] = _mm256_setzero_si256();
            continue;
        }
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + j * QBLOCK));
        /* u8*s8 pairs: w's sign moves onto x */
        a[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w[j], w[j]), _mm256_sign_epi8(x, w[j])), ones);
    }
    return _mm256_cvtepi32_ps(_mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3])));
}

/* Decode (one row of x) reads each 4-bit weight once, too little work per byte
 * for the hardware prefetchers alone to keep up with rows this short (288 bytes
 * at K = 576): each group also asks for the weights PREFETCH_ROWS rows below, and
 * a row's first group for their scales. On AMD's Zen 3 a decode step's layers
 * took ~20% less time; Q8_0's longer rows gained nothing. */
#define PREFETCH_ROWS 8
static inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t *qs, const uint16_t *d,
                                                                 const uint16_t *m, size_t wrow, int nb, int g) {
    _mm_prefetch((const char *)qs, _MM_HINT_T0);
    if (g != 0) return;
    _mm_prefetch((const char *)(d + (wrow + PREFETCH_ROWS) * nb), _MM_HINT_T0);
    _mm_prefetch((const char *)(m + (wrow + PREFETCH_ROWS) * nb), _MM_HINT_T0);
}

/* One group of `blocks` blocks (a constant once inlined, so that the weights stay
 * in registers) of a tile: weight rows n..n+nr against rows r..r+mr of x. A
 * weight row's group is unpacked once for all mr rows of x, whose blocks are
 * read from L1 again for each weight row. */
static inline __attribute__((always_inline)) void q4_1_group_tile(const matmul_job *job, int n, int r, const int nr,
                                                                  const int mr, int g, const int blocks,
                                                                  __m256 acc[4][4]) {
    const int K = job->K, nb = K / QBLOCK, groups = GROUPS(nb), b = g * GROUP;
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < nr; i++) {
        const size_t wrow = (size_t)(n + i);
        const uint8_t *qs = job->qs + wrow * (K / 2) + b * 16;
        __m256i w[GROUP] = {0};
        for (int pair = 0; pair < blocks / 2; pair++) {
            const __m256i packed = _mm256_loadu_si256((const __m256i *)(qs + pair * 32));
            w[2 * pair] = _mm256_and_si256(packed, low);
            w[2 * pair + 1] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
        }
        if (mr == 1) prefetch_ahead(qs + PREFETCH_ROWS * (K / 2), job->d, job->m, wrow, nb, g);
        const __m256 dw = group_halves(job->d + wrow * nb + b, blocks);
        const __m256 mw = group_halves(job->m + wrow * nb + b, blocks);
        for (int t = 0; t < mr; t++) {
            const size_t at = ((size_t)(r + t) * groups + g) * 8;
            const __m256 p = q4_1_group_avx2(w, job->x.q + (size_t)(r + t) * K + b * QBLOCK, blocks);
            acc[i][t] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw, _mm256_loadu_ps(job->x.scales + at)), acc[i][t]);
            acc[i][t] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(job->x.sums + at), acc[i][t]);
        }
    }
}

static inline __attribute__((always_inline)) void q8_0_group_tile(const matmul_job *job, int n, int r, const int nr,
                                                                  const int mr, int g, const int blocks,
                                                                  __m256 acc[4][4]) {
    const int K = job->K, nb = K / QBLOCK, groups = GROUPS(nb), b = g * GROUP;
    for (int i = 0; i < nr; i++) {
        const size_t wrow = (size_t)(n + i);
        const int8_t *qs = (const int8_t *)job->qs + wrow * K + b * QBLOCK;
        __m256i w[GROUP] = {0};
        for (int j = 0; j < blocks; j++) w[j] = _mm256_loadu_si256((const __m256i *)(qs + j * QBLOCK));
        const __m256 dw = group_halves(job->d + wrow * nb + b, blocks);
        for (int t = 0; t < mr; t++) {
            const size_t at = ((size_t)(r + t) * groups + g) * 8;
            const __m256 p = q8_0_group_avx2(w, job->x.q + (size_t)(r + t) * K + b * QBLOCK, blocks);
            acc[i][t] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw, _mm256_loadu_ps(job->x.scales + at)), acc[i][t]);
        }
    }
}

/* A tile of y, a group of 4 blocks at a time, then the row's short last group.
 * Inlined with constant nr and mr, so that the accumulators live in registers.
 * Each output's arithmetic is the same whatever the tile, so that a row's
 * result does not depend on its batch. */
static inline __attribute__((always_inline)) void q4_1_tile_avx2(const matmul_job *job, int n, int r, const int nr,
                                                                 const int mr) {
    const int nb = job->K / QBLOCK;
    __m256 acc[4][4];
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) acc[i][t] = _mm256_setzero_ps();
    for (int g = 0; g < nb / GROUP; g++) q4_1_group_tile(job, n, r, nr, mr, g, GROUP, acc);
    if (nb % GROUP) q4_1_group_tile(job, n, r, nr, mr, nb / GROUP, 2, acc); /* nb is even */
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) job->y[(size_t)(r + t) * job->N + n + i] = hsum8(acc[i][t]);
}

static inline __attribute__((always_inline)) void q8_0_tile_avx2(const matmul_job *job, int n, int r, const int nr,
                                                                 const int mr) {
    const int nb = job->K / QBLOCK;
    __m256 acc[4][4];
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) acc[i][t] = _mm256_setzero_ps();
    for (int g = 0; g < nb / GROUP; g++) q8_0_group_tile(job, n, r, nr, mr, g, GROUP, acc);
    switch (nb % GROUP) {
    case 1: q8_0_group_tile(job, n, r, nr, mr, nb / GROUP, 1, acc); break;
    case 2: q8_0_group_tile(job, n, r, nr, mr, nb / GROUP, 2, acc); break;
    case 3: q8_0_group_tile(job, n, r, nr, mr, nb / GROUP, 3, acc); break;
    }
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) job->y[(size_t)(r + t) * job->N + n + i] = hsum8(acc[i][t]);
}

TILED_KERNEL(q4_1_avx2, q4_1_tile_avx2, 1, 4)
TILED_KERNEL(q8_0_avx2, q8_0_tile_avx2, 2, 4)

#pragma GCC pop_options

#endif
