"""The C kernels (policies/{ltc,cfc,gru}_kernel.c via policies/native.py) against the PyTorch paths
of the same cores (the CfC's: the equation step by step and the fused pass; the GRU's: torch.nn.GRU)."""

import copy

import pytest
import torch
from torch.func import functional_call

from policies import build_core, cfc, cfc_native, gru_native, native
from policies.cfc import DENSE_KERNEL_MAX_BATCH
from policies.rnn import GRU_KERNEL_MAX_BATCH
from policies.ltc import KERNEL_SOURCE


def _pair(name, **kwargs):
    """(core on the C kernel, identical core on the PyTorch path), float64."""
    torch.manual_seed(0)
    kernel_core = build_core(name, 5, **kwargs).double()
    torch_core = copy.deepcopy(kernel_core)
    torch_core.native = False
    return kernel_core, torch_core


def _batch(core, steps=20, batch=4):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(steps, batch, core.input_size, generator=generator, dtype=torch.float64)
    elapsed = 0.01 + 0.05 * torch.rand(steps, batch, generator=generator, dtype=torch.float64)
    state = 0.2 * torch.randn(batch, core.state_size, generator=generator, dtype=torch.float64)
    starts = torch.zeros(steps, batch)
    starts[steps // 3, 1] = starts[2 * steps // 3, 0] = 1.0  # episode resets mid-sequence
    return x, state, starts, elapsed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["ltc", "ncp-ltc", "cfc", "ncp-cfc", "gru"])
def test_the_kernels_compile_here_and_the_cores_use_them(name, dtype):
    core = build_core(name, 3).to(dtype)
    assert native.load_kernel(core.kernel_source, dtype) is not None
    assert core.kernel() is not None
    core.native = False
    assert core.kernel() is None


@pytest.mark.parametrize("kwargs", [{"mode": "pure"}, {"backbone_layers": 2}, {"backbone_layers": 0},
                                    {"backbone_activation": "relu"}])
def test_cfc_configurations_outside_the_kernel_run_on_pytorch(kwargs):
    assert build_core("cfc", 3, **kwargs).kernel() is None


def test_pure_wired_cfc_runs_on_pytorch():
    assert build_core("ncp-cfc", 3, mode="pure").kernel() is None


CASES = [("ltc", {"hidden_size": 9}), ("ncp-ltc", {"units": 14, "output_size": 3}),
         ("cfc", {"hidden_size": 8, "backbone_units": 12}),
         ("cfc", {"hidden_size": 7, "backbone_units": 10, "mode": "no_gate", "backbone_activation": "tanh"}),
         ("ncp-cfc", {"units": 14, "output_size": 3}),
         ("ncp-cfc", {"units": 19, "output_size": 5, "mode": "no_gate"}),
         ("gru", {"hidden_size": 6}), ("gru", {"hidden_size": 37})]


@pytest.mark.parametrize("name,kwargs,batch", [*((name, kwargs, 4) for name, kwargs in CASES),
                                               ("ltc", {"hidden_size": 9}, 9), ("ncp-ltc", {"units": 14, "output_size": 3}, 9)])
def test_kernel_and_pytorch_paths_give_the_same_outputs_and_gradients(name, kwargs, batch):
    """Batch 4: the LTC kernel's per-sample loops (the dense ltc's gather-free rows); 9: its per-synapse loops."""
    cores = _pair(name, **kwargs)
    results = []
    for core in cores:
        x, state, starts, elapsed = _batch(core, batch=batch)
        for leaf in (x, state, elapsed):
            leaf.requires_grad_()
        outputs, final = core(x, state, starts, elapsed)
        (outputs.square().sum() + final.sin().sum()).backward()
        grads = {n: p.grad for n, p in core.named_parameters()}
        results.append((outputs.detach(), final.detach(), x.grad, state.grad, elapsed.grad, grads))
    (out_k, final_k, gx_k, gs_k, ge_k, gp_k), (out_t, final_t, gx_t, gs_t, ge_t, gp_t) = results
    for kernel_value, torch_value in [(out_k, out_t), (final_k, final_t), (gx_k, gx_t), (gs_k, gs_t), (ge_k, ge_t)]:
        torch.testing.assert_close(kernel_value, torch_value, rtol=1e-10, atol=1e-12)
    for parameter in gp_t:
        torch.testing.assert_close(gp_k[parameter], gp_t[parameter], rtol=1e-10, atol=1e-12, msg=parameter)


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("timed", [True, False])
def test_kernel_rollout_steps_under_inference_mode_match_the_pytorch_path(name, kwargs, timed):
    """Rollout steps (T = 1, no gradients, episode starts among them): the LTCs' fused
    ``ltc_step``, the CfCs' kernel forward; with and without step durations."""
    cores = _pair(name, **kwargs)
    x, state, starts, elapsed = _batch(cores[0], steps=6, batch=8)
    finals = []
    with torch.inference_mode():
        for core in cores:
            h = state
            for t in range(6):
                out, h = core(x[t : t + 1], h, starts[t : t + 1], elapsed[t : t + 1] if timed else None)
                finals.append((out, h))
    torch.testing.assert_close(finals[:6], finals[6:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ltc", "ncp-ltc"])
def test_ltc_rollout_steps_take_the_fused_inference_step(name):
    core = build_core(name, 3)
    x, state = torch.randn(1, 8, 3), core.initial_state(8)
    with torch.no_grad():
        fused = core.inference_step(x, state, None, torch.full((1, 8, 1), 0.02))
        assert fused is not None and fused[0].shape == (1, 8, core.output_size) and fused[1].shape == (8, core.state_size)
        twin = copy.deepcopy(core)  # the cached pointer table (raw pointers into core's tensors) is not copied
        assert twin._table is None
        torch.testing.assert_close(twin.inference_step(x, state, None, torch.full((1, 8, 1), 0.02)), fused,
                                   rtol=0, atol=0)
        assert set(twin._table[2].tolist()).isdisjoint(core._table[2].tolist())  # its own tensors
        core.native = False
        assert core.inference_step(x, state, None, torch.full((1, 8, 1), 0.02)) is None


def _counted(monkeypatch, owner, name="apply") -> list:
    """A list that grows by one at every call of ``owner.name`` (by default an autograd function's
    ``apply``; or a function of a module)."""
    calls = []
    function = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *args: calls.append(1) or function(*args))
    return calls


def test_dense_cfc_kernel_trains_small_batches_only(monkeypatch):
    """PPO minibatches (a few sequences) train in the kernel, larger batches in PyTorch; inference
    on small batches (rollout steps) runs the kernel's forward alone, with no autograd node."""
    calls = _counted(monkeypatch, cfc_native.DenseSequence)
    forwards = _counted(monkeypatch, cfc, "dense_forward")
    core = build_core("cfc", 3, hidden_size=4, backbone_units=6)
    for batch, expected_calls in [(DENSE_KERNEL_MAX_BATCH, 1), (DENSE_KERNEL_MAX_BATCH + 1, 1)]:
        core(torch.randn(4, batch, 3), core.initial_state(batch))[0].sum().backward()
        assert len(calls) == expected_calls
    with torch.no_grad():
        core(torch.randn(1, 2, 3), core.initial_state(2))
        core(torch.randn(1, DENSE_KERNEL_MAX_BATCH + 1, 3), core.initial_state(DENSE_KERNEL_MAX_BATCH + 1))
    assert len(calls) == 1 and len(forwards) == 1


def test_wired_cfc_kernel_trains_every_batch_size_and_infers_in_its_forward(monkeypatch):
    calls = _counted(monkeypatch, cfc_native.WiredSequence)
    forwards = _counted(monkeypatch, cfc, "wired_forward")
    core = build_core("ncp-cfc", 3, units=10, output_size=2)
    for batch in (1, 64):
        core(torch.randn(4, batch, 3), core.initial_state(batch))[0].sum().backward()
    assert len(calls) == 2
    with torch.no_grad():
        core(torch.randn(1, 8, 3), core.initial_state(8))
    assert len(calls) == 2 and len(forwards) == 1


def test_gru_kernel_trains_batches_up_to_its_limit_and_rollout_steps_use_torch(monkeypatch):
    calls = _counted(monkeypatch, gru_native.GRUSequence)
    core = build_core("gru", 3, hidden_size=5)
    for batch in (1, GRU_KERNEL_MAX_BATCH, GRU_KERNEL_MAX_BATCH + 1):
        core(torch.randn(4, batch, 3), core.initial_state(batch))[0].sum().backward()
    assert len(calls) == 2
    with torch.no_grad():
        core(torch.randn(4, 2, 3), core.initial_state(2))
    assert len(calls) == 2


def test_gradcheck_passes_through_the_wired_cfc_kernel():
    core = _pair("ncp-cfc", units=9, output_size=2)[0]
    assert core.kernel() is not None
    _gradcheck(core)


@pytest.mark.parametrize("name,kwargs", [("ncp-ltc", {"units": 7, "output_size": 2}), ("cfc", {"hidden_size": 3, "backbone_units": 4})])
def test_gradcheck_passes_on_the_pytorch_path(name, kwargs):
    _gradcheck(_pair(name, **kwargs)[1])


def _gradcheck(core):
    """gradcheck of the outputs and final state on inputs, state, elapsed times and every parameter."""
    names = [n for n, _ in core.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in core.parameters())
    x, state, starts, elapsed = _batch(core, steps=3, batch=2)

    def run(x, state, elapsed, *values):
        return functional_call(core, dict(zip(names, values)), (x, state, starts, elapsed))

    assert torch.autograd.gradcheck(run, (x.requires_grad_(), state.requires_grad_(), elapsed.requires_grad_(), *params))


@pytest.mark.parametrize("name,source", [("ncp-ltc", "ltc_kernel.c"), ("cfc", "cfc_kernel.c")])
def test_without_a_compiler_the_core_warns_once_and_runs_on_pytorch(name, source, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("LIQUID_DRONES_CACHE", str(tmp_path))
    native.load_kernel.cache_clear()
    try:
        core = build_core(name, 4)
        with pytest.warns(RuntimeWarning, match=f"could not compile {source}"):
            assert core.kernel() is None
        outputs, _ = core(torch.randn(5, 2, 4), core.initial_state(2))
        outputs.sum().backward()
        assert outputs.shape == (5, 2, core.output_size) and torch.isfinite(outputs).all()
        assert not list(tmp_path.rglob("*.so"))  # nothing half-written left behind
    finally:
        native.load_kernel.cache_clear()


def test_liquid_drones_native_0_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("LIQUID_DRONES_NATIVE", "0")
    native.load_kernel.cache_clear()
    try:
        assert native.load_kernel(KERNEL_SOURCE, torch.float32) is None
    finally:
        native.load_kernel.cache_clear()


def test_kernel_arguments_must_be_contiguous():
    with pytest.raises(ValueError, match="contiguous"):
        native.pointer(torch.zeros(4, 3).t())
