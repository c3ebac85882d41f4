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
layers are one matmul (block-diagonal for stacked layers). In training, a custom autograd
function runs the whole sequence and its hand-written backward pass, and accumulates the weight
gradients with one matmul per weight and step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from policies.core import RecurrentCore
from policies.wiring import AutoNCP, Wiring, as_wiring

MODES = ("default", "no_gate", "pure")
_aten = torch.ops.aten


class Activation:
    """A backbone activation ``outer * f(inner * z)``. The scales are folded into the adjacent
    weights, so a step applies ``f`` alone: ``forward(z, in_place)`` computes it and
    ``backward(grad, saved, out=None)`` maps the gradient of its output to that of its input,
    from the output (or, if ``saves_input``, the input) that the forward pass saved."""

    def __init__(self, forward, backward, inner=1.0, outer=1.0, saves_input=False):
        self.forward, self.backward = forward, backward
        self.inner, self.outer, self.saves_input = inner, outer, saves_input

    def __call__(self, z: Tensor, in_place: bool = False) -> tuple[Tensor, Tensor]:
        """``(f(z), saved)``; ``in_place`` may overwrite ``z``."""
        out = self.forward(z, in_place and not self.saves_input)
        return out, (z if self.saves_input else out)


def _backward(op, *extra):
    """An aten ``*_backward`` op as ``(grad, saved, out=None) -> gradient of the input``."""
    def apply(grad, saved, out=None):
        if out is None:
            return op(grad, saved, *extra)
        return op.grad_input(grad, saved, *extra, grad_input=out)
    return apply


def _tanh(z, in_place):
    return z.tanh_() if in_place else torch.tanh(z)


ACTIVATIONS = {
    # LeCun's scaled tanh 1.7159 tanh(2/3 z), with the 0.666 of ncps
    "lecun_tanh": Activation(_tanh, _backward(_aten.tanh_backward), inner=0.666, outer=1.7159),
    "tanh": Activation(_tanh, _backward(_aten.tanh_backward)),
    "relu": Activation(lambda z, in_place: z.relu_() if in_place else torch.relu(z),
                       _backward(_aten.threshold_backward, 0)),
    "silu": Activation(lambda z, _: torch.nn.functional.silu(z), _backward(_aten.silu_backward), saves_input=True),
    "gelu": Activation(lambda z, _: torch.nn.functional.gelu(z), _backward(_aten.gelu_backward), saves_input=True),
}


def cfc_update(heads: Tensor, elapsed: Tensor, mode: str, tau: Tensor | None = None,
               amplitude: Tensor | None = None, keep: list | None = None) -> Tensor:
    """The CfC solution from the heads ``[B, 4H]`` (``f1 | f2 | a | b``; ``[B, H]`` = ``f1`` in pure
    mode) and the elapsed time ``[B, 1]``; ``tau = |w_tau|`` and ``amplitude = A`` for pure mode.
    ``keep`` receives the intermediates :func:`cfc_update_backward` needs."""
    if mode == "pure":
        decay = torch.exp(-elapsed * (tau + heads.abs()))
        if keep is not None:
            keep.append(decay)
        return amplitude - amplitude * decay * heads
    hidden = heads.shape[1] // 4
    squashed = torch.tanh(heads[:, : 2 * hidden])
    f1, f2 = squashed.chunk(2, dim=1)
    gate = torch.sigmoid(torch.addcmul(heads[:, 3 * hidden :], heads[:, 2 * hidden : 3 * hidden], elapsed))
    if keep is not None:
        keep += [squashed, gate]
    return torch.addcmul(f1, gate, f2) if mode == "no_gate" else torch.lerp(f1, f2, gate)


def cfc_update_backward(grad, kept, heads, elapsed, mode, tau, amplitude, out, need_elapsed):
    """Gradient of :func:`cfc_update` for the upstream ``grad`` ``[B, H]``: writes dL/d(heads) into
    ``out`` and returns dL/d(elapsed) ``[B, 1]`` (if ``need_elapsed``, needing ``heads``) and, in
    pure mode, per-sample dL/d(tau) and dL/d(amplitude) ``[B, H]``."""
    if mode == "pure":
        (decay,) = kept
        product = decay * heads  # e f1
        magnitude = heads.abs()
        torch.mul((elapsed * magnitude).sub_(1.0).mul_(decay), amplitude * grad, out=out)  # -A e (1 - dt|f1|) g
        common = amplitude * product * grad  # A e f1 g
        g_dt = (common * (tau + magnitude)).sum(1, keepdim=True) if need_elapsed else None
        return g_dt, common * elapsed, (1.0 - product) * grad
    squashed, gate = kept
    g_f1, g_f2, g_a, g_b = out.chunk(4, dim=1)
    f1, f2 = squashed.chunk(2, dim=1)
    torch.mul(grad, gate, out=g_f2)
    if mode == "no_gate":
        g_f1.copy_(grad)
        through = grad * f2
    else:
        torch.sub(grad, g_f2, out=g_f1)
        through = grad * (f2 - f1)
    squashed_grad = out[:, : 2 * grad.shape[1]]
    _aten.tanh_backward.grad_input(squashed_grad, squashed, grad_input=squashed_grad)
    _aten.sigmoid_backward.grad_input(through, gate, grad_input=g_b)
    torch.mul(g_b, elapsed, out=g_a)
    if not need_elapsed:
        return None, None, None
    return (g_b * heads[:, 2 * grad.shape[1] : 3 * grad.shape[1]]).sum(1, keepdim=True), None, None


class _Sequence(torch.autograd.Function):
    """A stretch of steps of a :class:`_StackedCfC` with a hand-written backward pass.

    Inputs after ``core``: initial state, projected inputs ``[T, B, sum widths]``, elapsed
    ``[T, B, 1]``, the recurrent weight, then the other shared tensors of
    :meth:`_StackedCfC.derive` flattened. Returns the states ``[T, B, N]``. The forward pass keeps
    only what the backward pass reads: per step the previous state, per layer its input, the
    backbone activations and the update's intermediates.
    """

    @staticmethod
    def forward(ctx, core, h, projected, elapsed, recurrent, *rest):
        feeds, backbone, pure = core.unflatten(rest)
        activation = ACTIVATIONS[core.activation]
        need_elapsed = ctx.needs_input_grad[3]
        keep_heads = need_elapsed or core.mode == "pure"
        tape, states = [], []
        for projected_t, elapsed_t in zip(projected.unbind(0), elapsed.unbind(0)):
            layers, outputs, x = [], [], None
            for index, pre in enumerate(core.split(torch.addmm(projected_t, h, recurrent), core.widths)):
                z = pre if index == 0 else torch.addmm(pre, x, feeds[index - 1])
                activations = []
                for weight, bias in backbone:
                    a, saved = activation(z, in_place=True)
                    activations.append((a, saved))
                    z = torch.addmm(bias, a, weight)
                kept: list = []
                layers.append((kept, activations, x, z if keep_heads else None))
                x = cfc_update(z, elapsed_t, core.mode, *pure[index], keep=kept)
                outputs.append(x)
            tape.append((h, layers))
            h = x if len(outputs) == 1 else torch.cat(outputs, dim=1)
            states.append(h)
        ctx.core, ctx.tape = core, tape
        ctx.save_for_backward(elapsed, recurrent, *rest)
        return torch.stack(states)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        core, tape = ctx.core, ctx.tape
        elapsed, recurrent, *rest = ctx.saved_tensors
        feeds, backbone, pure = core.unflatten(rest)
        activation = ACTIVATIONS[core.activation]
        need_elapsed = ctx.needs_input_grad[3]
        steps, batch = grad_states.shape[:2]
        g_projected = grad_states.new_empty(steps, batch, sum(core.widths))
        g_elapsed = torch.zeros_like(elapsed) if need_elapsed else None
        g_recurrent = torch.zeros_like(recurrent)
        g_feeds = [torch.zeros_like(w) for w in feeds]
        g_weights = [torch.zeros_like(w) for w, _ in backbone]
        g_biases = [grad_states.new_zeros(batch, b.shape[0]) for _, b in backbone]  # summed over B at the end
        g_pure = [(torch.zeros_like(t), torch.zeros_like(a)) if t is not None else (None, None) for t, a in pure]
        backbone_t = [weight.t() for weight, _ in backbone]
        feeds_t = [weight.t() for weight in feeds]
        recurrent_t = recurrent.t()
        g_state = grad_states[-1]  # dL/d(state after step t), through the outputs and later steps
        for t in reversed(range(steps)):
            h_prev, layers = tape[t]
            g_outs = core.split(g_state, core.layer_sizes)
            g_pre_all = g_projected[t]
            g_pres = core.split(g_pre_all, core.widths)
            for index in reversed(range(len(layers))):
                kept, activations, x_in, heads = layers[index]
                head_width = (1 if core.mode == "pure" else 4) * core.layer_sizes[index]
                g_z = grad_states.new_empty(batch, head_width) if backbone else g_pres[index]
                g_dt, g_tau, g_amp = cfc_update_backward(g_outs[index], kept, heads, elapsed[t], core.mode,
                                                         *pure[index], out=g_z, need_elapsed=need_elapsed)
                if need_elapsed:
                    g_elapsed[t] += g_dt
                if g_tau is not None:
                    g_pure[index][0].add_(g_tau.sum(0, keepdim=True))
                    g_pure[index][1].add_(g_amp.sum(0, keepdim=True))
                for depth in reversed(range(len(backbone))):
                    a, saved = activations[depth]
                    g_weights[depth].addmm_(a.t(), g_z)
                    g_biases[depth].add_(g_z)
                    g_z = activation.backward(g_z.mm(backbone_t[depth]), saved, out=g_pres[index] if depth == 0 else None)
                if index > 0:
                    g_feeds[index - 1].addmm_(x_in.t(), g_pres[index])
                    g_outs[index - 1] = torch.addmm(g_outs[index - 1], g_pres[index], feeds_t[index - 1])
            g_recurrent.addmm_(h_prev.t(), g_pre_all)
            g_state = torch.addmm(grad_states[t - 1], g_pre_all, recurrent_t) if t else g_pre_all.mm(recurrent_t)
        g_backbone = [(w, b.sum(0)) for w, b in zip(g_weights, g_biases)]
        return None, g_state, g_projected, g_elapsed, g_recurrent, *core.flatten(g_feeds, g_backbone, g_pure)


class _StackedCfC(RecurrentCore):
    """Shared step, readout and training pass of :class:`CfC` and :class:`WiredCfC`.

    Subclasses set ``mode``, ``activation``, ``dropout``, ``layer_sizes`` (neurons per layer),
    ``widths`` (width of ``pre_l`` per layer) and ``backbone_depth``, and implement :meth:`derive`
    returning ``(input weight [F, sum widths], bias [sum widths], (recurrent [N, sum widths],
    feeds, backbone, pure))`` with the activation's scales already folded in.
    """

    time_aware = True

    def precompute(self, inputs, elapsed):
        input_w, bias, shared = self.derived()
        projected = torch.addmm(bias, inputs.reshape(-1, self.input_size), input_w)
        return [projected.view(*inputs.shape[:2], -1), elapsed], shared

    @staticmethod
    def split(tensor: Tensor, sizes: list[int]) -> list[Tensor]:
        """Column blocks of ``tensor`` (no op for a single block)."""
        return [tensor] if len(sizes) == 1 else list(tensor.split(sizes, dim=1))

    def step(self, h, projected, elapsed, recurrent, feeds, backbone, pure):
        x, states = None, []
        for index, pre in enumerate(self.split(torch.addmm(projected, h, recurrent), self.widths)):
            z = pre if index == 0 else torch.addmm(pre, x, feeds[index - 1])
            for weight, bias in backbone:
                a = ACTIVATIONS[self.activation](z)[0]
                if self.dropout and self.training:
                    a = torch.nn.functional.dropout(a, self.dropout)
                z = torch.addmm(bias, a, weight)
            x = cfc_update(z, elapsed, self.mode, *pure[index])
            states.append(x)
        return x if len(states) == 1 else torch.cat(states, dim=1)

    def run(self, per_step, shared, state):
        if not torch.is_grad_enabled() or (self.dropout and self.training):
            return super().run(per_step, shared, state)
        recurrent, feeds, backbone, pure = shared
        states = _Sequence.apply(self, state, *per_step, recurrent, *self.flatten(feeds, backbone, pure))
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
    """

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

    def derive(self):
        heads_w, heads_b = _stacked_heads(self.heads)
        inner, outer = ACTIVATIONS[self.activation].inner, ACTIVATIONS[self.activation].outer
        if self.backbone:  # fold outer * f(inner * z): inner into every backbone layer, outer into the next map
            first_w, first_b = self.backbone[0].weight * inner, self.backbone[0].bias * inner
            later = [(layer.weight.t() * (inner * outer), layer.bias * inner) for layer in self.backbone[1:]]
            later.append((heads_w.t() * outer, heads_b))
        else:
            first_w, first_b, later = heads_w, heads_b, []
        pure = [self.pure.values() if self.pure is not None else (None, None)]
        return first_w[:, : self.input_size].t(), first_b, (first_w[:, self.input_size :].t(), [], later, pure)


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
        feeds = [w[:, :n_in].t() for (w, _), n_in in zip(stacked[1:], fan_in[1:])]
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
