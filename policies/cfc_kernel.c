/*
 * CfC with one tanh backbone layer over a sequence: forward and the backward pass of the
 * recurrence (see policies/cfc.py; compiled by policies/native.py with REAL=float and double).
 *
 * Per step t and sample b (row-major tensors, weights as [in][out]):
 *   z     = proj[t] + h W_rec               (proj = x W_in + bias, computed by the caller)
 *   a     = tanh(z)                         (the backbone activation, scales folded into weights)
 *   heads = b_heads + a W_heads             (f1 | f2 | ta | tb, H each)
 *   g     = sigmoid(ta dt + tb)
 *   h'    = tanh f1 (1 - g) + tanh f2 g     (gated, mode "default")
 *   h'    = tanh f1 + tanh f2 g             (mode "no_gate")
 * The weight gradients are left to the caller: one matmul each over all steps, from the saved
 * activations and the gradients of the pre-activations and heads this file writes.
 */
#include "kernel_common.h"

#define BLOCK 32 /* output columns kept in registers by matvec */

/* out[0:K] += x[0:N] M, M [N][K] row-major: blocks of BLOCK outputs accumulate in registers. */
static void matvec(int N, int K, const REAL *restrict x, const REAL *restrict M, REAL *restrict out) {
    int j0 = 0;
    for (; j0 + BLOCK <= K; j0 += BLOCK) {
        REAL acc[BLOCK];
        for (int j = 0; j < BLOCK; j++) acc[j] = out[j0 + j];
        for (int n = 0; n < N; n++) {
            const REAL s = x[n];
            const REAL *restrict row = M + (int64_t)n * K + j0;
            for (int j = 0; j < BLOCK; j++) acc[j] += s * row[j];
        }
        for (int j = 0; j < BLOCK; j++) out[j0 + j] = acc[j];
    }
    for (int n = 0; n < N; n++)
        for (int j = j0; j < K; j++) out[j] += x[n] * M[(int64_t)n * K + j];
}

/*
 *   proj [T][B][W], h0 [B][H], w_rec [H][W], w_heads [W][4H], b_heads [4H], elapsed [T][B]
 *   writes act [T][B][W] (= a), f1 [T][B][H] (= tanh f1), f2 (= tanh f2), gate, time_a (= ta),
 *   states [T][B][H]; scratch: 4H values
 */
void cfc_forward(int T, int B, int H, int W, int gated, const REAL *proj, const REAL *h0, const REAL *w_rec,
                 const REAL *w_heads, const REAL *b_heads, const REAL *elapsed, REAL *act, REAL *f1, REAL *f2,
                 REAL *gate, REAL *time_a, REAL *states, REAL *scratch) {
    const int K = 4 * H;
    const REAL *h = h0;
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < B; b++) {
            const int64_t row = (int64_t)t * B + b;
            const REAL *restrict hb = h + (int64_t)b * H;
            REAL *restrict z = act + row * W;
            memcpy(z, proj + row * W, sizeof(REAL) * W);
            matvec(H, W, hb, w_rec, z);
            for (int w = 0; w < W; w++) z[w] = tanh(z[w]);
            REAL *restrict heads = scratch;
            memcpy(heads, b_heads, sizeof(REAL) * K);
            matvec(W, K, z, w_heads, heads);
            const REAL dt = elapsed[row];
            REAL *restrict t1 = f1 + row * H, *restrict t2 = f2 + row * H;
            REAL *restrict g = gate + row * H, *restrict ta = time_a + row * H;
            REAL *restrict out = states + row * H;
            /* separate simple loops, so that gcc vectorises tanh and exp (glibc's libmvec) */
            for (int i = 0; i < H; i++) t1[i] = tanh(heads[i]);
            for (int i = 0; i < H; i++) t2[i] = tanh(heads[H + i]);
            for (int i = 0; i < H; i++) ta[i] = heads[2 * H + i];
            for (int i = 0; i < H; i++) g[i] = sigmoid(ta[i] * dt + heads[3 * H + i]);
            if (gated)
                for (int i = 0; i < H; i++) out[i] = t1[i] + g[i] * (t2[i] - t1[i]);
            else
                for (int i = 0; i < H; i++) out[i] = t1[i] + t2[i] * g[i];
        }
        h = states + (int64_t)t * B * H;
    }
}

/*
 * Given grad_states [T][B][H] (dL/d(state after step t) from the outputs), writes
 *   g_heads [T][B][4H] = dL/d(heads), g_pre [T][B][W] = dL/dz, g_elapsed [T][B], g_h0 [B][H]
 * with w_rec_t [W][H] and w_heads_t [4H][W] the transposed weights; scratch: 2 B H values.
 */
void cfc_backward(int T, int B, int H, int W, int gated, const REAL *w_rec_t, const REAL *w_heads_t,
                  const REAL *elapsed, const REAL *act, const REAL *f1, const REAL *f2, const REAL *gate,
                  const REAL *time_a, const REAL *grad_states, REAL *g_heads, REAL *g_pre, REAL *g_elapsed,
                  REAL *g_h0, REAL *scratch) {
    const int K = 4 * H;
    const int64_t size = (int64_t)B * H;
    REAL *grad = scratch, *grad_prev = scratch + size;
    memcpy(grad, grad_states + (T - 1) * size, sizeof(REAL) * size);
    for (int t = T - 1; t >= 0; t--) {
        for (int b = 0; b < B; b++) {
            const int64_t row = (int64_t)t * B + b;
            const REAL *restrict gh = grad + (int64_t)b * H;
            const REAL *restrict t1 = f1 + row * H, *restrict t2 = f2 + row * H;
            const REAL *restrict g = gate + row * H, *restrict ta = time_a + row * H;
            REAL *restrict gj = g_heads + row * K;
            const REAL dt = elapsed[row];
            REAL g_dt = 0;
            for (int i = 0; i < H; i++) {
                const REAL d_f1 = gated ? gh[i] * (ONE - g[i]) : gh[i];
                const REAL d_gate = gated ? gh[i] * (t2[i] - t1[i]) : gh[i] * t2[i];
                const REAL d_pre = d_gate * g[i] * (ONE - g[i]);
                gj[i] = d_f1 * (ONE - t1[i] * t1[i]);
                gj[H + i] = gh[i] * g[i] * (ONE - t2[i] * t2[i]);
                gj[2 * H + i] = d_pre * dt;
                gj[3 * H + i] = d_pre;
                g_dt += d_pre * ta[i];
            }
            g_elapsed[row] = g_dt;
            REAL *restrict gz = g_pre + row * W;
            memset(gz, 0, sizeof(REAL) * W);
            matvec(K, W, gj, w_heads_t, gz);
            const REAL *restrict a = act + row * W;
            for (int w = 0; w < W; w++) gz[w] *= ONE - a[w] * a[w];
            REAL *restrict gp = grad_prev + (int64_t)b * H;
            if (t > 0)
                memcpy(gp, grad_states + (row - B) * H, sizeof(REAL) * H);
            else
                memset(gp, 0, sizeof(REAL) * H);
            matvec(W, H, gz, w_rec_t, gp);
        }
        REAL *swap = grad;
        grad = grad_prev;
        grad_prev = swap;
    }
    memcpy(g_h0, grad, sizeof(REAL) * size);
}
