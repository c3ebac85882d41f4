"""The brains: recurrent cores (LTC, CfC, NCP wirings, LSTM/GRU/MLP adapters) and SB3 policies.

``build_core(name, input_size, **kwargs)`` makes any core of ``CORE_NAMES``; all of them are
:class:`RecurrentCore` modules with one sequence interface (see ``policies/core.py``); the registry
of names is ``policies/registry.py``.
"""

from policies.core import RecurrentCore
from policies.registry import CORE_NAMES, build_core

__all__ = ["CORE_NAMES", "RecurrentCore", "build_core"]
