"""C export: one dependency-free C99 source + header computing one deterministic actor step.

The generated ``<name>.h`` declares (``NAME`` = the prefix in capitals)::

    #define NAME_OBS_SIZE ...     raw observation, as the env returns it (step duration last if used)
    #define NAME_STATE_SIZE ...   floats of recurrent state (0 for mlp)
    #define NAME_ACTION_SIZE ...
    void name_reset(float *state);                                 state <- initial state (zeros)
    void name_step(float *state, const float *obs, float *action);  state in/out

Call ``name_reset`` at every episode start, then ``name_step`` once per control step. Everything
is float32 with the weights as ``static const`` arrays (flash), the state in the caller's array
and a few fixed-size scratch arrays on the stack; nothing is allocated, only ``<math.h>``
(``expf``, ``tanhf``, ``erff`` for GELU) and ``<stdint.h>`` are used. Every core is written out as
the loops of its equation, reading the weights from the parameters of the PyTorch modules:
LSTM and GRU cells; CfC (modes default, no_gate, pure) with its dense backbone; NCP-wired CfC
layer by layer with the wiring's synapses stored as lists; LTC (fully connected or NCP wiring)
with its semi-implicit Euler unfolds over the synapse list. State-vector policies only: a camera
policy (Dict observations, conv encoder) is refused.

`Program` also counts the multiply-accumulates and transcendental calls (``expf``, ``tanhf``,
``erff``; a sigmoid is one ``expf``) and the divisions besides them of one step, for the footprint report (`policies.export.footprint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from policies.export.actor import ActorParts, NormStats
from policies.sb3_policy import MIN_ELAPSED

#: ``z -> f(z)`` of the CfC backbone activations (ncps' LeCun tanh is 1.7159 tanh(0.666 z)) and
#: of the MLP head's activation modules; the second item counts the transcendental calls.
BACKBONE_ACTIVATIONS = {
    "lecun_tanh": ("1.7159f * tanhf(0.666f * {z})", 1),
    "tanh": ("tanhf({z})", 1),
    "relu": ("({z} > 0.0f ? {z} : 0.0f)", 0),
    "silu": ("{z} / (1.0f + expf(-{z}))", 1),
    "gelu": ("0.5f * {z} * (1.0f + erff({z} * 0.70710678f))", 1),
}
HEAD_ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.SiLU: "silu", nn.ELU: "elu"}
ELU = ("({z} > 0.0f ? {z} : {alpha}f * (expf({z}) - 1.0f))", 1)

HELPERS = {
    "sigmoid": "static float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }",
    "matvec": """/* y[i] += sum_j w[i * n_in + j] x[j] for i < n_out */
static void matvec(float *y, const float *w, const float *x, int n_out, int n_in)
{
    for (int i = 0; i < n_out; ++i) {
        float sum = y[i];
        for (int j = 0; j < n_in; ++j) sum += w[i * n_in + j] * x[j];
        y[i] = sum;
    }
}""",
    "copy": """static void copy(float *y, const float *x, int n)
{
    for (int i = 0; i < n; ++i) y[i] = x[i];
}""",
}


def _float(value: float) -> str:
    """A float32 literal that reads back as exactly ``value`` rounded to float32."""
    number = np.float32(value)
    text = np.format_float_positional(number, unique=True, trim="0")
    return (text if len(text) <= 12 else np.format_float_scientific(number, unique=True, trim="0")) + "f"


@dataclass
class Program:
    """The C text of one actor step under construction, with its size and cost counts."""

    prefix: str
    arrays: list[str] = field(default_factory=list)
    helpers: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    parameter_bytes: int = 0
    scratch_floats: int = 0
    macs: int = 0
    transcendentals: int = 0
    divisions: int = 0

    def const(self, name: str, values, integer: bool = False) -> str:
        """Declare a ``static const`` array (float32, or the smallest unsigned type for indices)."""
        flat = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values).ravel()
        if flat.size == 0:
            raise ValueError(f"array {name} is empty")
        if integer:
            ctype, size = ("uint8_t", 1) if flat.max() < 256 else ("uint16_t", 2)
            text = [str(int(v)) for v in flat]
        else:
            if not np.all(np.isfinite(flat)):
                raise ValueError(f"{name} holds non-finite values")
            ctype, size = "float", 4
            text = [_float(v) for v in flat]
        lines = ",\n".join("    " + ", ".join(text[i : i + 8]) for i in range(0, len(text), 8))
        self.arrays.append(f"static const {ctype} {name}[{flat.size}] = {{\n{lines}\n}};")
        self.parameter_bytes += size * flat.size
        return name

    def scratch(self, name: str, size: int) -> str:
        """Declare a float scratch array on the stack of the step function."""
        self.body.append(f"    float {name}[{size}];")
        self.scratch_floats += size
        return name

    def need(self, helper: str) -> None:
        if HELPERS[helper] not in self.helpers:
            self.helpers.append(HELPERS[helper])

    def line(self, text: str) -> None:
        self.body.append("    " + text)

    def affine(self, y: str, weight: torch.Tensor, bias: torch.Tensor | None, x: str, name: str,
               accumulate: bool = False) -> None:
        """``y = W x + b`` (or ``y += W x`` if ``accumulate``) with ``W [n_out, n_in]``."""
        n_out, n_in = weight.shape
        if not accumulate:
            if bias is None:
                self.line(f"for (int i = 0; i < {n_out}; ++i) {y}[i] = 0.0f;")
            else:
                self.need("copy")
                self.line(f"copy({y}, {self.const(name + '_b', bias)}, {n_out});")
        self.need("matvec")
        self.line(f"matvec({y}, {self.const(name + '_w', weight)}, {x}, {n_out}, {n_in});")
        self.macs += n_out * n_in

    def apply(self, array: str, size: int, expression: str, cost: int) -> None:
        """``array[i] = f(array[i])`` for ``i < size``."""
        self.line(f"for (int i = 0; i < {size}; ++i) {array}[i] = {expression.format(z=array + '[i]')};")
        self.transcendentals += cost * size


# ------------------------------------------------------------------ cores
def _lstm(p: Program, core, x: str, state: str) -> str:
    m, h = core.lstm, core.output_size
    gates = p.scratch("gates", 4 * h)
    p.affine(gates, m.weight_ih_l0, m.bias_ih_l0 + m.bias_hh_l0, x, "lstm_ih")
    p.affine(gates, m.weight_hh_l0, None, state, "lstm_hh", accumulate=True)
    p.need("sigmoid")
    p.line(f"for (int j = 0; j < {h}; ++j) {{")
    p.line(f"    float c = sigmoid(gates[{h} + j]) * {state}[{h} + j] + sigmoid(gates[j]) * tanhf(gates[{2 * h} + j]);")
    p.line(f"    {state}[{h} + j] = c;")
    p.line(f"    {state}[j] = sigmoid(gates[{3 * h} + j]) * tanhf(c);")
    p.line("}")
    p.transcendentals += 5 * h
    return state


def _gru(p: Program, core, x: str, state: str) -> str:
    m, h = core.gru, core.output_size
    gi, gh = p.scratch("gi", 3 * h), p.scratch("gh", 3 * h)
    p.affine(gi, m.weight_ih_l0, m.bias_ih_l0, x, "gru_ih")
    p.affine(gh, m.weight_hh_l0, m.bias_hh_l0, state, "gru_hh")
    p.need("sigmoid")
    p.line(f"for (int j = 0; j < {h}; ++j) {{")
    p.line(f"    float r = sigmoid(gi[j] + gh[j]), z = sigmoid(gi[{h} + j] + gh[{h} + j]);")
    p.line(f"    float n = tanhf(gi[{2 * h} + j] + r * gh[{2 * h} + j]);")
    p.line(f"    {state}[j] = n + z * ({state}[j] - n);")
    p.line("}")
    p.transcendentals += 3 * h
    return state


def _cfc_update(p: Program, mode: str, heads: str, state: str, n: int, tag: str, pure) -> None:
    """The CfC solution from ``heads`` (f1 | f2 | a | b; f1 only in pure mode) into ``state[0:n]``."""
    p.line(f"for (int j = 0; j < {n}; ++j) {{")
    if mode == "pure":
        tau = p.const(f"{tag}_tau", pure.w_tau.abs())
        amplitude = p.const(f"{tag}_A", pure.A)
        p.line(f"    float f = {heads}[j], a = {amplitude}[j];")
        p.line(f"    {state}[j] = a - a * expf(-dt * ({tau}[j] + fabsf(f))) * f;")
        p.transcendentals += n
    else:
        p.need("sigmoid")
        p.line(f"    float f1 = tanhf({heads}[j]), f2 = tanhf({heads}[{n} + j]);")
        p.line(f"    float g = sigmoid({heads}[{2 * n} + j] * dt + {heads}[{3 * n} + j]);")
        p.line(f"    {state}[j] = " + ("f1 + f2 * g;" if mode == "no_gate" else "f1 * (1.0f - g) + f2 * g;"))
        p.transcendentals += 3 * n
    p.line("}")


def _head_names(mode: str) -> list[str]:
    return ["ff1"] if mode == "pure" else ["ff1", "ff2", "time_a", "time_b"]


def _cfc(p: Program, core, x: str, state: str) -> str:
    f, h = core.input_size, core.state_size
    joined = p.scratch("joined", f + h)
    p.need("copy")
    p.line(f"copy({joined}, {x}, {f});")
    p.line(f"copy({joined} + {f}, {state}, {h});")
    z = joined
    activation, cost = BACKBONE_ACTIVATIONS[core.activation]
    for index, layer in enumerate(core.backbone):
        out = p.scratch(f"backbone{index}", layer.out_features)
        p.affine(out, layer.weight, layer.bias, z, f"cfc_backbone{index}")
        p.apply(out, layer.out_features, activation, cost)
        z = out
    names = _head_names(core.mode)
    heads = p.scratch("heads", len(names) * h)
    weight = torch.cat([core.heads[name].weight for name in names])
    bias = torch.cat([core.heads[name].bias for name in names])
    p.affine(heads, weight, bias, z, "cfc_heads")
    _cfc_update(p, core.mode, heads, state, h, "cfc", core.pure)
    return state


def _wired_cfc(p: Program, core, x: str, state: str) -> str:
    """Layer by layer (inter -> command -> motor); each layer reads the new state of the one before
    through the wiring's synapses and its own previous state densely, and is updated in place."""
    wiring, names = core.wiring, _head_names(core.mode)
    heads_per_neuron = len(names)
    heads = p.scratch("heads", heads_per_neuron * max(len(ids) for ids in wiring.layers))
    source, previous, offset, fan_in = x, None, 0, core.input_size
    for index, (ids, module) in enumerate(zip(wiring.layers, core.layers)):
        n = len(ids)
        incoming = wiring.sensory_adjacency[:, ids] if previous is None else wiring.adjacency[np.ix_(previous, ids)]
        src, dst = np.nonzero(incoming)
        weight = torch.stack([module[name].weight for name in names])  # [k, n, fan_in + n]
        bias = torch.cat([module[name].bias for name in names])
        tag = f"layer{index}"
        bias_name = p.const(tag + "_b", bias)
        pre_name, post_name = p.const(tag + "_pre", src, integer=True), p.const(tag + "_post", dst, integer=True)
        synapse_w = p.const(tag + "_syn_w", weight[:, dst, src].t())  # [S, k]: the wired inputs only
        p.need("copy")
        p.line(f"copy({heads}, {bias_name}, {heads_per_neuron * n});")
        p.line(f"for (int s = 0; s < {len(src)}; ++s) {{")
        p.line(f"    float input = {source}[{pre_name}[s]];")
        p.line(f"    int post = {post_name}[s];")
        for k in range(heads_per_neuron):
            p.line(f"    {heads}[{k * n} + post] += {synapse_w}[s * {heads_per_neuron} + {k}] * input;")
        p.line("}")
        p.macs += heads_per_neuron * len(src)
        recurrent = weight[:, :, fan_in:].reshape(heads_per_neuron * n, n)
        p.affine(heads, recurrent, None, f"{state} + {offset}", tag + "_rec", accumulate=True)
        pure = core.pure[index] if core.pure is not None else None
        _cfc_update(p, core.mode, heads, f"({state} + {offset})", n, tag, pure)
        source, previous, fan_in = f"({state} + {offset})", ids, n
        offset += n
    return f"({state} + {core.state_size - core.output_size})"


def _softplus(t: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(t.double())


def _ltc(p: Program, core, x: str, state: str, elapsed: str) -> str:
    """Sensory synapses once per step, then ``ode_unfolds`` semi-implicit Euler steps over the
    synapse list: ``v <- (cm/h v + num) / (cm/h + den)``."""
    units, unfolds = core.state_size, core.ode_unfolds
    sensory_src, sensory_dst = core.sensory_synapses
    src, dst = core.synapses
    sigma_in = core.sensory_sigma.double()
    # sigma (input_w x + input_b - mu) = gain x + offset
    gain_in = sigma_in * core.input_w.double()[sensory_src]
    offset_in = sigma_in * (core.input_b.double()[sensory_src] - core.sensory_mu.double())
    w_in = _softplus(core.sensory_w)
    gleak = _softplus(core.gleak)
    cm = _softplus(core.cm) * unfolds
    w = _softplus(core.w)
    base_num, base_den, cm_t, num, den = (p.scratch(name, units) for name in ("base_num", "base_den", "cm_t", "num", "den"))
    if elapsed == "dt":  # a zero step would make cm/h infinite (as policies/ltc.py clamps it)
        p.line(f"const float h = dt < {_float(1e-6)} ? {_float(1e-6)} : dt;")
    else:
        p.line(f"const float h = {elapsed};")
    p.line(f"for (int i = 0; i < {units}; ++i) {{")
    p.line(f"    cm_t[i] = {p.const('ltc_cm', cm)}[i] / h;")
    p.line(f"    base_num[i] = {p.const('ltc_gleak_vleak', gleak * core.vleak.double())}[i];")
    p.line(f"    base_den[i] = {p.const('ltc_gleak', gleak + core.epsilon)}[i] + cm_t[i];")
    p.line("}")
    p.need("sigmoid")
    _synapses(p, "ltc_sensory", x, sensory_src, sensory_dst, gain_in, offset_in,
              w_in * core.sensory_erev.double(), w_in, "base_num", "base_den")
    p.need("copy")
    p.line(f"for (int unfold = 0; unfold < {unfolds}; ++unfold) {{")
    start = len(p.body)
    p.line(f"copy(num, base_num, {units});")
    p.line(f"copy(den, base_den, {units});")
    _synapses(p, "ltc", state, src, dst, core.sigma.double(), -core.sigma.double() * core.mu.double(),
              w * core.erev.double(), w, "num", "den")
    p.line(f"for (int i = 0; i < {units}; ++i) {state}[i] = (num[i] + cm_t[i] * {state}[i]) / den[i];")
    p.body[start:] = ["    " + text for text in p.body[start:]]
    p.line("}")
    p.macs += (unfolds - 1) * 3 * len(src) + unfolds * units  # _synapses counted one unfold
    p.transcendentals += (unfolds - 1) * len(src)
    p.divisions += unfolds * units
    out = p.scratch("ltc_out", core.output_size)
    p.line(f"for (int i = 0; i < {core.output_size}; ++i) "
           f"{out}[i] = {p.const('ltc_output_w', core.output_w)}[i] * {state}[i] + {p.const('ltc_output_b', core.output_b)}[i];")
    return out


def _synapses(p: Program, tag: str, source: str, pre, post, gain, offset, w_erev, w, num: str, den: str) -> None:
    """For each synapse ``a = sigmoid(gain * source[pre] + offset)``, then ``num[post] += w erev a``
    and ``den[post] += w a``."""
    count = len(pre)
    if count == 0:
        return
    presynaptic = f"{source}[{p.const(tag + '_pre', pre, integer=True)}[s]]"
    p.line(f"for (int s = 0; s < {count}; ++s) {{")
    p.line(f"    float a = sigmoid({p.const(tag + '_gain', gain)}[s] * {presynaptic} + {p.const(tag + '_offset', offset)}[s]);")
    p.line(f"    int post = {p.const(tag + '_post', post, integer=True)}[s];")
    p.line(f"    {num}[post] += {p.const(tag + '_w_erev', w_erev)}[s] * a;")
    p.line(f"    {den}[post] += {p.const(tag + '_w', w)}[s] * a;")
    p.line("}")
    p.macs += 3 * count
    p.transcendentals += count


# ------------------------------------------------------------------ whole step
def _core_kind(core) -> str:
    if core is None or core.state_size == 0:
        return "mlp"
    for attribute, kind in (("lstm", "lstm"), ("gru", "gru"), ("backbone", "cfc"), ("ode_unfolds", "ltc")):
        if hasattr(core, attribute):
            return kind
    if hasattr(core, "wiring") and hasattr(core, "layers"):
        return "wired_cfc"
    raise ValueError(f"no C export for core {type(core).__name__}")


def program(parts: ActorParts, norm: NormStats | None, prefix: str = "actor") -> Program:
    """The C step of the actor ``parts`` with normalisation ``norm``.

    :raises ValueError: camera policies, a prefix that is not a C identifier, unknown activations
    """
    if parts.camera:
        raise ValueError("C export covers state-vector policies only; this policy reads a camera image "
                         "(use the torchscript or onnx format)")
    if not prefix.isidentifier() or not prefix.isascii():
        raise ValueError(f"prefix must be a C identifier, got {prefix!r}")
    p = Program(prefix)
    obs_size = parts.state_obs_size
    features = "obs"
    if norm is not None:
        if norm.mean.shape != (obs_size,):
            raise ValueError(f"normalisation statistics have {norm.mean.shape[0]} elements, the observation {obs_size}")
        features = p.scratch("features", obs_size)
        clip = _float(norm.clip)
        normalised = obs_size - int(norm.raw_last or parts.elapsed_in_obs)
        p.line(f"for (int i = 0; i < {normalised}; ++i) {{")
        p.line(f"    float z = (obs[i] - {p.const('obs_mean', norm.mean)}[i]) * {p.const('obs_scale', norm.scale())}[i];")
        p.line(f"    {features}[i] = z < -{clip} ? -{clip} : (z > {clip} ? {clip} : z);")
        p.line("}")
        if normalised < obs_size:
            p.line(f"{features}[{obs_size - 1}] = obs[{obs_size - 1}];")
    core, kind = parts.core, _core_kind(parts.core)
    elapsed = "1.0f"
    if parts.elapsed_in_obs and core is not None and core.time_aware:
        p.line(f"const float dt = {features}[{obs_size - 1}] < {_float(MIN_ELAPSED)} ? "
               f"{_float(MIN_ELAPSED)} : {features}[{obs_size - 1}];")
        elapsed = "dt"
    elif kind in ("cfc", "wired_cfc"):
        p.line("const float dt = 1.0f;")
    if kind == "mlp":
        latent = features
    elif kind == "ltc":
        latent = _ltc(p, core, features, "state", elapsed)
    else:
        latent = {"lstm": _lstm, "gru": _gru, "cfc": _cfc, "wired_cfc": _wired_cfc}[kind](p, core, features, "state")
    for index, module in enumerate(parts.head):
        if isinstance(module, nn.Linear):
            out = p.scratch(f"head{index}", module.out_features)
            p.affine(out, module.weight, module.bias, latent, f"head{index}")
            latent, width = out, module.out_features
        elif type(module) in HEAD_ACTIVATIONS:
            name = HEAD_ACTIVATIONS[type(module)]
            expression, cost = (ELU[0].replace("{alpha}", repr(float(module.alpha))), 1) if name == "elu" \
                else BACKBONE_ACTIVATIONS[name]
            p.apply(latent, width, expression, cost)
        else:
            raise ValueError(f"no C export for head layer {type(module).__name__}; "
                             f"allowed: Linear, {', '.join(t.__name__ for t in HEAD_ACTIVATIONS)}")
    low, high = p.const("action_low", parts.low), p.const("action_high", parts.high)
    p.line(f"for (int i = 0; i < {parts.action_size}; ++i)")
    p.line(f"    action[i] = {latent}[i] < {low}[i] ? {low}[i] : ({latent}[i] > {high}[i] ? {high}[i] : {latent}[i]);")
    return p


def header(p: Program, parts: ActorParts) -> str:
    name = p.prefix.upper()
    return f"""/* Deterministic actor step exported by liquid-drones (policies/export/c.py). C99, float32,
 * no allocation. Call {p.prefix}_reset at every episode start, then {p.prefix}_step once per
 * control step with the raw observation (the step duration in seconds last, if the policy uses it). */
#ifndef {name}_H
#define {name}_H

#define {name}_OBS_SIZE {parts.state_obs_size}
#define {name}_STATE_SIZE {parts.state_size}
#define {name}_ACTION_SIZE {parts.action_size}

/* state[{name}_STATE_SIZE] <- the initial state (zeros); state may be NULL when the size is 0. */
void {p.prefix}_reset(float *state);

/* One step: state[{name}_STATE_SIZE] in/out, obs[{name}_OBS_SIZE] in, action[{name}_ACTION_SIZE] out. */
void {p.prefix}_step(float *state, const float *obs, float *action);

#endif
"""


def source(p: Program, parts: ActorParts) -> str:
    state_size = parts.state_size
    reset = f"    for (int i = 0; i < {state_size}; ++i) state[i] = 0.0f;" if state_size else "    (void)state;"
    unused = [] if state_size else ["    (void)state;"]
    return "\n".join([
        f'#include "{p.prefix}.h"',
        "",
        "#include <math.h>",
        "#include <stdint.h>",
        "",
        *p.arrays,
        "",
        *[helper + "\n" for helper in p.helpers],
        f"void {p.prefix}_reset(float *state)",
        "{",
        reset,
        "}",
        "",
        f"void {p.prefix}_step(float *state, const float *obs, float *action)",
        "{",
        *unused,
        *p.body,
        "}",
        "",
    ])


def export_c(parts: ActorParts, norm: NormStats | None, out_dir: Path, prefix: str = "actor") -> list[Path]:
    """Write ``<prefix>.c`` and ``<prefix>.h``; returns their paths."""
    p = program(parts, norm, prefix)
    paths = [out_dir / f"{prefix}.c", out_dir / f"{prefix}.h"]
    paths[0].write_text(source(p, parts))
    paths[1].write_text(header(p, parts))
    return paths
