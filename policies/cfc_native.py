"""The CfC's C-kernel training pass (``cfc_kernel.c``, built by :mod:`policies.native`).

Two autograd functions, each running a stretch of steps (forward and the backward pass of the
recurrence) in the kernel; the weight gradients are one matmul each here:

- :class:`DenseSequence`: a :class:`~policies.cfc.CfC` with one tanh backbone layer, modes
  ``default`` and ``no_gate``;
- :class:`WiredSequence`: a :class:`~policies.cfc.WiredCfC` (any number of layers), modes
  ``default`` and ``no_gate``.

Both compute what :meth:`policies.cfc.StackedCfC.step` computes; tests/test_native_kernels.py
pins them to it (outputs and every gradient to 1e-10 in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from policies import native


def _rows(tensor: Tensor) -> Tensor:
    """``[T, B, n]`` as ``[T * B, n]``."""
    return tensor.reshape(-1, tensor.shape[-1])


def _previous(h: Tensor, states: Tensor) -> Tensor:
    """``[T, B, N]``: the state each step started from."""
    return torch.cat([h.unsqueeze(0), states[:-1]])


class DenseSequence(torch.autograd.Function):
    """A stretch of steps of a one-backbone-layer tanh :class:`~policies.cfc.CfC`.

    Inputs: the kernel, ``gated`` (mode ``default``, else ``no_gate``), the projected inputs
    ``x W_in + b`` ``[T, B, W]``, the initial state ``[B, H]``, elapsed ``[T, B, 1]``, the recurrent
    weight ``[H, W]`` and the heads' weight ``[W, 4H]`` and bias. Returns the states ``[T, B, H]``.
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
        ctx.kernel.cfc_backward(steps, batch, hidden, width, int(ctx.gated), p(recurrent_t), p(heads_w_t),
                                p(elapsed), p(act), p(f1), p(f2), p(gate), p(time_a), p(grad_states), p(g_heads),
                                p(g_pre), p(g_elapsed), p(g_h), p(scratch))
        g_recurrent = _rows(_previous(h, states)).t().mm(_rows(g_pre))
        g_heads_w = _rows(act).t().mm(_rows(g_heads))
        return None, None, g_pre, g_h, g_elapsed, g_recurrent, g_heads_w, _rows(g_heads).sum(0)


class WiredSequence(torch.autograd.Function):
    """A stretch of steps of a :class:`~policies.cfc.WiredCfC`.

    Inputs: the kernel, ``gated``, the layer sizes (int32 tensor ``[L]``), the projected inputs and
    biases ``[T, B, 4N]``, the initial state ``[B, N]``, elapsed ``[T, B, 1]``, the block-diagonal
    recurrent weight ``[N, 4N]``, then the feeds ``[n_(l-1), 4 n_l]`` of layers 1 .. L-1. Returns
    the states ``[T, B, N]``.
    """

    @staticmethod
    def forward(ctx, kernel, gated, sizes, projected, h, elapsed, recurrent, *feeds):
        steps, batch, width = projected.shape
        units = h.shape[1]
        elapsed, h, recurrent = elapsed.contiguous(), h.contiguous(), recurrent.contiguous()
        flat_feeds = torch.cat([feed.reshape(-1) for feed in feeds]) if feeds else projected.new_empty(0)
        f1, f2, gate, time_a, states = projected.new_empty(5, steps, batch, units).unbind(0)
        scratch = projected.new_empty(width)
        p = native.pointer
        kernel.wired_forward(steps, batch, len(sizes), p(sizes), int(gated), p(projected), p(h), p(recurrent),
                             p(flat_feeds), p(elapsed), p(f1), p(f2), p(gate), p(time_a), p(states), p(scratch))
        ctx.kernel, ctx.gated = kernel, gated
        ctx.save_for_backward(sizes, h, elapsed, recurrent, flat_feeds, f1, f2, gate, time_a, states, *feeds)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        sizes, h, elapsed, recurrent, flat_feeds, f1, f2, gate, time_a, states, *feeds = ctx.saved_tensors
        steps, batch, units = states.shape
        grad_states = grad_states.contiguous()
        g_heads = states.new_empty(steps, batch, 4 * units)
        g_elapsed = elapsed.new_empty(steps, batch, 1)
        g_h = torch.empty_like(h)
        scratch = states.new_empty(2 * batch * units)
        p = native.pointer
        ctx.kernel.wired_backward(steps, batch, len(sizes), p(sizes), int(ctx.gated), p(recurrent), p(flat_feeds),
                                  p(elapsed), p(f1), p(f2), p(gate), p(time_a), p(grad_states), p(g_heads),
                                  p(g_elapsed), p(g_h), p(scratch))
        g_recurrent = _rows(_previous(h, states)).t().mm(_rows(g_heads))
        layer_sizes = sizes.tolist()
        layer_states = _rows(states).split(layer_sizes, dim=1)
        layer_heads = _rows(g_heads).split([4 * n for n in layer_sizes], dim=1)
        g_feeds = [x.t().mm(g) for x, g in zip(layer_states[:-1], layer_heads[1:])]
        return (None, None, None, g_heads, g_h, g_elapsed, g_recurrent, *g_feeds)
