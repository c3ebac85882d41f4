"""The CfC's fused training pass: a stretch of steps in one autograd node with a hand-written
backward pass (:class:`FusedSequence`), for any :class:`~policies.cfc.CfC` or
:class:`~policies.cfc.WiredCfC` configuration.

It runs ``out=`` and in-place ops on ``[T, B, ...]`` buffers carved from one allocation: the
backward step of the update is one product with coefficients computed for all steps at once, and
each weight gradient is one matmul over all ``T * B`` rows at the end. It computes what
:func:`policies.cfc.cfc_update` and :meth:`policies.cfc.StackedCfC.step` compute, step by step;
tests pin it to ncps (test_ncps_parity.py), to the C kernel (test_native_kernels.py) and to
finite differences (gradcheck in test_cores.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from policies.activations import ACTIVATIONS

if TYPE_CHECKING:
    from policies.cfc import StackedCfC

_aten = torch.ops.aten


def _per_step(tensor: Tensor) -> tuple[Tensor, ...]:
    """The views ``[B, ...]`` of a ``[T, B, ...]`` tensor, made in one call: much cheaper than
    indexing inside the loop."""
    return tensor.unbind(0)


def _by_head(tensor: Tensor, heads_per_neuron: int) -> Tensor:
    """``[T, B, k n]`` as ``[T, k, B, n]`` (a view), so that a step's ``[k, B, n]`` broadcasts with ``[B, n]``."""
    return tensor.unflatten(-1, (heads_per_neuron, -1)).transpose(1, 2)


def _rows(tensor: Tensor) -> Tensor:
    """``[T, B, n]`` as ``[T * B, n]``."""
    return tensor.reshape(-1, tensor.shape[-1])


class _GatedUpdate:
    """The ``default`` / ``no_gate`` update of one layer in the fused pass.

    The forward pass turns the heads ``[T, B, 4n]`` (``f1 | f2 | a | b``) step by step into
    ``tanh f1 | tanh f2 | a | gate`` in place and writes the new states. The gradient of the heads
    is the gradient of the new state times, per head, a coefficient that depends on forward values
    only: :meth:`coefficients` computes them for all steps at once, so that a backward step is a
    single product.
    """

    heads_per_neuron = 4

    def __init__(self, mode: str, heads: Tensor, elapsed: Tensor):
        self.heads, self.elapsed, self.no_gate = heads, elapsed, mode == "no_gate"
        self.combine = torch.addcmul if self.no_gate else torch.lerp  # f1 + f2 gate | f1 + (f2 - f1) gate
        self.steps = list(zip(*(_per_step(x) for x in (elapsed, *self.parts(heads)))))
        self.elapsed_coefficient: Tensor | None = None

    @staticmethod
    def parts(heads: Tensor) -> tuple[Tensor, ...]:
        """``f1 | f2`` (one view), ``f1``, ``f2``, ``a``, ``b`` of ``heads [..., 4n]``."""
        n = heads.shape[-1] // 4
        f1, f2, a, b = heads.split(n, dim=-1)
        return heads[..., : 2 * n], f1, f2, a, b

    def forward(self, t: int, out: Tensor) -> None:
        elapsed, f, f1, f2, a, b = self.steps[t]
        f.tanh_()
        b.addcmul_(a, elapsed).sigmoid_()
        self.combine(f1, f2, b, out=out)

    def coefficients(self, out: Tensor, need_elapsed: bool) -> None:
        """Writes d(new state)/d(heads) into ``out [T, B, 4n]``; keeps d(new state)/d(elapsed) per
        neuron in ``elapsed_coefficient`` if ``need_elapsed``."""
        _, f1, f2, a, gate = self.parts(self.heads)
        _, c_f1, c_f2, c_a, c_b = self.parts(out)
        # dh/d(f head) = dh/d(tanh f) (1 - tanh^2 f), dh/db = dh/d(gate) gate (1 - gate), dh/da = dh/db dt
        _aten.tanh_backward.grad_input(gate.new_ones(()).expand_as(gate), f1, grad_input=c_f1)
        _aten.tanh_backward.grad_input(gate, f2, grad_input=c_f2)
        if self.no_gate:  # h = tanh f1 + tanh f2 gate
            _aten.sigmoid_backward.grad_input(f2, gate, grad_input=c_b)
        else:  # h = tanh f1 (1 - gate) + tanh f2 gate
            c_f1.addcmul_(gate, c_f1, value=-1.0)
            _aten.sigmoid_backward.grad_input(torch.sub(f2, f1, out=c_b), gate, grad_input=c_b)
        self.elapsed_coefficient = c_b * a if need_elapsed else None  # dh/d(dt) = dh/db a
        torch.mul(c_b, self.elapsed, out=c_a)

    def sums(self, g_states: Tensor, need_elapsed: bool) -> tuple:
        """dL/d(elapsed) ``[T, B, 1]`` (if ``need_elapsed``) and the pure-mode gradients (none),
        from the gradients of the new states ``[T, B, n]``."""
        g_dt = (g_states * self.elapsed_coefficient).sum(-1, keepdim=True) if need_elapsed else None
        return g_dt, None, None


class _PureUpdate:
    """The ``pure`` update of one layer in the fused pass (the methods as in :class:`_GatedUpdate`);
    keeps the heads ``f1`` and, in ``decay``, ``e = exp(-dt (tau + |f1|))`` of every step."""

    heads_per_neuron = 1

    def __init__(self, heads: Tensor, decay: Tensor, elapsed: Tensor, tau: Tensor, amplitude: Tensor):
        self.heads, self.decay, self.elapsed, self.tau, self.amplitude = heads, decay, elapsed, tau, amplitude
        self.steps = list(zip(_per_step(elapsed), _per_step(heads), _per_step(decay)))

    def forward(self, t: int, out: Tensor) -> None:
        elapsed, f1, decay = self.steps[t]
        torch.abs(f1, out=decay).add_(self.tau).mul_(elapsed).neg_().exp_()
        torch.mul(self.amplitude, decay, out=out).mul_(f1)
        torch.sub(self.amplitude, out, out=out)

    def coefficients(self, out: Tensor, need_elapsed: bool) -> None:
        # dh/d(f1) = -A e (1 - dt |f1|)
        torch.abs(self.heads, out=out).mul_(self.elapsed).sub_(1.0).mul_(self.decay).mul_(self.amplitude)

    def sums(self, g_states: Tensor, need_elapsed: bool) -> tuple:
        """dL/d(elapsed) ``[T, B, 1]`` (if ``need_elapsed``), dL/d(tau) and dL/d(A)."""
        product = self.decay * self.heads  # e f1
        common = self.amplitude * product * g_states  # A e f1 g
        g_dt = (common * (self.tau + self.heads.abs())).sum(-1, keepdim=True) if need_elapsed else None
        g_tau = (common * self.elapsed).sum((0, 1)).view_as(self.tau)
        return g_dt, g_tau, ((1.0 - product) * g_states).sum((0, 1)).view_as(self.amplitude)


class _FusedPass:
    """Buffers and loops of one training pass of a :class:`StackedCfC` over a stretch of T steps.

    Every per-step tensor lives in a ``[T, B, ...]`` buffer, so both loops run ``out=`` and in-place
    ops on views made once, and each weight gradient is one matmul over all ``T * B`` rows at the
    end. Kept for the backward pass: ``z[0]`` = the pre-activations ``x W_in + b + h W_rec``, then
    per backbone layer its activation (in place over ``z[d]`` unless the activation saves its input,
    then in ``a[d]``) and its output ``z[d + 1]``; the last is the heads, which the update turns into
    its intermediates. Only single-layer stacks have a backbone (:class:`CfC`); stacked layers
    (:class:`WiredCfC`) have none.

    All these buffers (and the backward pass's) are views of one allocation: as separate tensors
    of a few MB each, glibc's malloc handed their memory back to the system after every pass and
    the next pass paid a page fault per 4 KiB again (~10 % of the time).
    """

    def __init__(self, core: StackedCfC, inputs: Tensor, elapsed: Tensor, input_w: Tensor, bias: Tensor,
                 recurrent: Tensor, feeds: list[Tensor], backbone: list[tuple[Tensor, Tensor]], pure: list[tuple]):
        self.core, self.activation = core, ACTIVATIONS[core.activation]
        self.inputs, self.input_w, self.recurrent = inputs, input_w, recurrent
        self.feeds, self.backbone = feeds, backbone
        steps, batch = inputs.shape[:2]
        widths = [input_w.shape[1]] + [weight.shape[1] for weight, _ in backbone]
        saves_input = self.activation.saves_input
        shapes = [(steps, batch, w) for w in widths]  # z
        shapes += [(steps, batch, w) for w in widths[:-1]] if saves_input else []  # a
        shapes += [(steps, batch, w) for w in widths]  # gradients of z
        shapes += [(steps, batch, core.state_size)] * (2 if core.mode == "pure" else 1)  # state gradients, decay
        sizes = [math.prod(shape) for shape in shapes]
        buffers = [part.view(shape) for part, shape in zip(inputs.new_empty(sum(sizes)).split(sizes), shapes)]
        depth = len(backbone)
        self.z, buffers = buffers[: depth + 1], buffers[depth + 1 :]
        self.a, buffers = (buffers[:depth], buffers[depth:]) if saves_input else (self.z[:-1], buffers)
        self.g_z, self.g_states = buffers[: depth + 1], buffers[depth + 1]
        # Each z starts as its input and bias terms; the steps add their matmul in place.
        torch.addmm(bias, _rows(inputs), input_w, out=_rows(self.z[0]))
        for z, (_, b) in zip(self.z[1:], backbone):
            z.copy_(b.expand_as(z))
        heads = core.split(self.z[-1], core.widths)
        if core.mode == "pure":
            decay = core.split(buffers[depth + 2], core.layer_sizes)
            self.updates = [_PureUpdate(*args, elapsed, *values) for *args, values in zip(heads, decay, pure)]
        else:
            self.updates = [_GatedUpdate(core.mode, h, elapsed) for h in heads]

    def forward(self, h: Tensor) -> Tensor:
        """Runs the steps from the state ``h``; returns the states ``[T, B, N]``."""
        core, function, backbone = self.core, self.activation.function, self.backbone
        recurrent, feeds, updates = self.recurrent, self.feeds, self.updates
        states = self.z[0].new_empty(*self.z[0].shape[:2], core.state_size)
        z = [_per_step(x) for x in self.z]
        a = [z[d] if x is self.z[d] else _per_step(x) for d, x in enumerate(self.a)]
        state_steps = _per_step(states)
        layer_states = [state_steps]  # per layer
        if len(updates) > 1:
            layer_states = [_per_step(x) for x in core.split(states, core.layer_sizes)]
        fed = [_per_step(x) for x in core.split(self.z[-1], core.widths)[1:]]  # heads of the layers after the first
        for t in range(len(state_steps)):
            z[0][t].addmm_(h, recurrent)
            for d, (weight, _) in enumerate(backbone):
                function(z[d][t], out=a[d][t])
                z[d + 1][t].addmm_(a[d][t], weight)
            for index, update in enumerate(updates):
                if index:
                    fed[index - 1][t].addmm_(layer_states[index - 1][t], feeds[index - 1])
                update.forward(t, layer_states[index][t])
            h = state_steps[t]
        return states

    def backward(self, h: Tensor, states: Tensor, grad_states: Tensor, need_inputs: bool, need_elapsed: bool) -> tuple:
        """Gradients of ``h``, the inputs (if ``need_inputs``), the elapsed times (if ``need_elapsed``),
        the input weight and bias, the recurrent weight, the feeds, the backbone ``(weight, bias)``
        pairs and the pure ``(tau, A)``."""
        core, backward, updates, g_z = self.core, self.activation.backward, self.updates, self.g_z
        # the transposed weights as contiguous right operands too (see StackedCfC)
        recurrent_t = self.recurrent.t().contiguous()
        feeds_t = [weight.t().contiguous() for weight in self.feeds]
        backbone_t = [weight.t().contiguous() for weight, _ in self.backbone]
        # dL/d(state after step t): from the outputs now, from the later steps as the loop goes
        g_states = self.g_states.copy_(grad_states)
        layer_g_states = core.split(g_states, core.layer_sizes)
        g_heads = core.split(g_z[-1], core.widths)
        for update, g in zip(updates, g_heads):  # the loop multiplies them by the state gradients in place
            update.coefficients(g, need_elapsed)
        g_heads_by_head = [_per_step(_by_head(g, u.heads_per_neuron)) for g, u in zip(g_heads, updates)]
        g_state_steps = _per_step(g_states)
        layer_g_steps = [g_state_steps] if len(updates) == 1 else [_per_step(g) for g in layer_g_states]
        g_fed = [_per_step(g) for g in g_heads[1:]]
        z, g_z_steps = [_per_step(x) for x in self.z[:-1]], [_per_step(x) for x in g_z]
        for t in reversed(range(len(g_state_steps))):
            for index in reversed(range(len(updates))):
                g_heads_by_head[index][t].mul_(layer_g_steps[index][t])
                if index:
                    layer_g_steps[index - 1][t].addmm_(g_fed[index - 1][t], feeds_t[index - 1])
            for d in reversed(range(len(backbone_t))):
                torch.mm(g_z_steps[d + 1][t], backbone_t[d], out=g_z_steps[d][t])
                backward(g_z_steps[d][t], z[d][t], out=g_z_steps[d][t])
            if t:
                g_state_steps[t - 1].addmm_(g_z_steps[0][t], recurrent_t)
        g_pre = _rows(g_z[0])  # dL/d(x W_in + b + h W_rec) of every step
        g_inputs = g_pre.mm(self.input_w.t()).view_as(self.inputs) if need_inputs else None
        g_h = g_z[0][0].mm(recurrent_t)
        g_recurrent = h.t().mm(g_z[0][0]).addmm_(_rows(states[:-1]).t(), _rows(g_z[0][1:]))
        g_feeds = [_rows(x).t().mm(_rows(g)) for x, g in zip(core.split(states, core.layer_sizes), g_heads[1:])]
        g_backbone = [(_rows(a).t().mm(_rows(g)), g.sum((0, 1))) for a, g in zip(self.a, g_z[1:])]
        sums = [u.sums(g, need_elapsed) for u, g in zip(updates, layer_g_states)]
        g_elapsed = sum(s[0] for s in sums) if need_elapsed else None
        return (g_h, g_inputs, g_elapsed, _rows(self.inputs).t().mm(g_pre), g_pre.sum(0), g_recurrent,
                g_feeds, g_backbone, [s[1:] for s in sums])


class FusedSequence(torch.autograd.Function):
    """A stretch of steps of a :class:`StackedCfC` with a hand-written backward pass (:class:`_FusedPass`).

    Inputs after ``core``: initial state, inputs ``[T, B, F]``, elapsed ``[T, B, 1]``, then the
    tensors of :meth:`StackedCfC.derive`: input weight, bias, recurrent weight, then the feeds,
    backbone and pure values flattened. Returns the states ``[T, B, N]``.
    """

    @staticmethod
    def forward(ctx, core, h, inputs, elapsed, input_w, bias, recurrent, *rest):
        feeds, backbone, pure = core.unflatten(rest)
        ctx.core = core
        ctx.fused = _FusedPass(core, inputs, elapsed, input_w, bias, recurrent, feeds, backbone, pure)
        states = ctx.fused.forward(h)
        ctx.save_for_backward(h, states, inputs, elapsed, input_w, bias, recurrent, *rest)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        h, states, *_ = ctx.saved_tensors  # unpacking checks that no input changed in place
        need = ctx.needs_input_grad
        g_h, g_inputs, g_elapsed, g_input_w, g_bias, g_recurrent, g_feeds, g_backbone, g_pure = ctx.fused.backward(
            h, states, grad_states, need_inputs=need[2], need_elapsed=need[3])
        return (None, g_h, g_inputs, g_elapsed, g_input_w, g_bias, g_recurrent,
                *ctx.core.flatten(g_feeds, g_backbone, g_pure))
