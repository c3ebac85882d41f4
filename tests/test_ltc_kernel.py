"""The LTC's C kernel (policies/ltc_kernel.c via policies/native.py) against its PyTorch path."""

import copy

import pytest
import torch
from torch.func import functional_call

from policies import build_core, native
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
def test_the_kernel_compiles_here_and_the_ltc_cores_use_it(dtype):
    assert native.load_kernel(KERNEL_SOURCE, dtype) is not None
    assert build_core("ncp-ltc", 3).to(dtype).kernel() is not None
    core = build_core("ltc", 3)
    core.native = False
    assert core.kernel() is None


@pytest.mark.parametrize("name,kwargs", [("ltc", {"hidden_size": 9}), ("ncp-ltc", {"units": 14, "output_size": 3})])
def test_kernel_and_pytorch_paths_give_the_same_outputs_and_gradients(name, kwargs):
    cores = _pair(name, **kwargs)
    results = []
    for core in cores:
        x, state, starts, elapsed = _batch(core)
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


def test_kernel_rollout_steps_under_inference_mode_match_the_pytorch_path():
    cores = _pair("ncp-ltc", units=12, output_size=3)
    x, state, starts, elapsed = _batch(cores[0], steps=6, batch=8)
    finals = []
    with torch.inference_mode():
        for core in cores:
            h = state
            for t in range(6):
                out, h = core(x[t : t + 1], h, starts[t : t + 1], elapsed[t : t + 1])
            finals.append((out, h))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-12, atol=1e-12)


def test_gradcheck_passes_on_the_pytorch_path():
    core = _pair("ncp-ltc", units=7, output_size=2)[1]
    names = [n for n, _ in core.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in core.parameters())
    x, state, starts, elapsed = _batch(core, steps=3, batch=2)

    def run(x, state, elapsed, *values):
        return functional_call(core, dict(zip(names, values)), (x, state, starts, elapsed))

    assert torch.autograd.gradcheck(run, (x.requires_grad_(), state.requires_grad_(), elapsed.requires_grad_(), *params))


def test_without_a_compiler_the_core_warns_once_and_runs_on_pytorch(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("LIQUID_DRONES_CACHE", str(tmp_path))
    native.load_kernel.cache_clear()
    try:
        core = build_core("ncp-ltc", 4, units=10, output_size=3)
        with pytest.warns(RuntimeWarning, match="could not compile ltc_kernel.c"):
            assert core.kernel() is None
        outputs, _ = core(torch.randn(5, 2, 4), core.initial_state(2))
        assert outputs.shape == (5, 2, 3) and torch.isfinite(outputs).all()
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
