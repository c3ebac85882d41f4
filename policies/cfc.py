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

so they share one step, :meth:`StackedCfC.step` — the equation. Training runs a whole stretch of
steps in one autograd node with a hand-written backward pass: in the C kernel ``cfc_kernel.c``
where it covers the configuration (:mod:`policies.cfc_native`), else in fused PyTorch
(:mod:`policies.cfc_fused`). Inference (rollout steps, evaluations) runs the kernel's forward
alone where it applies, else the step. Both passes are pinned to :meth:`StackedCfC.step` by
tests. Every weight is stored as the contiguous right operand of its matmul.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from policies.activations import ACTIVATIONS
from policies.cfc_fused import FusedSequence
from policies.cfc_native import DenseSequence, WiredSequence, dense_forward, joined_feeds, wired_forward
from policies.core import RecurrentCore
from policies.wiring import AutoNCP, Wiring, as_wiring

MODES = ("default", "no_gate", "pure")
#: Largest batch the C kernel trains for a dense CfC (the sequences of a PPO minibatch: a handful):
#: it walks the samples one by one, which beats MKL's tiny matmuls there and loses to its larger
#: ones (measured [T, B] = [100, 3]: 1.9 ms vs 4.0 ms; [256, 8]: 10 vs 13 ms; [128, 64]: 24 vs 17 ms).
DENSE_KERNEL_MAX_BATCH = 16


def cfc_update(heads: Tensor, elapsed: Tensor, mode: str, tau: Tensor | None = None,
               amplitude: Tensor | None = None) -> Tensor:
    """The CfC solution from the heads ``[B, 4H]`` (``f1 | f2 | a | b``; ``[B, H]`` = ``f1`` in pure
    mode) and the elapsed time ``[B, 1]``; ``tau = |w_tau|`` and ``amplitude = A`` for pure mode.
    (The fast paths compute the same: :mod:`policies.cfc_fused`, :mod:`policies.cfc_native`.)"""
    if mode == "pure":
        return amplitude - amplitude * torch.exp(-elapsed * (tau + heads.abs())) * heads
    hidden = heads.shape[1] // 4
    f1, f2 = torch.tanh(heads[:, : 2 * hidden]).chunk(2, dim=1)
    gate = torch.sigmoid(torch.addcmul(heads[:, 3 * hidden :], heads[:, 2 * hidden : 3 * hidden], elapsed))
    return torch.addcmul(f1, gate, f2) if mode == "no_gate" else torch.lerp(f1, f2, gate)


class StackedCfC(RecurrentCore):
    """Shared step and training-pass choice of :class:`CfC` and :class:`WiredCfC`.

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

    #: Largest batch trained in the C kernel (None: any); see :meth:`kernel_applies` for the rest.
    kernel_max_batch: int | None = None

    def run(self, per_step, shared, state):
        inputs, elapsed = per_step
        input_w, bias, recurrent, feeds, backbone, pure = shared
        dropping = self.dropout and self.training
        small = self.kernel_max_batch is None or inputs.shape[1] <= self.kernel_max_batch
        kernel = self.kernel() if small and not dropping else None
        inference = not torch.is_grad_enabled()
        if kernel is None and (inference or dropping):  # the equation step by step
            projected = torch.addmm(bias, inputs.flatten(0, 1), input_w).view(*inputs.shape[:2], -1)
            return super().run([projected, elapsed], (recurrent, feeds, backbone, pure), state)
        if kernel is not None:
            projected = torch.addmm(bias, inputs.flatten(0, 1), input_w).view(*inputs.shape[:2], -1)
            if inference:  # e.g. a rollout step: the kernel's forward alone, no autograd node
                states = self.kernel_states(kernel, projected, state.contiguous(), elapsed.contiguous(), recurrent,
                                            feeds, backbone)
            else:
                states = self.kernel_sequence(kernel, projected, state, elapsed, recurrent, feeds, backbone)
        else:
            states = FusedSequence.apply(self, state, inputs, elapsed, input_w, bias, recurrent,
                                         *self.flatten(feeds, backbone, pure))
        return self.readout(states), states[-1]

    def kernel_sequence(self, kernel, projected: Tensor, state: Tensor, elapsed: Tensor, recurrent: Tensor,
                        feeds: list[Tensor], backbone: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The states ``[T, B, N]`` of a stretch of steps trained in the C kernel, from the projected
        inputs ``x W_in + b`` ``[T, B, sum widths]`` (see :mod:`policies.cfc_native`)."""
        raise NotImplementedError

    def kernel_states(self, kernel, projected: Tensor, state: Tensor, elapsed: Tensor, recurrent: Tensor,
                      feeds: list[Tensor], backbone: list[tuple[Tensor, Tensor]]) -> Tensor:
        """As :meth:`kernel_sequence`, for inference: the kernel's forward without an autograd node
        (on a rollout step its bookkeeping would cost as much as the step). ``state`` and
        ``elapsed`` are contiguous."""
        raise NotImplementedError

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


class CfC(StackedCfC):
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
    or ``tanh``, float32/float64 on the CPU — trains batches of up to ``DENSE_KERNEL_MAX_BATCH``
    sequences (PPO's minibatches) in the C kernel ``cfc_kernel.c`` (see :mod:`policies.native`;
    ``native = False`` or no C compiler: PyTorch).
    """

    kernel_source = "cfc_kernel.c"
    kernel_max_batch = DENSE_KERNEL_MAX_BATCH

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

    def kernel_sequence(self, kernel, projected, state, elapsed, recurrent, feeds, backbone):
        return DenseSequence.apply(kernel, self.mode == "default", projected, state, elapsed, recurrent, *backbone[0])

    def kernel_states(self, kernel, projected, state, elapsed, recurrent, feeds, backbone):
        return dense_forward(kernel, self.mode == "default", projected, state, elapsed, recurrent, *backbone[0])[-1]

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


class WiredCfC(StackedCfC):
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

    Modes ``default`` and ``no_gate`` train in the C kernel ``cfc_kernel.c`` (float32/float64 on
    the CPU; ``native = False`` or no C compiler: the fused PyTorch pass).
    """

    kernel_source = "cfc_kernel.c"

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
        self._kernel_sizes = torch.tensor(self.layer_sizes, dtype=torch.int32)
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

    def kernel_applies(self) -> bool:
        return self.mode != "pure"

    def kernel_sequence(self, kernel, projected, state, elapsed, recurrent, feeds, backbone):
        return WiredSequence.apply(kernel, self.mode == "default", self._kernel_sizes, projected, state, elapsed,
                                   recurrent, *feeds)

    def kernel_states(self, kernel, projected, state, elapsed, recurrent, feeds, backbone):
        return wired_forward(kernel, self.mode == "default", self._kernel_sizes, projected, state, elapsed, recurrent,
                             joined_feeds(feeds, projected))[-1]

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
