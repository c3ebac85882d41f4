"""Liquid time-constant (LTC) core (Hasani et al., "Liquid Time-constant Networks", AAAI 2021).

Each neuron ``i`` is a leaky membrane with potential ``v_i`` driven by conductance-based synapses:

    cm_i dv_i/dt = gleak_i (vleak_i - v_i) + sum_j w_ji sigmoid(sigma_ji (v_j - mu_ji)) (erev_ji - v_i)

where ``j`` runs over the neuron's presynaptic neurons and input features (the wiring). One step
of length ``dt`` is ``ode_unfolds`` steps of the fused semi-implicit Euler solver of the paper:

    v_i <- (cm_i/h v_i + gleak_i vleak_i + sum_j w_ji s_ji erev_ji)
           / (cm_i/h + gleak_i + sum_j w_ji s_ji + epsilon),          h = dt / ode_unfolds

Numerically this is ``ncps.torch.LTC`` with its defaults (affine input and output mappings,
softplus positivity on ``w``, ``sensory_w``, ``cm`` and ``gleak``, no mixed memory).

Speed: parameters are stored per *existing* synapse (``[S]``, not a masked ``[N, N]``) and the
sensory synapses (which depend on the inputs only) are evaluated for all steps at once. The
unfolds — the hot loop — run in a small C kernel (``ltc_kernel.c``, compiled on first use by
:mod:`policies.native`) that walks the synapse list forward and, in training, backward with an
analytical gradient. Without a C compiler (or with ``LIQUID_DRONES_NATIVE=0``) the same unfolds
run in PyTorch: two small matmuls each (gather presynaptic potentials, scatter conductances to
the postsynaptic neurons) with a hand-written backward pass.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from policies import native
from policies.core import MIN_ELAPSED, RecurrentCore
from policies.wiring import AutoNCP, FullyConnected, Wiring, as_wiring

# Uniform initialisation ranges of the LTC paper (also used by ncps).
INIT_RANGES = {
    "gleak": (0.001, 1.0),
    "vleak": (-0.2, 0.2),
    "cm": (0.4, 0.6),
    "w": (0.001, 1.0),
    "sigma": (3.0, 8.0),
    "mu": (0.3, 0.8),
}


def _one_hot(index: np.ndarray, size: int) -> Tensor:
    """``[len(index), size]`` with a single 1 per row."""
    matrix = torch.zeros(len(index), size)
    matrix[torch.arange(len(index)), torch.as_tensor(index, dtype=torch.long)] = 1.0
    return matrix


def _workspace(v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A numerator | denominator buffer ``[B, 2N]`` and its two halves, reused across unfolds."""
    fraction = v.new_empty(v.shape[0], 2 * v.shape[1])
    return (fraction, *fraction.chunk(2, dim=1))


def _unfold(v, drive, cm_t, gather, bias, scatter, workspace, out=None, denominator_out=None):
    """One semi-implicit Euler step of the LTC ODE.

    :param v: potentials ``[B, N]``
    :param drive: ``[B, 2N]`` input-only parts of numerator | denominator: sensory synapses plus
        ``gleak vleak`` | sensory synapses plus ``gleak + cm/h + epsilon``
    :param cm_t: ``[B, N]`` membrane capacitance over the unfold length, cm/h
    :param gather: ``[N, S]`` presynaptic neuron of each synapse (one-hot), scaled by ``sigma``
    :param bias: ``[S]`` ``-sigma mu`` per synapse
    :param scatter: ``[S, 2N]`` postsynaptic neuron of each synapse (one-hot), scaled by
        ``w erev`` | ``w``
    :param workspace: from :func:`_workspace`
    :param out, denominator_out: optional buffers receiving the new potentials and the denominator
    """
    fraction, numerator, denominator = workspace
    act = torch.addmm(bias, v, gather).sigmoid_()
    torch.addmm(drive, act, scatter, out=fraction)
    if denominator_out is not None:
        denominator_out.copy_(denominator)
    return torch.addcmul(numerator, cm_t, v, out=out).div_(denominator)


class _Sequence(torch.autograd.Function):
    """All unfolds of a stretch of steps, with an analytical backward pass.

    Forward runs :func:`_unfold` ``T * K`` times and keeps only the potentials and denominators
    (the synapse activations are ``S / N`` times larger; recomputing them per step in the
    backward pass costs less than storing and re-reading them). Writing one unfold as
    ``v' = (n + c v) / d`` (``c = cm/h``), an upstream gradient ``g`` gives ``dL/dn = g/d``,
    ``dL/dd = -g v'/d``, ``dL/dv = c g/d`` plus the synapse path (two matmuls and a sigmoid
    derivative); weight gradients take one matmul per step.
    """

    @staticmethod
    def forward(ctx, v, drive, cm_t, gather, bias, scatter, unfolds):
        steps, batch, units = cm_t.shape
        potential = v.new_empty(steps * unfolds + 1, batch, units)  # input of every unfold, then the output
        denominator = v.new_empty(steps * unfolds, batch, units)
        potential[0] = v
        potentials, denominators = potential.unbind(0), denominator.unbind(0)
        workspace = _workspace(v)
        for t, (drive_t, cm_t_t) in enumerate(zip(drive.unbind(0), cm_t.unbind(0))):
            for j in range(t * unfolds, (t + 1) * unfolds):
                _unfold(potentials[j], drive_t, cm_t_t, gather, bias, scatter, workspace,
                        potentials[j + 1], denominators[j])
        ctx.unfolds = unfolds
        ctx.save_for_backward(potential, denominator, cm_t, gather, bias, scatter)
        return potential[unfolds::unfolds].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        potential, denominator, cm_t, gather, bias, scatter = ctx.saved_tensors
        unfolds = ctx.unfolds
        steps, batch, units = cm_t.shape
        # Buffers for one step, reused so that they stay in cache.
        act = potential.new_empty(unfolds, batch, gather.shape[1])  # synapse activations
        g_x = torch.empty_like(act)  # dL/d(synapse pre-activation)
        g_frac = potential.new_empty(unfolds, batch, 2 * units)  # dL/dn | -dL/dd per unfold
        g_nums, g_dens = g_frac[:, :, :units].unbind(0), g_frac[:, :, units:].unbind(0)
        acts, g_xs, g_fracs = act.unbind(0), g_x.unbind(0), g_frac.unbind(0)
        g_drive, g_cm_t = cm_t.new_empty(steps, batch, 2 * units), torch.empty_like(cm_t)
        g_gather, g_bias, g_scatter = torch.zeros_like(gather), torch.zeros_like(bias), torch.zeros_like(scatter)
        back = torch.cat([scatter[:, :units], -scatter[:, units:]], dim=1).t().contiguous()
        gather_t = gather.t().contiguous()
        potentials, denominators = potential.unbind(0), denominator.unbind(0)
        grad = grad_states[-1]
        for t in reversed(range(steps)):
            first = t * unfolds
            for k in range(unfolds):
                torch.addmm(bias, potentials[first + k], gather, out=acts[k]).sigmoid_()
            cm_t_t = cm_t[t]
            for k in reversed(range(unfolds)):
                j = first + k
                g_num = torch.div(grad, denominators[j], out=g_nums[k])
                torch.mul(g_num, potentials[j + 1], out=g_dens[k])
                torch.ops.aten.sigmoid_backward.grad_input(g_fracs[k].mm(back), acts[k], grad_input=g_xs[k])
                grad = torch.addmm(g_num * cm_t_t, g_xs[k], gather_t)
            v_in = potential[first : first + unfolds]
            g_gather.addmm_(v_in.flatten(0, 1).t(), g_x.flatten(0, 1))
            g_scatter.addmm_(act.flatten(0, 1).t(), g_frac.flatten(0, 1))
            g_bias.add_(g_x.sum((0, 1)))
            torch.sum(g_frac, 0, out=g_drive[t])
            torch.sum(g_frac[:, :, :units] * v_in, 0, out=g_cm_t[t])
            if t:
                grad = grad + grad_states[t - 1]
        g_drive[..., units:].neg_()
        g_scatter[:, units:].neg_()
        return grad, g_drive, g_cm_t, g_gather, g_bias, g_scatter, None


def ltc_unfolds(v, drive, cm_t, gather, bias, scatter, unfolds: int) -> Tensor:
    """``unfolds`` steps of :func:`_unfold` (one time step, no gradient bookkeeping)."""
    workspace = _workspace(v)
    for _ in range(unfolds):
        v = _unfold(v, drive, cm_t, gather, bias, scatter, workspace)
    return v


KERNEL_SOURCE = "ltc_kernel.c"
_MIN_ELAPSED = ctypes.c_double(MIN_ELAPSED)  # ltc_step's min_dt argument


def _native_forward(kernel, pre, post, v, drive, cm_nb, gain, offset, w_erev, w, unfolds):
    """Run ``ltc_forward`` of the C kernel; potentials ``[T*K+1, N, B]`` and denominators ``[T*K, N, B]``.

    :param v: ``[B, N]``; ``drive``: ``[T, B, 2N]``; ``cm_nb``: cm/h in the kernel's layout ``[T, N, B]``
    """
    steps, units, batch = cm_nb.shape
    drive_nb = drive.transpose(1, 2).contiguous()
    v_nb = v.t().contiguous()
    potential = v.new_empty(steps * unfolds + 1, units, batch)
    denominator = v.new_empty(steps * unfolds, units, batch)
    scratch = v.new_empty(units * batch + gain.numel() + 2 * units)
    p = native.pointer
    kernel.ltc_forward(steps, unfolds, batch, units, gain.numel(), p(v_nb), p(drive_nb), p(cm_nb), p(pre), p(post),
                       p(gain), p(offset), p(w_erev), p(w), p(potential), p(denominator), p(scratch))
    return potential, denominator


def _native_states(kernel, pre, post, v, drive, cm_t, gain, offset, w_erev, w, unfolds):
    """States ``[T, B, N]`` of the C kernel's forward without an autograd node (inference, e.g.
    a rollout step, where the node's bookkeeping costs as much as the unfolds)."""
    potential, _ = _native_forward(kernel, pre, post, v, drive, cm_t.transpose(1, 2).contiguous(), gain, offset,
                                   w_erev, w, unfolds)
    return potential[unfolds::unfolds].transpose(1, 2)


class _NativeSequence(torch.autograd.Function):
    """All unfolds of a stretch of steps in the C kernel (forward and backward); states ``[T, B, N]``."""

    @staticmethod
    def forward(ctx, kernel, pre, post, v, drive, cm_t, gain, offset, w_erev, w, unfolds):
        cm_nb = cm_t.transpose(1, 2).contiguous()
        potential, denominator = _native_forward(kernel, pre, post, v, drive, cm_nb, gain, offset, w_erev, w, unfolds)
        ctx.kernel, ctx.unfolds = kernel, unfolds
        ctx.save_for_backward(potential, denominator, cm_nb, pre, post, gain, offset, w_erev, w)
        return potential[unfolds::unfolds].transpose(1, 2).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        potential, denominator, cm_nb, pre, post, gain, offset, w_erev, w = ctx.saved_tensors
        steps, units, batch = cm_nb.shape
        synapses = gain.numel()
        g_states = grad_states.transpose(1, 2).contiguous()
        g_v = potential.new_empty(units, batch)
        g_drive = potential.new_empty(steps, 2 * units, batch)
        g_cm = torch.empty_like(cm_nb)
        g_synapse = [torch.empty_like(gain) for _ in range(4)]  # gain, offset, w_erev, w
        scratch = potential.new_empty(ctx.unfolds * synapses * batch + 4 * units * batch + synapses + 2 * units)
        p = native.pointer
        ctx.kernel.ltc_backward(steps, ctx.unfolds, batch, units, synapses, p(potential), p(denominator), p(cm_nb),
                                p(pre), p(post), p(gain), p(offset), p(w_erev), p(w), p(g_states), p(g_v),
                                p(g_drive), p(g_cm), *map(p, g_synapse), p(scratch))
        return (None, None, None, g_v.t(), g_drive.transpose(1, 2), g_cm.transpose(1, 2), *g_synapse, None)


class LTC(RecurrentCore):
    """LTC core over a :class:`~policies.wiring.Wiring`; outputs the motor neurons.

    :param input_size: input features F
    :param wiring: synapse graph (built here for ``input_size``); state size = ``wiring.units``,
        output size = ``wiring.output_size`` (the first neurons)
    :param ode_unfolds: solver steps per time step
    :param epsilon: added to the denominator against division by zero

    Parameters (``S``/``S_in`` = number of neuron/sensory synapses, in the order of
    ``synapses``/``sensory_synapses``): ``gleak``, ``vleak``, ``cm`` ``[N]``; ``w``, ``sigma``,
    ``mu``, ``erev`` ``[S]``; ``sensory_w``, ``sensory_sigma``, ``sensory_mu``, ``sensory_erev``
    ``[S_in]``; affine maps ``input_w``, ``input_b`` ``[F]`` and ``output_w``, ``output_b`` ``[O]``.
    ``erev`` starts at the wiring's polarity (+1/-1). Absent synapses have no parameters at all,
    so they cannot come back to life through training.

    ``native`` (default: True when the C kernel compiles) chooses the C kernel for the unfolds of
    float32/float64 CPU tensors; False keeps everything in PyTorch. Both compute the same numbers.
    """

    time_aware = True
    kernel_source = KERNEL_SOURCE

    def __init__(self, input_size: int, wiring: Wiring, ode_unfolds: int = 6, epsilon: float = 1e-8):
        if ode_unfolds < 1:
            raise ValueError(f"ode_unfolds must be >= 1, got {ode_unfolds}")
        wiring.build(input_size)
        super().__init__(input_size, wiring.output_size, wiring.units)
        self.wiring = wiring
        self.ode_unfolds = int(ode_unfolds)
        self.epsilon = float(epsilon)
        units = wiring.units
        src, dst = np.nonzero(wiring.adjacency)
        sensory_src, sensory_dst = np.nonzero(wiring.sensory_adjacency)
        self.synapses = np.stack([src, dst])  # [2, S] (presynaptic, postsynaptic) neuron ids
        self.sensory_synapses = np.stack([sensory_src, sensory_dst])  # [2, S_in] (feature, neuron)
        # Routing matrices (constants, rebuilt from the wiring, hence not in the state dict).
        self.register_buffer("_gather", _one_hot(src, units).t().contiguous(), persistent=False)
        self.register_buffer("_scatter", _one_hot(dst, units), persistent=False)
        self.register_buffer("_sensory_gather", _one_hot(sensory_src, input_size).t().contiguous(), persistent=False)
        self.register_buffer("_sensory_scatter", _one_hot(sensory_dst, units), persistent=False)
        self.register_buffer("_pre", torch.tensor(src, dtype=torch.int64), persistent=False)
        self.register_buffer("_post", torch.tensor(dst, dtype=torch.int64), persistent=False)

        def uniform(name: str, size: int) -> nn.Parameter:
            low, high = INIT_RANGES[name]
            return nn.Parameter(torch.empty(size).uniform_(low, high))

        self.gleak, self.vleak, self.cm = uniform("gleak", units), uniform("vleak", units), uniform("cm", units)
        self.w, self.sigma, self.mu = uniform("w", len(src)), uniform("sigma", len(src)), uniform("mu", len(src))
        self.erev = nn.Parameter(torch.as_tensor(wiring.adjacency[src, dst], dtype=torch.float32))
        n_in = len(sensory_src)
        self.sensory_w, self.sensory_sigma, self.sensory_mu = uniform("w", n_in), uniform("sigma", n_in), uniform("mu", n_in)
        self.sensory_erev = nn.Parameter(
            torch.as_tensor(wiring.sensory_adjacency[sensory_src, sensory_dst], dtype=torch.float32)
        )
        self.input_w, self.input_b = nn.Parameter(torch.ones(input_size)), nn.Parameter(torch.zeros(input_size))
        self.output_w = nn.Parameter(torch.ones(wiring.output_size))
        self.output_b = nn.Parameter(torch.zeros(wiring.output_size))
        self._table: tuple | None = None  # cache of _step_table

    def derive(self):
        # Sensory synapse pre-activation sigma (input_w x + input_b - mu) = x @ gather + bias.
        sigma = self.sensory_sigma
        sensory_gather = self._sensory_gather * (self.input_w.unsqueeze(1) * sigma)
        sensory_bias = sigma * (self.input_b @ self._sensory_gather - self.sensory_mu)
        gleak = F.softplus(self.gleak)
        base = torch.cat([gleak * self.vleak, gleak + self.epsilon])  # numerator | denominator constants
        sensory_scatter = self._synapse_scatter(self._sensory_scatter, self.sensory_w, self.sensory_erev)
        cm_unfold = F.softplus(self.cm) * self.ode_unfolds
        offset = -self.sigma * self.mu
        kernel = self.kernel()
        if kernel is not None:  # per-synapse vectors: gain, offset, w erev, w
            w = F.softplus(self.w)
            recurrent = (kernel, self.sigma, offset, w * self.erev, w, self.ode_unfolds)
        else:  # routing matrices of the PyTorch path
            scatter = self._synapse_scatter(self._scatter, self.w, self.erev)
            recurrent = (None, self._gather * self.sigma, offset, scatter, self.ode_unfolds)
        return sensory_gather, sensory_bias, sensory_scatter, base, cm_unfold, recurrent


    def precompute(self, inputs, elapsed):
        sensory_gather, sensory_bias, sensory_scatter, base, cm_unfold, recurrent = self.derived()
        steps, batch, units = inputs.shape[0], inputs.shape[1], self.state_size
        # Sensory synapses see only the inputs: all steps at once.
        act = torch.addmm(sensory_bias, inputs.reshape(steps * batch, -1), sensory_gather).sigmoid_()
        drive = torch.addmm(base, act, sensory_scatter).view(steps, batch, 2 * units)
        cm_t = cm_unfold / elapsed.clamp_min(MIN_ELAPSED)  # cm / h with h = dt / ode_unfolds
        drive[..., units:] += cm_t
        return [drive, cm_t], recurrent

    @staticmethod
    def _synapse_scatter(one_hot: Tensor, w: Tensor, erev: Tensor) -> Tensor:
        """``[S, 2N]``: synapse -> postsynaptic numerator (``w erev``) | denominator (``w``),
        with ``w`` made positive by softplus."""
        w = F.softplus(w).unsqueeze(1)
        return torch.cat([one_hot * (w * erev.unsqueeze(1)), one_hot * w], dim=1)

    def step(self, v, drive, cm_t, gather, bias, scatter, unfolds):
        return ltc_unfolds(v, drive, cm_t, gather, bias, scatter, unfolds)

    def run(self, per_step, shared, state):
        kernel, *recurrent = shared
        if kernel is not None:
            run = _NativeSequence.apply if torch.is_grad_enabled() else _native_states
            states = run(kernel, self._pre, self._post, state, *per_step, *recurrent)
        elif not torch.is_grad_enabled():
            return super().run(per_step, tuple(recurrent), state)
        else:  # training: the whole stretch in one autograd node with a hand-written backward pass
            states = _Sequence.apply(state, *per_step, *recurrent)
        return self.readout(states), states[-1]

    def readout(self, states):
        return torch.addcmul(self.output_b, states[..., : self.output_size], self.output_w)

    def inference_step(self, inputs, state, episode_starts, elapsed):
        table = self._step_table() if inputs.dtype == self._anchor.dtype else None
        if table is None:
            return None
        kernel, pointers = table[1], table[2]
        batch, units = inputs.shape[1], self.state_size
        starts = None if episode_starts is None else (episode_starts[0] != 0).contiguous()
        dt = None if elapsed is None else elapsed.reshape(batch).contiguous()
        x, v = inputs.reshape(batch, -1).contiguous(), state.contiguous()
        out, v_out = inputs.new_empty(1, batch, self.output_size), inputs.new_empty(batch, units)
        synapses, sensory = self.w.numel(), self.sensory_w.numel()
        scratch = inputs.new_empty(7 * units * batch + synapses + 2 * units + sensory)
        p = native.pointer
        kernel.ltc_step(batch, self.input_size, units, sensory, synapses, self.ode_unfolds, self.output_size, p(x),
                        p(v), None if starts is None else p(starts), None if dt is None else p(dt), _MIN_ELAPSED,
                        p(pointers), p(out), p(v_out), p(scratch))
        return out, v_out

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_table"] = None  # a ctypes library and raw pointers: rebuilt on first use
        return state

    def _step_table(self):
        """(derived tensors, kernel, int64 tensor of the pointers ``ltc_step`` reads, the tensors
        they point to) for the current parameters, or None where the kernel does not apply. Call
        without gradients (the derived tensors are cached only then)."""
        derived = self.derived()
        kernel = derived[-1][0]
        if kernel is None:
            return None
        if self._table is None or self._table[0] is not derived:
            sensory_gather, sensory_bias, sensory_scatter, base, cm_unfold, (_, gain, offset, w_erev, w, _) = derived
            units, index = self.state_size, torch.arange(self.sensory_w.numel())
            sensory_pre, sensory_post = (torch.as_tensor(ids, dtype=torch.int64) for ids in self.sensory_synapses)
            tensors = [sensory_pre, sensory_post, sensory_gather[sensory_pre, index], sensory_bias,
                       sensory_scatter[index, sensory_post], sensory_scatter[index, units + sensory_post], base,
                       cm_unfold, self._pre, self._post, gain, offset, w_erev, w, self.output_w, self.output_b]
            tensors = [t.detach().contiguous() for t in tensors]
            pointers = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
            self._table = (derived, kernel, pointers, tensors)
        return self._table

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, synapses={self.w.numel()}+{self.sensory_w.numel()} sensory, ode_unfolds={self.ode_unfolds}"


def build_ltc(input_size: int, hidden_size: int = 32, ode_unfolds: int = 6, seed: int = 1111) -> LTC:
    """``ltc``: fully connected LTC of ``hidden_size`` neurons, all of them outputs."""
    return LTC(input_size, FullyConnected(hidden_size, seed=seed), ode_unfolds=ode_unfolds)


def build_ncp_ltc(
    input_size: int,
    units: int = 32,
    output_size: int = 8,
    sparsity: float = 0.5,
    seed: int = 22222,
    ode_unfolds: int = 6,
    wiring: Wiring | dict | None = None,
) -> LTC:
    """``ncp-ltc``: LTC over an AutoNCP wiring (or the given ``wiring``); outputs the motor neurons."""
    wiring = as_wiring(wiring) or AutoNCP(units, output_size, sparsity=sparsity, seed=seed)
    return LTC(input_size, wiring, ode_unfolds=ode_unfolds)
