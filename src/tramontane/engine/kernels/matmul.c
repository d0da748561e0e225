#include "matmul.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "matmul_kernels.h"
#include "pool.h"

/* Rows of x per chunk of work: their quantized blocks stay in cache while the
 * chunk's weight rows stream past. */
#define M_TILE 64
/* Chunks per thread to aim for, so that a thread the OS pauses costs little. */
#define CHUNKS_PER_THREAD 24

typedef struct {
    const float *x;
    int K;
    enum isa isa;
    quantized_rows out;
} quantize_job;

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
