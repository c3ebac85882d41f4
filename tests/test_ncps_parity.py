"""Numerical parity with the reference library ncps (torch backend), in float64.

Each test copies the same parameters (and the same wiring matrices) into ncps and into our core
and compares outputs over 50-step sequences, with ncps' own defaults (affine input/output maps,
no mixed memory, full output sequences).
"""

import numpy as np
import pytest
import torch

from policies.cfc import CfC, WiredCfC
from policies.ltc import LTC
from policies.wiring import AutoNCP, Wiring

# ncps is in the `test` extra: a missing reference must fail the suite, not skip the parity tests.
import ncps.torch as ncps_torch  # noqa: E402
import ncps.wirings as ncps_wirings  # noqa: E402

STEPS, BATCH, FEATURES = 50, 3, 5


def _our_wiring(reference) -> Wiring:
    types = [reference.get_type_of_neuron(i) for i in range(reference.units)]
    return Wiring.from_matrices(reference.adjacency_matrix, reference.sensory_adjacency_matrix, reference.output_dim, types)


def _sequence(units, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(STEPS, BATCH, FEATURES, generator=generator, dtype=torch.float64)
    state = 0.3 * torch.randn(BATCH, units, generator=generator, dtype=torch.float64)
    elapsed = 0.05 + 1.5 * torch.rand(STEPS, BATCH, generator=generator, dtype=torch.float64)
    return x, state, elapsed


def _reference_per_sample(reference, x, state, elapsed):
    """ncps squeezes the time spans to [B] and broadcasts them against the units, so per-sample
    elapsed times only work with one sample at a time."""
    runs = [reference(x[:, b : b + 1], state[b : b + 1], timespans=elapsed[:, b : b + 1]) for b in range(x.shape[1])]
    return torch.cat([out for out, _ in runs], dim=1), torch.cat([h for _, h in runs])


def _ltc_pair(reference_wiring):
    torch.manual_seed(0)
    reference = ncps_torch.LTC(FEATURES, reference_wiring, batch_first=False).double()
    ours = LTC(FEATURES, _our_wiring(reference_wiring)).double()
    cell = dict(reference.rnn_cell.named_parameters())
    (src, dst), (sensory_src, sensory_dst) = ours.synapses, ours.sensory_synapses
    with torch.no_grad():
        for name in ("gleak", "vleak", "cm", "input_w", "input_b", "output_w", "output_b"):
            getattr(ours, name).copy_(cell[name])
        for name in ("w", "sigma", "mu", "erev"):
            getattr(ours, name).copy_(cell[name][src, dst])
            getattr(ours, f"sensory_{name}").copy_(cell[f"sensory_{name}"][sensory_src, sensory_dst])
        ours.input_w.uniform_(0.5, 1.5)  # non-trivial affine maps, same in both
        ours.output_b.uniform_(-0.5, 0.5)
        cell["input_w"].copy_(ours.input_w)
        cell["output_b"].copy_(ours.output_b)
    return reference, ours


@pytest.mark.parametrize("wiring", ["fully_connected", "auto_ncp"])
def test_ltc_outputs_states_and_gradients_match_ncps(wiring):
    reference_wiring = ncps_wirings.FullyConnected(8) if wiring == "fully_connected" else ncps_wirings.AutoNCP(16, 3)
    reference, ours = _ltc_pair(reference_wiring)
    x, state, _ = _sequence(ours.state_size)
    expected, expected_state = reference(x, state)
    outputs, final = ours(x, state)
    assert outputs.shape == expected.shape == (STEPS, BATCH, reference.output_size)
    torch.testing.assert_close(outputs, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, expected_state, rtol=0, atol=1e-5)
    # Our hand-written backward pass against ncps' autograd, for a parameter of every kind.
    expected.square().sum().backward()
    outputs.square().sum().backward()
    cell = dict(reference.rnn_cell.named_parameters())
    src, dst = ours.synapses
    torch.testing.assert_close(ours.cm.grad, cell["cm"].grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours.sigma.grad, cell["sigma"].grad[src, dst], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours.w.grad, cell["w"].grad[src, dst], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours.input_w.grad, cell["input_w"].grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("wiring", ["fully_connected", "auto_ncp"])
def test_ltc_matches_ncps_with_per_step_elapsed_times(wiring):
    reference_wiring = ncps_wirings.FullyConnected(6) if wiring == "fully_connected" else ncps_wirings.AutoNCP(12, 3)
    reference, ours = _ltc_pair(reference_wiring)
    x, state, elapsed = _sequence(ours.state_size, seed=1)
    with torch.no_grad():
        expected, expected_state = _reference_per_sample(reference, x, state, elapsed)
        outputs, final = ours(x, state, None, elapsed)
    torch.testing.assert_close(outputs, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, expected_state, rtol=0, atol=1e-5)


def _copy_cfc(reference, ours):
    """ncps names: backbone.{2i} (linear layers between activations), ff1, ff2, time_a, time_b, w_tau, A."""
    mapped = {}
    for key, value in reference.rnn_cell.state_dict().items():
        if key.startswith("backbone."):
            _, index, kind = key.split(".")
            mapped[f"backbone.{int(index) // 2}.{kind}"] = value
        elif key in ("w_tau", "A"):
            mapped[f"pure.{key}"] = value
        else:
            mapped[f"heads.{key}"] = value
    ours.load_state_dict(mapped)


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@pytest.mark.parametrize("backbone_layers", [0, 1, 2])
def test_cfc_matches_ncps_in_every_mode_with_and_without_elapsed_times(mode, backbone_layers):
    torch.manual_seed(0)
    kwargs = {"mode": mode, "backbone_units": 12, "backbone_layers": backbone_layers}
    reference = ncps_torch.CfC(FEATURES, 8, batch_first=False, **kwargs).double()
    ours = CfC(FEATURES, 8, **kwargs).double()
    _copy_cfc(reference, ours)
    x, state, elapsed = _sequence(8, seed=2)
    with torch.no_grad():
        expected, expected_state = reference(x, state)
        outputs, final = ours(x, state)
        torch.testing.assert_close(outputs, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(final, expected_state, rtol=0, atol=1e-5)
        expected, expected_state = _reference_per_sample(reference, x, state, elapsed)
        outputs, final = ours(x, state, None, elapsed)
    torch.testing.assert_close(outputs, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, expected_state, rtol=0, atol=1e-5)
    # Our fused training pass (hand-written backward) against ncps' autograd.
    reference(x, state)[0].square().sum().backward()
    ours(x, state)[0].square().sum().backward()
    torch.testing.assert_close(ours.heads.ff1.weight.grad, reference.rnn_cell.ff1.weight.grad, rtol=1e-6, atol=1e-8)
    first = ours.backbone[0] if backbone_layers else ours.heads.ff1
    reference_first = reference.rnn_cell.backbone[0] if backbone_layers else reference.rnn_cell.ff1
    torch.testing.assert_close(first.bias.grad, reference_first.bias.grad, rtol=1e-6, atol=1e-8)


def test_ncps_cfc_misreads_batched_elapsed_times_where_ours_is_per_sample():
    torch.manual_seed(0)
    reference = ncps_torch.CfC(FEATURES, 8, batch_first=False).double()
    ours = CfC(FEATURES, 8).double()
    _copy_cfc(reference, ours)
    x, state, elapsed = _sequence(8, seed=3)
    x, state, elapsed = x[:, :2], state[:2], elapsed[:, :2]
    with torch.no_grad():
        with pytest.raises(RuntimeError):  # [B] time spans broadcast against the 8 units
            reference(x, state, timespans=elapsed)
        per_sample, _ = _reference_per_sample(reference, x, state, elapsed)
        outputs, _ = ours(x, state, None, elapsed)
    torch.testing.assert_close(outputs, per_sample, rtol=0, atol=1e-5)


def _wired_pair(mode):
    torch.manual_seed(0)
    reference_wiring = ncps_wirings.AutoNCP(14, 3, seed=9)
    reference = ncps_torch.CfC(FEATURES, reference_wiring, batch_first=False, mode=mode).double()
    ours = WiredCfC(FEATURES, _our_wiring(reference_wiring), mode=mode).double()
    mapped = {}
    for key, value in reference.rnn_cell.state_dict().items():
        layer, name, kind = key.split(".") if key.count(".") == 2 else (key, None, None)
        if name is None:
            continue  # ncps' own mask buffer
        target = f"pure.{layer[6:]}.{name}" if name in ("w_tau", "A") else f"layers.{layer[6:]}.{name}.{kind}"
        mapped[target] = value
    for index in range(len(ours.layer_sizes)):  # ncps keeps w_tau and A directly on the layer cell
        cell = getattr(reference.rnn_cell, f"layer_{index}")
        if mode == "pure":
            mapped[f"pure.{index}.w_tau"], mapped[f"pure.{index}.A"] = cell.w_tau.detach(), cell.A.detach()
    ours.load_state_dict(mapped)
    return reference, ours


@pytest.mark.parametrize("native", [True, False], ids=["kernel", "fused"])
@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
def test_wired_cfc_matches_ncps_once_ncps_unwired_time_gate_weights_are_zero(mode, native):
    reference, ours = _wired_pair(mode)
    ours.native = native  # the training pass: C kernel (pure mode: fused PyTorch either way) or fused PyTorch
    x, state, _ = _sequence(ours.state_size, seed=4)
    with torch.no_grad():
        for index in range(len(ours.layer_sizes)):
            cell = getattr(reference.rnn_cell, f"layer_{index}")
            if mode != "pure":
                cell.time_a.weight.mul_(cell.sparsity_mask)
                cell.time_b.weight.mul_(cell.sparsity_mask)
        expected, expected_state = reference(x, state)
        outputs, final = ours(x, state)
    assert ours.layer_sizes == reference.rnn_cell.layer_sizes
    torch.testing.assert_close(outputs, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(final, expected_state, rtol=0, atol=1e-5)
    reference(x, state)[0].square().sum().backward()
    ours(x, state)[0].square().sum().backward()
    for index in range(len(ours.layer_sizes)):
        torch.testing.assert_close(ours.layers[index].ff1.weight.grad,
                                   getattr(reference.rnn_cell, f"layer_{index}").ff1.weight.grad, rtol=1e-6, atol=1e-8)


def test_wired_cfc_differs_from_ncps_by_masking_the_time_gates_with_the_wiring():
    reference, ours = _wired_pair("default")
    x, state, _ = _sequence(ours.state_size, seed=5)
    with torch.no_grad():
        expected, _ = reference(x, state)  # ncps: dense time_a/time_b weights
        outputs, _ = ours(x, state)
    assert (outputs - expected).abs().max() > 1e-3
    # In ncps an input with no synapse onto an inter neuron still moves it (through time_a/time_b).
    mask = reference.rnn_cell.layer_0.sparsity_mask[:, :FEATURES]  # [inter, inputs]
    neuron, feature = [int(i) for i in np.argwhere(mask.numpy() == 0)[0]]
    bumped = x.clone()
    bumped[0, :, feature] += 1.0
    with torch.no_grad():
        ref_a, ref_b = reference(x[:1], state)[1], reference(bumped[:1], state)[1]
        our_a, our_b = ours(x[:1], state)[1], ours(bumped[:1], state)[1]
    assert (ref_a[:, neuron] - ref_b[:, neuron]).abs().max() > 1e-6
    assert torch.equal(our_a[:, neuron], our_b[:, neuron])


def test_auto_ncp_layer_sizes_and_fan_outs_follow_the_ncps_rule():
    for units, outputs, sparsity in [(32, 4, 0.5), (20, 5, 0.3), (64, 8, 0.8)]:
        reference = ncps_wirings.AutoNCP(units, outputs, sparsity)
        reference.build(7)
        ours = AutoNCP(units, outputs, sparsity).build(7)
        assert [len(layer) for layer in ours.layers] == [len(reference.get_neurons_of_layer(i)) for i in range(3)]
        assert ours.neuron_types == [reference.get_type_of_neuron(i) for i in range(units)]
        assert (ours.sensory_fanout, ours.inter_fanout, ours.recurrent_command_synapses, ours.motor_fanin) == (
            reference._sensory_fanout, reference._inter_fanout, reference._recurrent_command_synapses,
            reference._motor_fanin)
        assert (np.abs(ours.sensory_adjacency).sum(1) >= ours.sensory_fanout).all()
