/* The integer products' shared declarations: one matrix as the kernels read it, and the
 * one-row product the decode step (decode_step.c) calls for each of its matrices.
 *
 * Every field is 64 bits wide (pointers and int64_t), so the Python side (ctypes Structure,
 * h2q_kernels/quantized/step.py) lays the struct out the same way on every compiler.
 */
#ifndef H2Q_PRODUCTS_H
#define H2Q_PRODUCTS_H
#include <stdint.h>

#define BLOCK 32

enum { H2Q_DENSE = 0, H2Q_INT8_ROWS = 1, H2Q_CODE_GROUPS = 2 };

/* An (N, K) matrix W and its bias, in one of three layouts:
 *   H2Q_DENSE        weights fp32 (N, K)
 *   H2Q_INT8_ROWS    weights int8 (N, K), scale fp16 (N,)             K % 32 == 0
 *   H2Q_CODE_GROUPS  weights uint8 codes (N, K/2) with nibbles, else (N, K); scale and
 *                    mins fp16 per group of G along a row               K % G == 0, G % 32 == 0 */
typedef struct {
    int64_t kind, rows, width, group, nibbles;
    const void *weights;
    const uint16_t *scale, *mins;
    const float *bias; /* (N,) or NULL */
} H2QMatrix;

/* Scratch for one activation row of width ≤ K_max: int8 codes, block steps and sums. */
typedef struct {
    int8_t *xq;
    float *dx, *xs, *group_sums;
} H2QScratch;

/* Σ_k w[k] · x[k] over K fp32 values (AVX2 where built with it). */
float h2q_dot(const float *w, const float *x, int64_t K);

/* y (N,) = W x (K,) + bias; scratch: xq K bytes, dx, xs, group_sums K / 32 + 8 floats. */
void h2q_matrix_vector(const H2QMatrix *m, const float *x, float *y, H2QScratch *scratch, int threads);

#endif
