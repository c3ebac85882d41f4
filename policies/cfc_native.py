"""The CfC's C-kernel training pass (``cfc_kernel.c``, built by :mod:`policies.native`).

Two autograd functions, each running a stretch of steps (forward and the backward pass of the
recurrence) in the kernel; the weight gradients are one matmul each here:

- :class:`DenseSequence`: a :class:`~policies.cfc.CfC` with one tanh backbone layer, modes
  ``default`` and ``no_gate``;
- :class:`WiredSequence`: a :class:`~policies.cfc.WiredCfC` (any number of layers), modes
  ``default`` and ``no_gate``.

Both compute what :meth:`policies.cfc.StackedCfC.step` computes; tests/test_native_kernels.py
pins them to it (outputs and every gradient to 1e-10 in float64). Their forward passes,
:func:`dense_forward` and :func:`wired_forward`, also run inference (rollout steps) on their own,
without an autograd node.
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


def joined_feeds(feeds: list[Tensor] | tuple[Tensor, ...], like: Tensor) -> Tensor:
    """The layer feeds of a :class:`~policies.cfc.WiredCfC` as one vector, as the kernel reads them."""
    return torch.cat([feed.reshape(-1) for feed in feeds]) if feeds else like.new_empty(0)


def dense_forward(kernel, gated: bool, projected: Tensor, h: Tensor, elapsed: Tensor, recurrent: Tensor,
                  heads_w: Tensor, heads_b: Tensor) -> tuple[Tensor, ...]:
    """``cfc_forward`` of the kernel over ``projected`` ``[T, B, W]`` from ``h`` ``[B, H]`` (both
    contiguous, as ``elapsed`` ``[T, B, 1]``): the backbone activations ``[T, B, W]``, then f1, f2,
    gate, time_a and the states, each ``[T, B, H]``."""
    steps, batch, width = projected.shape
    hidden = h.shape[1]
    act = projected.new_empty(steps, batch, width)
    f1, f2, gate, time_a, states = projected.new_empty(5, steps, batch, hidden).unbind(0)
    scratch = projected.new_empty(4 * hidden)
    p = native.pointer
    kernel.cfc_forward(steps, batch, hidden, width, int(gated), p(projected), p(h), p(recurrent), p(heads_w),
                       p(heads_b), p(elapsed), p(act), p(f1), p(f2), p(gate), p(time_a), p(states), p(scratch))
    return act, f1, f2, gate, time_a, states


def wired_forward(kernel, gated: bool, sizes: Tensor, projected: Tensor, h: Tensor, elapsed: Tensor,
                  recurrent: Tensor, flat_feeds: Tensor) -> tuple[Tensor, ...]:
    """``wired_forward`` of the kernel over ``projected`` ``[T, B, 4N]`` from ``h`` ``[B, N]``
    (contiguous, as ``elapsed`` ``[T, B, 1]`` and ``recurrent``): f1, f2, gate, time_a and the
    states, each ``[T, B, N]``."""
    steps, batch, width = projected.shape
    f1, f2, gate, time_a, states = projected.new_empty(5, steps, batch, h.shape[1]).unbind(0)
    scratch = projected.new_empty(width)
    p = native.pointer
    kernel.wired_forward(steps, batch, len(sizes), p(sizes), int(gated), p(projected), p(h), p(recurrent),
                         p(flat_feeds), p(elapsed), p(f1), p(f2), p(gate), p(time_a), p(states), p(scratch))
    return f1, f2, gate, time_a, states


class DenseSequence(torch.autograd.Function):
    """A stretch of steps of a one-backbone-layer tanh :class:`~policies.cfc.CfC`.

    Inputs: the kernel, ``gated`` (mode ``default``, else ``no_gate``), the projected inputs
    ``x W_in + b`` ``[T, B, W]``, the initial state ``[B, H]``, elapsed ``[T, B, 1]``, the recurrent
    weight ``[H, W]`` and the heads' weight ``[W, 4H]`` and bias. Returns the states ``[T, B, H]``.
    """

    @staticmethod
    def forward(ctx, kernel, gated, projected, h, elapsed, recurrent, heads_w, heads_b):
        h, elapsed = h.contiguous(), elapsed.contiguous()
        act, f1, f2, gate, time_a, states = dense_forward(kernel, gated, projected, h, elapsed, recurrent,
                                                          heads_w, heads_b)
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
        elapsed, h, recurrent = elapsed.contiguous(), h.contiguous(), recurrent.contiguous()
        flat_feeds = joined_feeds(feeds, projected)
        f1, f2, gate, time_a, states = wired_forward(kernel, gated, sizes, projected, h, elapsed, recurrent,
                                                     flat_feeds)
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
