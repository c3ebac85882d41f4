/*
 * CfC recurrences over a sequence, forward and the backward pass of the recurrence (see
 * policies/cfc.py; compiled by policies/native.py with REAL=float and double). Two cores:
 *
 * cfc_*:   the dense CfC with one tanh backbone layer. Per step t and sample b:
 *            z     = proj[t] + h W_rec               (proj = x W_in + bias, from the caller)
 *            a     = tanh(z)                         (scales folded into the weights)
 *            heads = b_heads + a W_heads             (f1 | f2 | ta | tb, H each)
 * wired_*: the NCP-wired CfC, a stack of L layers of n_l neurons without backbone. Per step,
 *          layer l reads its own previous state and the new state of layer l - 1:
 *            heads_l = proj_l[t] + h_l W_rec,l + h'_(l-1) W_feed,l   (no feed for l = 0)
 * and then, per layer of n neurons (the update):
 *            g  = sigmoid(ta dt + tb)
 *            h' = tanh f1 (1 - g) + tanh f2 g        (gated, mode "default")
 *            h' = tanh f1 + tanh f2 g                (mode "no_gate")
 * Weights are row-major [in][out]. The weight gradients are left to the caller: one matmul each
 * over all steps, from the saved values and the gradients of the heads this file writes.
 */
#include "kernel_common.h"

/* The update of n neurons from heads [4n]: writes tanh f1, tanh f2, the gate, ta and h'. */
static void update(int n, int gated, REAL dt, const REAL *restrict heads, REAL *restrict t1, REAL *restrict t2,
                   REAL *restrict g, REAL *restrict ta, REAL *restrict out) {
    /* separate simple loops, so that gcc vectorises tanh and exp (glibc's libmvec) */
    for (int i = 0; i < n; i++) t1[i] = tanh(heads[i]);
    for (int i = 0; i < n; i++) t2[i] = tanh(heads[n + i]);
    for (int i = 0; i < n; i++) ta[i] = heads[2 * n + i];
    for (int i = 0; i < n; i++) g[i] = sigmoid(ta[i] * dt + heads[3 * n + i]);
    if (gated)
        for (int i = 0; i < n; i++) out[i] = t1[i] + g[i] * (t2[i] - t1[i]);
    else
        for (int i = 0; i < n; i++) out[i] = t1[i] + t2[i] * g[i];
}

/* Backward of `update`: dL/d(heads) [4n] into gj from dL/dh' gh [n]; returns dL/d(dt). */
static REAL update_backward(int n, int gated, REAL dt, const REAL *restrict gh, const REAL *restrict t1,
                            const REAL *restrict t2, const REAL *restrict g, const REAL *restrict ta,
                            REAL *restrict gj) {
    REAL g_dt = 0;
    for (int i = 0; i < n; i++) {
        const REAL d_f1 = gated ? gh[i] * (ONE - g[i]) : gh[i];
        const REAL d_gate = gated ? gh[i] * (t2[i] - t1[i]) : gh[i] * t2[i];
        const REAL d_pre = d_gate * g[i] * (ONE - g[i]);
        gj[i] = d_f1 * (ONE - t1[i] * t1[i]);
        gj[n + i] = gh[i] * g[i] * (ONE - t2[i] * t2[i]);
        gj[2 * n + i] = d_pre * dt;
        gj[3 * n + i] = d_pre;
        g_dt += d_pre * ta[i];
    }
    return g_dt;
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
            REAL *restrict z = act + row * W;
            memcpy(z, proj + row * W, sizeof(REAL) * W);
            matvec(H, W, W, h + (int64_t)b * H, w_rec, z);
            for (int w = 0; w < W; w++) z[w] = tanh(z[w]);
            REAL *restrict heads = scratch;
            memcpy(heads, b_heads, sizeof(REAL) * K);
            matvec(W, K, K, z, w_heads, heads);
            update(H, gated, elapsed[row], heads, f1 + row * H, f2 + row * H, gate + row * H, time_a + row * H,
                   states + row * H);
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
            REAL *restrict gj = g_heads + row * K;
            g_elapsed[row] = update_backward(H, gated, elapsed[row], grad + (int64_t)b * H, f1 + row * H,
                                             f2 + row * H, gate + row * H, time_a + row * H, gj);
            REAL *restrict gz = g_pre + row * W;
            memset(gz, 0, sizeof(REAL) * W);
            matvec(K, W, W, gj, w_heads_t, gz);
            const REAL *restrict a = act + row * W;
            for (int w = 0; w < W; w++) gz[w] *= ONE - a[w] * a[w];
            REAL *restrict gp = grad_prev + (int64_t)b * H;
            if (t > 0)
                memcpy(gp, grad_states + (row - B) * H, sizeof(REAL) * H);
            else
                memset(gp, 0, sizeof(REAL) * H);
            matvec(W, H, H, gz, w_rec_t, gp);
        }
        REAL *swap = grad;
        grad = grad_prev;
        grad_prev = swap;
    }
    memcpy(g_h0, grad, sizeof(REAL) * size);
}

/* Neuron offsets off[0..L] of the layers of `sizes` in the state (off[L] = N). */
static void layer_offsets(int L, const int *sizes, int *off) {
    off[0] = 0;
    for (int l = 0; l < L; l++) off[l + 1] = off[l] + sizes[l];
}

/*
 * L layers of sizes[l] neurons, N = sum sizes, W = 4 N; layer l's heads are columns 4 off_l ..
 * 4 off_(l+1) of a [.., W] row, its neurons columns off_l .. off_(l+1) of a [.., N] row.
 *   proj [T][B][W] (input projection and biases), h0 [B][N], w_rec [N][W] (block diagonal: only
 *   the layers' own blocks are read), feeds: the [n_(l-1)][4 n_l] matrices of l = 1 .. L-1 one
 *   after the other, elapsed [T][B]
 *   writes f1, f2, gate, time_a and states, each [T][B][N]; scratch: 4 N values
 */
void wired_forward(int T, int B, int L, const int *sizes, int gated, const REAL *proj, const REAL *h0,
                   const REAL *w_rec, const REAL *feeds, const REAL *elapsed, REAL *f1, REAL *f2, REAL *gate,
                   REAL *time_a, REAL *states, REAL *scratch) {
    int off[L + 1];
    layer_offsets(L, sizes, off);
    const int N = off[L], W = 4 * N;
    const REAL *h = h0;
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < B; b++) {
            const int64_t row = (int64_t)t * B + b;
            const REAL *restrict hb = h + (int64_t)b * N;
            REAL *restrict out = states + row * N;
            const REAL *restrict feed = feeds;
            for (int l = 0; l < L; l++) {
                const int n = sizes[l], o = off[l];
                REAL *restrict heads = scratch;
                memcpy(heads, proj + row * W + 4 * o, sizeof(REAL) * 4 * n);
                matvec(n, 4 * n, W, hb + o, w_rec + (int64_t)o * W + 4 * o, heads);
                if (l > 0) {
                    matvec(sizes[l - 1], 4 * n, 4 * n, out + off[l - 1], feed, heads);
                    feed += (int64_t)sizes[l - 1] * 4 * n;
                }
                const int64_t at = row * N + o;
                update(n, gated, elapsed[row], heads, f1 + at, f2 + at, gate + at, time_a + at, out + o);
            }
        }
        h = states + (int64_t)t * B * N;
    }
}

/*
 * Given grad_states [T][B][N] (dL/d(state after step t) from the outputs), writes
 *   g_heads [T][B][W] = dL/d(heads) (= dL/d(proj)), g_elapsed [T][B], g_h0 [B][N]
 * with the weights w_rec and feeds of wired_forward; scratch: 2 B N values.
 */
void wired_backward(int T, int B, int L, const int *sizes, int gated, const REAL *w_rec, const REAL *feeds,
                    const REAL *elapsed, const REAL *f1, const REAL *f2, const REAL *gate, const REAL *time_a,
                    const REAL *grad_states, REAL *g_heads, REAL *g_elapsed, REAL *g_h0, REAL *scratch) {
    int off[L + 1];
    int64_t feed_off[L + 1]; /* start of layer l's feed in feeds */
    layer_offsets(L, sizes, off);
    feed_off[0] = feed_off[1] = 0;
    for (int l = 1; l < L; l++) feed_off[l + 1] = feed_off[l] + (int64_t)sizes[l - 1] * 4 * sizes[l];
    const int N = off[L], W = 4 * N;
    const int64_t size = (int64_t)B * N;
    REAL *grad = scratch, *grad_prev = scratch + size;
    memcpy(grad, grad_states + (T - 1) * size, sizeof(REAL) * size);
    for (int t = T - 1; t >= 0; t--) {
        for (int b = 0; b < B; b++) {
            const int64_t row = (int64_t)t * B + b;
            REAL *restrict gh = grad + (int64_t)b * N; /* layers l' < l still gain from layer l's feed */
            REAL *restrict gp = grad_prev + (int64_t)b * N;
            if (t > 0)
                memcpy(gp, grad_states + (row - B) * N, sizeof(REAL) * N);
            else
                memset(gp, 0, sizeof(REAL) * N);
            REAL g_dt = 0;
            for (int l = L - 1; l >= 0; l--) {
                const int n = sizes[l], o = off[l];
                const int64_t at = row * N + o;
                REAL *restrict gj = g_heads + row * W + 4 * o;
                g_dt += update_backward(n, gated, elapsed[row], gh + o, f1 + at, f2 + at, gate + at, time_a + at, gj);
                if (l > 0) matvec_t(sizes[l - 1], 4 * n, 4 * n, gj, feeds + feed_off[l], gh + off[l - 1]);
                matvec_t(n, 4 * n, W, gj, w_rec + (int64_t)o * W + 4 * o, gp + o);
            }
            g_elapsed[row] = g_dt;
        }
        REAL *swap = grad;
        grad = grad_prev;
        grad_prev = swap;
    }
    memcpy(g_h0, grad, sizeof(REAL) * size);
}
