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
 *   VNNI, per block: its scale over 8 lanes [M, K / 32, 8], its sum [M, K / 32]. */
typedef struct {
    int8_t *q;
    float *scales;
    float *sums;
} quantized_rows;

/* Blocks per AVX2 group and groups per row. */
#define GROUP 4
#define GROUPS(nb) (((nb) + GROUP - 1) / GROUP)

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

/* Two blocks' scales, each over the 8 lanes of its block's sums. */
static inline __m512 pair_scales(const uint16_t *d) {
    const __m512 both = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(*(const int *)d)));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), both);
}

static inline float offsets_avx512(const uint16_t *m, const float *sum, int nb) {
    __m512 acc = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 16) {
        const __mmask16 k = nb - b >= 16 ? 0xFFFF : (__mmask16)((1u << (nb - b)) - 1);
        const __m512 mv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, m + b));
        acc = _mm512_fmadd_ps(mv, _mm512_maskz_loadu_ps(k, sum + b), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static inline __attribute__((always_inline)) void q4_1_tile_vnni(const matmul_job *job, int n, int r, const int nr,
                                                                 const int mr) {
    const int K = job->K, nb = K / QBLOCK;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m512 acc[4][4];
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) acc[i][t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        for (int i = 0; i < nr; i++) {
            const size_t wrow = (size_t)(n + i);
            const __m256i packed = _mm256_loadu_si256((const __m256i *)(job->qs + wrow * (K / 2) + b * 16));
            const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(packed, low)),
                                                 _mm256_and_si256(_mm256_srli_epi16(packed, 4), low), 1);
            const __m512 dw = pair_scales(job->d + wrow * nb + b);
            for (int t = 0; t < mr; t++) {
                const size_t row = (size_t)(r + t);
                const __m512i xq = _mm512_loadu_si512(job->x.q + row * K + b * QBLOCK);
                const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xq));
                const __m512 xs = _mm512_loadu_ps(job->x.scales + (row * nb + b) * 8);
                acc[i][t] = _mm512_fmadd_ps(p, _mm512_mul_ps(dw, xs), acc[i][t]);
            }
        }
    }
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) {
            const size_t row = (size_t)(r + t), wrow = (size_t)(n + i);
            job->y[row * job->N + wrow] =
                _mm512_reduce_add_ps(acc[i][t]) + offsets_avx512(job->m + wrow * nb, job->x.sums + row * nb, nb);
        }
}

/* Two blocks at a time; an odd last block goes through the same code with its
 * second half masked to zero. */
static inline __attribute__((always_inline)) void q8_0_tile_vnni(const matmul_job *job, int n, int r, const int nr,
                                                                 const int mr) {
    const int K = job->K, nb = K / QBLOCK;
    __m512 acc[4][4];
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) acc[i][t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        const int whole = b + 1 < nb;
        const __mmask64 bytes = whole ? ~(__mmask64)0 : 0xFFFFFFFFull;
        const __mmask16 lanes = whole ? 0xFFFF : 0x00FF;
        for (int i = 0; i < nr; i++) {
            const size_t wrow = (size_t)(n + i);
            const __m512i w = _mm512_maskz_loadu_epi8(bytes, (const int8_t *)job->qs + wrow * K + b * QBLOCK);
            const __m512i w_abs = _mm512_abs_epi8(w); /* VNNI multiplies u8 by s8: move w's sign onto x */
            const __mmask64 negative = _mm512_movepi8_mask(w);
            const __m512 dw = whole ? pair_scales(job->d + wrow * nb + b)
                                    : _mm512_maskz_mov_ps(lanes, _mm512_set1_ps(_cvtsh_ss(job->d[wrow * nb + b])));
            for (int t = 0; t < mr; t++) {
                const size_t row = (size_t)(r + t);
                const __m512i xq = _mm512_maskz_loadu_epi8(bytes, job->x.q + row * K + b * QBLOCK);
                const __m512i x_signed = _mm512_mask_sub_epi8(xq, negative, _mm512_setzero_si512(), xq);
                const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w_abs, x_signed);
                const __m512 xs = _mm512_maskz_loadu_ps(lanes, job->x.scales + (row * nb + b) * 8);
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, xs), acc[i][t]);
            }
        }
    }
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) job->y[(size_t)(r + t) * job->N + n + i] = _mm512_reduce_add_ps(acc[i][t]);
}

TILED_KERNEL(q4_1_vnni, q4_1_tile_vnni, 2, 4)
TILED_KERNEL(q8_0_vnni, q8_0_tile_vnni, 2, 4)

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
            for (int lane = 0; lane < 8; lane++) out->scales[block * 8 + lane] = d;
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
    const size_t scale_floats = (size_t)M * (isa == ISA_AVX512_VNNI ? nb : GROUPS(nb)) * 8;
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
    n_tile = n_tile < 4 ? 4 : n_tile;
    matmul_job job = {.x = quantize.out, .isa = isa, .M = M, .K = K, .N = N, .qs = w->qs, .d = w->d, .m = w->m,
                      .y = y, .n_tile = n_tile, .n_tiles = (N + n_tile - 1) / n_tile};
    pool_run(matmul_chunk, &job, m_tiles * job.n_tiles);
    free(scratch);
    return 0;
}
