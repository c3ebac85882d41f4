/*
 * GRU over a sequence, forward and the backward pass of the recurrence (see policies/gru_native.py;
 * compiled by policies/native.py with REAL=float and double). The equations of torch.nn.GRU: per
 * step t and sample b, with gx = x W_ih^T + b_ih (from the caller) and gh = h W_hh^T + b_hh,
 * each split into r | z | n parts of H:
 *   r  = sigmoid(gx_r + gh_r)
 *   z  = sigmoid(gx_z + gh_z)
 *   n  = tanh(gx_n + r gh_n)
 *   h' = (1 - z) n + z h
 * The weight gradients are left to the caller: one matmul each over all steps, from the states and
 * the gradients of gx and gh this file writes.
 */
#include "kernel_common.h"

/*
 *   gx [T][B][3H], h0 [B][H], w_hh_t [H][3H] (W_hh transposed), b_hh [3H]
 *   writes r, z, n, gh_n, each [T][B][H], and states [T][B][H]; scratch: 3H values
 */
void gru_forward(int T, int B, int H, const REAL *gx, const REAL *h0, const REAL *w_hh_t, const REAL *b_hh,
                 REAL *r, REAL *z, REAL *n, REAL *gh_n, REAL *states, REAL *scratch) {
    const int K = 3 * H;
    const REAL *h = h0;
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < B; b++) {
            const int64_t row = (int64_t)t * B + b;
            const REAL *restrict hb = h + (int64_t)b * H;
            const REAL *restrict x = gx + row * K;
            REAL *restrict gh = scratch;
            memcpy(gh, b_hh, sizeof(REAL) * K);
            matvec(H, K, K, hb, w_hh_t, gh);
            REAL *restrict rr = r + row * H, *restrict zz = z + row * H, *restrict nn = n + row * H;
            REAL *restrict ghn = gh_n + row * H, *restrict out = states + row * H;
            for (int i = 0; i < H; i++) rr[i] = sigmoid(x[i] + gh[i]);
            for (int i = 0; i < H; i++) zz[i] = sigmoid(x[H + i] + gh[H + i]);
            for (int i = 0; i < H; i++) ghn[i] = gh[2 * H + i];
            for (int i = 0; i < H; i++) nn[i] = tanh(x[2 * H + i] + rr[i] * ghn[i]);
            for (int i = 0; i < H; i++) out[i] = nn[i] + zz[i] * (hb[i] - nn[i]);
        }
        h = states + (int64_t)t * B * H;
    }
}

/*
 * Given grad_states [T][B][H] (dL/d(state after step t) from the outputs), writes
 *   g_gx [T][B][3H] = dL/d(gx), g_gh [T][B][3H] = dL/d(gh), g_h0 [B][H]
 * with w_hh [3H][H] (not transposed); scratch: 2 B H values.
 */
void gru_backward(int T, int B, int H, const REAL *w_hh, const REAL *h0, const REAL *r, const REAL *z,
                  const REAL *n, const REAL *gh_n, const REAL *states, const REAL *grad_states, REAL *g_gx,
                  REAL *g_gh, REAL *g_h0, REAL *scratch) {
    const int K = 3 * H;
    const int64_t size = (int64_t)B * H;
    REAL *grad = scratch, *grad_prev = scratch + size;
    memcpy(grad, grad_states + (T - 1) * size, sizeof(REAL) * size);
    for (int t = T - 1; t >= 0; t--) {
        const REAL *h = t > 0 ? states + (int64_t)(t - 1) * size : h0;
        for (int b = 0; b < B; b++) {
            const int64_t row = (int64_t)t * B + b;
            const REAL *restrict gh = grad + (int64_t)b * H, *restrict hb = h + (int64_t)b * H;
            const REAL *restrict rr = r + row * H, *restrict zz = z + row * H, *restrict nn = n + row * H;
            const REAL *restrict ghn = gh_n + row * H;
            REAL *restrict gx = g_gx + row * K, *restrict gg = g_gh + row * K;
            REAL *restrict gp = grad_prev + (int64_t)b * H;
            for (int i = 0; i < H; i++) {
                const REAL d_n = gh[i] * (ONE - zz[i]) * (ONE - nn[i] * nn[i]);
                const REAL d_r = d_n * ghn[i] * rr[i] * (ONE - rr[i]);
                const REAL d_z = gh[i] * (hb[i] - nn[i]) * zz[i] * (ONE - zz[i]);
                gx[i] = gg[i] = d_r;
                gx[H + i] = gg[H + i] = d_z;
                gx[2 * H + i] = d_n;
                gg[2 * H + i] = d_n * rr[i];
                gp[i] = gh[i] * zz[i] + (t > 0 ? grad_states[(row - B) * H + i] : 0);
            }
            matvec(K, H, H, gg, w_hh, gp);
        }
        REAL *swap = grad;
        grad = grad_prev;
        grad_prev = swap;
    }
    memcpy(g_h0, grad, sizeof(REAL) * size);
}
