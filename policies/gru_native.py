"""The GRU's C-kernel training pass (``gru_kernel.c``, built by :mod:`policies.native`).

torch has no fused CPU training kernel for a GRU: its backward pass runs op by op, which costs
far more in dispatch than in arithmetic at the shape of a PPO minibatch (a few sequences of a
hundred steps). :class:`GRUSequence` runs a stretch of steps, forward and the backward pass of the
recurrence, in the kernel; the weight gradients are one matmul each here. It computes what
``torch.nn.GRU`` computes; tests/test_native_kernels.py pins the two together (outputs and every
gradient to 1e-10 in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from policies import native


def _rows(tensor: Tensor) -> Tensor:
    """``[T, B, n]`` as ``[T * B, n]``."""
    return tensor.reshape(-1, tensor.shape[-1])


class GRUSequence(torch.autograd.Function):
    """A stretch of steps of a one-layer GRU.

    Inputs: the kernel, the input projections ``x W_ih^T + b_ih`` ``[T, B, 3H]``, the initial state
    ``[B, H]``, ``W_hh`` ``[3H, H]`` and ``b_hh`` ``[3H]`` (torch.nn.GRU's parameters). Returns the
    states ``[T, B, H]``.
    """

    @staticmethod
    def forward(ctx, kernel, gx, h, w_hh, b_hh):
        steps, batch, width = gx.shape
        hidden = h.shape[1]
        gx, h = gx.contiguous(), h.contiguous()
        w_hh_t = w_hh.t().contiguous()  # kept alive for the call
        r, z, n, gh_n, states = gx.new_empty(5, steps, batch, hidden).unbind(0)
        scratch = gx.new_empty(width)
        p = native.pointer
        kernel.gru_forward(steps, batch, hidden, p(gx), p(h), p(w_hh_t), p(b_hh), p(r), p(z), p(n), p(gh_n),
                           p(states), p(scratch))
        ctx.kernel = kernel
        ctx.save_for_backward(h, w_hh, r, z, n, gh_n, states)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        h, w_hh, r, z, n, gh_n, states = ctx.saved_tensors
        steps, batch, hidden = states.shape
        grad_states = grad_states.contiguous()
        w_hh = w_hh.contiguous()
        g_gx, g_gh = states.new_empty(2, steps, batch, 3 * hidden).unbind(0)
        g_h = torch.empty_like(h)
        scratch = states.new_empty(2 * batch * hidden)
        p = native.pointer
        ctx.kernel.gru_backward(steps, batch, hidden, p(w_hh), p(h), p(r), p(z), p(n), p(gh_n), p(states),
                                p(grad_states), p(g_gx), p(g_gh), p(g_h), p(scratch))
        previous = torch.cat([h.unsqueeze(0), states[:-1]])  # the state each step started from
        g_w_hh = _rows(g_gh).t().mm(_rows(previous))
        return None, g_gx, g_h, g_w_hh, _rows(g_gh).sum(0)
