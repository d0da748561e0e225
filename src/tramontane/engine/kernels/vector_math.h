/* Vector math the kernels share: AVX2 + FMA on x86-64, plain C elsewhere. */
#ifndef TRAMONTANE_VECTOR_MATH_H
#define TRAMONTANE_VECTOR_MATH_H

#if defined(__x86_64__)
#include <immintrin.h>

/* For loops the compiler vectorizes itself. */
#define VECTORIZED __attribute__((target("avx2,fma")))

#pragma GCC push_options
#pragma GCC target("avx2,fma")

/* e^x for 8 floats, within about 2 ulp of expf: x = n ln 2 + r with |r| <= ln 2 / 2,
 * e^r by its Taylor series to r^6 (the rest is under 1.3e-7 of it), times 2^n.
 * Inputs are clamped to where e^x and 2^n stay normal floats. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x); /* ln 2 in two parts: exact n * hi */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

/* e^x of n floats in place; a tail goes through the same vector code (padded),
 * so that each value is computed alike wherever it lies. */
static inline void exp_in_place(float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float tail[8] = {0};
        for (int k = 0; i + k < n; k++) tail[k] = x[i + k];
        _mm256_storeu_ps(tail, exp8(_mm256_loadu_ps(tail)));
        for (int k = 0; i + k < n; k++) x[i + k] = tail[k];
    }
}

#pragma GCC pop_options

#else
#include <math.h>

#define VECTORIZED

static inline void exp_in_place(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = expf(x[i]);
}
#endif

#endif
