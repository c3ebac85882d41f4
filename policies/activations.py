"""Backbone activations of the CfC, with the backward ops its hand-written training pass uses."""

from __future__ import annotations

import torch
from torch import Tensor

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
