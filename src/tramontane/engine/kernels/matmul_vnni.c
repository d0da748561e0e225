/* The AVX-512 VNNI kernels: each weight row in a vector lane of its own, the
 * products summed by dpbusd. */
#include "matmul_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")

/* Gathers a dword from each of `lanes`' rows, `row_offsets` bytes from base. */
static inline __m512i gather_rows(__mmask16 lanes, __m512i row_offsets, const void *base) {
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lanes, row_offsets, base, 1);
}

/* Dword j of 32 bytes at `p` in each of 16 rows `stride` bytes apart, in w[j]
 * (lane r from row r); rows past `lanes` are not read. With all 16 rows, an 8 x 8
 * transpose of dwords in each 256-bit half (rows 0-7, rows 8-15) of row loads:
 * cheaper than 8 gathers, which bound the kernels at one row of x. */
static inline __attribute__((always_inline)) void row_dwords(const uint8_t *p, size_t stride, __mmask16 lanes,
                                                             __m512i rows, __m512i w[8]) {
    if (lanes != 0xFFFF) {
        for (int j = 0; j < 8; j++) w[j] = gather_rows(lanes, rows, p + j * 4);
        return;
    }
    __m512i v[8], t[8], u[8];
    for (int r = 0; r < 8; r++)
        v[r] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + r * stride))),
                                  _mm256_loadu_si256((const __m256i *)(p + (r + 8) * stride)), 1);
    for (int r = 0; r < 8; r += 2) {
        t[r] = _mm512_unpacklo_epi32(v[r], v[r + 1]);
        t[r + 1] = _mm512_unpackhi_epi32(v[r], v[r + 1]);
    }
    for (int r = 0; r < 8; r += 4) {
        u[r] = _mm512_unpacklo_epi64(t[r], t[r + 2]);
        u[r + 1] = _mm512_unpackhi_epi64(t[r], t[r + 2]);
        u[r + 2] = _mm512_unpacklo_epi64(t[r + 1], t[r + 3]);
        u[r + 3] = _mm512_unpackhi_epi64(t[r + 1], t[r + 3]);
    }
    /* u[k] (rows 0-3) and u[k + 4] (rows 4-7) hold dword k in 128-bit lanes 0 and 2, dword k + 4 in 1 and 3. */
    const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i second = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int k = 0; k < 4; k++) {
        w[k] = _mm512_permutex2var_epi64(u[k], first, u[k + 4]);
        w[k + 4] = _mm512_permutex2var_epi64(u[k], second, u[k + 4]);
    }
}

/* The low or high IEEE halves of 16 dwords, as floats. */
static inline __m512 low_halves(__m512i v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)); }
static inline __m512 high_halves(__m512i v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16))); }

/* Block b's scales of 16 rows, `scale_rows` apart. A gather reads whole dwords: it
 * takes the one ending with block b's half (the one starting with it for block 0),
 * so that it never reads past a row's last scale. */
static inline __m512 lane_scales(const uint16_t *d, int nb, int b, __mmask16 lanes, __m512i scale_rows) {
    if (b > 0) return high_halves(gather_rows(lanes, scale_rows, d + b - 1));
    if (nb > 1) return low_halves(gather_rows(lanes, scale_rows, d));
    uint16_t only[LANES] = {0};
    for (int i = 0; i < LANES; i++)
        if (lanes >> i & 1) only[i] = d[(size_t)i * nb];
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)only));
}

/* Q4_1 on VNNI: 16 weight rows per vector, one lane each, so that a lane sums
 * its row's products over a whole block and no horizontal sums are left. A row's
 * pair of blocks is 8 dwords (4 inputs of each block); one gather takes dword j
 * of 16 rows, and each x row's matching 4 inputs are broadcast. The tile covers
 * 16 weight rows (`lanes` of them valid) by mr rows of x, which share the
 * unpacked weights. */
static inline __attribute__((always_inline)) void q4_1_lanes_vnni(const matmul_job *job, int n, __mmask16 lanes,
                                                                  int r, const int mr) {
    const int K = job->K, nb = K / QBLOCK;
    const __m512i low = _mm512_set1_epi8(0x0F);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32(K / 2));
    const __m512i scale_rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32(nb * 2));
    const uint8_t *qs = job->qs + (size_t)n * (K / 2);
    const uint16_t *d = job->d + (size_t)n * nb, *m = job->m + (size_t)n * nb;
    __m512 acc[8];
    for (int t = 0; t < mr; t++) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        __m512i dot0[8], dot1[8];
        for (int t = 0; t < mr; t++) dot0[t] = dot1[t] = _mm512_setzero_si512();
        /* The next 16 rows are one contiguous run, read here a pair of blocks per
         * iteration: its 8 lines for each pair keep it a step ahead of the row loads,
         * 16 strided streams, too many for the hardware prefetchers. */
        for (int line = 0; line < 8; line++)
            _mm_prefetch((const char *)(qs + (size_t)LANES * (K / 2) + b * 256 + line * 64), _MM_HINT_T0);
        __m512i w[8];
        row_dwords(qs + b * 16, K / 2, lanes, rows, w);
        for (int j = 0; j < 8; j++) {
            const __m512i w0 = _mm512_and_si512(w[j], low), w1 = _mm512_and_si512(_mm512_srli_epi16(w[j], 4), low);
            for (int t = 0; t < mr; t++) {
                const int8_t *xq = job->x.q + (size_t)(r + t) * K + b * QBLOCK + j * 4;
                dot0[t] = _mm512_dpbusd_epi32(dot0[t], w0, _mm512_set1_epi32(*(const int32_t *)xq));
                dot1[t] = _mm512_dpbusd_epi32(dot1[t], w1, _mm512_set1_epi32(*(const int32_t *)(xq + QBLOCK)));
            }
        }
        /* One dword per row holds the pair's two halves: block b low, b + 1 high. */
        const __m512i dd = gather_rows(lanes, scale_rows, d + b), mm = gather_rows(lanes, scale_rows, m + b);
        const __m512 d0 = low_halves(dd), d1 = high_halves(dd), m0 = low_halves(mm), m1 = high_halves(mm);
        for (int t = 0; t < mr; t++) {
            const size_t row = (size_t)(r + t);
            const float *xs = job->x.scales + row * nb + b, *xsum = job->x.sums + row * nb + b;
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot0[t]), _mm512_mul_ps(d0, _mm512_set1_ps(xs[0])), acc[t]);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot1[t]), _mm512_mul_ps(d1, _mm512_set1_ps(xs[1])), acc[t]);
            acc[t] = _mm512_fmadd_ps(m0, _mm512_set1_ps(xsum[0]), acc[t]);
            acc[t] = _mm512_fmadd_ps(m1, _mm512_set1_ps(xsum[1]), acc[t]);
        }
    }
    for (int t = 0; t < mr; t++) _mm512_mask_storeu_ps(job->y + (size_t)(r + t) * job->N + n, lanes, acc[t]);
}

/* Q8_0 on VNNI, shaped as q4_1_lanes_vnni, block by block. VNNI multiplies
 * unsigned by signed bytes: the weights go in as w + 128 (one xor per vector,
 * shared by the x rows), and 128 * d * sum(x) comes off each block's sum. */
static inline __attribute__((always_inline)) void q8_0_lanes_vnni(const matmul_job *job, int n, __mmask16 lanes,
                                                                  int r, const int mr) {
    const int K = job->K, nb = K / QBLOCK;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32(K));
    const __m512i scale_rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32(nb * 2));
    const uint8_t *qs = job->qs + (size_t)n * K;
    const uint16_t *d = job->d + (size_t)n * nb;
    __m512 acc[8];
    for (int t = 0; t < mr; t++) acc[t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        /* The next 16 rows, one contiguous run, a block's worth of it per block. */
        for (int line = 0; line < 8; line++)
            _mm_prefetch((const char *)(qs + (size_t)LANES * K + b * 512 + line * 64), _MM_HINT_T0);
        __m512i dot[8];
        for (int t = 0; t < mr; t++) dot[t] = _mm512_setzero_si512();
        __m512i w[8];
        row_dwords(qs + b * 32, K, lanes, rows, w);
        for (int j = 0; j < 8; j++) {
            const __m512i w_unsigned = _mm512_xor_si512(w[j], flip);
            for (int t = 0; t < mr; t++) {
                const int8_t *xq = job->x.q + (size_t)(r + t) * K + b * QBLOCK + j * 4;
                dot[t] = _mm512_dpbusd_epi32(dot[t], w_unsigned, _mm512_set1_epi32(*(const int32_t *)xq));
            }
        }
        const __m512 dw = lane_scales(d, nb, b, lanes, scale_rows);
        const __m512 offset = _mm512_mul_ps(dw, _mm512_set1_ps(-128.0f));
        for (int t = 0; t < mr; t++) {
            const size_t row = (size_t)(r + t);
            const float xs = job->x.scales[row * nb + b], xsum = job->x.sums[row * nb + b];
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(dw, _mm512_set1_ps(xs)), acc[t]);
            acc[t] = _mm512_fmadd_ps(offset, _mm512_set1_ps(xsum), acc[t]);
        }
    }
    for (int t = 0; t < mr; t++) _mm512_mask_storeu_ps(job->y + (size_t)(r + t) * job->N + n, lanes, acc[t]);
}

/* Defines `name`, a rows_fn covering its part of y with `lanes_tile`: 16 weight
 * rows at a time by 8 rows of x, then the rows of x left in 4, 2 and 1. */
#define LANES_KERNEL(name, lanes_tile)                                                           \
    void name(const matmul_job *job, int n0, int n1, int m0, int m1) {                          \
        for (int n = n0; n < n1; n += LANES) {                                                   \
            const __mmask16 lanes = n1 - n >= LANES ? 0xFFFF : (__mmask16)((1u << (n1 - n)) - 1); \
            int r = m0;                                                                          \
            for (; r + 8 <= m1; r += 8) lanes_tile(job, n, lanes, r, 8);                         \
            if (r + 4 <= m1) lanes_tile(job, n, lanes, r, 4), r += 4;                            \
            if (r + 2 <= m1) lanes_tile(job, n, lanes, r, 2), r += 2;                            \
            if (r < m1) lanes_tile(job, n, lanes, r, 1);                                         \
        }                                                                                        \
    }

LANES_KERNEL(q4_1_vnni, q4_1_lanes_vnni)
LANES_KERNEL(q8_0_vnni, q8_0_lanes_vnni)

#pragma GCC pop_options

#endif
