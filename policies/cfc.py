"""Closed-form continuous-time (CfC) cores (Hasani et al., Nature Machine Intelligence 2022).

A CfC replaces the LTC's ODE solver by an approximate closed-form solution. From the input and
the previous state a network computes four heads ``f1, f2, a, b`` and, for a step of ``dt``:

- ``default``:  h = tanh(f1) (1 - g) + tanh(f2) g,   g = sigmoid(a dt + b)
- ``no_gate``:  h = tanh(f1) + tanh(f2) g
- ``pure``:     h = A - A exp(-dt (|w_tau| + |f1|)) f1        (only the f1 head)

:class:`CfC` computes the heads with a dense MLP "backbone" (``ncps.torch.CfC``); :class:`WiredCfC`
stacks one backbone-free CfC layer per NCP layer (inter -> command -> motor) with the wiring's
sparsity (``ncps.torch.WiredCfCCell``, with the difference documented there).

Speed: the input part of the first layer is one matmul over all steps; per step there is one
matmul for the recurrent part, one per further layer, and the elementwise update.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.core import RecurrentCore
from policies.wiring import AutoNCP, Wiring

MODES = ("default", "no_gate", "pure")


def lecun_tanh(x: Tensor) -> Tensor:
    """LeCun's scaled tanh, 1.7159 tanh(2/3 x) (with the constant 0.666 ncps uses)."""
    return 1.7159 * torch.tanh(0.666 * x)


ACTIVATIONS = {"lecun_tanh": lecun_tanh, "tanh": torch.tanh, "relu": torch.relu, "silu": F.silu, "gelu": F.gelu}


def cfc_update(heads: Tensor, elapsed: Tensor, mode: str, tau: Tensor | None = None, amplitude: Tensor | None = None):
    """The CfC solution from the heads ``[B, 4H]`` (``f1 | f2 | a | b``; ``[B, H]`` = ``f1`` in pure
    mode) and the elapsed time ``[B, 1]``; ``tau = |w_tau|`` and ``amplitude = A`` for pure mode."""
    if mode == "pure":
        return amplitude - amplitude * torch.exp(-elapsed * (tau + heads.abs())) * heads
    f1, f2, a, b = heads.chunk(4, dim=1)
    gate = torch.sigmoid(torch.addcmul(b, a, elapsed))
    if mode == "no_gate":
        return torch.addcmul(torch.tanh(f1), gate, torch.tanh(f2))
    return torch.lerp(torch.tanh(f1), torch.tanh(f2), gate)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown CfC mode {mode!r}; allowed: {', '.join(MODES)}")


def _heads(mode: str, in_features: int, hidden: int) -> nn.ModuleDict:
    names = ("ff1",) if mode == "pure" else ("ff1", "ff2", "time_a", "time_b")
    return nn.ModuleDict({name: nn.Linear(in_features, hidden) for name in names})


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


class CfC(RecurrentCore):
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
    """

    time_aware = True

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
        self.mode = mode
        self.activation_name = backbone_activation
        self.dropout = float(backbone_dropout)
        widths = [input_size + hidden_size] + [backbone_units] * backbone_layers
        self.backbone = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.heads = _heads(mode, widths[-1], hidden_size)
        self.pure = _PureParameters(hidden_size) if mode == "pure" else None
        _xavier(self)

    def derive(self):
        heads_w = torch.cat([head.weight for head in self.heads.values()])
        heads_b = torch.cat([head.bias for head in self.heads.values()])
        first_w, first_b = (self.backbone[0].weight, self.backbone[0].bias) if self.backbone else (heads_w, heads_b)
        input_w = first_w[:, : self.input_size].t()
        hidden_layers = [(layer.weight.t(), layer.bias) for layer in self.backbone[1:]]
        pure = self.pure.values() if self.pure is not None else (None, None)
        return input_w, first_b, (first_w[:, self.input_size :].t(), hidden_layers, heads_w.t(), heads_b, pure)

    def precompute(self, inputs, elapsed):
        input_w, first_b, shared = self.derived()
        projected = torch.addmm(first_b, inputs.reshape(-1, self.input_size), input_w)
        return [projected.view(*inputs.shape[:2], -1), elapsed], shared

    def step(self, h, projected, elapsed, recurrent_w, hidden_layers, heads_w, heads_b, pure):
        z = torch.addmm(projected, h, recurrent_w)
        if self.backbone:
            z = self._activate(z)
            for weight, bias in hidden_layers:
                z = self._activate(torch.addmm(bias, z, weight))
            z = torch.addmm(heads_b, z, heads_w)
        return cfc_update(z, elapsed, self.mode, *pure)

    def _activate(self, z: Tensor) -> Tensor:
        z = ACTIVATIONS[self.activation_name](z)
        return F.dropout(z, self.dropout, training=True) if self.dropout and self.training else z


class WiredCfC(RecurrentCore):
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

    time_aware = True

    def __init__(self, input_size: int, wiring: Wiring, mode: str = "default"):
        _check_mode(mode)
        wiring.build(input_size)
        layers = wiring.layers
        super().__init__(input_size, len(layers[-1]), wiring.units)
        self.wiring = wiring
        self.mode = mode
        self.layer_sizes = [len(ids) for ids in layers]
        self._head_widths = [(1 if mode == "pure" else 4) * n for n in self.layer_sizes]
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
        weights, biases = [], []
        for index, heads in enumerate(self.layers):
            mask = getattr(self, f"_mask{index}")
            weights.append(torch.cat([head.weight * mask for head in heads.values()]))  # [heads * n, in + n]
            biases.append(torch.cat([head.bias for head in heads.values()]))
        fan_in = [self.input_size] + self.layer_sizes[:-1]
        recurrent = torch.block_diag(*[w[:, n_in:].t() for w, n_in in zip(weights, fan_in)])
        feed = [w[:, :n_in].t() for w, n_in in zip(weights[1:], fan_in[1:])]
        pure = [p.values() for p in self.pure] if self.pure is not None else [(None, None)] * len(weights)
        return weights[0][:, : self.input_size].t(), (recurrent, torch.cat(biases), feed, pure)

    def precompute(self, inputs, elapsed):
        input_w, shared = self.derived()
        projected = torch.mm(inputs.reshape(-1, self.input_size), input_w)
        return [projected.view(*inputs.shape[:2], -1), elapsed], shared

    def step(self, h, projected, elapsed, recurrent, biases, feed, pure):
        own = torch.addmm(biases, h, recurrent).split(self._head_widths, dim=1)
        x = None
        states = []
        for index, heads in enumerate(own):
            heads = heads + projected if index == 0 else torch.addmm(heads, x, feed[index - 1])
            x = cfc_update(heads, elapsed, self.mode, *pure[index])
            states.append(x)
        return torch.cat(states, dim=1)

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
    wiring = Wiring.from_dict(wiring) if isinstance(wiring, dict) else wiring
    return WiredCfC(input_size, wiring or AutoNCP(units, output_size, sparsity=sparsity, seed=seed), mode=mode)
