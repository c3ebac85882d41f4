"""The recurrent-core interface and its single sequence loop (the registry of cores by name is
:mod:`policies.registry`).

Every memory a policy can use — none (``mlp``), LSTM, GRU, CfC, LTC, and their NCP-wired
variants — is a :class:`RecurrentCore`: a module that maps an input sequence ``[T, B, F]`` and a
packed state ``[B, H]`` to outputs ``[T, B, O]`` and the final state, resetting the state where
an episode starts and, for the liquid cores, integrating over the true elapsed time per step.

The loop over time is written once, here. A core contributes three small pieces:

- :meth:`RecurrentCore.derive` — tensors that depend only on the parameters (stacked or masked
  weights, positive conductances); cached between calls while gradients are off, so a rollout
  step does not rebuild them;
- :meth:`RecurrentCore.precompute` — everything that depends only on the inputs, for all ``T``
  steps at once (input projections, sensory synapse activations, time constants);
- :meth:`RecurrentCore.step` — the cell equation for one step;
- :meth:`RecurrentCore.readout` — state sequence ``[T, B, H]`` to outputs ``[T, B, O]``.

Cores with a fused multi-step kernel (LSTM, GRU) override :meth:`RecurrentCore.run` instead of
``step``; the loop then hands them whole stretches of the sequence without episode starts.
Cores with a C kernel (LTC, CfC, NCP-wired CfC, GRU: ``kernel_source``) use it through
:meth:`RecurrentCore.kernel` in their ``run``; ``core.native = False`` keeps them on their PyTorch
path (same numbers). A core may also take a single step without gradients (a rollout step) in one
fused call, :meth:`RecurrentCore.inference_step` (the LTC: its kernel's ``ltc_step``), where the
general path's dozen small tensor operations would cost more than the step itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from policies import native

#: Smallest step duration a time-aware core integrates over, in seconds. Padded steps of a training
#: batch carry a zero duration (they are masked out of the loss) and the LTC divides by the
#: duration. 1e-4 s is 40x below the shortest real step (one 240 Hz physics step, 4.2e-3 s) and
#: keeps the LTC's cm/h below ~3e4, well inside float32's precision next to potentials of order 1.
MIN_ELAPSED = 1e-4


class RecurrentCore(nn.Module):
    """Base class of all cores (see the module docstring for the three hooks).

    Attributes: ``input_size`` (F), ``output_size`` (O), ``state_size`` (H, the whole state packed
    in one tensor; 0 for ``mlp``), ``time_aware`` (whether ``elapsed`` is used).
    """

    time_aware: bool = False
    #: C source in policies/ of the core's compiled fast path (see policies/native.py), or None.
    kernel_source: str | None = None

    def __init__(self, input_size: int, output_size: int, state_size: int):
        super().__init__()
        if input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        self.input_size = int(input_size)
        self.output_size = int(output_size)
        self.state_size = int(state_size)
        # Follows .to()/.double()/.cuda() so initial_state knows dtype and device, even with no parameters.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self._derived_params: tuple | None = None
        self._derived_key: tuple | None = None
        self._derived: tuple = ()
        self._native = True

    @property
    def native(self) -> bool:
        """Whether the core may run its C kernel (True by default; False: PyTorch only)."""
        return self._native

    @native.setter
    def native(self, value: bool) -> None:
        self._native = bool(value)
        self.forget_derived()  # derived tensors may differ between the two paths

    def forget_derived(self) -> None:
        """Drop the cache of :meth:`derived` (it notices in-place parameter changes by their version
        counters; call this after changes that do not bump them, such as a fused optimiser step)."""
        self._derived_key = None

    def kernel(self):
        """The compiled kernel (a ctypes library) for this core's dtype, or None: no
        ``kernel_source``, ``native`` off, a device other than the CPU, a configuration the kernel
        does not cover (:meth:`kernel_applies`) or no C compiler."""
        if self.kernel_source is None or not self._native or self._anchor.device.type != "cpu":
            return None
        if not self.kernel_applies():
            return None
        return native.load_kernel(self.kernel_source, self._anchor.dtype)

    def kernel_applies(self) -> bool:
        """Whether the C kernel covers this core's configuration."""
        return True

    def initial_state(self, batch_size: int) -> Tensor:
        """Zeros ``[batch_size, state_size]`` in the module's dtype and device."""
        return self._anchor.new_zeros(batch_size, self.state_size)

    def forward(
        self,
        inputs: Tensor,
        state: Tensor,
        episode_starts: Tensor | None = None,
        elapsed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the core over a sequence.

        :param inputs: ``[T, B, F]``
        :param state: ``[B, H]``
        :param episode_starts: ``[T, B]`` (float or bool); where non-zero the state is reset to the
            initial state *before* step ``t``
        :param elapsed: ``[T, B]`` (or ``[T, B, 1]``) seconds since the previous step, > 0;
            ``None`` means 1.0 per step. Ignored by cores that are not ``time_aware``.
        :return: outputs ``[T, B, O]`` and the final state ``[B, H]``
        """
        if inputs.dim() != 3 or inputs.shape[2] != self.input_size or inputs.shape[0] < 1:
            raise ValueError(f"inputs must be [T>=1, B, {self.input_size}], got {list(inputs.shape)}")
        steps, batch = inputs.shape[0], inputs.shape[1]
        if state.shape != (batch, self.state_size):
            raise ValueError(f"state must be [{batch}, {self.state_size}], got {list(state.shape)}")
        dt = None
        if self.time_aware:
            if elapsed is None:
                dt = inputs.new_ones(steps, batch, 1)
            elif elapsed.shape in ((steps, batch), (steps, batch, 1)):
                dt = elapsed.to(inputs.dtype).reshape(steps, batch, 1)
            else:
                raise ValueError(f"elapsed must be [{steps}, {batch}], got {list(elapsed.shape)}")
        if steps == 1 and not torch.is_grad_enabled():
            stepped = self.inference_step(inputs, state, episode_starts, dt)
            if stepped is not None:
                return stepped
        resets = None
        bounds = [0, steps]
        if episode_starts is not None:
            if episode_starts.shape != (steps, batch):
                raise ValueError(f"episode_starts must be [{steps}, {batch}], got {list(episode_starts.shape)}")
            resets = (episode_starts != 0).unsqueeze(-1)
            if steps > 1:  # cut the sequence where any episode restarts
                inner = resets[1:].flatten(1).any(1).nonzero().flatten() + 1
                bounds = [0, *inner.tolist(), steps]

        per_step, shared = self.precompute(inputs, dt)
        outputs = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if resets is not None:
                state = state.masked_fill(resets[start], 0.0)
            out, state = self.run([x[start:stop] for x in per_step], shared, state)
            outputs.append(out)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs)), state

    def derived(self) -> tuple:
        """The output of :meth:`derive`, reused while no parameter changed and gradients are off."""
        if torch.is_grad_enabled():
            return self.derive()
        if self._derived_params is None:
            self._derived_params = tuple(self.parameters())
        key = tuple((p.data_ptr(), p._version) for p in self._derived_params) + (self._anchor.dtype,)
        if key != self._derived_key:
            self._derived, self._derived_key = self.derive(), key
        return self._derived

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state["_derived_params"], state["_derived_key"], state["_derived"] = None, None, ()
        return state

    # ------------------------------------------------------------------ hooks
    def derive(self) -> tuple:
        """Tensors computed from the parameters only (see :meth:`derived`)."""
        return ()

    def precompute(self, inputs: Tensor, elapsed: Tensor | None) -> tuple[list[Tensor], tuple]:
        """Input-only work for all steps: ``(per_step tensors [T, ...], shared values)``.

        ``elapsed`` is ``[T, B, 1]`` for time-aware cores, else ``None``.
        """
        return [inputs], ()

    def step(self, state: Tensor, *args: Any) -> Tensor:
        """One step of the cell: ``state [B, H]``, then one slice ``[B, ...]`` of each per-step
        tensor, then the shared values; returns the new state."""
        raise NotImplementedError

    def inference_step(self, inputs: Tensor, state: Tensor, episode_starts: Tensor | None,
                       elapsed: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """One step without gradients in a single fused call (a rollout step), or None to take the
        general path. Arguments as :meth:`forward`'s, checked, ``T = 1``; ``elapsed`` ``[1, B, 1]``
        in the inputs' dtype (None for cores that are not time-aware)."""
        return None

    def readout(self, states: Tensor) -> Tensor:
        """Outputs ``[T, B, O]`` from the states ``[T, B, H]`` after each step."""
        return states

    def run(self, per_step: list[Tensor], shared: tuple, state: Tensor) -> tuple[Tensor, Tensor]:
        """Advance through a stretch of steps without episode starts; returns outputs and state."""
        states = []
        for args in zip(*(x.unbind(0) for x in per_step)):
            state = self.step(state, *args, *shared)
            states.append(state)
        return self.readout(torch.stack(states)), state

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, output_size={self.output_size}, state_size={self.state_size}"
