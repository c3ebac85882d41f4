"""Baseline cores behind the same interface: LSTM, GRU, and ``mlp`` (no memory).

LSTM and GRU run torch's fused multi-step kernels (those of ``nn.LSTM``/``nn.GRU``) over every
stretch of the sequence without episode starts (the base class cuts the sequence at the starts),
and torch's single-step cell kernels for one-step stretches such as rollout steps, where the
multi-step kernels' set-up costs more than the step. The GRU trains small batches in a C kernel
(:mod:`policies.gru_native`), since torch's GRU backward pass runs op by op.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.core import RecurrentCore
from policies.gru_native import GRUSequence

#: Largest batch the GRU trains in its C kernel, which walks the samples one by one (measured,
#: hidden 64, machine loaded: [T, B] = [128, 1]: 5 ms vs torch's 63 ms; [128, 64]: 116 vs 141 ms;
#: beyond that torch's matmuls catch up).
GRU_KERNEL_MAX_BATCH = 64


class NoCore(RecurrentCore):
    """``mlp``: no memory. Output = input, state size 0."""

    def __init__(self, input_size: int):
        super().__init__(input_size, input_size, 0)

    def run(self, per_step, shared, state):
        return per_step[0], state


class LSTM(RecurrentCore):
    """``lstm``: one-layer LSTM. State ``[B, 2 * hidden_size]`` packs ``h | c``; output = h.

    :param hidden_size: units H
    """

    def __init__(self, input_size: int, hidden_size: int = 64):
        super().__init__(input_size, hidden_size, 2 * hidden_size)
        self.lstm = nn.LSTM(input_size, hidden_size)

    def run(self, per_step, shared, state):
        inputs = per_step[0]
        h, c = state.chunk(2, dim=1)
        if inputs.shape[0] == 1:
            m = self.lstm
            h, c = torch.lstm_cell(inputs[0], (h, c), m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
            return h.unsqueeze(0), torch.cat([h, c], dim=1)
        outputs, (h, c) = self.lstm(inputs, (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
        return outputs, torch.cat([h[0], c[0]], dim=1)


class GRU(RecurrentCore):
    """``gru``: one-layer GRU. State ``[B, hidden_size]``; output = state.

    :param hidden_size: units H

    Training batches of up to ``GRU_KERNEL_MAX_BATCH`` sequences run in the C kernel
    ``gru_kernel.c`` (float32/float64 on the CPU; ``native = False`` or no C compiler: torch).
    """

    kernel_source = "gru_kernel.c"

    def __init__(self, input_size: int, hidden_size: int = 64):
        super().__init__(input_size, hidden_size, hidden_size)
        self.gru = nn.GRU(input_size, hidden_size)

    def run(self, per_step, shared, state):
        inputs, m = per_step[0], self.gru
        if inputs.shape[0] == 1:
            h = torch.gru_cell(inputs[0], state, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
            return h.unsqueeze(0), h
        kernel = self.kernel() if torch.is_grad_enabled() and inputs.shape[1] <= GRU_KERNEL_MAX_BATCH else None
        if kernel is not None:
            gx = torch.addmm(m.bias_ih_l0, inputs.reshape(-1, inputs.shape[2]), m.weight_ih_l0.t())
            states = GRUSequence.apply(kernel, gx.view(*inputs.shape[:2], -1), state, m.weight_hh_l0, m.bias_hh_l0)
            return states, states[-1]
        outputs, h = m(inputs, state.unsqueeze(0))
        return outputs, h[0]
