#include "matmul.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

/* Rows of x per chunk of work: their quantized blocks stay in cache while the
 * chunk's weight rows stream past. */
#define M_TILE 64
/* Chunks per thread to aim for, so that a thread the OS pauses costs little. */
#define CHUNKS_PER_THREAD 24

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
    const float *x;
    int K;
    enum isa isa;
    quantized_rows out;
} quantize_job;

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

/* Defines `name`, a rows_fn that covers its part of y with tiles of `tile`, each
 * call inlined with constant sizes: NR weight rows by MR rows of x, or for a
 * single row of x (decode) 4 weight rows, which gives the core 4 independent
 * sums; the edges get the smaller tiles they need. */
#define TILED_KERNEL(name, tile, NR, MR)                                                 \
    static void name(const matmul_job *job, int n0, int n1, int m0, int m1) {           \
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

static enum isa detected = ISA_NONE, active = ISA_NONE;
static int detection_done;

#if defined(__x86_64__)
#include <immintrin.h>

enum isa matmul_detect_isa(void) {
    if (!detection_done) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
            detected = ISA_AVX2;
            if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
                detected = ISA_AVX512_VNNI;
        }
        active = detected;
        detection_done = 1;
    }
    return detected;
}

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

/* Rounds a block of 32 to 8 bits; returns its scale, and scale * sum(q) in *sum. */
static float quantize_block(const float *x, int8_t *q, float *sum) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], abs_mask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float d = _mm_cvtss_f32(m4) / 127.0f;
    const __m256 inv = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
    __m256i i32[4], total = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
        __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        i32[i] = _mm256_cvtps_epi32(r);
        total = _mm256_add_epi32(total, i32[i]);
    }
    /* packs work within 128-bit lanes: the permute puts the 4-byte groups back in order. */
    __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3]));
    packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, packed);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 0, 3, 2)));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
    *sum = d * (float)_mm_cvtsi128_si32(t);
    return d;
}

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
    const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), second = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
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
         * iteration: its 8 lines for each pair keep it a step ahead of the gathers,
         * which leave the hardware prefetchers with 16 strided streams. */
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
    static void name(const matmul_job *job, int n0, int n1, int m0, int m1) {                   \
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

static rows_fn q4_1_rows(enum isa isa) { return isa == ISA_AVX512_VNNI ? q4_1_vnni : q4_1_avx2; }
static rows_fn q8_0_rows(enum isa isa) { return isa == ISA_AVX512_VNNI ? q8_0_vnni : q8_0_avx2; }

static void quantize_chunk(void *ctx, int row) {
    const quantize_job *job = ctx;
    const int nb = job->K / QBLOCK, groups = GROUPS(nb);
    const quantized_rows *out = &job->out;
    if (job->isa != ISA_AVX512_VNNI) {
        /* A short last group's missing blocks, and every group's upper sums, must add nothing. */
        memset(out->scales + (size_t)row * groups * 8, 0, sizeof(float) * groups * 8);
        memset(out->sums + (size_t)row * groups * 8, 0, sizeof(float) * groups * 8);
    }
    for (int b = 0; b < nb; b++) {
        const size_t block = (size_t)row * nb + b;
        float sum;
        const float d = quantize_block(job->x + block * QBLOCK, out->q + block * QBLOCK, &sum);
        if (job->isa == ISA_AVX512_VNNI) {
            out->scales[block] = d;
            out->sums[block] = sum;
        } else {
            const size_t at = ((size_t)row * groups + b / GROUP) * 8 + b % GROUP;
            out->scales[at] = out->scales[at + GROUP] = d;
            out->sums[at] = sum;
        }
    }
}

#else /* not x86-64: no kernels; the Python side keeps to PyTorch's */

enum isa matmul_detect_isa(void) {
    detection_done = 1;
    return ISA_NONE;
}
static rows_fn q4_1_rows(enum isa isa) {
    (void)isa;
    return NULL;
}
static rows_fn q8_0_rows(enum isa isa) {
    (void)isa;
    return NULL;
}
static void quantize_chunk(void *ctx, int row) {
    (void)ctx;
    (void)row;
}

#endif

void matmul_set_isa(enum isa isa) {
    matmul_detect_isa();
    active = isa < detected ? isa : detected;
}

enum isa matmul_isa(void) {
    matmul_detect_isa();
    return active;
}

static void matmul_chunk(void *ctx, int chunk) {
    const matmul_job *job = ctx;
    const int mi = chunk / job->n_tiles, ni = chunk % job->n_tiles;
    const int m0 = mi * M_TILE, m1 = m0 + M_TILE < job->M ? m0 + M_TILE : job->M;
    const int n0 = ni * job->n_tile, n1 = n0 + job->n_tile < job->N ? n0 + job->n_tile : job->N;
    const rows_fn rows = job->m != NULL ? q4_1_rows(job->isa) : q8_0_rows(job->isa);
    rows(job, n0, n1, m0, m1);
}

int matmul(const float *x, int M, const qweight *w, float *y) {
    const int K = w->K, N = w->N, nb = K / QBLOCK;
    const enum isa isa = matmul_isa();
    quantize_job quantize = {.x = x, .K = K, .isa = isa};
    /* One allocation for q, the scales and the sums; float parts stay aligned. */
    const size_t q_bytes = ((size_t)M * K + 63) & ~(size_t)63;
    const size_t scale_floats = (size_t)M * (isa == ISA_AVX512_VNNI ? nb : GROUPS(nb) * 8);
    const size_t sum_floats = isa == ISA_AVX512_VNNI ? (size_t)M * nb : scale_floats;
    char *scratch = malloc(q_bytes + (scale_floats + sum_floats) * sizeof(float));
    if (scratch == NULL) return -1;
    quantize.out.q = (int8_t *)scratch;
    quantize.out.scales = (float *)(scratch + q_bytes);
    quantize.out.sums = quantize.out.scales + scale_floats;
    pool_run(quantize_chunk, &quantize, M);

    const int m_tiles = (M + M_TILE - 1) / M_TILE;
    const int wanted = pool_threads() * CHUNKS_PER_THREAD;
    int n_tile = (N * m_tiles + wanted - 1) / wanted;
    /* Whole vectors of weight rows where the kernel gives each row a lane. */
    const int n_step = isa == ISA_AVX512_VNNI ? LANES : 4;
    n_tile = (n_tile + n_step - 1) / n_step * n_step;
    matmul_job job = {.x = quantize.out, .isa = isa, .M = M, .K = K, .N = N, .qs = w->qs, .d = w->d, .m = w->m,
                      .y = y, .n_tile = n_tile, .n_tiles = (N + n_tile - 1) / n_tile};
    pool_run(matmul_chunk, &job, m_tiles * job.n_tiles);
    free(scratch);
    return 0;
}
