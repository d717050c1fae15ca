/* One decoding step of a pre-LN transformer (GPT, QRLM) in one call: the token's embedding
 * through every block, the final norm and the head, for batch 1 and one new position.
 *
 * It computes what the step program in Python does (h2q_tui/generation/steps_transformer.py,
 * pre_ln_blocks): per block x += out(attention(qkv(ln1(x)))); x += fc2(gelu(fc1(ln2(x)))),
 * GELU exact (x · Φ(x)), attention over the keys and values cached at positions
 * 0 … offset, the new key and value written at ``offset``. The caches are the Python
 * program's own tensors, (2, nh, context, hs) fp32, so the two can take turns: a prompt goes
 * through Python (many positions at once), each new token through here. Each matrix is an
 * H2QMatrix (products.h): fp32, int8 rows or code groups, so one layout serves a float
 * model and a crystallized one.
 *
 * Dimension legend: C the width, nh heads, hs = C / nh, F the MLP's width, V the vocabulary.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "products.h"

/* A LayerNorm: ``normalize`` 0 is the identity (nn.Identity); weight and bias may be NULL. */
typedef struct {
    int64_t normalize;
    const float *weight, *bias;
    double eps;
} H2QNorm;

typedef struct {
    H2QNorm ln1;
    H2QMatrix qkv, out; /* (3C, C), (C, C) */
    H2QNorm ln2;
    H2QMatrix fc1, fc2; /* (F, C), (C, F) */
    float *kv;          /* (2, nh, context, hs) */
} H2QLayer;

typedef struct {
    int64_t width, heads, context, layers, widest; /* widest: max(C, F, 3C, V) */
    const float *embedding;                        /* (V, C) */
    const float *positions;                        /* (context, C) */
    const H2QLayer *layer;
    H2QNorm final;
    H2QMatrix head; /* (V, C) */
} H2QPreLN;

static void norm(const H2QNorm *n, const float *x, float *y, int64_t C) {
    if (!n->normalize) {
        memcpy(y, x, sizeof(float) * (size_t)C);
        return;
    }
    float mean = 0.0f, var = 0.0f;
    for (int64_t i = 0; i < C; i++) mean += x[i];
    mean /= (float)C;
    for (int64_t i = 0; i < C; i++) var += (x[i] - mean) * (x[i] - mean);
    float inverse = 1.0f / sqrtf(var / (float)C + (float)n->eps);
    for (int64_t i = 0; i < C; i++) {
        float v = (x[i] - mean) * inverse;
        if (n->weight) v *= n->weight[i];
        if (n->bias) v += n->bias[i];
        y[i] = v;
    }
}

#ifdef __AVX2__
/* e^x, eight at a time: 2^n · e^r with |r| ≤ ln 2 / 2 and a degree-7 polynomial for e^r
 * (Cephes' expf coefficients; relative error about 1e-7). Below -87 it is 0 or tiny. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i power = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(power));
}

/* x · Φ(x) = x · erfc(−x/√2) / 2, eight at a time. erfc by the Chebyshev fit of Numerical
 * Recipes' erfcc (fractional error below 1.2e-7): for z = |u|, t = 1 / (1 + z/2),
 * erfc(z) = t · exp(−z² + P(t)); erfc(−z) = 2 − erfc(z). */
static inline __m256 gelu8(__m256 x) {
    static const float P[10] = {-1.26551223f, 1.00002368f, 0.37409196f, 0.09678418f, -0.18628806f,
                                0.27886807f,  -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};
    __m256 u = _mm256_mul_ps(x, _mm256_set1_ps(-0.70710678118654752f));
    __m256 z = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), u);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(P[9]);
    for (int i = 8; i >= 0; i--) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(P[i]));
    __m256 e = _mm256_mul_ps(t, exp8(_mm256_fnmadd_ps(z, z, p)));
    __m256 negative = _mm256_cmp_ps(u, _mm256_setzero_ps(), _CMP_LT_OQ);
    __m256 erfc = _mm256_blendv_ps(e, _mm256_sub_ps(_mm256_set1_ps(2.0f), e), negative);
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), erfc);
}
#endif

/* The exact GELU, x · Φ(x), in place over n values. */
static void gelu(float *x, int64_t n) {
    int64_t i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; i++) x[i] = x[i] * 0.5f * erfcf(-x[i] * 0.70710678118654752f);
}

/* softmax(q kᵀ / sqrt(hs)) v for one query per head over positions 0 … end − 1. */
static void attention(const float *qkv, const float *kv, int64_t heads, int64_t context, int64_t end,
                      int64_t C, float *scores, float *y) {
    int64_t hs = C / heads;
    float scale = 1.0f / sqrtf((float)hs);
    for (int64_t h = 0; h < heads; h++) {
        const float *q = qkv + h * hs;
        const float *keys = kv + h * context * hs, *values = kv + (heads + h) * context * hs;
        float top = -INFINITY, total = 0.0f;
        for (int64_t t = 0; t < end; t++) {
            scores[t] = h2q_dot(q, keys + t * hs, hs) * scale;
            top = scores[t] > top ? scores[t] : top;
        }
        for (int64_t t = 0; t < end; t++) {
            scores[t] = expf(scores[t] - top);
            total += scores[t];
        }
        float *out = y + h * hs;
        memset(out, 0, sizeof(float) * (size_t)hs);
        for (int64_t t = 0; t < end; t++) {
            float p = scores[t] / total;
            for (int64_t i = 0; i < hs; i++) out[i] += p * values[t * hs + i];
        }
    }
}

static double seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* One matrix product of the step; its time is added to *spent when spent is not NULL. */
static void product(const H2QMatrix *matrix, const float *x, float *y, H2QScratch *s, int threads, double *spent) {
    double start = spent ? seconds() : 0.0;
    h2q_matrix_vector(matrix, x, y, s, threads);
    if (spent) *spent += seconds() - start;
}

/* logits (V,) and the final hidden state (C,) after ``token`` at position ``offset``
 * (< context); 0, or -1 when memory ran out. ``spent``: NULL, or where the seconds spent in
 * the matrix products are added (benchmarks split a token's time with it). */
int h2q_pre_ln_token(const H2QPreLN *m, int64_t token, int64_t offset, float *logits, float *hidden,
                     int threads, double *spent) {
    int64_t C = m->width, W = m->widest, hs = C / m->heads;
    float *x = malloc(sizeof(float) * (size_t)(4 * W + m->context));
    H2QScratch s = {malloc((size_t)W), malloc(sizeof(float) * (size_t)W), malloc(sizeof(float) * (size_t)W),
                    malloc(sizeof(float) * (size_t)W)};
    if (!x || !s.xq || !s.dx || !s.xs || !s.group_sums) {
        free(x); free(s.xq); free(s.dx); free(s.xs); free(s.group_sums);
        return -1;
    }
    float *h = x + W, *wide = x + 2 * W, *y = x + 3 * W, *scores = x + 4 * W;
    const float *e = m->embedding + token * C, *p = m->positions + offset * C;
    for (int64_t i = 0; i < C; i++) x[i] = e[i] + p[i];
    for (int64_t l = 0; l < m->layers; l++) {
        const H2QLayer *L = m->layer + l;
        norm(&L->ln1, x, h, C);
        product(&L->qkv, h, wide, &s, threads, spent);
        for (int64_t head = 0; head < m->heads; head++) { /* the new key and value, cached */
            memcpy(L->kv + (head * m->context + offset) * hs, wide + C + head * hs, sizeof(float) * (size_t)hs);
            memcpy(L->kv + ((m->heads + head) * m->context + offset) * hs, wide + 2 * C + head * hs,
                   sizeof(float) * (size_t)hs);
        }
        attention(wide, L->kv, m->heads, m->context, offset + 1, C, scores, y);
        product(&L->out, y, h, &s, threads, spent);
        for (int64_t i = 0; i < C; i++) x[i] += h[i];
        norm(&L->ln2, x, h, C);
        product(&L->fc1, h, wide, &s, threads, spent);
        gelu(wide, L->fc1.rows);
        product(&L->fc2, wide, h, &s, threads, spent);
        for (int64_t i = 0; i < C; i++) x[i] += h[i];
    }
    norm(&m->final, x, hidden, C);
    product(&m->head, hidden, logits, &s, threads, spent);
    free(x); free(s.xq); free(s.dx); free(s.xs); free(s.group_sums);
    return 0;
}
