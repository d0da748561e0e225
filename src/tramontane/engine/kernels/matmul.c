#include "matmul.h"

#include <stddef.h>
#include <stdlib.h>

#include "pool.h"

/* Rows of x per chunk of work: their quantized blocks stay in cache while the
 * chunk's weight rows stream past. */
#define M_TILE 64
/* Chunks per thread to aim for, so that a thread the OS pauses costs little. */
#define CHUNKS_PER_THREAD 24

/* x rounded to 8 bits: q[M, K], each block's scale repeated over 8 lanes (the
 * layout the kernels multiply with directly), and scale * sum(q) per block
 * (what Q4_1's offset m multiplies). */
typedef struct {
    int8_t *q;
    float *scale8; /* [M, K / 32, 8] */
    float *sum;    /* [M, K / 32] */
} quantized_rows;

typedef struct {
    const float *x;
    int K;
    quantized_rows out;
} quantize_job;

typedef struct {
    quantized_rows x;
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

static void quantize_block(const float *x, int8_t *q, float *scale8, float *sum) {
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
    _mm256_storeu_ps(scale8, _mm256_set1_ps(d));
    *sum = d * (float)_mm_cvtsi128_si32(t);
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* sum over 32 pairs of u * s (u unsigned, s signed bytes), as 8 float lanes. */
static inline __m256 dot_u8s8_avx2(__m256i u, __m256i s) {
    __m256i pairs = _mm256_maddubs_epi16(u, s); /* |15*127*2| and 127*127*2 fit in int16 */
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

/* sum over m_b * (x's scale * sum(q))_b: what Q4_1's offsets add to a row. */
static inline float offsets_avx2(const uint16_t *m, const float *sum, int nb) {
    __m256 acc = _mm256_setzero_ps();
    int b = 0;
    for (; b + 8 <= nb; b += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + b))), _mm256_loadu_ps(sum + b), acc);
    float total = hsum8(acc);
    for (; b < nb; b++) total += _cvtsh_ss(m[b]) * sum[b];
    return total;
}

/* A tile of y: rows r..r+mr of x against weight rows n..n+nr. Inlined with
 * constant nr and mr, so that the accumulators live in registers. Weight rows
 * are unpacked once per pair of blocks for all mr rows of x, whose blocks are
 * read from L1 again for each weight row. */
static inline __attribute__((always_inline)) void q4_1_tile_avx2(const matmul_job *job, int n, int r, const int nr,
                                                                 const int mr) {
    const int K = job->K, nb = K / QBLOCK;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 acc[4][4];
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) acc[i][t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b += 2) {
        for (int i = 0; i < nr; i++) {
            const size_t wrow = (size_t)(n + i);
            const __m256i packed = _mm256_loadu_si256((const __m256i *)(job->qs + wrow * (K / 2) + b * 16));
            const __m256i w0 = _mm256_and_si256(packed, low);
            const __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
            const __m256 d0 = _mm256_set1_ps(_cvtsh_ss(job->d[wrow * nb + b]));
            const __m256 d1 = _mm256_set1_ps(_cvtsh_ss(job->d[wrow * nb + b + 1]));
            for (int t = 0; t < mr; t++) {
                const size_t row = (size_t)(r + t);
                const int8_t *xq = job->x.q + row * K + b * QBLOCK;
                const float *xs = job->x.scale8 + (row * nb + b) * 8;
                const __m256 p0 = dot_u8s8_avx2(w0, _mm256_loadu_si256((const __m256i *)xq));
                const __m256 p1 = dot_u8s8_avx2(w1, _mm256_loadu_si256((const __m256i *)(xq + QBLOCK)));
                acc[i][t] = _mm256_fmadd_ps(p0, _mm256_mul_ps(d0, _mm256_loadu_ps(xs)), acc[i][t]);
                acc[i][t] = _mm256_fmadd_ps(p1, _mm256_mul_ps(d1, _mm256_loadu_ps(xs + 8)), acc[i][t]);
            }
        }
    }
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) {
            const size_t row = (size_t)(r + t), wrow = (size_t)(n + i);
            job->y[row * job->N + wrow] =
                hsum8(acc[i][t]) + offsets_avx2(job->m + wrow * nb, job->x.sum + row * nb, nb);
        }
}

static inline __attribute__((always_inline)) void q8_0_tile_avx2(const matmul_job *job, int n, int r, const int nr,
                                                                 const int mr) {
    const int K = job->K, nb = K / QBLOCK;
    __m256 acc[4][4];
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) acc[i][t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < nr; i++) {
            const size_t wrow = (size_t)(n + i);
            const __m256i w = _mm256_loadu_si256((const __m256i *)((const int8_t *)job->qs + wrow * K + b * QBLOCK));
            const __m256i w_abs = _mm256_sign_epi8(w, w); /* u8*s8 pairs: move w's sign onto x */
            const __m256 db = _mm256_set1_ps(_cvtsh_ss(job->d[wrow * nb + b]));
            for (int t = 0; t < mr; t++) {
                const size_t row = (size_t)(r + t);
                const __m256i xq = _mm256_loadu_si256((const __m256i *)(job->x.q + row * K + b * QBLOCK));
                const __m256 p = dot_u8s8_avx2(w_abs, _mm256_sign_epi8(xq, w));
                const __m256 xs = _mm256_loadu_ps(job->x.scale8 + (row * nb + b) * 8);
                acc[i][t] = _mm256_fmadd_ps(p, _mm256_mul_ps(db, xs), acc[i][t]);
            }
        }
    }
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) job->y[(size_t)(r + t) * job->N + n + i] = hsum8(acc[i][t]);
}

TILED_KERNEL(q4_1_avx2, q4_1_tile_avx2, 1, 4)
TILED_KERNEL(q8_0_avx2, q8_0_tile_avx2, 1, 4)

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
                const __m512 xs = _mm512_loadu_ps(job->x.scale8 + (row * nb + b) * 8);
                acc[i][t] = _mm512_fmadd_ps(p, _mm512_mul_ps(dw, xs), acc[i][t]);
            }
        }
    }
    for (int i = 0; i < nr; i++)
        for (int t = 0; t < mr; t++) {
            const size_t row = (size_t)(r + t), wrow = (size_t)(n + i);
            job->y[row * job->N + wrow] =
                _mm512_reduce_add_ps(acc[i][t]) + offsets_avx512(job->m + wrow * nb, job->x.sum + row * nb, nb);
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
                const __m512 xs = _mm512_maskz_loadu_ps(lanes, job->x.scale8 + (row * nb + b) * 8);
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

static rows_fn q4_1_rows(void) { return active == ISA_AVX512_VNNI ? q4_1_vnni : q4_1_avx2; }
static rows_fn q8_0_rows(void) { return active == ISA_AVX512_VNNI ? q8_0_vnni : q8_0_avx2; }

static void quantize_chunk(void *ctx, int row) {
    const quantize_job *job = ctx;
    const int nb = job->K / QBLOCK;
    for (int b = 0; b < nb; b++) {
        const size_t block = (size_t)row * nb + b;
        quantize_block(job->x + block * QBLOCK, job->out.q + block * QBLOCK, job->out.scale8 + block * 8,
                       job->out.sum + block);
    }
}

#else /* not x86-64: no kernels; the Python side keeps to PyTorch's */

enum isa matmul_detect_isa(void) {
    detection_done = 1;
    return ISA_NONE;
}
static rows_fn q4_1_rows(void) { return NULL; }
static rows_fn q8_0_rows(void) { return NULL; }
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
    const rows_fn rows = job->m != NULL ? q4_1_rows() : q8_0_rows();
    rows(job, n0, n1, m0, m1);
}

int matmul(const float *x, int M, const qweight *w, float *y) {
    const int K = w->K, N = w->N, nb = K / QBLOCK;
    quantize_job quantize = {.x = x, .K = K};
    /* One allocation for q, the scales and the sums; float parts stay aligned. */
    const size_t q_bytes = ((size_t)M * K + 63) & ~(size_t)63;
    char *scratch = malloc(q_bytes + (size_t)M * nb * 9 * sizeof(float));
    if (scratch == NULL) return -1;
    quantize.out.q = (int8_t *)scratch;
    quantize.out.scale8 = (float *)(scratch + q_bytes);
    quantize.out.sum = quantize.out.scale8 + (size_t)M * nb * 8;
    pool_run(quantize_chunk, &quantize, M);

    const int m_tiles = (M + M_TILE - 1) / M_TILE;
    const int wanted = pool_threads() * CHUNKS_PER_THREAD;
    int n_tile = (N * m_tiles + wanted - 1) / wanted;
    n_tile = n_tile < 4 ? 4 : n_tile;
    matmul_job job = {.x = quantize.out, .M = M, .K = K, .N = N, .qs = w->qs, .d = w->d, .m = w->m, .y = y,
                      .n_tile = n_tile, .n_tiles = (N + n_tile - 1) / n_tile};
    pool_run(matmul_chunk, &job, m_tiles * job.n_tiles);
    free(scratch);
    return 0;
}
