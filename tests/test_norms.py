"""The norm zoo against independent computations: torch's own layers or the papers' formulas.

Every comparison covers the forward pass and the gradients of the input and of the parameters,
in float64 so the tolerances can be tight.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from normbench.errors import UserError
from normbench.norms import (
    TLU,
    BatchNorm2d,
    BatchRenorm2d,
    FilterResponseNorm2d,
    SyncBatchNorm2d,
    WSConv2d,
    build_norm,
    convert_to_ws,
    get_norm_spec,
    list_norms,
    running_stats_of,
    set_emulated_gpus,
    sync_running_stats,
)
from normbench.norms.ws import standardize_weight

torch.set_num_threads(min(2, torch.get_num_threads()))

DT = torch.float64
ALL_NORMS = [
    "bn", "brn", "dbn", "evonorm_b0", "evonorm_s0", "frn", "frozen_bn", "gn", "in", "iternorm",
    "ln", "syncbn",
]  # fmt: skip


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def randomize_affine(*modules: nn.Module, seed: int = 1) -> None:
    """Give every module the same non-trivial gamma and beta (identity affine hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    c = modules[0].weight.numel()
    weight, bias = 1 + 0.5 * torch.randn(c, generator=g), 0.5 * torch.randn(c, generator=g)
    with torch.no_grad():
        for m in modules:
            m.weight.copy_(weight)
            m.bias.copy_(bias)


def run(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    """Forward, backward of sum(out * upstream); returns (out, input grad, {param: grad})."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    (out * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad()
    return out.detach(), x.grad, grads


def inputs(shape=(12, 4, 5, 3), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(*shape, generator=g, dtype=DT) + 0.7
    return x, torch.randn(*shape, generator=g, dtype=DT)


# ----------------------------------------------------------------------------- bn


def test_bn_without_chunks_is_nn_batchnorm_in_train_and_eval():
    ours, ref = BatchNorm2d(4).to(DT), nn.BatchNorm2d(4).to(DT)
    randomize_affine(ours, ref)
    for step in range(2):
        x, up = inputs(seed=step)
        out, gx, gp = run(ours, x, up)
        ref_out, ref_gx, ref_gp = run(ref, x, up)
        assert torch.equal(out, ref_out) and torch.equal(gx, ref_gx)
        assert all(torch.equal(gp[k], ref_gp[k]) for k in ("weight", "bias"))
    assert torch.equal(ours.running_mean, ref.running_mean)
    assert torch.equal(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == 2
    ours.eval(), ref.eval()
    x, up = inputs(seed=5)
    out, gx, _ = run(ours, x, up)
    ref_out, ref_gx, _ = run(ref, x, up)
    assert torch.equal(out, ref_out) and torch.equal(gx, ref_gx)


def test_bn_state_dict_is_nn_batchnorm_compatible():
    ref = nn.BatchNorm2d(4)
    ref(torch.randn(8, 4, 3, 3))
    ours = BatchNorm2d(4)
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    close(ours.running_var, ref.running_var, 0)


def per_chunk_reference(x, up, chunks, steps_refs):
    """Emulated GPU j = plain nn.BatchNorm2d on samples j, j + chunks, ... (interleaved)."""
    out, gx = torch.empty_like(x), torch.empty_like(x)
    grads = {"weight": 0, "bias": 0}
    for j, ref in enumerate(steps_refs):
        o, g, gp = run(ref, x[j::chunks], up[j::chunks])
        out[j::chunks], gx[j::chunks] = o, g
        grads = {k: grads[k] + gp[k] for k in grads}
    return out, gx, grads


@pytest.mark.parametrize("eval_stats", ["average", "first"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_emulated_bn_equals_separate_bn_per_interleaved_chunk(eval_stats, layout):
    chunks = 3
    ours = BatchNorm2d(4, momentum=0.2, eval_stats=eval_stats).to(DT)
    refs = [nn.BatchNorm2d(4, momentum=0.2).to(DT) for _ in range(chunks)]
    randomize_affine(ours, *refs)
    set_emulated_gpus(ours, chunks)
    for step in range(3):  # several steps: the per-chunk EMAs must stay in agreement
        x, up = inputs(seed=step)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            x = torch.cat([x, x], dim=3)[..., ::2]
        out, gx, gp = run(ours, x, up)
        ref_out, ref_gx, ref_gp = per_chunk_reference(x, up, chunks, refs)
        close(out, ref_out)
        close(gx, ref_gx)
        close(gp["weight"], ref_gp["weight"])
        close(gp["bias"], ref_gp["bias"])
        if layout == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last)
    pick = {"average": lambda t: t.mean(0), "first": lambda t: t[0]}
    ref_mean = torch.stack([r.running_mean for r in refs])
    ref_var = torch.stack([r.running_var for r in refs])
    close(ours.running_mean, pick[eval_stats](ref_mean))
    close(ours.running_var, pick[eval_stats](ref_var))
    assert int(ours.num_batches_tracked) == 3
    # The other mode's moving averages are kept too (BN diagnostics), and can be swapped in.
    other = "first" if eval_stats == "average" else "average"
    close(ours.alt_running_mean, pick[other](ref_mean))
    close(ours.alt_running_var, pick[other](ref_var))
    with running_stats_of(ours, other):
        close(ours.running_var, pick[other](ref_var))
    close(ours.running_var, pick[eval_stats](ref_var))

    ours.eval()
    ref = nn.BatchNorm2d(4).to(DT).eval()
    ref.load_state_dict(ours.state_dict())
    x, up = inputs(seed=9)
    out, gx, _ = run(ours, x, up)
    ref_out, ref_gx, _ = run(ref, x, up)
    close(out, ref_out)
    close(gx, ref_gx)


def test_emulated_bn_rejects_batch_not_divisible_by_chunks():
    bn = BatchNorm2d(4)
    set_emulated_gpus(bn, 3)
    with pytest.raises(ValueError, match="batch of 8 samples cannot be split between 3"):
        bn(torch.randn(8, 4, 2, 2))


def test_set_emulated_gpus_reaches_the_per_gpu_norms_only():
    per_gpu = ["bn", "brn", "evonorm_b0", "iternorm", "dbn"]
    model = nn.Sequential(
        *(build_norm(name, 16) for name in per_gpu),
        nn.Sequential(build_norm("syncbn", 16), build_norm("evonorm_s0", 16, groups=4)),
    )
    set_emulated_gpus(model, 4)
    assert all(layer.chunks == 4 for layer in model[: len(per_gpu)])
    assert not any(hasattr(layer, "chunks") for layer in model[-1])
    with pytest.raises(ValueError):
        set_emulated_gpus(model, 0)


# ----------------------------------------------------------------------------- syncbn


def test_syncbn_without_process_group_is_bn_over_the_whole_batch():
    ours, ref = SyncBatchNorm2d(4).to(DT), nn.BatchNorm2d(4).to(DT)
    randomize_affine(ours, ref)
    x, up = inputs()
    out, gx, gp = run(ours, x, up)
    ref_out, ref_gx, ref_gp = run(ref, x, up)
    close(out, ref_out)
    close(gx, ref_gx)
    close(gp["weight"], ref_gp["weight"])
    close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    close(ours(x), ref(x))


def _syncbn_worker(rank: int, world: int, store: str) -> None:
    """Each rank holds samples rank, rank + world, ...; compares with BN on the whole batch."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        x, up = inputs(shape=(8, 3, 4, 2))
        ours, ref = SyncBatchNorm2d(3).to(DT), nn.BatchNorm2d(3).to(DT)
        randomize_affine(ours, ref)
        out, gx, gp = run(ours, x[rank::world], up[rank::world])
        ref_out, ref_gx, ref_gp = run(ref, x, up)
        close(out, ref_out[rank::world])
        close(gx, ref_gx[rank::world])
        for name in ("weight", "bias"):  # DDP sums (averages) parameter grads over ranks
            dist.all_reduce(gp[name])
            close(gp[name], ref_gp[name])
        close(ours.running_mean, ref.running_mean)
        close(ours.running_var, ref.running_var)

        average = BatchNorm2d(3, eval_stats="average").to(DT)
        first = BatchRenorm2d(3, eval_stats="first").to(DT)
        for m in (average, first):
            m.running_mean.fill_(rank)
            m.running_var.fill_(1 + 2 * rank)
        sync_running_stats(nn.Sequential(average, first))
        close(average.running_mean, torch.full((3,), 0.5, dtype=DT))
        close(average.running_var, torch.full((3,), 2.0, dtype=DT))
        close(first.running_mean, torch.zeros(3, dtype=DT))
        close(first.running_var, torch.ones(3, dtype=DT))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_syncbn_two_process_gloo_equals_bn_on_concatenated_batch(tmp_path):
    mp.spawn(_syncbn_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)


def test_sync_running_stats_is_a_noop_without_process_group():
    bn = BatchNorm2d(3)
    bn.running_mean.fill_(2.0)
    sync_running_stats(nn.Sequential(bn))
    assert torch.equal(bn.running_mean, torch.full((3,), 2.0))


# ----------------------------------------------------------------------------- brn


def test_brn_with_unit_limits_is_bn():
    ours = BatchRenorm2d(4, r_max=1.0, d_max=0.0, warmup_steps=0, relax_steps=0).to(DT)
    ref = nn.BatchNorm2d(4).to(DT)
    randomize_affine(ours, ref)
    for step in range(2):
        x, up = inputs(seed=step)
        out, gx, gp = run(ours, x, up)
        ref_out, ref_gx, ref_gp = run(ref, x, up)
        close(out, ref_out)
        close(gx, ref_gx)
        close(gp["weight"], ref_gp["weight"])
        close(gp["bias"], ref_gp["bias"])
    close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    close(ours(x), ref(x))


def brn_formula(x, weight, bias, mu, var, eps, r_max, d_max, momentum):
    """Ioffe's equations for one GPU's batch; returns (out, new running mean, new running var)."""
    dims = (0, 2, 3)
    mu_b = x.mean(dims)
    var_b = ((x - mu_b.view(1, -1, 1, 1)) ** 2).mean(dims)
    sigma_b = torch.sqrt(var_b + eps)
    sigma = torch.sqrt(var + eps)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max).detach()
    d = ((mu_b - mu) / sigma).clamp(-d_max, d_max).detach()
    per_c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    x_hat = (x - per_c(mu_b)) / per_c(sigma_b) * per_c(r) + per_c(d)
    m = x.numel() // x.shape[1]
    new_mu = (1 - momentum) * mu + momentum * mu_b.detach()
    new_var = (1 - momentum) * var + momentum * var_b.detach() * m / (m - 1)
    return per_c(weight) * x_hat + per_c(bias), new_mu, new_var


@pytest.mark.parametrize("chunks", [1, 2])
def test_brn_matches_the_formula_when_clipping_is_active(chunks):
    ours = BatchRenorm2d(
        4, eval_stats="average", r_max=1.5, d_max=0.5, warmup_steps=0, relax_steps=0
    ).to(DT)
    randomize_affine(ours)
    set_emulated_gpus(ours, chunks)
    with torch.no_grad():  # moving stats far enough from the batch's that r and d clip
        ours.running_mean.copy_(torch.tensor([0.7, 3.0, -2.0, 0.9]))
        ours.running_var.copy_(torch.tensor([4.0, 0.5, 30.0, 3.5]))
    mu, var = ours.running_mean.clone(), ours.running_var.clone()
    x, up = inputs(shape=(8, 4, 3, 3))
    out, gx, gp = run(ours, x, up)

    xr = x.clone().requires_grad_(True)
    weight = ours.weight.detach().clone().requires_grad_(True)
    bias = ours.bias.detach().clone().requires_grad_(True)
    ref_out, mus, vars_ = torch.empty_like(x), [], []
    pieces = [
        brn_formula(xr[j::chunks], weight, bias, mu, var, 1e-5, 1.5, 0.5, 0.1)
        for j in range(chunks)
    ]
    for j, (o, m, v) in enumerate(pieces):
        ref_out[j::chunks] = o
        mus.append(m)
        vars_.append(v)
    (ref_out * up).sum().backward()
    close(out, ref_out.detach())
    close(gx, xr.grad)
    close(gp["weight"], weight.grad)
    close(gp["bias"], bias.grad)
    close(ours.running_mean, torch.stack(mus).mean(0))
    close(ours.running_var, torch.stack(vars_).mean(0))
    assert not torch.allclose(out, F.batch_norm(x, None, None, ours.weight, ours.bias, True))


def test_brn_schedule_is_bn_then_linear_relaxation():
    brn = BatchRenorm2d(2, r_max=3.0, d_max=5.0, warmup_steps=10, relax_steps=20)
    expected = {0: (1.0, 0.0), 10: (1.0, 0.0), 20: (2.0, 2.5), 30: (3.0, 5.0), 100: (3.0, 5.0)}
    for step, (r_max, d_max) in expected.items():
        brn.num_batches_tracked.fill_(step)
        r, d = brn.current_limits()
        assert (float(r), float(d)) == pytest.approx((r_max, d_max))
    brn.num_batches_tracked.fill_(0)
    x = torch.randn(6, 2, 3, 3)
    brn.running_mean.fill_(5.0)  # far off: renorm would move the output, warmup BN must not
    close(brn(x), F.batch_norm(x, None, None, brn.weight, brn.bias, True), 1e-6)


# ----------------------------------------------------------------------------- gn, ln, in


def group_formula(x, groups, weight, bias, eps=1e-5):
    """GN paper: per sample, statistics over each group of C/G channels and all of H, W."""
    n, c, h, w = x.shape
    xg = x.view(n, groups, -1)
    mu = xg.mean(-1, keepdim=True)
    var = ((xg - mu) ** 2).mean(-1, keepdim=True)
    x_hat = ((xg - mu) / torch.sqrt(var + eps)).view(n, c, h, w)
    return x_hat * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("options,groups", [({}, 32), ({"groups": 8}, 8), ({"group_size": 16}, 4)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gn_matches_nn_groupnorm_and_formula(options, groups, mode):
    ours = build_norm("gn", 64, **options).to(DT).train(mode == "train")
    ref = nn.GroupNorm(groups, 64).to(DT)
    randomize_affine(ours, ref)
    x, up = inputs(shape=(3, 64, 4, 2))
    out, gx, gp = run(ours, x, up)
    ref_out, ref_gx, ref_gp = run(ref, x, up)
    close(out, ref_out)
    close(gx, ref_gx)
    close(gp["weight"], ref_gp["weight"])
    close(gp["bias"], ref_gp["bias"])
    close(out, group_formula(x, groups, ours.weight, ours.bias).detach())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ln_is_layernorm_over_chw_with_per_channel_affine(mode):
    ours = build_norm("ln", 6).to(DT).train(mode == "train")
    randomize_affine(ours)
    ln = nn.LayerNorm((6, 5, 3), elementwise_affine=False, eps=1e-5).to(DT)
    weight = ours.weight.detach().clone().requires_grad_(True)
    bias = ours.bias.detach().clone().requires_grad_(True)
    x, up = inputs(shape=(4, 6, 5, 3))
    out, gx, gp = run(ours, x, up)
    xr = x.clone().requires_grad_(True)
    ref = ln(xr) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    (ref * up).sum().backward()
    close(out, ref.detach())
    close(gx, xr.grad)
    close(gp["weight"], weight.grad)
    close(gp["bias"], bias.grad)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_in_matches_nn_instancenorm2d(mode):
    ours = build_norm("in", 5).to(DT).train(mode == "train")
    ref = nn.InstanceNorm2d(5, affine=True).to(DT).train(mode == "train")
    randomize_affine(ours, ref)
    x, up = inputs(shape=(3, 5, 4, 4))
    out, gx, gp = run(ours, x, up)
    ref_out, ref_gx, ref_gp = run(ref, x, up)
    close(out, ref_out)
    close(gx, ref_gx)
    close(gp["weight"], ref_gp["weight"])
    close(gp["bias"], ref_gp["bias"])


# ----------------------------------------------------------------------------- frn


def frn_formula(x, weight, bias, tau, eps, act=True):
    """FRN, then (``act``) TLU max(y, tau), or ReLU max(y, 0) when ``tau`` is None."""
    nu2 = (x**2).mean(dim=(2, 3), keepdim=True)
    y = x / torch.sqrt(nu2 + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    if not act:
        return y
    return torch.maximum(y, torch.zeros(()) if tau is None else tau.view(1, -1, 1, 1))


@pytest.mark.parametrize("nonlinearity", ["tlu", "relu", "none"])
@pytest.mark.parametrize("learned_eps", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_frn_matches_the_formula(nonlinearity, learned_eps, mode):
    # One meaning of tlu: FRN's nonlinearity is TLU (true) or ReLU (false); act=False is the
    # bare FRN a model puts before a residual addition.
    options = {"tlu": nonlinearity == "tlu", "act": nonlinearity != "none"}
    ours = build_norm("frn", 4, learned_eps=learned_eps, **options).to(DT).train(mode == "train")
    randomize_affine(ours)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in ours.named_parameters()}
    if nonlinearity == "tlu":
        with torch.no_grad():
            ours.tlu.tau.copy_(torch.tensor([-0.5, 0.0, 0.3, 1.0]))
        params["tlu.tau"] = ours.tlu.tau.detach().clone().requires_grad_(True)
    x, up = inputs(shape=(3, 4, 2, 2))
    x[0, 1] = 0.0  # an all-zero response: only eps keeps it finite
    out, gx, gp = run(ours, x, up)

    xr = x.clone().requires_grad_(True)
    eps = 1e-6 + params["eps_l"].abs().view(1, -1, 1, 1) if learned_eps else 1e-6
    ref = frn_formula(
        xr, params["weight"], params["bias"], params.get("tlu.tau"), eps, options["act"]
    )
    (ref * up).sum().backward()
    close(out, ref.detach())
    close(gx, xr.grad)
    assert gp.keys() == params.keys()
    for name, p in params.items():
        close(gp[name], p.grad)
    assert get_norm_spec("frn").replaces_activation


@pytest.mark.parametrize("tlu", [True, False])
def test_frn_backward_passes_gradcheck(tlu):
    frn = build_norm("frn", 3, tlu=tlu, learned_eps=True).to(torch.float64)
    randomize_affine(frn)
    if tlu:
        with torch.no_grad():
            frn.tlu.tau.copy_(torch.tensor([-0.3, 0.1, 0.4]))
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    params = tuple(frn.parameters())
    assert torch.autograd.gradcheck(lambda x, *_: frn(x), (x, *params))


def test_frn_half_precision_does_not_overflow():
    frn = FilterResponseNorm2d(2).half()
    x = torch.full((1, 2, 3, 3), 1000.0, dtype=torch.float16)  # x^2 > float16 max
    y = frn(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_tlu_is_max_with_learned_threshold():
    tlu = TLU(2)
    with torch.no_grad():
        tlu.tau.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[[[0.0, 1.0]], [[-2.0, -0.5]]]])
    assert torch.equal(tlu(x), torch.tensor([[[[0.5, 1.0]], [[-1.0, -0.5]]]]))


# ----------------------------------------------------------------------------- ws


def ws_formula(weight):
    fan_in = weight[0].numel()
    mean = weight.sum(dim=(1, 2, 3), keepdim=True) / fan_in
    std = torch.sqrt(((weight - mean) ** 2).sum(dim=(1, 2, 3), keepdim=True) / fan_in)
    return (weight - mean) / (std + 1e-5)


def test_wsconv_convolves_with_the_standardized_weight():
    conv = WSConv2d(3, 5, 3, padding=1, bias=True).to(DT)
    weight = conv.weight.detach().clone().requires_grad_(True)
    x, _ = inputs(shape=(2, 3, 6, 6))
    up = torch.randn(2, 5, 6, 6, dtype=DT)
    out, gx, gp = run(conv, x, up)
    xr = x.clone().requires_grad_(True)
    bias = conv.bias.detach().clone().requires_grad_(True)
    ref = F.conv2d(xr, ws_formula(weight), bias, padding=1)
    (ref * up).sum().backward()
    close(out, ref.detach())
    close(gx, xr.grad)
    close(gp["weight"], weight.grad)
    close(gp["bias"], bias.grad)


def test_ws_backward_passes_gradcheck_and_a_constant_filter_stays_finite():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(standardize_weight, (weight,))
    constant = torch.ones(2, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    standardize_weight(constant).sum().backward()
    assert torch.isfinite(constant.grad).all()


def test_convert_to_ws_swaps_every_conv_in_place_and_keeps_weights():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Conv2d(4, 4, 1, stride=2, groups=2), nn.ReLU()),
    ).to(DT)
    original = copy.deepcopy(model)
    weights = [model[0].weight, model[2][0].weight]
    assert convert_to_ws(model) is model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all(type(m) is WSConv2d for m in convs)
    assert model[0].weight is weights[0] and model[2][0].weight is weights[1]
    assert model[2][0].bias is not None and model[2][0].groups == 2
    assert model[2][0].stride == (2, 2)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    expected = F.conv2d(x, ws_formula(original[0].weight))
    expected = original[1](expected)
    conv = original[2][0]
    expected = F.conv2d(expected, ws_formula(conv.weight), conv.bias, stride=2, groups=2).relu()
    close(model(x), expected)


# ----------------------------------------------------------------------------- registry


def test_list_norms_names_every_norm_with_its_properties():
    specs = list_norms()
    assert [s.name for s in specs] == ALL_NORMS
    assert {s.name for s in specs if s.batch_dependent} == {
        "bn", "brn", "syncbn", "evonorm_b0", "iternorm", "dbn",
    }  # fmt: skip
    assert {s.name for s in specs if s.replaces_activation} == {"frn", "evonorm_b0", "evonorm_s0"}
    for spec in specs:
        assert spec.description and "\n" not in spec.description
        assert spec.options and all(spec.options.values())


def test_norms_command_starts_every_description_in_one_column(capsys):
    from normbench.cli import main

    assert main(["norms"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:1].isalpha()]
    heads = [line for line in lines if line.split()[0] in ALL_NORMS]
    assert len(heads) == len(ALL_NORMS)
    columns = {len(line) - len(line.split(" ", 1)[1].lstrip()) for line in heads}
    assert len(columns) == 1, heads


@pytest.mark.parametrize("name", ALL_NORMS)
def test_every_norm_builds_for_64_channels_and_trains(name):
    norm = build_norm(name, 64)
    assert isinstance(norm, nn.Module)
    x = torch.randn(4, 64, 3, 3, requires_grad=True)
    y = norm(x)
    y.square().sum().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in norm.parameters())
    norm.eval()
    assert torch.isfinite(norm(x)).all()


def test_options_set_to_none_take_defaults():
    everything = dict.fromkeys(
        ["eps", "momentum", "eval_stats", "groups", "group_size", "r_max", "tlu", "iterations",
         "running"]
    )  # fmt: skip
    assert build_norm("iternorm", 64, **everything).iterations == 5
    assert build_norm("dbn", 64, **everything).running == "covariance"
    assert build_norm("gn", 64, **everything).num_groups == 32
    assert build_norm("bn", 64, **everything).eps == 1e-5
    assert build_norm("frn", 64, **everything).eps == 1e-6


def test_options_reach_the_module():
    bn = build_norm("bn", 8, eps=1e-3, momentum=0.2, eval_stats="first")
    assert (bn.eps, bn.momentum, bn.eval_stats) == (1e-3, 0.2, "first")
    assert build_norm("gn", 64, group_size=16).num_groups == 4
    assert build_norm("gn", 64, groups=1).num_groups == 1
    brn = build_norm("brn", 8, r_max=3, d_max=5, warmup_steps=0, relax_steps=10)
    assert (brn.r_max, brn.d_max, brn.warmup_steps, brn.relax_steps) == (3, 5, 0, 10)
    assert build_norm("frn", 8, tlu=False).tlu is None
    assert build_norm("iternorm", 32, group_size=8, iterations=3).iterations == 3
    assert build_norm("dbn", 32, momentum=0.2, eval_stats="first").eval_stats == "first"
    assert hasattr(build_norm("dbn", 32, running="whitening"), "running_wm")
    assert build_norm("iternorm", 32, running="whitening").running == "whitening"
    assert build_norm("evonorm_s0", 32, group_size=8).groups == 4


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: build_norm("gnn", 64), "unknown norm 'gnn' (allowed: " + ", ".join(ALL_NORMS)),
        (lambda: get_norm_spec("batch"), "unknown norm 'batch'"),
        (
            lambda: build_norm("gn", 64, momentum=0.1),
            "norm 'gn' has no option 'momentum' (allowed: eps, group_size, groups)",
        ),
        (lambda: build_norm("gn", 48), "gn: groups=32 does not divide 48 channels"),
        (lambda: build_norm("gn", 64, groups=6), "gn: groups=6 does not divide 64 channels"),
        (lambda: build_norm("gn", 40, group_size=16), "gn: group_size=16 does not divide 40"),
        (lambda: build_norm("gn", 64, groups=8, group_size=8), "both set"),
        (lambda: build_norm("gn", 64, groups=0), "gn: groups=0 is invalid"),
        (lambda: build_norm("bn", 64, eps=-1.0), "bn: eps=-1.0 is invalid (allowed: a number"),
        (lambda: build_norm("bn", 64, eval_stats="last"), "allowed: average or first"),
        (lambda: build_norm("frn", 64, tlu="yes"), "frn: tlu='yes' is invalid"),
        (lambda: build_norm("brn", 64, r_max=0.5), "brn: r_max=0.5 is invalid"),
        (lambda: build_norm("iternorm", 24), "iternorm: group_size=16 does not divide 24"),
        (lambda: build_norm("dbn", 64, iterations=3), "norm 'dbn' has no option 'iterations'"),
        (lambda: build_norm("iternorm", 64, iterations=0), "iternorm: iterations=0 is invalid"),
        (
            lambda: build_norm("dbn", 64, running="ema"),
            "dbn: running='ema' is invalid (allowed: covariance or whitening)",
        ),
        (lambda: build_norm("bn", 64, running="covariance"), "norm 'bn' has no option 'running'"),
        (lambda: build_norm("evonorm_s0", 16), "evonorm_s0: groups=32 does not divide 16"),
    ],
)
def test_user_errors_name_the_value_and_what_is_allowed(call, message):
    with pytest.raises(UserError) as info:
        call()
    assert message in str(info.value)
    assert "\n" not in str(info.value)
