/*
 * LTC ODE unfolds over a sequence, forward and analytical backward (see policies/ltc.py).
 *
 * Compiled once per machine by policies/native.py, twice: with REAL=float and REAL=double.
 * Layout is neuron-major: a potential is [N][B] (units x batch), so every synapse updates a
 * contiguous row of B values and the inner loops vectorise over the batch.
 *
 * Per synapse s (presynaptic pre[s], postsynaptic post[s]):
 *   a = sigmoid(gain[s] * v[pre[s]] + offset[s])
 *   numerator[post[s]]   += w_erev[s] * a
 *   denominator[post[s]] += w[s] * a
 * and one unfold is v' = (numerator + cm_t v) / denominator, starting from the input-only
 * drive (sensory synapses, leak, cm_t, epsilon) computed by the caller.
 */
#include "kernel_common.h"

/* Below this batch the loops run over the synapses of one sample (vectorised over synapses: a PPO
 * minibatch holds a few sequences; for a fully connected wiring over contiguous rows without
 * gathers, 3x faster there than the gathering loops), from it over the batch of one synapse. */
#define SMALL_BATCH 8

/* Synapse activations of one unfold: act [S][B] from potentials v [N][B]. */
static void activations(int B, int S, const REAL *restrict v, const int64_t *restrict pre,
                        const REAL *restrict gain, const REAL *restrict offset, REAL *restrict act) {
    for (int s = 0; s < S; s++) {
        const REAL *restrict vp = v + pre[s] * B;
        REAL *restrict as = act + (int64_t)s * B;
        const REAL g = gain[s], c = offset[s];
        for (int b = 0; b < B; b++) as[b] = sigmoid(g * vp[b] + c);
    }
}

/* The synapse activations of sample b alone: act [S] from potentials v [N][B]. */
static void sample_activations(int B, int S, int b, const REAL *restrict v, const int64_t *restrict pre,
                               const REAL *restrict gain, const REAL *restrict offset, REAL *restrict act) {
    for (int s = 0; s < S; s++) act[s] = gain[s] * v[pre[s] * B + b] + offset[s];
    for (int s = 0; s < S; s++) act[s] = sigmoid(act[s]);
}

/* A fully connected wiring listed presynaptic-major (synapse s = i N + j from neuron i to j, the
 * order of np.nonzero on a full adjacency): the small-batch loops then run over contiguous rows of
 * N synapses with no gathers, and vectorise. */
static int is_dense(int N, int S, const int64_t *restrict pre, const int64_t *restrict post) {
    if (S != N * N) return 0;
    for (int s = 0; s < S; s++)
        if (pre[s] != s / N || post[s] != s % N) return 0;
    return 1;
}

/* Dense wiring, sample b: act [S] (row i: the synapses from neuron i) from potentials v [N][B]. */
static void dense_sample_activations(int B, int N, int b, const REAL *restrict v, const REAL *restrict gain,
                                     const REAL *restrict offset, REAL *restrict act) {
    for (int i = 0; i < N; i++) {
        const REAL x = v[(int64_t)i * B + b];
        const int64_t row = (int64_t)i * N;
        for (int j = 0; j < N; j++) act[row + j] = sigmoid(gain[row + j] * x + offset[row + j]);
    }
}

/* Dense wiring, one sample: the gradients of the N synapses from one neuron (potential x), given
 * dL/dnumerator gn and dL/ddenominator gd of the N postsynaptic neurons; adds the synapse path's
 * dL/dx to *gx_pre. */
static inline void synapse_row_backward(int N, REAL x, const REAL *restrict a, const REAL *restrict gn,
                                        const REAL *restrict gd, const REAL *restrict w_erev, const REAL *restrict w,
                                        const REAL *restrict gain, REAL *restrict g_w_erev, REAL *restrict g_w,
                                        REAL *restrict g_offset, REAL *restrict g_gain, REAL *restrict gx_pre) {
    REAL back = 0;
    for (int j = 0; j < N; j++) {
        const REAL as = a[j];
        g_w_erev[j] += as * gn[j];
        g_w[j] += as * gd[j];
        const REAL gx = (w_erev[j] * gn[j] + w[j] * gd[j]) * as * (ONE - as);
        g_offset[j] += gx;
        g_gain[j] += gx * x;
        back += gain[j] * gx;
    }
    *gx_pre += back;
}

/* One unfold from v to out; den receives the denominator, num is scratch ([N][B] each), and so
 * is act ([S] + 2 N, small batches). */
static void unfold(int B, int N, int S, int dense, const REAL *restrict v, const REAL *restrict drive,
                   const REAL *restrict cm_t, const int64_t *restrict pre, const int64_t *restrict post,
                   const REAL *restrict gain, const REAL *restrict offset, const REAL *restrict w_erev,
                   const REAL *restrict w, REAL *restrict num, REAL *restrict den, REAL *restrict act,
                   REAL *restrict out) {
    const int64_t size = (int64_t)N * B;
    memcpy(num, drive, sizeof(REAL) * size);
    memcpy(den, drive + size, sizeof(REAL) * size);
    if (dense) {
        REAL *restrict n_b = act + S, *restrict d_b = n_b + N;
        for (int b = 0; b < B; b++) {
            dense_sample_activations(B, N, b, v, gain, offset, act);
            for (int j = 0; j < N; j++) {
                n_b[j] = num[(int64_t)j * B + b];
                d_b[j] = den[(int64_t)j * B + b];
            }
            for (int i = 0; i < N; i++) {
                const int64_t row = (int64_t)i * N;
                for (int j = 0; j < N; j++) {
                    n_b[j] += w_erev[row + j] * act[row + j];
                    d_b[j] += w[row + j] * act[row + j];
                }
            }
            for (int j = 0; j < N; j++) {
                num[(int64_t)j * B + b] = n_b[j];
                den[(int64_t)j * B + b] = d_b[j];
            }
        }
    } else if (B < SMALL_BATCH) {
        for (int b = 0; b < B; b++) {
            sample_activations(B, S, b, v, pre, gain, offset, act);
            for (int s = 0; s < S; s++) {
                num[post[s] * B + b] += w_erev[s] * act[s];
                den[post[s] * B + b] += w[s] * act[s];
            }
        }
    } else {
        for (int s = 0; s < S; s++) {
            const REAL *restrict vp = v + pre[s] * B;
            REAL *restrict nq = num + post[s] * B;
            REAL *restrict dq = den + post[s] * B;
            const REAL g = gain[s], c = offset[s], wn = w_erev[s], wd = w[s];
            for (int b = 0; b < B; b++) {
                const REAL a = sigmoid(g * vp[b] + c);
                nq[b] += wn * a;
                dq[b] += wd * a;
            }
        }
    }
    for (int64_t i = 0; i < size; i++) out[i] = (num[i] + cm_t[i] * v[i]) / den[i];
}

/*
 * T steps of K unfolds each.
 *   v0 [N][B]; drive [T][2N][B] (numerator rows, then denominator rows); cm_t [T][N][B]
 *   potential [T*K+1][N][B] receives the input of every unfold, then the final output
 *   denominator [T*K][N][B] receives every unfold's denominator
 *   scratch: N*B + S + 2*N values
 */
void ltc_forward(int T, int K, int B, int N, int S, const REAL *v0, const REAL *drive, const REAL *cm_t,
                 const int64_t *pre, const int64_t *post, const REAL *gain, const REAL *offset,
                 const REAL *w_erev, const REAL *w, REAL *potential, REAL *denominator, REAL *scratch) {
    const int64_t size = (int64_t)N * B;
    const int dense = B < SMALL_BATCH && is_dense(N, S, pre, post);
    memcpy(potential, v0, sizeof(REAL) * size);
    for (int t = 0; t < T; t++) {
        const REAL *drive_t = drive + 2 * size * t, *cm_t_t = cm_t + size * t;
        for (int k = 0; k < K; k++) {
            const int64_t j = (int64_t)t * K + k;
            unfold(B, N, S, dense, potential + size * j, drive_t, cm_t_t, pre, post, gain, offset, w_erev, w,
                   scratch, denominator + size * j, scratch + size, potential + size * (j + 1));
        }
    }
}

/*
 * Gradients of a loss through ltc_forward, given its dL/d(output of each step).
 *   grad_states [T][N][B]: dL/d(potential after step t)
 *   grad_v0 [N][B], grad_drive [T][2N][B], grad_cm_t [T][N][B]: written
 *   grad_gain, grad_offset, grad_w_erev, grad_w [S]: written
 *   scratch: K*S*B + 4*N*B + S + 2*N values (activations: [K][S][B], for small batches [K][B][S])
 * For one unfold v' = (n + c v) / d with upstream gradient g: dL/dn = g/d, dL/dd = -g v'/d,
 * dL/dc = (g/d) v, and dL/dv = c g/d plus the synapse path through the activations.
 */
void ltc_backward(int T, int K, int B, int N, int S, const REAL *potential, const REAL *denominator,
                  const REAL *cm_t, const int64_t *pre, const int64_t *post, const REAL *gain,
                  const REAL *offset, const REAL *w_erev, const REAL *w, const REAL *grad_states,
                  REAL *grad_v0, REAL *grad_drive, REAL *grad_cm_t, REAL *grad_gain, REAL *grad_offset,
                  REAL *grad_w_erev, REAL *grad_w, REAL *scratch) {
    const int64_t size = (int64_t)N * B;
    REAL *act = scratch;                             /* activations of one step */
    REAL *g_num = act + (int64_t)K * S * B;          /* [N][B] dL/dn */
    REAL *g_den = g_num + size;                      /* [N][B] dL/dd */
    REAL *grad = g_den + size;                       /* [N][B] dL/d(output of the unfold) */
    REAL *grad_in = grad + size;                     /* [N][B] dL/d(input of the unfold) */
    REAL *tmp = grad_in + size;                      /* [S] + 2 N (small batches) */
    const int dense = B < SMALL_BATCH && is_dense(N, S, pre, post);
    memset(grad_gain, 0, sizeof(REAL) * S);
    memset(grad_offset, 0, sizeof(REAL) * S);
    memset(grad_w_erev, 0, sizeof(REAL) * S);
    memset(grad_w, 0, sizeof(REAL) * S);
    memcpy(grad, grad_states + size * (T - 1), sizeof(REAL) * size);
    for (int t = T - 1; t >= 0; t--) {
        const REAL *restrict cm_t_t = cm_t + size * t;
        REAL *restrict g_drive_num = grad_drive + 2 * size * t;
        REAL *restrict g_drive_den = g_drive_num + size;
        REAL *restrict g_cm = grad_cm_t + size * t;
        memset(g_drive_num, 0, sizeof(REAL) * 2 * size);
        memset(g_cm, 0, sizeof(REAL) * size);
        for (int k = 0; k < K; k++) {
            const REAL *v = potential + size * ((int64_t)t * K + k);
            if (dense)
                for (int b = 0; b < B; b++)
                    dense_sample_activations(B, N, b, v, gain, offset, act + ((int64_t)k * B + b) * S);
            else if (B < SMALL_BATCH)
                for (int b = 0; b < B; b++)
                    sample_activations(B, S, b, v, pre, gain, offset, act + ((int64_t)k * B + b) * S);
            else
                activations(B, S, v, pre, gain, offset, act + (int64_t)k * S * B);
        }
        for (int k = K - 1; k >= 0; k--) {
            const int64_t j = (int64_t)t * K + k;
            const REAL *restrict v_in = potential + size * j;
            const REAL *restrict v_out = potential + size * (j + 1);
            const REAL *restrict d = denominator + size * j;
            const REAL *restrict act_k = act + (int64_t)k * S * B;
            REAL *restrict gn = g_num, *restrict gd = g_den, *restrict gv = grad_in;
            const REAL *restrict gin = grad;
            for (int64_t i = 0; i < size; i++) {
                const REAL n = gin[i] / d[i];
                gn[i] = n;
                gd[i] = -n * v_out[i];
                g_drive_num[i] += n;
                g_drive_den[i] += gd[i];
                g_cm[i] += n * v_in[i];
                gv[i] = cm_t_t[i] * n;
            }
            if (dense) {
                REAL *restrict gn_b = tmp, *restrict gd_b = tmp + N;
                for (int b = 0; b < B; b++) {
                    const REAL *restrict a = act_k + (int64_t)b * S;
                    for (int j = 0; j < N; j++) {
                        gn_b[j] = gn[(int64_t)j * B + b];
                        gd_b[j] = gd[(int64_t)j * B + b];
                    }
                    for (int i = 0; i < N; i++) {
                        const int64_t row = (int64_t)i * N;
                        synapse_row_backward(N, v_in[(int64_t)i * B + b], a + row, gn_b, gd_b, w_erev + row, w + row,
                                             gain + row, grad_w_erev + row, grad_w + row, grad_offset + row,
                                             grad_gain + row, gv + (int64_t)i * B + b);
                    }
                }
            } else if (B < SMALL_BATCH) {
                REAL *restrict g_wn = grad_w_erev, *restrict g_wd = grad_w, *restrict g_c = grad_offset;
                REAL *restrict g_g = grad_gain, *restrict back = tmp;
                for (int b = 0; b < B; b++) {
                    const REAL *restrict a = act_k + (int64_t)b * S;
                    for (int s = 0; s < S; s++) {
                        const REAL gq_n = gn[post[s] * B + b], gq_d = gd[post[s] * B + b], as = a[s];
                        g_wn[s] += as * gq_n;
                        g_wd[s] += as * gq_d;
                        const REAL gx = (w_erev[s] * gq_n + w[s] * gq_d) * as * (ONE - as);
                        g_c[s] += gx;
                        g_g[s] += gx * v_in[pre[s] * B + b];
                        back[s] = gain[s] * gx;
                    }
                    for (int s = 0; s < S; s++) gv[pre[s] * B + b] += back[s];
                }
            } else {
                for (int s = 0; s < S; s++) {
                    const REAL *restrict a = act_k + (int64_t)s * B;
                    const REAL *restrict vp = v_in + pre[s] * B;
                    const REAL *restrict gnq = gn + post[s] * B, *restrict gdq = gd + post[s] * B;
                    REAL *restrict gvp = gv + pre[s] * B;
                    const REAL g = gain[s], wn = w_erev[s], wd = w[s];
                    REAL sum_wn = 0, sum_wd = 0, sum_x = 0, sum_xv = 0;
                    for (int b = 0; b < B; b++) {
                        const REAL ab = a[b];
                        sum_wn += ab * gnq[b];
                        sum_wd += ab * gdq[b];
                        const REAL gx = (wn * gnq[b] + wd * gdq[b]) * ab * (ONE - ab);
                        sum_x += gx;
                        sum_xv += gx * vp[b];
                        gvp[b] += g * gx;
                    }
                    grad_w_erev[s] += sum_wn;
                    grad_w[s] += sum_wd;
                    grad_offset[s] += sum_x;
                    grad_gain[s] += sum_xv;
                }
            }
            REAL *swap = grad;
            grad = grad_in;
            grad_in = swap;
        }
        if (t > 0) {
            const REAL *restrict upstream = grad_states + size * (t - 1);
            for (int64_t i = 0; i < size; i++) grad[i] += upstream[i];
        }
    }
    memcpy(grad_v0, grad, sizeof(REAL) * size);
}

/*
 * Inference, one call per time step (a rollout step: no gradients, no caller-side layout work).
 * Tensors are the caller's batch-major ones:
 *   x [B][F] inputs; v [B][N] potentials before the step, read as zeros where starts[b] != 0;
 *   dt [B] step durations (s), each clamped below at min_dt, or NULL for 1 per step.
 * table: the derived parameters, in this order (REAL arrays unless noted):
 *   0 sensory pre (int64 [Si], the feature) 1 sensory post (int64 [Si]) 2 sensory gain
 *   3 sensory offset 4 sensory w_erev 5 sensory w, 6 base [2N] (leak numerator | leak + epsilon
 *   denominator), 7 cm_unfold [N] (cm x K), 8 pre (int64 [S]) 9 post (int64 [S]) 10 gain
 *   11 offset 12 w_erev 13 w, 14 output_w [O] 15 output_b [O].
 * Writes out [B][O] (the first O neurons, affinely mapped) and v_out [B][N].
 * scratch: 7 N B + S + 2 N + Si values.
 * Sensory synapse s adds w_erev[s] a and w[s] a to the numerator and denominator of its
 * postsynaptic neuron, a = sigmoid(gain[s] x[pre[s]] + offset[s]): the drive of ltc_forward,
 * which then gains cm_t = cm_unfold / dt in the denominator.
 */
void ltc_step(int B, int F, int N, int Si, int S, int K, int O, const REAL *x, const REAL *v, const uint8_t *starts,
              const REAL *dt, double min_dt, const void *const *table, REAL *out, REAL *v_out, REAL *scratch) {
    const int64_t *s_pre = table[0], *s_post = table[1], *pre = table[8], *post = table[9];
    const REAL *s_gain = table[2], *s_offset = table[3], *s_w_erev = table[4], *s_w = table[5];
    const REAL *base = table[6], *cm_unfold = table[7], *gain = table[10], *offset = table[11];
    const REAL *w_erev = table[12], *w = table[13], *output_w = table[14], *output_b = table[15];
    const int64_t size = (int64_t)N * B;
    REAL *drive = scratch, *cm_t = drive + 2 * size, *from = cm_t + size, *to = from + size;
    REAL *num = to + size, *den = num + size, *act = den + size, *s_act = act + S + 2 * N;
    for (int b = 0; b < B; b++) {
        const REAL h = dt ? (dt[b] > (REAL)min_dt ? dt[b] : (REAL)min_dt) : ONE;
        const int reset = starts && starts[b];
        for (int i = 0; i < N; i++) {
            const int64_t at = (int64_t)i * B + b;
            from[at] = reset ? 0 : v[(int64_t)b * N + i];
            cm_t[at] = cm_unfold[i] / h;
            drive[at] = base[i];
            drive[size + at] = base[N + i];
        }
        const REAL *restrict xb = x + (int64_t)b * F;
        for (int s = 0; s < Si; s++) s_act[s] = sigmoid(s_gain[s] * xb[s_pre[s]] + s_offset[s]);
        for (int s = 0; s < Si; s++) {
            drive[s_post[s] * B + b] += s_w_erev[s] * s_act[s];
            drive[size + s_post[s] * B + b] += s_w[s] * s_act[s];
        }
    }
    for (int64_t i = 0; i < size; i++) drive[size + i] += cm_t[i];
    const int dense = B < SMALL_BATCH && is_dense(N, S, pre, post);
    for (int k = 0; k < K; k++) {
        unfold(B, N, S, dense, from, drive, cm_t, pre, post, gain, offset, w_erev, w, num, den, act, to);
        REAL *swap = from;
        from = to;
        to = swap;
    }
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < N; i++) v_out[(int64_t)b * N + i] = from[(int64_t)i * B + b];
        for (int o = 0; o < O; o++) out[(int64_t)b * O + o] = output_b[o] + from[(int64_t)o * B + b] * output_w[o];
    }
}
