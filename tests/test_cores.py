"""Recurrent cores: one interface, resets, elapsed time, masks, stability, gradients."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from policies import CORE_NAMES, RecurrentCore, build_core
from policies.cfc import WiredCfC
from policies.ltc import LTC
from policies.wiring import AutoNCP

SMALL = {
    "mlp": {},
    "lstm": {"hidden_size": 6},
    "gru": {"hidden_size": 6},
    "cfc": {"hidden_size": 6, "backbone_units": 8},
    "ltc": {"hidden_size": 5},
    "ncp-cfc": {"units": 10, "output_size": 3},
    "ncp-ltc": {"units": 10, "output_size": 3},
}
TIME_AWARE = {"cfc", "ltc", "ncp-cfc", "ncp-ltc"}


def _core(name, input_size=4, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    return build_core(name, input_size, **{**SMALL[name], **kwargs}).to(dtype)


def _inputs(core, steps=12, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, core.input_size, generator=generator, dtype=torch.float64)
    elapsed = 0.5 + torch.rand(steps, batch, generator=generator, dtype=torch.float64)
    return x, elapsed


@pytest.mark.parametrize("name", CORE_NAMES)
def test_every_core_builds_with_defaults_and_maps_a_sequence_to_outputs_and_state(name):
    core = build_core(name, 7)
    assert isinstance(core, RecurrentCore) and core.input_size == 7
    assert core.time_aware == (name in TIME_AWARE)
    state = core.initial_state(5)
    assert state.shape == (5, core.state_size) and not state.any()
    outputs, final = core(torch.randn(9, 5, 7), state, torch.zeros(9, 5), torch.full((9, 5), 0.02))
    assert outputs.shape == (9, 5, core.output_size) and final.shape == (5, core.state_size)
    assert torch.isfinite(outputs).all() and torch.isfinite(final).all()


def test_mlp_core_is_the_identity_with_an_empty_state():
    core = build_core("mlp", 3)
    x = torch.randn(4, 2, 3)
    outputs, state = core(x, core.initial_state(2), torch.ones(4, 2))
    assert core.state_size == 0 and state.shape == (2, 0) and torch.equal(outputs, x)


def test_unknown_core_name_raises_value_error_listing_the_allowed_names():
    with pytest.raises(ValueError, match="unknown core 'transformer'.*mlp, lstm, gru, cfc, ltc, ncp-cfc, ncp-ltc"):
        build_core("transformer", 4)


@pytest.mark.parametrize("name,bad", [("cfc", "units"), ("lstm", "mode"), ("ncp-ltc", "hidden_size"), ("mlp", "hidden_size")])
def test_unknown_keyword_raises_value_error_naming_it_and_the_allowed_ones(name, bad):
    with pytest.raises(ValueError, match=f"unknown argument\\(s\\) \\['{bad}'\\] for core '{name}'; allowed"):
        build_core(name, 4, **{bad: 3})


def test_bad_option_values_raise_value_error_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown CfC mode 'fast'; allowed: default, no_gate, pure"):
        build_core("cfc", 4, mode="fast")
    with pytest.raises(ValueError, match="backbone_activation 'swish'"):
        build_core("cfc", 4, backbone_activation="swish")


def test_wrong_shapes_raise_value_error_with_the_expected_shape():
    core = build_core("gru", 4, hidden_size=3)
    with pytest.raises(ValueError, match=r"inputs must be \[T>=1, B, 4\]"):
        core(torch.zeros(2, 3, 5), core.initial_state(3))
    with pytest.raises(ValueError, match=r"state must be \[3, 3\]"):
        core(torch.zeros(2, 3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"episode_starts must be \[2, 3\]"):
        core(torch.zeros(2, 3, 4), core.initial_state(3), torch.zeros(2))


@pytest.mark.parametrize("name", CORE_NAMES)
@pytest.mark.parametrize("grad", [False, True])
def test_episode_start_mid_sequence_gives_exactly_the_output_of_a_fresh_sequence(name, grad):
    core = _core(name)
    x, elapsed = _inputs(core)
    state = torch.randn(3, core.state_size, dtype=torch.float64)
    starts = torch.zeros(12, 3)
    starts[5, 1] = 1.0  # sample 1 starts a new episode at step 5
    with torch.set_grad_enabled(grad):
        outputs, _ = core(x, state, starts, elapsed)
        fresh, _ = core(x[5:, 1:2], core.initial_state(1), None, elapsed[5:, 1:2])
        untouched, _ = core(x, state, None, elapsed)
    torch.testing.assert_close(outputs[5:, 1:2], fresh, rtol=0, atol=1e-12)
    torch.testing.assert_close(outputs[:, [0, 2]], untouched[:, [0, 2]], rtol=0, atol=1e-12)
    torch.testing.assert_close(outputs[:5], untouched[:5], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", CORE_NAMES)
def test_running_step_by_step_equals_running_the_whole_sequence(name):
    core = _core(name)
    x, elapsed = _inputs(core, steps=6)
    whole, final = core(x, core.initial_state(3), None, elapsed)
    state, pieces = core.initial_state(3), []
    with torch.no_grad():  # the rollout path (single-step kernels, cached weights)
        for t in range(6):
            out, state = core(x[t : t + 1], state, None, elapsed[t : t + 1])
            pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces), whole.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(state, final.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(TIME_AWARE))
def test_time_aware_cores_use_elapsed_time_and_default_to_one_second(name):
    core = _core(name)
    x, elapsed = _inputs(core, steps=4)
    state = core.initial_state(3)
    default, _ = core(x, state)
    ones, _ = core(x, state, None, torch.ones(4, 3, dtype=torch.float64))
    other, _ = core(x, state, None, elapsed)
    torch.testing.assert_close(default, ones, rtol=0, atol=0)
    assert (default - other).abs().max() > 1e-3


def test_cores_that_are_not_time_aware_ignore_elapsed_time():
    core = _core("gru")
    x, elapsed = _inputs(core, steps=4)
    torch.testing.assert_close(core(x, core.initial_state(3))[0], core(x, core.initial_state(3), None, elapsed)[0])


@pytest.mark.parametrize("name", ["cfc", "ncp-cfc", "ltc"])
def test_per_sample_elapsed_as_t_b_or_t_b_1_matches_running_each_sample_alone(name):
    core = _core(name)
    x, elapsed = _inputs(core, steps=5, batch=4)
    state = core.initial_state(4)
    flat, _ = core(x, state, None, elapsed)
    column, _ = core(x, state, None, elapsed.unsqueeze(-1))
    torch.testing.assert_close(flat, column, rtol=0, atol=0)
    for b in range(4):
        alone, _ = core(x[:, b : b + 1], state[b : b + 1], None, elapsed[:, b : b + 1])
        torch.testing.assert_close(flat[:, b : b + 1], alone, rtol=1e-12, atol=1e-12)


def test_lstm_and_gru_cores_compute_torch_lstm_and_gru_with_the_state_packed_in_one_tensor():
    lstm, gru = _core("lstm"), _core("gru")
    x, _ = _inputs(lstm)
    state = torch.randn(3, 12, dtype=torch.float64)
    outputs, final = lstm(x, state)
    expected, (h, c) = lstm.lstm(x, (state[None, :, :6].contiguous(), state[None, :, 6:].contiguous()))
    torch.testing.assert_close(outputs, expected)
    torch.testing.assert_close(final, torch.cat([h[0], c[0]], 1))
    outputs, final = gru(x, state[:, :6])
    expected, h = gru.gru(x, state[None, :, :6].contiguous())
    torch.testing.assert_close(outputs, expected)
    torch.testing.assert_close(final, h[0])


def test_ltc_state_stays_bounded_over_10000_steps_of_random_input():
    core = build_core("ncp-ltc", 6, units=16, output_size=4, seed=3)
    x = 3.0 * torch.randn(10_000, 4, 6)
    elapsed = torch.rand(10_000, 4) * 0.5 + 1e-3
    with torch.no_grad():
        _, state = core(x[:1], core.initial_state(4), None, elapsed[:1])
        peak = state.abs().max()
        for chunk in range(1, 10_000, 1000):
            states, state = core.run(*core.precompute(x[chunk : chunk + 1000], elapsed[chunk : chunk + 1000, :, None]), state)
            peak = torch.maximum(peak, states.abs().max())
    # Each unfold is a positive weighted mean of v, vleak and the reversal potentials (|erev| = 1).
    bound = max(1.0, core.vleak.abs().max().item())
    assert torch.isfinite(state).all() and peak <= bound + 1e-5


def test_ltc_zero_elapsed_time_leaves_the_state_finite_and_almost_unchanged():
    core = build_core("ncp-ltc", 4, units=10, output_size=3)
    state = 0.3 * torch.randn(2, 10)
    _, after = core(torch.randn(1, 2, 4), state, None, torch.zeros(1, 2))
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, state, atol=1e-4, rtol=0)


def _adam_steps(core, steps=5):
    optimiser = torch.optim.AdamW(core.parameters(), lr=0.05, weight_decay=0.1)
    x, elapsed = _inputs(core, steps=8)
    for _ in range(steps):
        optimiser.zero_grad()
        outputs, _ = core(x.to(core._anchor.dtype), core.initial_state(3), None, elapsed.to(core._anchor.dtype))
        outputs.pow(2).sum().backward()
        optimiser.step()


def test_masked_ltc_synapses_have_no_effect_after_optimiser_steps():
    torch.manual_seed(0)
    wiring = AutoNCP(10, 3, seed=5)
    core = LTC(4, wiring, ode_unfolds=1).double()
    _adam_steps(core)
    # One unfold from a random state: dv'_j/dv_i may be non-zero only on the diagonal and on synapses.
    state = 0.5 * torch.randn(1, 10, dtype=torch.float64)
    x = torch.randn(1, 1, 4, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: core(x, v)[1], state)[0, :, 0, :]  # [dst, src]
    allowed = (wiring.adjacency.T != 0) | np.eye(10, dtype=bool)
    assert (jacobian.numpy()[~allowed] == 0).all()
    assert (jacobian.numpy()[wiring.adjacency.T != 0] != 0).mean() > 0.9
    # Dependence on the inputs exists only through sensory synapses.
    input_jacobian = torch.autograd.functional.jacobian(lambda u: core(u, state)[1], x)[0, :, 0, 0, :]
    assert (input_jacobian.numpy()[wiring.sensory_adjacency.T == 0] == 0).all()


def test_masked_wired_cfc_weights_have_no_effect_and_get_no_gradient_after_optimiser_steps():
    torch.manual_seed(0)
    wiring = AutoNCP(12, 3, seed=6)
    core = WiredCfC(5, wiring).double()
    _adam_steps(core)
    x, elapsed = _inputs(core, steps=4)
    before, _ = core(x, core.initial_state(3), None, elapsed)
    before.sum().backward()
    with torch.no_grad():
        for index, heads in enumerate(core.layers):
            mask = getattr(core, f"_mask{index}")
            for head in heads.values():
                assert (head.weight.grad[mask == 0] == 0).all()
                head.weight[mask == 0] = 100.0 * torch.randn(int((mask == 0).sum()), dtype=torch.float64)
    after, _ = core(x, core.initial_state(3), None, elapsed)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_wired_cfc_neurons_depend_only_on_inputs_reachable_through_the_wiring():
    wiring = AutoNCP(12, 3, seed=7)
    core = WiredCfC(5, wiring).double()
    x = torch.randn(1, 1, 5, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda u: core(u, core.initial_state(1))[1], x)[0, :, 0, 0, :]
    inter, command, motor = wiring.layers
    reach = {n: wiring.sensory_adjacency[:, n] != 0 for n in inter}  # one step from rest
    for layer in (command, motor):
        for n in layer:
            sources = [m for m in range(wiring.units) if wiring.adjacency[m, n] != 0 and m in reach]
            reach[n] = np.any([reach[m] for m in sources], axis=0) if sources else np.zeros(5, bool)
    order = inter + command + motor  # state layout of the wired CfC
    for row, neuron in enumerate(order):
        assert (jacobian[row].numpy()[~reach[neuron]] == 0).all()


def test_cached_rollout_weights_follow_parameter_updates():
    core = _core("ncp-cfc")
    x, elapsed = _inputs(core, steps=1)
    with torch.no_grad():
        first, _ = core(x, core.initial_state(3), None, elapsed)
    _adam_steps(core, steps=1)
    with torch.no_grad():
        cached, _ = core(x, core.initial_state(3), None, elapsed)
        core.forget_derived()  # the same rollout path, its weights derived afresh
        fresh, _ = core(x, core.initial_state(3), None, elapsed)
    assert not torch.equal(first, cached)
    torch.testing.assert_close(cached, fresh, rtol=0, atol=0)


def test_initial_state_follows_the_module_dtype():
    core = build_core("mlp", 3).double()
    assert core.initial_state(2).dtype == torch.float64
    assert build_core("ltc", 3).initial_state(2).dtype == torch.float32


@pytest.mark.parametrize(
    "name,kwargs",
    [("ltc", {"hidden_size": 3}), ("ncp-ltc", {}), ("cfc", {"mode": "default"}), ("cfc", {"mode": "no_gate"}),
     ("cfc", {"mode": "pure", "backbone_layers": 2}), ("cfc", {"backbone_layers": 0}), ("ncp-cfc", {}),
     ("ncp-cfc", {"mode": "pure"}), ("ncp-cfc", {"mode": "no_gate"}), ("lstm", {}), ("gru", {})]
    + [("cfc", {"backbone_activation": name, "backbone_layers": 2}) for name in ("tanh", "relu", "silu", "gelu")],
)
def test_gradcheck_passes_for_inputs_state_elapsed_and_parameters(name, kwargs):
    core = _core(name, input_size=3, **({"units": 7, "output_size": 2} if name.startswith("ncp") else {}), **kwargs)
    names = [n for n, _ in core.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in core.parameters())
    x, elapsed = _inputs(core, steps=3, batch=2)
    state = (0.3 * torch.randn(2, core.state_size, dtype=torch.float64)).requires_grad_()
    starts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])

    def run(x, state, elapsed, *values):
        return functional_call(core, dict(zip(names, values)), (x, state, starts, elapsed))

    assert torch.autograd.gradcheck(run, (x.requires_grad_(), state, elapsed.requires_grad_(), *params))


@pytest.mark.parametrize("name", ["ncp-cfc", "ncp-ltc"])
def test_ncp_cores_take_a_given_wiring_or_its_dict(name):
    wiring = AutoNCP(12, 3, seed=42).build(4)
    from_object = build_core(name, 4, wiring=wiring)
    from_dict = build_core(name, 4, wiring=wiring.to_dict())
    assert from_object.wiring.to_dict() == from_dict.wiring.to_dict() == wiring.to_dict()
    assert from_object.output_size == 3 and from_object.state_size == 12


def test_cfc_backbone_dropout_applies_in_training_only():
    core = build_core("cfc", 4, hidden_size=6, backbone_units=16, backbone_dropout=0.5)
    x = torch.randn(5, 3, 4)
    torch.manual_seed(1)
    first, _ = core(x, core.initial_state(3))
    second, _ = core(x, core.initial_state(3))
    assert not torch.equal(first, second)
    core.eval()
    torch.testing.assert_close(core(x, core.initial_state(3))[0], core(x, core.initial_state(3))[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["cfc", "ncp-cfc"])
def test_cfc_training_pass_gives_the_same_result_for_the_strided_views_the_policy_passes(name):
    # CorePolicy hands over sequence-major features transposed to [T, B, F + 1] and splits the
    # elapsed time off their last column: neither view is contiguous.
    core = _core(name)
    features = torch.randn(3, 7, core.input_size + 1, dtype=torch.float64)  # [B, T, F + 1]
    features[..., -1] = 0.5 + features[..., -1].abs()
    strided = features.transpose(0, 1).requires_grad_()
    copied = strided.detach().clone().requires_grad_()
    results = []
    for x in (strided, copied):
        core.zero_grad()
        outputs, final = core(x[..., :-1], core.initial_state(3), None, x[..., -1])
        (outputs.square().sum() + final.sum()).backward()
        results.append([outputs, x.grad, *(p.grad for p in core.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
