/* Shared by the C kernels of policies/: the float type, the sigmoid and two mat-vec products. */
#ifndef LIQUID_DRONES_KERNEL_COMMON_H
#define LIQUID_DRONES_KERNEL_COMMON_H

#include <stdint.h>
#include <string.h>
#include <tgmath.h> /* exp(), tanh() follow REAL */

#ifndef REAL
#define REAL float /* policies/native.py builds each kernel with REAL=float and REAL=double */
#endif

#define ONE ((REAL)1)

static inline REAL sigmoid(REAL x) {
    return ONE / (ONE + exp(-x));
}

#define BLOCK 32 /* output columns kept in registers by matvec */

/* out[0:K] += x[0:N] M, M [N][K] with row stride ld: blocks of BLOCK outputs accumulate in registers. */
static inline void matvec(int N, int K, int64_t ld, const REAL *restrict x, const REAL *restrict M, REAL *restrict out) {
    int j0 = 0;
    for (; j0 + BLOCK <= K; j0 += BLOCK) {
        REAL acc[BLOCK];
        for (int j = 0; j < BLOCK; j++) acc[j] = out[j0 + j];
        for (int n = 0; n < N; n++) {
            const REAL s = x[n];
            const REAL *restrict row = M + n * ld + j0;
            for (int j = 0; j < BLOCK; j++) acc[j] += s * row[j];
        }
        for (int j = 0; j < BLOCK; j++) out[j0 + j] = acc[j];
    }
    for (int n = 0; n < N; n++)
        for (int j = j0; j < K; j++) out[j] += x[n] * M[n * ld + j];
}

/* out[0:N] += M x[0:K], M [N][K] with row stride ld: one dot product per output (for few outputs,
 * fewer than BLOCK, from many inputs). */
static inline void matvec_t(int N, int K, int64_t ld, const REAL *restrict x, const REAL *restrict M, REAL *restrict out) {
    for (int n = 0; n < N; n++) {
        const REAL *restrict row = M + n * ld;
        REAL sum = 0;
        for (int k = 0; k < K; k++) sum += row[k] * x[k];
        out[n] += sum;
    }
}

#endif
