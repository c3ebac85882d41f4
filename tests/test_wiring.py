"""Wirings: deterministic, idempotent, serialisable, drawable, and shaped like an NCP."""

import json

import numpy as np
import pytest

from policies.wiring import NCP, AutoNCP, FullyConnected, Random, Wiring

GENERATORS = {
    "fully_connected": lambda seed: FullyConnected(10, output_size=3, seed=seed),
    "random": lambda seed: Random(10, output_size=3, sparsity=0.6, seed=seed),
    "ncp": lambda seed: NCP(8, 6, 3, sensory_fanout=3, inter_fanout=2, recurrent_command_synapses=4, motor_fanin=3, seed=seed),
    "auto_ncp": lambda seed: AutoNCP(24, 4, sparsity=0.5, seed=seed),
}


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_same_seed_gives_the_same_wiring_and_another_seed_a_different_one(kind):
    first, second = GENERATORS[kind](7).build(5), GENERATORS[kind](7).build(5)
    other = GENERATORS[kind](8).build(5)
    assert np.array_equal(first.adjacency, second.adjacency)
    assert np.array_equal(first.sensory_adjacency, second.sensory_adjacency)
    same = np.array_equal(first.adjacency, other.adjacency)
    assert not (same and np.array_equal(first.sensory_adjacency, other.sensory_adjacency))


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_building_twice_keeps_the_graph_and_another_input_size_is_refused(kind):
    wiring = GENERATORS[kind](3).build(5)
    adjacency, sensory = wiring.adjacency.copy(), wiring.sensory_adjacency.copy()
    wiring.build(5)
    assert np.array_equal(wiring.adjacency, adjacency)
    assert np.array_equal(wiring.sensory_adjacency, sensory)
    with pytest.raises(ValueError, match="input_size=5"):
        wiring.build(6)


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_to_dict_from_dict_round_trip_through_json_restores_class_and_graph(kind):
    wiring = GENERATORS[kind](11).build(6)
    data = json.loads(json.dumps(wiring.to_dict()))
    restored = Wiring.from_dict(data)
    assert type(restored) is type(wiring)
    assert restored.to_dict() == wiring.to_dict()
    assert restored.layers == wiring.layers


def test_from_matrices_keeps_given_graph_types_and_round_trips():
    adjacency = np.array([[0, 1, 0], [-1, 0, 1], [0, 0, 1]])
    sensory = np.array([[1, 0, -1], [0, 1, 0]])
    wiring = Wiring.from_matrices(adjacency, sensory, output_size=1, neuron_types=["motor", "command", "inter"])
    assert wiring.input_size == 2 and wiring.synapse_count == 4 and wiring.sensory_synapse_count == 3
    assert wiring.layers == [[2], [1], [0]]
    assert Wiring.from_dict(wiring.to_dict()).to_dict() == wiring.to_dict()


def test_invalid_matrices_and_unknown_kind_raise_value_error():
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        Wiring.from_matrices(np.full((2, 2), 2), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="sensory_adjacency"):
        Wiring.from_matrices(np.zeros((2, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="unknown wiring kind 'Bogus'"):
        Wiring.from_dict({"kind": "Bogus"})


def test_ncp_synapses_only_go_to_the_next_layer_and_every_neuron_is_reached():
    wiring = NCP(10, 7, 3, sensory_fanout=4, inter_fanout=3, recurrent_command_synapses=5, motor_fanin=4, seed=1)
    wiring.build(6)
    motor, command, inter = np.arange(3), np.arange(3, 10), np.arange(10, 20)
    a, s = wiring.adjacency != 0, wiring.sensory_adjacency != 0
    assert not s[:, motor].any() and not s[:, command].any()  # inputs reach inter neurons only
    assert (s.sum(1) >= 4).all() and s[:, inter].any(0).all()  # every input fans out; every inter fed
    allowed = np.zeros_like(a)
    allowed[np.ix_(inter, command)] = allowed[np.ix_(command, command)] = allowed[np.ix_(command, motor)] = True
    assert not (a & ~allowed).any()
    assert a[np.ix_(inter, command)].any(0).all()  # every command neuron has an inter input
    assert (a[np.ix_(command, motor)].sum(0) >= 4).all()  # motor fan-in
    assert a[np.ix_(command, motor)].any(1).all()  # every command neuron drives a motor neuron
    assert wiring.layers == [list(inter), list(command), list(motor)]


def test_fully_connected_and_random_have_the_requested_density():
    full = FullyConnected(6, self_connections=False, seed=2).build(3)
    assert full.synapse_count == 30 and full.sensory_synapse_count == 18
    assert 0.5 < (full.adjacency > 0).sum() / 30 < 0.85  # about 2/3 excitatory
    sparse = Random(20, sparsity=0.75, seed=2).build(8)
    assert sparse.synapse_count == 100 and sparse.sensory_synapse_count == 40


def test_autoncp_rejects_too_many_outputs_and_bad_sparsity():
    with pytest.raises(ValueError, match="output_size"):
        AutoNCP(10, 8)
    with pytest.raises(ValueError, match="sparsity"):
        AutoNCP(10, 3, sparsity=1.0)


def test_draw_writes_a_png_of_the_layers(tmp_path):
    path = tmp_path / "wiring.png"
    AutoNCP(16, 3, seed=4).build(5).draw(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
