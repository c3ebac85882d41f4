"""The brains: recurrent cores (LTC, CfC, NCP wirings, LSTM/GRU/MLP adapters) and SB3 policies.

``build_core(name, input_size, **kwargs)`` makes any core of ``CORE_NAMES``; all of them are
:class:`RecurrentCore` modules with one sequence interface (see ``policies/core.py``).
"""

from policies.core import CORE_NAMES, RecurrentCore, build_core

__all__ = ["CORE_NAMES", "RecurrentCore", "build_core"]
