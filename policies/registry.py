"""The cores by name: ``CORE_NAMES`` and ``build_core``.

Adding a core is one module (a :class:`~policies.core.RecurrentCore` subclass or a factory
returning one) plus its line in ``FACTORIES``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from policies import cfc, ltc, rnn
from policies.core import RecurrentCore

FACTORIES: dict[str, Callable[..., RecurrentCore]] = {
    "mlp": rnn.NoCore,
    "lstm": rnn.LSTM,
    "gru": rnn.GRU,
    "cfc": cfc.CfC,
    "ltc": ltc.build_ltc,
    "ncp-cfc": cfc.build_ncp_cfc,
    "ncp-ltc": ltc.build_ncp_ltc,
}
CORE_NAMES = tuple(FACTORIES)


def core_arguments(name: str) -> dict[str, Any]:
    """Keyword arguments accepted by ``build_core(name, ...)`` with their defaults."""
    if name not in FACTORIES:
        raise ValueError(f"unknown core {name!r}; allowed: {', '.join(CORE_NAMES)}")
    parameters = inspect.signature(FACTORIES[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.name != "input_size"}


def build_core(name: str, input_size: int, **kwargs: Any) -> RecurrentCore:
    """Build a recurrent core by name.

    =========  =====================================================================================
    name       keyword arguments (defaults)
    =========  =====================================================================================
    mlp        none — identity, output = input, state size 0
    lstm       hidden_size=64 (state packs h and c: size 2 * hidden_size)
    gru        hidden_size=64
    cfc        hidden_size=64, mode="default" ("default" | "no_gate" | "pure"), backbone_units=128,
               backbone_layers=1, backbone_activation="lecun_tanh", backbone_dropout=0.0
    ltc        hidden_size=32, ode_unfolds=6, seed=1111 (fully connected wiring, all units output)
    ncp-cfc    units=32, output_size=8, sparsity=0.5, seed=22222, mode="default", wiring=None
    ncp-ltc    units=32, output_size=8, sparsity=0.5, seed=22222, ode_unfolds=6, wiring=None
    =========  =====================================================================================

    ``ncp-*`` build an :class:`~policies.wiring.AutoNCP` wiring from ``units`` (total neurons),
    ``output_size`` (motor neurons = outputs), ``sparsity`` and ``seed``, unless ``wiring`` (a
    :class:`~policies.wiring.Wiring` or its ``to_dict()``) is given.

    :raises ValueError: unknown name or keyword argument (the message lists the allowed ones)
    """
    allowed = core_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for core {name!r}; allowed: {sorted(allowed)}")
    return FACTORIES[name](input_size, **kwargs)
