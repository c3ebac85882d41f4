"""Synapse graphs ("wirings") for the liquid cores.

A wiring says which neuron talks to which, and with which polarity: ``+1`` excitatory,
``-1`` inhibitory, ``0`` no synapse. It has two integer matrices:

- ``adjacency`` ``[units, units]``: ``adjacency[src, dst]`` between neurons;
- ``sensory_adjacency`` ``[input_size, units]``: from input features to neurons.

Neurons are numbered motor first, then command, then inter (the convention of ``ncps``), so the
first ``output_size`` neurons are the motor neurons the cores read out.

Generators (:class:`FullyConnected`, :class:`Random`, :class:`NCP`, :class:`AutoNCP`) draw the
graph from their own ``numpy.random.default_rng(seed)`` when :meth:`Wiring.build` learns the
input size. Building is idempotent: the same arguments and seed always give the same graph, and
building twice changes nothing. Graphs made elsewhere (for example by ``ncps``) are brought in
with :meth:`Wiring.from_matrices`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NEURON_TYPES = ("inter", "command", "motor")  # layer order, from sensory side to outputs
EXCITATORY_COLOUR, INHIBITORY_COLOUR = "tab:green", "tab:red"
NEURON_COLOURS = {"sensory": "tab:olive", "inter": "tab:blue", "command": "tab:purple", "motor": "tab:orange"}


class Wiring:
    """A built synapse graph; base class of the generators.

    :param units: number of neurons (the state size of an LTC core)
    :param output_size: number of motor neurons (ids ``0 .. output_size-1``); default ``units``
    """

    def __init__(self, units: int, output_size: int | None = None):
        output_size = units if output_size is None else output_size
        if units < 1 or not 1 <= output_size <= units:
            raise ValueError(f"need units >= 1 and 1 <= output_size <= units, got {units} and {output_size}")
        self.units = int(units)
        self.output_size = int(output_size)
        self.input_size: int | None = None
        self.adjacency = np.zeros((self.units, self.units), dtype=np.int8)
        self.sensory_adjacency: np.ndarray | None = None
        self._types = ["motor" if i < self.output_size else "inter" for i in range(self.units)]

    # ----------------------------------------------------------------- construction
    def config(self) -> dict[str, Any]:
        """Constructor arguments that regenerate this wiring (empty for explicit matrices)."""
        return {}

    def _generate(self, input_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("this wiring was given explicit matrices; it cannot be rebuilt for another input size")

    def build(self, input_size: int) -> Wiring:
        """Draw the graph for ``input_size`` input features (no-op if already built for it)."""
        if self.input_size is not None:
            if self.input_size != input_size:
                raise ValueError(f"wiring was built for input_size={self.input_size}, not {input_size}")
            return self
        if input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        adjacency, sensory = self._generate(int(input_size), np.random.default_rng(self.config().get("seed")))
        self._set_matrices(adjacency, sensory)
        return self

    def _set_matrices(self, adjacency: Any, sensory_adjacency: Any) -> None:
        adjacency = np.asarray(adjacency)
        sensory = np.asarray(sensory_adjacency)
        if adjacency.shape != (self.units, self.units):
            raise ValueError(f"adjacency must be [{self.units}, {self.units}], got {list(adjacency.shape)}")
        if sensory.ndim != 2 or sensory.shape[1] != self.units or sensory.shape[0] < 1:
            raise ValueError(f"sensory_adjacency must be [input_size, {self.units}], got {list(sensory.shape)}")
        for name, matrix in (("adjacency", adjacency), ("sensory_adjacency", sensory)):
            if not np.isin(matrix, (-1, 0, 1)).all():
                raise ValueError(f"{name} entries must be -1, 0 or +1")
        self.adjacency = adjacency.astype(np.int8)
        self.sensory_adjacency = sensory.astype(np.int8)
        self.input_size = int(sensory.shape[0])

    @classmethod
    def from_matrices(
        cls,
        adjacency: Any,
        sensory_adjacency: Any,
        output_size: int | None = None,
        neuron_types: list[str] | None = None,
    ) -> Wiring:
        """A built wiring with the given polarity matrices (e.g. copied from an ``ncps`` wiring).

        :param neuron_types: per neuron ``"motor"``, ``"command"`` or ``"inter"``; default: the
            first ``output_size`` neurons are motor, the rest inter
        """
        adjacency = np.asarray(adjacency)
        wiring = Wiring(adjacency.shape[0], output_size)
        wiring._set_matrices(adjacency, sensory_adjacency)
        if neuron_types is not None:
            if len(neuron_types) != wiring.units or not set(neuron_types) <= set(NEURON_TYPES):
                raise ValueError(f"neuron_types must list one of {NEURON_TYPES} per neuron ({wiring.units})")
            wiring._types = list(neuron_types)
        return wiring

    # ----------------------------------------------------------------- queries
    @property
    def is_built(self) -> bool:
        return self.input_size is not None

    def _require_built(self) -> None:
        if not self.is_built:
            raise ValueError("wiring is not built yet: call build(input_size) first")

    @property
    def neuron_types(self) -> list[str]:
        """Per neuron ``"motor"``, ``"command"`` or ``"inter"``."""
        return list(self._types)

    @property
    def layers(self) -> list[list[int]]:
        """Neuron ids grouped by type, in signal order inter -> command -> motor (empty groups dropped)."""
        groups = [[i for i, kind in enumerate(self._types) if kind == layer] for layer in NEURON_TYPES]
        return [group for group in groups if group]

    @property
    def synapse_count(self) -> int:
        return int(np.count_nonzero(self.adjacency))

    @property
    def sensory_synapse_count(self) -> int:
        self._require_built()
        return int(np.count_nonzero(self.sensory_adjacency))

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python description (JSON/YAML safe) holding the exact graph."""
        self._require_built()
        return {
            "kind": type(self).__name__,
            "config": self.config(),
            "output_size": self.output_size,
            "neuron_types": self.neuron_types,
            "adjacency": self.adjacency.tolist(),
            "sensory_adjacency": self.sensory_adjacency.tolist(),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Wiring:
        """Inverse of :meth:`to_dict`; the stored matrices are used as they are (no redraw)."""
        kinds = {cls.__name__: cls for cls in (Wiring, FullyConnected, Random, NCP, AutoNCP)}
        if data.get("kind") not in kinds:
            raise ValueError(f"unknown wiring kind {data.get('kind')!r}; allowed: {sorted(kinds)}")
        if data["kind"] == "Wiring":
            return Wiring.from_matrices(
                data["adjacency"], data["sensory_adjacency"], data["output_size"], data["neuron_types"]
            )
        wiring = kinds[data["kind"]](**data["config"])
        wiring._set_matrices(data["adjacency"], data["sensory_adjacency"])
        return wiring

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        built = f", input_size={self.input_size}, synapses={self.synapse_count}" if self.is_built else ""
        return f"{type(self).__name__}({args}{built})"

    # ----------------------------------------------------------------- drawing
    def draw(self, path: str, title: str | None = None) -> None:
        """Write a PNG: sensory -> inter -> command -> motor columns, synapses coloured by polarity
        (green excitatory, red inhibitory); synapses within a column are drawn as arcs."""
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Circle, FancyArrowPatch

        self._require_built()
        columns = [("sensory", list(range(self.input_size)))]
        columns += [(self._types[layer[0]], layer) for layer in self.layers]
        position: dict[tuple[str, int], tuple[float, float]] = {}
        tallest = max(len(ids) for _, ids in columns)
        for x, (kind, ids) in enumerate(columns):
            for row, neuron in enumerate(ids):
                y = (len(ids) - 1) / 2.0 - row
                position[("sensory" if kind == "sensory" else "neuron", neuron)] = (2.0 * x, y)

        fig = Figure(figsize=(2.2 * len(columns) + 1.5, 0.32 * tallest + 1.8))
        ax = fig.add_subplot()

        def connect(a: tuple[float, float], b: tuple[float, float], polarity: int) -> None:
            colour = EXCITATORY_COLOUR if polarity > 0 else INHIBITORY_COLOUR
            if a == b:  # self-synapse: a small ring beside the neuron
                ax.add_patch(Circle((a[0] + 0.22, a[1]), 0.16, fill=False, color=colour, lw=0.8, alpha=0.7))
                return
            style = "arc3,rad=0.5" if a[0] == b[0] else "arc3,rad=0.0"
            ax.add_patch(
                FancyArrowPatch(a, b, connectionstyle=style, arrowstyle="-|>", mutation_scale=6,
                                color=colour, lw=0.6, alpha=0.55, shrinkA=4, shrinkB=4)
            )

        for src, dst in zip(*np.nonzero(self.sensory_adjacency)):
            connect(position[("sensory", src)], position[("neuron", dst)], self.sensory_adjacency[src, dst])
        for src, dst in zip(*np.nonzero(self.adjacency)):
            connect(position[("neuron", src)], position[("neuron", dst)], self.adjacency[src, dst])
        for (kind, neuron), (x, y) in position.items():
            label_kind = "sensory" if kind == "sensory" else self._types[neuron]
            ax.scatter([x], [y], s=90, color=NEURON_COLOURS[label_kind], zorder=3, edgecolors="black", lw=0.5)
        for x, (kind, ids) in enumerate(columns):
            ax.text(2.0 * x, (tallest - 1) / 2.0 + 0.9, f"{kind}\n({len(ids)})", ha="center", va="bottom")
        handles = [
            Line2D([], [], color=EXCITATORY_COLOUR, label="excitatory"),
            Line2D([], [], color=INHIBITORY_COLOUR, label="inhibitory"),
        ]
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
        ax.set_xlim(-1.0, 2.0 * (len(columns) - 1) + 1.0)
        ax.set_ylim(-(tallest - 1) / 2.0 - 1.0, (tallest - 1) / 2.0 + 2.0)
        ax.set_axis_off()
        ax.set_title(title or repr(self), fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def as_wiring(wiring: Wiring | dict[str, Any] | None) -> Wiring | None:
    """A :class:`Wiring`, or one rebuilt from its :meth:`Wiring.to_dict` (``None`` passes through)."""
    return Wiring.from_dict(wiring) if isinstance(wiring, dict) else wiring


def _polarities(rng: np.random.Generator, count: int, excitatory_fraction: float) -> np.ndarray:
    return np.where(rng.random(count) < excitatory_fraction, 1, -1).astype(np.int8)


class FullyConnected(Wiring):
    """Every input feeds every neuron and every neuron feeds every neuron.

    Polarities are excitatory with probability 2/3 (as in ``ncps``).

    :param units: number of neurons
    :param output_size: motor neurons read out by the core (default ``units``)
    :param self_connections: keep the ``i -> i`` synapses
    :param seed: seed of the polarity draw
    """

    def __init__(self, units: int, output_size: int | None = None, self_connections: bool = True, seed: int = 1111):
        super().__init__(units, output_size)
        self.self_connections = bool(self_connections)
        self.seed = int(seed)

    def config(self) -> dict[str, Any]:
        return {"units": self.units, "output_size": self.output_size,
                "self_connections": self.self_connections, "seed": self.seed}

    def _generate(self, input_size, rng):
        adjacency = _polarities(rng, self.units * self.units, 2 / 3).reshape(self.units, self.units)
        if not self.self_connections:
            np.fill_diagonal(adjacency, 0)
        sensory = _polarities(rng, input_size * self.units, 2 / 3).reshape(input_size, self.units)
        return adjacency, sensory


class Random(Wiring):
    """A random subset of all possible synapses, both among neurons and from the inputs.

    :param sparsity: fraction of possible synapses left out, in ``[0, 1)``
    """

    def __init__(self, units: int, output_size: int | None = None, sparsity: float = 0.5, seed: int = 1111):
        super().__init__(units, output_size)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = float(sparsity)
        self.seed = int(seed)

    def config(self) -> dict[str, Any]:
        return {"units": self.units, "output_size": self.output_size, "sparsity": self.sparsity, "seed": self.seed}

    def _draw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        matrix = np.zeros(rows * self.units, dtype=np.int8)
        kept = int(round(rows * self.units * (1.0 - self.sparsity)))
        chosen = rng.choice(rows * self.units, size=kept, replace=False)
        matrix[chosen] = _polarities(rng, kept, 2 / 3)
        return matrix.reshape(rows, self.units)

    def _generate(self, input_size, rng):
        return self._draw(rng, self.units), self._draw(rng, input_size)


class NCP(Wiring):
    """Neural circuit policy: four layers sensory -> inter -> command -> motor (Lechner et al. 2020).

    :param inter_neurons: neurons of layer 2
    :param command_neurons: neurons of layer 3 (recurrently connected)
    :param motor_neurons: neurons of layer 4, the outputs
    :param sensory_fanout: inter neurons each input feeds
    :param inter_fanout: command neurons each inter neuron feeds
    :param recurrent_command_synapses: random command -> command synapses
    :param motor_fanin: command neurons feeding each motor neuron
    :param seed: seed of the graph draw

    Each layer is wired by fan-out (or fan-in for motor neurons) to distinct random targets with
    random polarity (50 % excitatory); neurons a layer left unconnected are then given the mean
    fan-in (at least one synapse), so every neuron lies on a path from the inputs to the motors.
    """

    def __init__(
        self,
        inter_neurons: int,
        command_neurons: int,
        motor_neurons: int,
        sensory_fanout: int,
        inter_fanout: int,
        recurrent_command_synapses: int,
        motor_fanin: int,
        seed: int = 22222,
    ):
        super().__init__(inter_neurons + command_neurons + motor_neurons, motor_neurons)
        checks = [
            ("sensory_fanout", sensory_fanout, "inter_neurons", inter_neurons),
            ("inter_fanout", inter_fanout, "command_neurons", command_neurons),
            ("motor_fanin", motor_fanin, "command_neurons", command_neurons),
        ]
        for name, value, limit_name, limit in checks:
            if not 1 <= value <= limit:
                raise ValueError(f"{name}={value} must be between 1 and {limit_name}={limit}")
        if min(inter_neurons, command_neurons, motor_neurons) < 1 or recurrent_command_synapses < 0:
            raise ValueError("NCP needs at least one neuron per layer and recurrent_command_synapses >= 0")
        self.inter_neurons, self.command_neurons, self.motor_neurons = inter_neurons, command_neurons, motor_neurons
        self.sensory_fanout, self.inter_fanout = sensory_fanout, inter_fanout
        self.recurrent_command_synapses, self.motor_fanin = recurrent_command_synapses, motor_fanin
        self.seed = int(seed)
        self._types = ["motor"] * motor_neurons + ["command"] * command_neurons + ["inter"] * inter_neurons

    def config(self) -> dict[str, Any]:
        return {
            "inter_neurons": self.inter_neurons, "command_neurons": self.command_neurons,
            "motor_neurons": self.motor_neurons, "sensory_fanout": self.sensory_fanout,
            "inter_fanout": self.inter_fanout, "recurrent_command_synapses": self.recurrent_command_synapses,
            "motor_fanin": self.motor_fanin, "seed": self.seed,
        }

    @staticmethod
    def _fan(rng, matrix, sources, targets, fanout):
        """Connect every source to ``fanout`` distinct targets; then every target left without input
        to the mean fan-in (>= 1) of distinct sources."""
        for src in sources:
            for dst in rng.choice(targets, size=fanout, replace=False):
                matrix[src, dst] = rng.choice((-1, 1))
        fanin = int(np.clip(len(sources) * fanout // len(targets), 1, len(sources)))
        for dst in targets:
            if not matrix[sources, dst].any():
                for src in rng.choice(sources, size=fanin, replace=False):
                    matrix[src, dst] = rng.choice((-1, 1))

    def _generate(self, input_size, rng):
        motor = np.arange(self.motor_neurons)
        command = np.arange(self.command_neurons) + self.motor_neurons
        inter = np.arange(self.inter_neurons) + self.motor_neurons + self.command_neurons
        sensory = np.zeros((input_size, self.units), dtype=np.int8)
        adjacency = np.zeros((self.units, self.units), dtype=np.int8)
        self._fan(rng, sensory, np.arange(input_size), inter, self.sensory_fanout)
        self._fan(rng, adjacency, inter, command, self.inter_fanout)
        for _ in range(self.recurrent_command_synapses):
            src, dst = rng.choice(command, size=2)
            adjacency[src, dst] = rng.choice((-1, 1))
        # Motor neurons are wired by fan-in: transpose so that "sources" are the motor neurons.
        to_motor = np.zeros((self.units, self.units), dtype=np.int8)
        self._fan(rng, to_motor, motor, command, self.motor_fanin)
        adjacency[np.ix_(command, motor)] = to_motor[np.ix_(motor, command)].T
        return adjacency, sensory


class AutoNCP(NCP):
    """An :class:`NCP` sized from the total number of neurons and a sparsity level.

    40 % of the non-motor neurons become command neurons, the rest inter neurons; fan-outs are
    ``(1 - sparsity)`` times the next layer's size and the command layer gets
    ``2 (1 - sparsity) * command`` recurrent synapses (the sizing rule of ``ncps.wirings.AutoNCP``).

    :param units: total neurons (state size)
    :param output_size: motor neurons; must be < ``units - 2``
    :param sparsity: in ``[0, 1)``; 0.5 is a good default
    :param seed: seed of the graph draw
    """

    def __init__(self, units: int, output_size: int, sparsity: float = 0.5, seed: int = 22222):
        if not 1 <= output_size < units - 2:
            raise ValueError(f"output_size must be between 1 and units - 3 (units={units}), got {output_size}")
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        density = 1.0 - sparsity
        command = max(int(0.4 * (units - output_size)), 1)
        inter = units - output_size - command
        super().__init__(
            inter_neurons=inter,
            command_neurons=command,
            motor_neurons=output_size,
            sensory_fanout=max(int(inter * density), 1),
            inter_fanout=max(int(command * density), 1),
            recurrent_command_synapses=max(int(command * density * 2), 1),
            motor_fanin=max(int(command * density), 1),
            seed=seed,
        )
        self.sparsity = float(sparsity)

    def config(self) -> dict[str, Any]:
        return {"units": self.units, "output_size": self.output_size, "sparsity": self.sparsity, "seed": self.seed}
