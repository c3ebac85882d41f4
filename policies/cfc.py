"""Closed-form continuous-time (CfC) cores (Hasani et al., Nature Machine Intelligence 2022).

A CfC replaces the LTC's ODE solver by an approximate closed-form solution. From the input and
the previous state a network computes four heads ``f1, f2, a, b`` and, for a step of ``dt``:

- ``default``:  h = tanh(f1) (1 - g) + tanh(f2) g,   g = sigmoid(a dt + b)
- ``no_gate``:  h = tanh(f1) + tanh(f2) g
- ``pure``:     h = A - A exp(-dt (|w_tau| + |f1|)) f1        (only the f1 head)

:class:`CfC` computes the heads with a dense MLP "backbone" (``ncps.torch.CfC``); :class:`WiredCfC`
stacks one backbone-free CfC layer per NCP layer (inter -> command -> motor) with the wiring's
sparsity (``ncps.torch.WiredCfCCell``, with the difference documented there). Both are a stack of
layers ``l`` computing per step

    pre_l = h_l W_rec,l + b_l + (x W_in  if l == 0  else  h'_(l-1) W_feed,l)
    heads_l = backbone_l(pre_l);   h'_l = cfc_update(heads_l, dt)

so they share one step (:meth:`_StackedCfC.step`) and one fused training pass.

Speed: the input projection is one matmul over all steps; per step, the recurrent parts of all
layers are one matmul (block-diagonal for stacked layers); every weight is stored as the
contiguous right operand of its matmul. In training, a custom autograd function (:class:`_Sequence`
with :class:`_FusedPass`) runs a whole stretch of steps and its hand-written backward pass with
``out=`` and in-place ops on ``[T, B, ...]`` buffers: the backward step of the update is one
product with coefficients computed for all steps at once, and each weight gradient is one matmul
over all ``T * B`` rows at the end. PPO minibatches of a dense CfC (a few sequences of up to a few
hundred steps, where each PyTorch op costs more in dispatch than in arithmetic) train in a C kernel
instead (``cfc_kernel.c``, :class:`_NativeSequence`; see :class:`CfC` for what it covers).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from policies import native
from policies.core import RecurrentCore
from policies.wiring import AutoNCP, Wiring, as_wiring

MODES = ("default", "no_gate", "pure")
#: Largest batch the C kernel trains (the sequences of a PPO minibatch: a handful): it walks the
#: samples one by one, which beats MKL's tiny matmuls there and loses to its larger ones (measured
#: [T, B] = [100, 3]: 1.9 ms vs 4.0 ms; [256, 8]: 10 vs 13 ms; [128, 64]: 24 vs 17 ms). Rollout
#: steps (no gradient) stay on the PyTorch path, which is as fast there.
KERNEL_MAX_BATCH = 16
_aten = torch.ops.aten


class Activation:
    """A backbone activation ``outer * f(inner * z)``. The scales are folded into the adjacent
    weights, so a step applies ``f`` alone: ``function(z, out=None)`` computes it (with autograd, or
    into ``out``, which may be ``z``) and ``backward(grad, saved, out)`` writes the gradient of its
    input into ``out`` (which may be ``grad``), from its output or, if ``saves_input``, its input."""

    def __init__(self, function, backward_op, *extra, inner=1.0, outer=1.0, saves_input=False):
        self.function, self.inner, self.outer, self.saves_input = function, inner, outer, saves_input
        self._backward, self._extra = backward_op.grad_input, extra

    def backward(self, grad: Tensor, saved: Tensor, out: Tensor) -> Tensor:
        return self._backward(grad, saved, *self._extra, grad_input=out)


def _aten_function(op):
    """``f(z, out=None)`` from an aten op with an ``out`` overload."""
    return lambda z, out=None: op.default(z) if out is None else op.out(z, out=out)


ACTIVATIONS = {
    # LeCun's scaled tanh 1.7159 tanh(2/3 z), with the 0.666 of ncps
    "lecun_tanh": Activation(torch.tanh, _aten.tanh_backward, inner=0.666, outer=1.7159),
    "tanh": Activation(torch.tanh, _aten.tanh_backward),
    "relu": Activation(_aten_function(_aten.relu), _aten.threshold_backward, 0),
    "silu": Activation(_aten_function(_aten.silu), _aten.silu_backward, saves_input=True),
    "gelu": Activation(_aten_function(_aten.gelu), _aten.gelu_backward, saves_input=True),
}


def cfc_update(heads: Tensor, elapsed: Tensor, mode: str, tau: Tensor | None = None,
               amplitude: Tensor | None = None) -> Tensor:
    """The CfC solution from the heads ``[B, 4H]`` (``f1 | f2 | a | b``; ``[B, H]`` = ``f1`` in pure
    mode) and the elapsed time ``[B, 1]``; ``tau = |w_tau|`` and ``amplitude = A`` for pure mode.
    (The fused training pass computes the same in place: :class:`_GatedUpdate`, :class:`_PureUpdate`.)"""
    if mode == "pure":
        return amplitude - amplitude * torch.exp(-elapsed * (tau + heads.abs())) * heads
    hidden = heads.shape[1] // 4
    f1, f2 = torch.tanh(heads[:, : 2 * hidden]).chunk(2, dim=1)
    gate = torch.sigmoid(torch.addcmul(heads[:, 3 * hidden :], heads[:, 2 * hidden : 3 * hidden], elapsed))
    return torch.addcmul(f1, gate, f2) if mode == "no_gate" else torch.lerp(f1, f2, gate)


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
    """Buffers and loops of one training pass of a :class:`_StackedCfC` over a stretch of T steps.

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

    def __init__(self, core: _StackedCfC, inputs: Tensor, elapsed: Tensor, input_w: Tensor, bias: Tensor,
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
        # the transposed weights as contiguous right operands too (see _StackedCfC)
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


class _Sequence(torch.autograd.Function):
    """A stretch of steps of a :class:`_StackedCfC` with a hand-written backward pass (:class:`_FusedPass`).

    Inputs after ``core``: initial state, inputs ``[T, B, F]``, elapsed ``[T, B, 1]``, then the
    tensors of :meth:`_StackedCfC.derive`: input weight, bias, recurrent weight, then the feeds,
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


class _NativeSequence(torch.autograd.Function):
    """A stretch of steps of a one-backbone-layer tanh :class:`CfC` in the C kernel ``cfc_kernel.c``.

    Inputs: the kernel, ``gated`` (mode ``default``, else ``no_gate``), the projected inputs
    ``x W_in + b`` ``[T, B, W]``, the initial state ``[B, H]``, elapsed ``[T, B, 1]``, the recurrent
    weight ``[H, W]`` and the heads' weight ``[W, 4H]`` and bias. Returns the states ``[T, B, H]``.
    The kernel runs the recurrence both ways; the weight gradients are one matmul each here.
    """

    @staticmethod
    def forward(ctx, kernel, gated, projected, h, elapsed, recurrent, heads_w, heads_b):
        steps, batch, width = projected.shape
        hidden = h.shape[1]
        elapsed = elapsed.contiguous()
        h = h.contiguous()
        act = projected.new_empty(steps, batch, width)
        f1, f2, gate, time_a, states = projected.new_empty(5, steps, batch, hidden).unbind(0)
        scratch = projected.new_empty(4 * hidden)
        p = native.pointer
        kernel.cfc_forward(steps, batch, hidden, width, int(gated), p(projected), p(h), p(recurrent), p(heads_w),
                           p(heads_b), p(elapsed), p(act), p(f1), p(f2), p(gate), p(time_a), p(states), p(scratch))
        ctx.kernel, ctx.gated = kernel, gated
        ctx.save_for_backward(h, elapsed, recurrent, heads_w, act, f1, f2, gate, time_a, states)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        h, elapsed, recurrent, heads_w, act, f1, f2, gate, time_a, states = ctx.saved_tensors
        steps, batch, width = act.shape
        hidden = h.shape[1]
        grad_states = grad_states.contiguous()
        g_heads = act.new_empty(steps, batch, 4 * hidden)
        g_pre = torch.empty_like(act)
        g_elapsed = elapsed.new_empty(steps, batch, 1)
        g_h = torch.empty_like(h)
        scratch = act.new_empty(2 * batch * hidden)
        recurrent_t, heads_w_t = recurrent.t().contiguous(), heads_w.t().contiguous()  # kept alive for the call
        p = native.pointer
        ctx.kernel.cfc_backward(steps, batch, hidden, width, int(ctx.gated), p(recurrent_t), p(heads_w_t), p(elapsed), p(act), p(f1), p(f2), p(gate), p(time_a),
                                p(grad_states), p(g_heads), p(g_pre), p(g_elapsed), p(g_h), p(scratch))
        previous = torch.cat([h.unsqueeze(0), states[:-1]])  # the state each step started from
        g_recurrent = _rows(previous).t().mm(_rows(g_pre))
        g_heads_w = _rows(act).t().mm(_rows(g_heads))
        return None, None, g_pre, g_h, g_elapsed, g_recurrent, g_heads_w, _rows(g_heads).sum(0)


class _StackedCfC(RecurrentCore):
    """Shared step, readout and training pass of :class:`CfC` and :class:`WiredCfC`.

    Subclasses set ``mode``, ``activation``, ``dropout``, ``layer_sizes`` (neurons per layer),
    ``widths`` (width of ``pre_l`` per layer) and ``backbone_depth``, and implement :meth:`derive`
    returning ``(input weight [F, sum widths], bias [sum widths], (recurrent [N, sum widths],
    feeds, backbone, pure))`` with the activation's scales already folded in and every weight
    contiguous as ``[in, out]``: the right operand of its matmul, the layout MKL is fastest with.
    """

    time_aware = True

    def precompute(self, inputs, elapsed):
        # The input projection x W_in + b is left to run: inside the fused pass it lands directly in
        # the pass's buffer, and its gradient never leaves the pass.
        input_w, bias, shared = self.derived()
        return [inputs, elapsed], (input_w, bias, *shared)

    @staticmethod
    def split(tensor: Tensor, sizes: list[int]) -> list[Tensor]:
        """Blocks of the last dimension of ``tensor`` (no op for a single block)."""
        return [tensor] if len(sizes) == 1 else list(tensor.split(sizes, dim=-1))

    def step(self, h, projected, elapsed, recurrent, feeds, backbone, pure):
        x, states = None, []
        for index, pre in enumerate(self.split(torch.addmm(projected, h, recurrent), self.widths)):
            z = pre if index == 0 else torch.addmm(pre, x, feeds[index - 1])
            for weight, bias in backbone:
                a = ACTIVATIONS[self.activation].function(z)
                if self.dropout and self.training:
                    a = torch.nn.functional.dropout(a, self.dropout)
                z = torch.addmm(bias, a, weight)
            x = cfc_update(z, elapsed, self.mode, *pure[index])
            states.append(x)
        return x if len(states) == 1 else torch.cat(states, dim=1)

    def run(self, per_step, shared, state):
        inputs, elapsed = per_step
        input_w, bias, recurrent, feeds, backbone, pure = shared
        kernel = self.kernel() if torch.is_grad_enabled() and inputs.shape[1] <= KERNEL_MAX_BATCH else None
        if kernel is not None and not (self.dropout and self.training):
            projected = torch.addmm(bias, _rows(inputs), input_w).view(*inputs.shape[:2], -1)
            states = _NativeSequence.apply(kernel, self.mode == "default", projected, state, elapsed, recurrent,
                                           *backbone[0])
            return self.readout(states), states[-1]
        if not torch.is_grad_enabled() or (self.dropout and self.training):
            projected = torch.addmm(bias, _rows(inputs), input_w).view(*inputs.shape[:2], -1)
            return super().run([projected, elapsed], (recurrent, feeds, backbone, pure), state)
        states = _Sequence.apply(self, state, inputs, elapsed, input_w, bias, recurrent,
                                 *self.flatten(feeds, backbone, pure))
        return self.readout(states), states[-1]

    # The fused pass takes tensors only: these pack the nested shared values into a flat tuple.
    def flatten(self, feeds, backbone, pure) -> tuple:
        return (*feeds, *(t for pair in backbone for t in pair), *(t for pair in pure for t in pair))

    def unflatten(self, flat) -> tuple:
        feeds = list(flat[: len(self.widths) - 1])
        rest = flat[len(feeds):]
        backbone = [(rest[2 * i], rest[2 * i + 1]) for i in range(self.backbone_depth)]
        rest = rest[2 * self.backbone_depth:]
        pure = [(rest[2 * i], rest[2 * i + 1]) for i in range(len(self.widths))]
        return feeds, backbone, pure


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown CfC mode {mode!r}; allowed: {', '.join(MODES)}")


def _heads(mode: str, in_features: int, hidden: int) -> nn.ModuleDict:
    names = ("ff1",) if mode == "pure" else ("ff1", "ff2", "time_a", "time_b")
    return nn.ModuleDict({name: nn.Linear(in_features, hidden) for name in names})


def _stacked_heads(heads: nn.ModuleDict, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Head weights ``[heads * H, in]`` (optionally masked) and biases, in the order f1, f2, a, b."""
    weights = [head.weight if mask is None else head.weight * mask for head in heads.values()]
    return torch.cat(weights), torch.cat([head.bias for head in heads.values()])


class _PureParameters(nn.Module):
    """``w_tau`` (decay rate, starts at 0) and ``A`` (amplitude, starts at 1) of pure mode."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w_tau = nn.Parameter(torch.zeros(1, hidden))
        self.A = nn.Parameter(torch.ones(1, hidden))

    def values(self) -> tuple[Tensor, Tensor]:
        return self.w_tau.abs(), self.A


def _xavier(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)


class CfC(_StackedCfC):
    """CfC core with a dense backbone (``cfc``); output = state.

    :param input_size: input features F
    :param hidden_size: neurons H (state and output size)
    :param mode: ``default``, ``no_gate`` or ``pure`` (see module docstring)
    :param backbone_units: width of the backbone layers
    :param backbone_layers: number of backbone layers (0: heads read ``[x, h]`` directly)
    :param backbone_activation: ``lecun_tanh``, ``tanh``, ``relu``, ``silu`` or ``gelu``
    :param backbone_dropout: dropout after each backbone layer in training (ncps skips the first
        layer's dropout, so with one layer it never drops; here every layer drops)

    Parameter names follow ``ncps.torch.CfCCell`` (``backbone.i`` are its ``backbone.2i`` linear
    layers; ``heads.ff1`` etc. its ``ff1``, ``ff2``, ``time_a``, ``time_b``; ``pure.w_tau``, ``pure.A``).

    The common configuration — mode ``default`` or ``no_gate``, one backbone layer, ``lecun_tanh``
    or ``tanh``, float32/float64 on the CPU — trains batches of up to ``KERNEL_MAX_BATCH``
    sequences (PPO's minibatches) in the C kernel ``cfc_kernel.c`` (see :mod:`policies.native`;
    ``native = False`` or no C compiler: PyTorch).
    """

    kernel_source = "cfc_kernel.c"

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        mode: str = "default",
        backbone_units: int = 128,
        backbone_layers: int = 1,
        backbone_activation: str = "lecun_tanh",
        backbone_dropout: float = 0.0,
    ):
        _check_mode(mode)
        if backbone_activation not in ACTIVATIONS:
            raise ValueError(f"unknown backbone_activation {backbone_activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if backbone_layers < 0 or backbone_units < 1 or not 0.0 <= backbone_dropout < 1.0:
            raise ValueError("need backbone_layers >= 0, backbone_units >= 1 and 0 <= backbone_dropout < 1")
        super().__init__(input_size, hidden_size, hidden_size)
        self.mode, self.activation, self.dropout = mode, backbone_activation, float(backbone_dropout)
        widths = [input_size + hidden_size] + [backbone_units] * backbone_layers
        self.backbone = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.heads = _heads(mode, widths[-1], hidden_size)
        self.pure = _PureParameters(hidden_size) if mode == "pure" else None
        self.layer_sizes = [hidden_size]
        self.widths = [backbone_units if backbone_layers else (1 if mode == "pure" else 4) * hidden_size]
        self.backbone_depth = backbone_layers  # linear maps after the first: hidden layers + heads
        _xavier(self)

    def kernel_applies(self) -> bool:
        tanh_backbone = ACTIVATIONS[self.activation].function is torch.tanh
        return self.mode != "pure" and self.backbone_depth == 1 and tanh_backbone

    def derive(self):
        heads_w, heads_b = _stacked_heads(self.heads)
        inner, outer = ACTIVATIONS[self.activation].inner, ACTIVATIONS[self.activation].outer
        if self.backbone:  # fold outer * f(inner * z): inner into every backbone layer, outer into the next map
            first_w, first_b = self.backbone[0].weight * inner, self.backbone[0].bias * inner
            later = [((layer.weight * (inner * outer)).t().contiguous(), layer.bias * inner)
                     for layer in self.backbone[1:]]
            later.append(((heads_w * outer).t().contiguous(), heads_b))
        else:
            first_w, first_b, later = heads_w, heads_b, []
        pure = [self.pure.values() if self.pure is not None else (None, None)]
        input_w, recurrent = first_w[:, : self.input_size].t(), first_w[:, self.input_size :].t()
        return input_w.contiguous(), first_b, (recurrent.contiguous(), [], later, pure)


class WiredCfC(_StackedCfC):
    """CfC over an NCP wiring (``ncp-cfc``): one CfC layer per wiring layer, outputs the motor layer.

    :param input_size: input features F
    :param wiring: synapse graph, built here for ``input_size``; its layers (inter -> command ->
        motor) are stacked, each fed by the new state of the layer before (layer 0 by the inputs)
    :param mode: ``default``, ``no_gate`` or ``pure``

    The state ``[B, units]`` is laid out layer by layer (inter | command | motor), as in ncps.
    Within a layer every neuron sees every neuron of the same layer; between layers only the
    wiring's synapses exist.

    Difference from ``ncps.torch.WiredCfCCell`` (deliberate): ncps masks only the ``ff1``/``ff2``
    heads with the wiring and leaves the time-gate heads ``time_a``/``time_b`` dense, so every
    neuron's time constant still depends on all neurons of the layer before — the wiring leaks.
    Here all four heads are masked, so a neuron depends only on its wired inputs. With the
    unwired ``time_a``/``time_b`` weights set to zero in ncps, both compute the same function.
    """

    def __init__(self, input_size: int, wiring: Wiring, mode: str = "default"):
        _check_mode(mode)
        wiring.build(input_size)
        layers = wiring.layers
        super().__init__(input_size, len(layers[-1]), wiring.units)
        self.wiring = wiring
        self.mode, self.activation, self.dropout = mode, "tanh", 0.0
        self.layer_sizes = [len(ids) for ids in layers]
        self.widths = [(1 if mode == "pure" else 4) * n for n in self.layer_sizes]
        self.backbone_depth = 0
        self.layers = nn.ModuleList()
        self.pure = nn.ModuleList() if mode == "pure" else None
        previous = None
        for index, ids in enumerate(layers):
            incoming = wiring.sensory_adjacency[:, ids] if previous is None else wiring.adjacency[np.ix_(previous, ids)]
            mask = np.concatenate([np.abs(incoming), np.ones((len(ids), len(ids)))]).T  # [n, in + n]
            self.register_buffer(f"_mask{index}", torch.as_tensor(mask, dtype=torch.float32), persistent=False)
            self.layers.append(_heads(mode, mask.shape[1], len(ids)))
            if self.pure is not None:
                self.pure.append(_PureParameters(len(ids)))
            previous = ids
        _xavier(self)

    def derive(self):
        stacked = [_stacked_heads(heads, getattr(self, f"_mask{i}")) for i, heads in enumerate(self.layers)]
        fan_in = [self.input_size] + self.layer_sizes[:-1]
        recurrent = torch.block_diag(*[w[:, n_in:].t() for (w, _), n_in in zip(stacked, fan_in)])
        feeds = [w[:, :n_in].t().contiguous() for (w, _), n_in in zip(stacked[1:], fan_in[1:])]
        pure = [p.values() for p in self.pure] if self.pure is not None else [(None, None)] * len(stacked)
        # The inputs reach layer 0 only: zero columns for the other layers' pre-activations.
        first = stacked[0][0][:, : self.input_size].t()
        input_w = torch.cat([first, first.new_zeros(self.input_size, sum(self.widths[1:]))], dim=1)
        return input_w, torch.cat([b for _, b in stacked]), (recurrent, feeds, [], pure)

    def readout(self, states):
        return states[..., -self.output_size :]


def build_ncp_cfc(
    input_size: int,
    units: int = 32,
    output_size: int = 8,
    sparsity: float = 0.5,
    seed: int = 22222,
    mode: str = "default",
    wiring: Wiring | dict | None = None,
) -> WiredCfC:
    """``ncp-cfc``: CfC over an AutoNCP wiring (or the given ``wiring``); outputs the motor neurons."""
    wiring = as_wiring(wiring) or AutoNCP(units, output_size, sparsity=sparsity, seed=seed)
    return WiredCfC(input_size, wiring, mode=mode)
