/* Integer matrix products for crystallized weights: y = x Wᵀ + bias, W kept as its codes.
 *
 * Two weight layouts, the ones h2q-tui's codecs store (h2q_tui/codecs/tensor.py):
 *   int8 rows   W[n, k] = q[n, k] · scale[n]              q int8, scale fp16 per row
 *   code groups W[n, k] = min[g] + c[n, k] · scale[g]      per group g of G values along k,
 *               c unsigned codes, either two 4-bit codes a byte (low nibble first, int4) or
 *               one code a byte (int5/int6 unpacked), scale and min fp16 per group
 * The activations are rounded to int8 per block of 32 values (absmax / 127 a block, as
 * llama.cpp's Q8_0 activations), so a block's dot product is one run of integer multiply-adds;
 * the exact sum of each block of x carries the groups' minimums.
 *
 * Dimension legend: T rows of x, K its width (a multiple of 32), N rows of W (outputs),
 * G the group length (a multiple of 32 dividing K).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "products.h"

/* For the row loops called from two places (the one-row product and the T-row one): inlined
 * into each, as a single caller would have them (out of line, the decode step slowed). */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

static float half_to_float(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exponent = 127 - 15 + 1;
            while (!(mantissa & 0x400)) { mantissa <<= 1; exponent--; }
            bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
        }
    } else if (exponent == 31) {
        bits = sign | 0x7f800000 | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
#endif
}

/* Where element i of block b goes in a row of int8 activations read against 4-bit codes
 * (``blocks`` blocks in the row). A packed byte holds two neighbours (element 2j in its low
 * nibble, 2j + 1 in its high one), and the kernels unpack 32 bytes, the codes of blocks b and
 * b + 1 (b even), into their low nibbles and their high ones. So each pair of blocks is laid
 * out as those two vectors read: b's even elements, b + 1's even ones, b's odd ones, b + 1's
 * odd ones. A last block without a partner: its even elements, then its odd ones. */
static inline int64_t nibble_position(int64_t b, int i, int64_t blocks) {
    if (b % 2 == 0 && b + 1 == blocks) return b * BLOCK + (i % 2) * (BLOCK / 2) + i / 2;
    return (b - b % 2) * BLOCK + (i % 2) * BLOCK + (b % 2) * (BLOCK / 2) + i / 2;
}

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Block b's 32 values rounded to int8 in order, into 32 bytes. cvtps rounds as lrintf does
 * (to nearest, ties to even: the default rounding mode); the two packs leave the values in
 * runs of four, which one permute puts back in order. */
static inline __m256i round_block(const float *v, float inverse) {
    __m256 scale = _mm256_set1_ps(inverse);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v), scale));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + 8), scale));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + 16), scale));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + 24), scale));
    __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    return _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
#endif

/* One row of x (K values) into int8 blocks: codes, the block scales and the blocks' exact sums.
 * nibbles: in nibble_position's order, else in order. */
static void quantize_row(const float *x, int64_t K, int8_t *xq, float *dx, float *xs, int nibbles) {
    int64_t blocks = K / BLOCK;
    for (int64_t b = 0; b < blocks; b++) {
        const float *v = x + b * BLOCK;
#ifdef __AVX2__
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
               v3 = _mm256_loadu_ps(v + 24);
        float absmax = hmax(_mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                          _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3))));
        float sum = hsum(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
#else
        float absmax = 0.0f, sum = 0.0f;
        for (int i = 0; i < BLOCK; i++) {
            float a = fabsf(v[i]);
            absmax = a > absmax ? a : absmax;
            sum += v[i];
        }
#endif
        float d = absmax / 127.0f, inverse = d > 0.0f ? 1.0f / d : 0.0f;
        dx[b] = d;
        xs[b] = sum;
#ifdef __AVX2__
        __m256i q = round_block(v, inverse);
        if (!nibbles) {
            _mm256_storeu_si256((__m256i *)(xq + b * BLOCK), q);
            continue;
        }
        /* each 16-byte half: its even elements, then its odd ones; then the halves' evens together */
        const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                               0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        __m256i parts = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(q, split), 0xd8); /* evens | odds */
        if (b % 2 == 0 && b + 1 == blocks) {
            _mm256_storeu_si256((__m256i *)(xq + b * BLOCK), parts);
        } else {
            int8_t *pair = xq + (b - b % 2) * BLOCK + (b % 2) * (BLOCK / 2);
            _mm_storeu_si128((__m128i *)pair, _mm256_castsi256_si128(parts));
            _mm_storeu_si128((__m128i *)(pair + BLOCK), _mm256_extracti128_si256(parts, 1));
        }
#else
        for (int i = 0; i < BLOCK; i++)
            xq[nibbles ? nibble_position(b, i, blocks) : b * BLOCK + i] = (int8_t)lrintf(v[i] * inverse);
#endif
    }
}

#ifdef __AVX2__
/* Σ over one block of 32: unsigned codes (≤ 63) times signed activations, as 8 int32 lanes. */
static inline __m256 block_dot_u8(__m256i codes, __m256i xq) {
    __m256i pairs = _mm256_maddubs_epi16(codes, xq);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif

#ifdef __AVX2__
/* The codes of block b as 32 bytes: a run of 32, or from 16 packed bytes (``nibbles``), low
 * nibbles first: the order of a block without a partner in nibble_position's layout. */
static inline __m256i block_codes(const uint8_t *codes, int nibbles, int64_t b) {
    if (!nibbles) return _mm256_loadu_si256((const __m256i *)(codes + b * BLOCK));
    __m128i bytes = _mm_loadu_si128((const __m128i *)(codes + b * BLOCK / 2));
    const __m128i low = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low), _mm_and_si128(bytes, low));
}

/* Σ codes · xq over blocks b and b + 1 (b even) of 4-bit codes, the activations in
 * nibble_position's layout: 8 lanes, the first four block b's, the last four block b + 1's.
 * One load and two masks unpack both blocks, with no lane shuffles; the products of their
 * even and odd elements are added as int16 (each ≤ 2 · 15 · 127: the sum cannot saturate)
 * before one widening. */
static inline __m256 nibble_pair_dot(const uint8_t *codes, int64_t b, __m256i evens, __m256i odds) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256i bytes = _mm256_loadu_si256((const __m256i *)(codes + b * BLOCK / 2));
    __m256i sums = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(bytes, low4), evens),
                                    _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4), odds));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(sums, _mm256_set1_epi16(1)));
}

/* The activations of blocks b and b + 1 against 4-bit codes: their even elements, their odd ones. */
static inline void pair_activations(const int8_t *xq, int64_t b, __m256i *evens, __m256i *odds) {
    *evens = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
    *odds = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK + BLOCK));
}

/* Lanes j and j + 1 of eight block steps spread as nibble_pair_dot's lanes (four each). */
static inline __m256 pair_steps(__m256 steps, int j) {
    return _mm256_permutevar8x32_ps(steps, _mm256_setr_epi32(j, j, j, j, j + 1, j + 1, j + 1, j + 1));
}
#endif

#ifdef __AVX2__
/* Adds Σ_k codes[k] · xq[k] · steps[b − first] over blocks b = first … first + count − 1
 * (first even) to two accumulators, so that two chains of multiply-adds overlap. */
static inline void scaled_blocks(const uint8_t *codes, int nibbles, const int8_t *xq, int64_t first, int64_t count,
                                 const float *steps, __m256 *acc0, __m256 *acc1) {
    int64_t j = 0;
    if (nibbles) {
        for (; j + 1 < count; j += 2) {
            __m256i evens, odds;
            pair_activations(xq, first + j, &evens, &odds);
            __m256 step = _mm256_set_m128(_mm_broadcast_ss(steps + j + 1), _mm_broadcast_ss(steps + j));
            __m256 *acc = (j / 2) % 2 ? acc1 : acc0;
            *acc = _mm256_fmadd_ps(nibble_pair_dot(codes, first + j, evens, odds), step, *acc);
        }
    } else {
        for (; j + 1 < count; j += 2) {
            int64_t b = first + j;
            __m256i a0 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
            __m256i a1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * BLOCK));
            *acc0 = _mm256_fmadd_ps(block_dot_u8(block_codes(codes, 0, b), a0), _mm256_broadcast_ss(steps + j), *acc0);
            *acc1 = _mm256_fmadd_ps(block_dot_u8(block_codes(codes, 0, b + 1), a1), _mm256_broadcast_ss(steps + j + 1), *acc1);
        }
    }
    if (j < count) {
        int64_t b = first + j;
        __m256i a = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        *acc0 = _mm256_fmadd_ps(block_dot_u8(block_codes(codes, nibbles, b), a), _mm256_broadcast_ss(steps + j), *acc0);
    }
}
#endif

/* Σ_k q[k] · x[k] of one int8 row over the quantized activations. */
static float dot_int8(const int8_t *q, const int8_t *xq, const float *dx, int64_t blocks) {
#ifdef __AVX2__
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < blocks; b += 2) { /* two chains of multiply-adds, to hide their latency */
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(q + b * BLOCK));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(q + (b + 1) * BLOCK));
        __m256i a0 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i a1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * BLOCK));
        /* |w| · (a with w's sign): unsigned × signed, what maddubs multiplies (|q| ≤ 127) */
        acc0 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(a0, w0)), _mm256_set1_ps(dx[b]), acc0);
        acc1 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(a1, w1)), _mm256_set1_ps(dx[b + 1]), acc1);
    }
    if (b < blocks) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(q + b * BLOCK));
        __m256i a = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        acc0 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)), _mm256_set1_ps(dx[b]), acc0);
    }
    return hsum(_mm256_add_ps(acc0, acc1));
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < blocks; b++) {
        int32_t s = 0;
        for (int i = 0; i < BLOCK; i++) s += (int32_t)q[b * BLOCK + i] * xq[b * BLOCK + i];
        acc += (float)s * dx[b];
    }
    return acc;
#endif
}

/* Σ_g scale[g] · Σ_k codes[k] · x[k] of one row of G-groups, before the minimums; a group
 * is 2^shift blocks. Each block's scale times its activation step is computed first, eight
 * at a time where a group is one block, so the inner loop is integer work and one multiply-add. */
static float dot_code_row(const uint8_t *codes, int nibbles, const uint16_t *scale, int64_t blocks,
                          int shift, const int8_t *xq, const float *dx) {
    float steps[blocks];
    int64_t b = 0;
#ifdef __AVX2__
    if (shift == 0)
        for (; b + 8 <= blocks; b += 8)
            _mm256_storeu_ps(steps + b, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scale + b))),
                                                      _mm256_loadu_ps(dx + b)));
#endif
    for (; b < blocks; b++) steps[b] = half_to_float(scale[b >> shift]) * dx[b];
#ifdef __AVX2__
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    scaled_blocks(codes, nibbles, xq, 0, blocks, steps, &acc0, &acc1);
    return hsum(_mm256_add_ps(acc0, acc1));
#else
    float acc = 0.0f;
    int64_t block_bytes = nibbles ? BLOCK / 2 : BLOCK;
    for (b = 0; b < blocks; b++) {
        int32_t sum = 0;
        for (int i = 0; i < BLOCK; i++) {
            if (nibbles) {
                int byte = codes[b * block_bytes + i / 2];
                sum += (i % 2 ? byte >> 4 : byte & 0x0f) * xq[nibble_position(b, i, blocks)];
            } else {
                sum += codes[b * block_bytes + i] * xq[b * BLOCK + i];
            }
        }
        acc += steps[b] * (float)sum;
    }
    return acc;
#endif
}

#ifdef __AVX2__
/* Up to 8 fp16 values from p as floats; lanes past ``count`` are zero, or whatever follows
 * in memory where ``spare`` says at least 7 more values follow p[count − 1] (one 16-byte
 * load is then in bounds; the caller multiplies those lanes by zeros). */
static inline __m256 load_halves(const uint16_t *p, int count, int spare) {
    if (count == 8 || spare) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    uint16_t padded[8] = {0};
    memcpy(padded, p, sizeof(uint16_t) * (size_t)count);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)padded));
}
#endif

#ifdef __AVX2__
/* The 4-bit codes' part of dot_groups32 for blocks c … c + count − 1 of one row, their steps
 * (scale · dx) in one vector: pairs of blocks take their four-lane steps from it by a lane
 * permute, a block without a partner all eight lanes. */
static inline void nibble_blocks(const uint8_t *codes, const int8_t *xq, int64_t c, int count, __m256 steps,
                                 __m256 *acc0, __m256 *acc1) {
    int j = 0;
    for (; j + 3 < count; j += 4) {
        __m256i e0, o0, e1, o1;
        pair_activations(xq, c + j, &e0, &o0);
        pair_activations(xq, c + j + 2, &e1, &o1);
        *acc0 = _mm256_fmadd_ps(nibble_pair_dot(codes, c + j, e0, o0), pair_steps(steps, j), *acc0);
        *acc1 = _mm256_fmadd_ps(nibble_pair_dot(codes, c + j + 2, e1, o1), pair_steps(steps, j + 2), *acc1);
    }
    if (j + 1 < count) {
        __m256i e, o;
        pair_activations(xq, c + j, &e, &o);
        *acc0 = _mm256_fmadd_ps(nibble_pair_dot(codes, c + j, e, o), pair_steps(steps, j), *acc0);
        j += 2;
    }
    if (j < count) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(xq + (c + j) * BLOCK));
        __m256 step = _mm256_permutevar8x32_ps(steps, _mm256_set1_epi32(j));
        *acc1 = _mm256_fmadd_ps(block_dot_u8(block_codes(codes, 1, c + j), a), step, *acc1);
    }
}
#endif

/* One row of int4/5/6 codes in groups of 32 (a group is one block), minimums included:
 * Σ_b scale[b] · dx[b] · Σ_k codes[k] · xq[k] + min[b] · xs[b]. Blocks go eight at a time:
 * their scales and minimums are one vector each (no scalar fp16 conversions). dx and xs must
 * hold zeros from ``blocks`` up to the next multiple of 8 (lanes of another row's scales meet
 * those zeros). */
ALWAYS_INLINE float dot_groups32(const uint8_t *codes, int nibbles, const uint16_t *scale, const uint16_t *mins,
                          int64_t blocks, const int8_t *xq, const float *dx, const float *xs, int spare) {
#ifdef __AVX2__
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), offsets = _mm256_setzero_ps();
    for (int64_t c = 0; c < blocks; c += 8) {
        int count = blocks - c < 8 ? (int)(blocks - c) : 8;
        __m256 steps = _mm256_mul_ps(load_halves(scale + c, count, spare), _mm256_loadu_ps(dx + c));
        offsets = _mm256_fmadd_ps(load_halves(mins + c, count, spare), _mm256_loadu_ps(xs + c), offsets);
        if (nibbles) {
            nibble_blocks(codes, xq, c, count, steps, &acc0, &acc1);
        } else {
            float stored[8]; /* read back one at a time: a broadcast load is cheaper than a lane permute */
            _mm256_storeu_ps(stored, steps);
            scaled_blocks(codes, 0, xq, c, count, stored, &acc0, &acc1);
        }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), offsets));
#else
    (void)spare;
    float total = dot_code_row(codes, nibbles, scale, blocks, 0, xq, dx);
    for (int64_t b = 0; b < blocks; b++) total += half_to_float(mins[b]) * xs[b];
    return total;
#endif
}

#ifdef __AVX2__
/* dot_groups32 of two rows (n, n + 1) of 4-bit codes at once: the activations are loaded once
 * for both and the two rows' chains of multiply-adds interleave. At least 7 values must follow the second
 * row's scales and minimums (load_halves' ``spare``): the last rows go one at a time. */
ALWAYS_INLINE void dot_groups32_pair(const uint8_t *codes, int64_t row_bytes, const uint16_t *scale, const uint16_t *mins,
                              int64_t blocks, const int8_t *xq, const float *dx, const float *xs, float *out) {
    __m256 acc_a = _mm256_setzero_ps(), acc_b = _mm256_setzero_ps();
    __m256 oa = _mm256_setzero_ps(), ob = _mm256_setzero_ps();
    const uint8_t *ca = codes, *cb = codes + row_bytes;
    for (int64_t c = 0; c < blocks; c += 8) {
        int count = blocks - c < 8 ? (int)(blocks - c) : 8;
        __m256 d = _mm256_loadu_ps(dx + c), xsum = _mm256_loadu_ps(xs + c);
        __m256 sa = _mm256_mul_ps(load_halves(scale + c, count, 1), d);
        __m256 sb = _mm256_mul_ps(load_halves(scale + blocks + c, count, 1), d);
        oa = _mm256_fmadd_ps(load_halves(mins + c, count, 1), xsum, oa);
        ob = _mm256_fmadd_ps(load_halves(mins + blocks + c, count, 1), xsum, ob);
        int j = 0;
        for (; j + 1 < count; j += 2) {
            __m256i e, o;
            pair_activations(xq, c + j, &e, &o);
            acc_a = _mm256_fmadd_ps(nibble_pair_dot(ca, c + j, e, o), pair_steps(sa, j), acc_a);
            acc_b = _mm256_fmadd_ps(nibble_pair_dot(cb, c + j, e, o), pair_steps(sb, j), acc_b);
        }
        if (j < count) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + (c + j) * BLOCK));
            __m256i lane = _mm256_set1_epi32(j);
            acc_a = _mm256_fmadd_ps(block_dot_u8(block_codes(ca, 1, c + j), x), _mm256_permutevar8x32_ps(sa, lane), acc_a);
            acc_b = _mm256_fmadd_ps(block_dot_u8(block_codes(cb, 1, c + j), x), _mm256_permutevar8x32_ps(sb, lane), acc_b);
        }
    }
    out[0] = hsum(_mm256_add_ps(acc_a, oa));
    out[1] = hsum(_mm256_add_ps(acc_b, ob));
}
#endif

#ifdef __AVX2__
/* dot_int8 of two rows (n, n + 1) at once, the activations loaded once for both. */
static void dot_int8_pair(const int8_t *q, int64_t K, const int8_t *xq, const float *dx, int64_t blocks, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    const int8_t *qa = q, *qb = q + K;
    int64_t b = 0;
    for (; b + 1 < blocks; b += 2) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * BLOCK));
        __m256 d0 = _mm256_broadcast_ss(dx + b), d1 = _mm256_broadcast_ss(dx + b + 1);
        __m256i wa0 = _mm256_loadu_si256((const __m256i *)(qa + b * BLOCK)), wa1 = _mm256_loadu_si256((const __m256i *)(qa + (b + 1) * BLOCK));
        __m256i wb0 = _mm256_loadu_si256((const __m256i *)(qb + b * BLOCK)), wb1 = _mm256_loadu_si256((const __m256i *)(qb + (b + 1) * BLOCK));
        a0 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(wa0, wa0), _mm256_sign_epi8(x0, wa0)), d0, a0);
        b0 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(wb0, wb0), _mm256_sign_epi8(x0, wb0)), d0, b0);
        a1 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(wa1, wa1), _mm256_sign_epi8(x1, wa1)), d1, a1);
        b1 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(wb1, wb1), _mm256_sign_epi8(x1, wb1)), d1, b1);
    }
    if (b < blocks) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256 d = _mm256_broadcast_ss(dx + b);
        __m256i wa = _mm256_loadu_si256((const __m256i *)(qa + b * BLOCK)), wb = _mm256_loadu_si256((const __m256i *)(qb + b * BLOCK));
        a0 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(wa, wa), _mm256_sign_epi8(x, wa)), d, a0);
        b0 = _mm256_fmadd_ps(block_dot_u8(_mm256_sign_epi8(wb, wb), _mm256_sign_epi8(x, wb)), d, b0);
    }
    out[0] = hsum(_mm256_add_ps(a0, a1));
    out[1] = hsum(_mm256_add_ps(b0, b1));
}
#endif

/* Σ_g min[g] · (Σ x over group g): the groups' minimums against the exact sums of x. */
static float min_terms(const uint16_t *mins, const float *group_sums, int64_t groups) {
    float total = 0.0f;
    int64_t g = 0;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; g + 8 <= groups; g += 8) {
        __m256 m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mins + g)));
        acc = _mm256_fmadd_ps(m, _mm256_loadu_ps(group_sums + g), acc);
    }
    total = hsum(acc);
#endif
    for (; g < groups; g++) total += half_to_float(mins[g]) * group_sums[g];
    return total;
}

/* T rows of activations: row t's codes at xq + t · K, its block steps and sums at
 * dx, xs + t · stride, each row followed by 8 zeros (dot_groups32's padding). */
typedef struct {
    int8_t *xq;
    float *dx, *xs;
    int64_t stride;
} Activations;

static int quantize_all(const float *x, int64_t T, int64_t K, int nibbles, Activations *a) {
    a->stride = K / BLOCK + 8;
    a->xq = malloc((size_t)(T * K));
    a->dx = calloc((size_t)(T * a->stride), sizeof(float));
    a->xs = calloc((size_t)(T * a->stride), sizeof(float));
    if (!a->xq || !a->dx || !a->xs) {
        free(a->xq); free(a->dx); free(a->xs);
        return -1;
    }
    for (int64_t t = 0; t < T; t++)
        quantize_row(x + t * K, K, a->xq + t * K, a->dx + t * a->stride, a->xs + t * a->stride, nibbles);
    return 0;
}

static void release(Activations *a) { free(a->xq); free(a->dx); free(a->xs); }

/* y (T, N) = x (T, K) · (q · scale)ᵀ + bias; returns 0, or -1 when memory ran out. */
int h2q_int8_rows(const float *x, int64_t T, int64_t K, const int8_t *q, const uint16_t *scale,
                  int64_t N, const float *bias, float *y, int threads) {
    Activations a;
    if (K % BLOCK || quantize_all(x, T, K, 0, &a)) return -1;
    int64_t blocks = K / BLOCK;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && N * K * T >= (1 << 18))
    for (int64_t n = 0; n < N; n++) {
        float s = half_to_float(scale[n]), b = bias ? bias[n] : 0.0f;
        for (int64_t t = 0; t < T; t++)
            y[t * N + n] = s * dot_int8(q + n * K, a.xq + t * K, a.dx + t * a.stride, blocks) + b;
    }
    release(&a);
    return 0;
}

/* y (T, N) = x (T, K) · (min + codes · scale)ᵀ + bias, groups of G along k (K % G == 0). */
int h2q_code_groups(const float *x, int64_t T, int64_t K, const uint8_t *codes, int nibbles,
                    const uint16_t *scale, const uint16_t *mins, int64_t G, int64_t N,
                    const float *bias, float *y, int threads) {
    Activations a;
    int shift = 0;
    while ((BLOCK << shift) < G) shift++;
    if (K % BLOCK || (BLOCK << shift) != G || K % G || quantize_all(x, T, K, nibbles, &a)) return -1;
    int64_t groups = K / G, per_group = G / BLOCK, row_bytes = nibbles ? K / 2 : K;
    float *group_sums = malloc(sizeof(float) * (size_t)(T * groups)); /* Σ x per group, exact */
    if (!group_sums) { release(&a); return -1; }
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < groups; g++) {
            float sum = 0.0f;
            for (int64_t j = 0; j < per_group; j++) sum += a.xs[t * a.stride + g * per_group + j];
            group_sums[t * groups + g] = sum;
        }
    int parallel = threads > 1 && N * K * T >= (1 << 18);
    int64_t pairs = 0; /* rows below 2 · pairs go two at a time (dot_groups32_pair) */
    (void)threads;
    (void)parallel; /* read by the pragmas only */
#ifdef __AVX2__
    if (shift == 0 && nibbles)
        for (pairs = N / 2; pairs > 0 && (N - 2 * pairs) * groups < 7; pairs--) {}
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
    for (int64_t p = 0; p < pairs; p++) {
        int64_t n = 2 * p;
        for (int64_t t = 0; t < T; t++) {
            float two[2];
            dot_groups32_pair(codes + n * row_bytes, row_bytes, scale + n * groups, mins + n * groups, K / BLOCK,
                              a.xq + t * K, a.dx + t * a.stride, a.xs + t * a.stride, two);
            y[t * N + n] = two[0] + (bias ? bias[n] : 0.0f);
            y[t * N + n + 1] = two[1] + (bias ? bias[n + 1] : 0.0f);
        }
    }
#endif
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
    for (int64_t n = 2 * pairs; n < N; n++) {
        const uint16_t *s = scale + n * groups, *m = mins + n * groups;
        for (int64_t t = 0; t < T; t++) {
            if (shift == 0) {
                y[t * N + n] = dot_groups32(codes + n * row_bytes, nibbles, s, m, K / BLOCK, a.xq + t * K,
                                            a.dx + t * a.stride, a.xs + t * a.stride, (N - n - 1) * groups >= 7)
                               + (bias ? bias[n] : 0.0f);
                continue;
            }
            float total = dot_code_row(codes + n * row_bytes, nibbles, s, K / BLOCK, shift,
                                       a.xq + t * K, a.dx + t * a.stride);
            total += min_terms(m, group_sums + t * groups, groups);
            y[t * N + n] = total + (bias ? bias[n] : 0.0f);
        }
    }
    free(group_sums);
    release(&a);
    return 0;
}

/* Σ_k w[k] · x[k] of one fp32 row. */
float h2q_dot(const float *w, const float *x, int64_t K) {
    int64_t k = 0;
    float total = 0.0f;
#ifdef __AVX2__
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; k + 16 <= K; k += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), acc1);
    }
    total = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; k < K; k++) total += w[k] * x[k];
    return total;
}

/* Scratch sizes: xq K bytes, dx / xs / group_sums K / 32 + 8 floats. */
void h2q_matrix_vector(const H2QMatrix *m, const float *x, float *y, H2QScratch *s, int threads) {
    int64_t N = m->rows, K = m->width, blocks = K / BLOCK;
    const float *bias = m->bias;
    (void)threads;
    if (m->kind == H2Q_DENSE) {
        const float *w = (const float *)m->weights;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && N * K >= (1 << 18))
        for (int64_t n = 0; n < N; n++) y[n] = h2q_dot(w + n * K, x, K) + (bias ? bias[n] : 0.0f);
        return;
    }
    if (m->kind == H2Q_INT8_ROWS) {
        const int8_t *q = (const int8_t *)m->weights;
        quantize_row(x, K, s->xq, s->dx, s->xs, 0);
        int parallel = threads > 1 && N * K >= (1 << 18), first = 0; /* rows from first on: one at a time */
        (void)parallel; /* read by the pragma and the AVX2 pairs only */
#ifdef __AVX2__
        /* pairs of rows on short rows only, where a row's fixed cost counts: on long rows
         * streamed from memory they were slower (benchmarks/quantized.py on the 85 M model:
         * 9.7 ms of int8 products a token in pairs against 6.0 ms one row at a time) */
        for (; !parallel && K < 512 && first + 1 < N; first += 2) {
            float two[2];
            dot_int8_pair(q + first * K, K, s->xq, s->dx, blocks, two);
            y[first] = half_to_float(m->scale[first]) * two[0] + (bias ? bias[first] : 0.0f);
            y[first + 1] = half_to_float(m->scale[first + 1]) * two[1] + (bias ? bias[first + 1] : 0.0f);
        }
#endif
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
        for (int64_t n = first; n < N; n++)
            y[n] = half_to_float(m->scale[n]) * dot_int8(q + n * K, s->xq, s->dx, blocks) + (bias ? bias[n] : 0.0f);
        return;
    }
    int64_t G = m->group, groups = K / G, per_group = G / BLOCK, row_bytes = m->nibbles ? K / 2 : K;
    int shift = 0;
    while ((BLOCK << shift) < G) shift++;
    const uint8_t *codes = (const uint8_t *)m->weights;
    quantize_row(x, K, s->xq, s->dx, s->xs, (int)m->nibbles);
    for (int64_t b = blocks; b < blocks + 8; b++) s->dx[b] = s->xs[b] = 0.0f; /* dot_groups32's padding */
    for (int64_t g = 0; g < groups; g++) {
        float sum = 0.0f;
        for (int64_t j = 0; j < per_group; j++) sum += s->xs[g * per_group + j];
        s->group_sums[g] = sum;
    }
    int parallel = threads > 1 && N * K >= (1 << 18);
    int64_t first = 0; /* rows from first on: one at a time */
    (void)parallel; /* read by the pragma and the AVX2 pairs only */
#ifdef __AVX2__
    for (; shift == 0 && m->nibbles && !parallel && first + 1 < N && (N - first - 2) * groups >= 7; first += 2) {
        float two[2];
        dot_groups32_pair(codes + first * row_bytes, row_bytes, m->scale + first * groups, m->mins + first * groups,
                          blocks, s->xq, s->dx, s->xs, two);
        y[first] = two[0] + (bias ? bias[first] : 0.0f);
        y[first + 1] = two[1] + (bias ? bias[first + 1] : 0.0f);
    }
#endif
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
    for (int64_t n = first; n < N; n++) {
        if (shift == 0) {
            y[n] = dot_groups32(codes + n * row_bytes, (int)m->nibbles, m->scale + n * groups, m->mins + n * groups,
                                blocks, s->xq, s->dx, s->xs, (N - n - 1) * groups >= 7)
                   + (bias ? bias[n] : 0.0f);
            continue;
        }
        float total = dot_code_row(codes + n * row_bytes, (int)m->nibbles, m->scale + n * groups, blocks, shift,
                                   s->xq, s->dx);
        y[n] = total + min_terms(m->mins + n * groups, s->group_sums, groups) + (bias ? bias[n] : 0.0f);
    }
}

/* y (N,) = W x (K,) + bias for one matrix, its scratch allocated here: 0, or -1 when memory
 * ran out. What the decode step does per matrix, callable alone (tests, benchmarks). */
int h2q_matrix_product(const H2QMatrix *m, const float *x, float *y, int threads) {
    int64_t K = m->width, blocks = K / BLOCK + 8;
    H2QScratch s = {malloc((size_t)K), malloc(sizeof(float) * (size_t)blocks), malloc(sizeof(float) * (size_t)blocks),
                    malloc(sizeof(float) * (size_t)blocks)};
    int status = -1;
    if (s.xq && s.dx && s.xs && s.group_sums) {
        h2q_matrix_vector(m, x, y, &s, threads);
        status = 0;
    }
    free(s.xq); free(s.dx); free(s.xs); free(s.group_sums);
    return status;
}
