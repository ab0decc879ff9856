/* y (M, N) = x (M, K) @ w (N, K)^T in fp32 for few rows M (decoding), AVX2 + FMA.
 *
 * Why: MKL 2020 (torch 1.13.1) runs these products well below this machine's limits: at 1-8 rows
 * it streams the weights at half the read bandwidth, at 9-16 rows it computes at ~60% of its own
 * large-GEMM peak. Here each thread streams its share of w exactly once: a block of 4 weight rows
 * is read from memory while the next block is prefetched, then reused from L1 for every group of
 * 3 rows of x (12 accumulators). The dot products are taken along K, so the summation order
 * differs from MKL's: results agree to float rounding, not bit for bit.
 *
 * The OpenMP calls are left undefined here and bound at load time to the OpenMP runtime torch
 * already runs (small_gemm.py loads it first), so both share one thread pool and never spin
 * against each other. Requires contiguous operands and K % 8 == 0 (checked by the caller).
 */
#include <immintrin.h>
#include <omp.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y[j, i] = x[j] . w[i] for NW weight rows and MX rows of x; if PF, prefetch the NW rows at `next`.
 * PF is a compile-time constant so the plain kernels carry no prefetch code. */
#define KERNEL(NW, MX, PF)                                                                                   \
    static void k_##NW##_##MX##_##PF(const float *x, long K, const float *w, float *y, long ldy,              \
                                     const float *next) {                                                    \
        __m256 acc[NW][MX];                                                                                  \
        for (int i = 0; i < NW; i++)                                                                         \
            for (int j = 0; j < MX; j++) acc[i][j] = _mm256_setzero_ps();                                    \
        for (long k = 0; k < K; k += 8) {                                                                    \
            __m256 wv[NW];                                                                                   \
            for (int i = 0; i < NW; i++) wv[i] = _mm256_loadu_ps(w + i * K + k);                             \
            if (PF && (k & 15) == 0)                                                                         \
                for (int i = 0; i < NW; i++) _mm_prefetch((const char *)(next + i * K + k), _MM_HINT_T0);    \
            for (int j = 0; j < MX; j++) {                                                                   \
                __m256 xv = _mm256_loadu_ps(x + j * K + k);                                                  \
                for (int i = 0; i < NW; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);              \
            }                                                                                                \
        }                                                                                                    \
        if (NW == 4) {                                                                                       \
            for (int j = 0; j < MX; j++) {                                                                   \
                __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(acc[0][j], acc[1][j]),                              \
                                          _mm256_hadd_ps(acc[2][j], acc[3][j]));                             \
                _mm_storeu_ps(y + j * ldy, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1))); \
            }                                                                                                \
        } else {                                                                                             \
            for (int i = 0; i < NW; i++)                                                                     \
                for (int j = 0; j < MX; j++) y[j * ldy + i] = hsum(acc[i][j]);                               \
        }                                                                                                    \
    }

KERNEL(4, 3, 0)
KERNEL(4, 2, 0)
KERNEL(4, 1, 0)
KERNEL(4, 3, 1)
KERNEL(4, 2, 1)
KERNEL(4, 1, 1)
KERNEL(1, 3, 0)
KERNEL(1, 2, 0)
KERNEL(1, 1, 0)

/* All M rows against 4 weight rows; the first group of x rows also prefetches `next` (or not, if 0). */
static void four_rows(const float *x, long M, const float *w, long K, float *y, long N, const float *next) {
    long m = 0;
    if (next) {
        m = M >= 3 ? 3 : M;
        if (m == 3) k_4_3_1(x, K, w, y, N, next);
        else if (m == 2) k_4_2_1(x, K, w, y, N, next);
        else k_4_1_1(x, K, w, y, N, next);
    }
    for (; m + 3 <= M; m += 3) k_4_3_0(x + m * K, K, w, y + m * N, N, 0);
    if (M - m == 2) k_4_2_0(x + m * K, K, w, y + m * N, N, 0);
    else if (M - m == 1) k_4_1_0(x + m * K, K, w, y + m * N, N, 0);
}

static void one_row(const float *x, long M, const float *w, long K, float *y, long N) {
    long m = 0;
    for (; m + 3 <= M; m += 3) k_1_3_0(x + m * K, K, w, y + m * N, N, 0);
    if (M - m == 2) k_1_2_0(x + m * K, K, w, y + m * N, N, 0);
    else if (M - m == 1) k_1_1_0(x + m * K, K, w, y + m * N, N, 0);
}

/* Each thread takes a contiguous share of the weight rows, in blocks of 4. */
void small_gemm(const float *x, long M, const float *w, long N, long K, float *y) {
    long blocks = N / 4;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), threads = omp_get_num_threads();
        long first = blocks * t / threads, end = blocks * (t + 1) / threads;
        for (long b = first; b < end; b++)
            four_rows(x, M, w + b * 4 * K, K, y + b * 4, N, b + 1 < end ? w + (b + 1) * 4 * K : 0);
        if (t == threads - 1)
            for (long n = blocks * 4; n < N; n++) one_row(x, M, w + n * K, K, y + n, N);
    }
}

int small_gemm_cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* The team size of the next parallel region: torch's setting when bound to torch's runtime. */
int small_gemm_max_threads(void) { return omp_get_max_threads(); }
