"""EvoNorm-B0/S0, IterNorm and DBN against their papers' formulas, written here independently:
plain float64 loops over groups and chunks, autograd for the reference gradients."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from normbench.norms import (
    DecorrelatedBatchNorm2d,
    EvoNormB0,
    IterNorm2d,
    build_norm,
    set_emulated_gpus,
    sync_running_stats,
)
from normbench.norms.whitening import inverse_sqrt_eigh

torch.set_num_threads(min(2, torch.get_num_threads()))

DT = torch.float64


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def data(shape=(12, 8, 5, 4), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(*shape, generator=g, dtype=DT) + 0.5
    return x, torch.randn(*shape, generator=g, dtype=DT)


def randomize(module: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """Non-trivial parameters (identity affine and v = 1 hide bugs); returns detached copies."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return {n: p.detach().clone().requires_grad_(True) for n, p in module.named_parameters()}


def run(module: nn.Module, x: torch.Tensor, up: torch.Tensor):
    """Forward, backward of sum(out * up): (out, input grad, {param: grad})."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    (out * up).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad()
    return out.detach(), x.grad, grads


def reference(formula, x: torch.Tensor, up: torch.Tensor, params: dict[str, torch.Tensor]):
    """The same (out, input grad, param grads) from a formula of (x, params)."""
    xr = x.detach().clone().requires_grad_(True)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    out = formula(xr, params)
    (out * up).sum().backward()
    return out.detach(), xr.grad, {n: p.grad for n, p in params.items()}


def assert_same(ours, ref) -> None:
    close(ours[0], ref[0])
    close(ours[1], ref[1])
    assert ours[2].keys() == ref[2].keys()
    for name in ours[2]:
        close(ours[2][name], ref[2][name])


def per_channel(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def interleaved(formula, chunks: int):
    """Apply ``formula`` to emulated GPU j = samples j, j + chunks, ... separately."""

    def apply(x, params):
        pieces = [formula(x[j::chunks], params) for j in range(chunks)]
        out = torch.empty(x.shape, dtype=x.dtype)
        for j, piece in enumerate(pieces):
            out[j::chunks] = piece
        return out

    return apply


# ----------------------------------------------------------------------------- EvoNorm


def b0_formula(x, p, batch_var=None, eps=1e-5):
    """y = x / max(sqrt(batch var + eps), v x + sqrt(instance var + eps)) * gamma + beta."""
    if batch_var is None:
        batch_var = x.var(dim=(0, 2, 3), unbiased=False)
    instance_var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    left = torch.sqrt(per_channel(batch_var) + eps)
    right = per_channel(p["v"]) * x + torch.sqrt(instance_var + eps)
    return x / torch.maximum(left, right) * per_channel(p["weight"]) + per_channel(p["bias"])


@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("eval_stats", ["average", "first"])
def test_evonorm_b0_matches_the_formula_per_emulated_gpu(chunks: int, eval_stats: str) -> None:
    ours = EvoNormB0(8, momentum=0.2, eval_stats=eval_stats).to(DT)
    params = randomize(ours)
    set_emulated_gpus(ours, chunks)
    expected_var = torch.ones(8, dtype=DT)
    for step in range(3):  # several steps: the running variance must follow every chunk's EMA
        x, up = data(seed=step)
        assert_same(run(ours, x, up), reference(interleaved(b0_formula, chunks), x, up, params))
        per_gpu = [x[j::chunks].var(dim=(0, 2, 3), unbiased=False) for j in range(chunks)]
        updated = torch.stack([0.8 * expected_var + 0.2 * v for v in per_gpu])
        expected_var = updated.mean(0) if eval_stats == "average" else updated[0]
        close(ours.running_var, expected_var)
    ours.eval()
    x, up = data(seed=7)
    formula = lambda x, p: b0_formula(x, p, batch_var=expected_var)  # noqa: E731
    assert_same(run(ours, x, up), reference(formula, x, up, params))


def s0_formula(x, p, groups, eps=1e-5):
    """y = x sigmoid(v x) / sqrt(group var + eps) * gamma + beta."""
    n, c, h, w = x.shape
    var = x.view(n, groups, -1).var(dim=-1, unbiased=False)
    std = torch.sqrt(var + eps).repeat_interleave(c // groups, dim=1).view(n, c, 1, 1)
    num = x * torch.sigmoid(per_channel(p["v"]) * x)
    return num / std * per_channel(p["weight"]) + per_channel(p["bias"])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_evonorm_s0_matches_the_formula(mode: str) -> None:
    ours = build_norm("evonorm_s0", 8, groups=2).to(DT).train(mode == "train")
    params = randomize(ours)
    x, up = data()
    formula = lambda x, p: s0_formula(x, p, groups=2)  # noqa: E731
    assert_same(run(ours, x, up), reference(formula, x, up, params))


def test_evonorm_s0_output_of_a_sample_does_not_depend_on_the_batch() -> None:
    ours = build_norm("evonorm_s0", 8, group_size=4).to(DT).train()
    randomize(ours)
    x, _ = data()
    other, _ = data(seed=5)
    alone = ours(x[:1])
    with_others = ours(torch.cat([x[:1], other[:5]]))[:1]
    set_emulated_gpus(ours, 2)  # no batch statistics: emulated GPUs change nothing
    emulated = ours(torch.cat([x[:1], other[:3]]))[:1]
    close(alone, with_others, 1e-12)
    close(alone, emulated, 1e-12)


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_s0"])
def test_evonorm_without_its_nonlinearity_is_the_affine_map(name: str) -> None:
    # The EvoNorm authors' ResNet code: nonlinearity=False "applies an affine transform only".
    layer = build_norm(name, 8, act=False, **({"groups": 2} if name == "evonorm_s0" else {}))
    layer = layer.to(DT)
    params = randomize(layer)
    assert set(params) == {"weight", "bias"}
    x, _ = data()
    close(layer(x), (x * per_channel(params["weight"]) + per_channel(params["bias"])).detach())


# ----------------------------------------------------------------------------- whitening


def whiten_formula(x, p, group_size, inverse_sqrt, eps=1e-5):
    """Per group of channels: Sigma = Xc Xc^T / m + eps I, x_hat = Sigma^(-1/2) Xc, affine."""
    n, c, h, w = x.shape
    out = []
    for start in range(0, c, group_size):
        xg = x[:, start : start + group_size].permute(1, 0, 2, 3).reshape(group_size, -1)
        xc = xg - xg.mean(1, keepdim=True)
        sigma = xc @ xc.T / xc.shape[1] + eps * torch.eye(group_size, dtype=x.dtype)
        white = inverse_sqrt(sigma) @ xc
        out.append(white.reshape(group_size, n, h, w).permute(1, 0, 2, 3))
    return torch.cat(out, 1) * per_channel(p["weight"]) + per_channel(p["bias"])


def zca(sigma: torch.Tensor) -> torch.Tensor:
    """D Lambda^(-1/2) D^T, by autograd through eigh (fine for well-separated eigenvalues)."""
    eigvals, vectors = torch.linalg.eigh(sigma)
    return vectors @ torch.diag(eigvals.rsqrt()) @ vectors.T


def newton(iterations: int):
    """IterNorm: P_k = 1.5 P - 0.5 P^3 Sigma_N from P_0 = I, then P_T / sqrt(tr(Sigma))."""

    def inverse_sqrt(sigma: torch.Tensor) -> torch.Tensor:
        trace = torch.trace(sigma)
        sigma_n = sigma / trace
        p = torch.eye(sigma.shape[0], dtype=sigma.dtype)
        for _ in range(iterations):
            p = 1.5 * p - 0.5 * p @ p @ p @ sigma_n
        return p / torch.sqrt(trace)

    return inverse_sqrt


WHITENING = {
    "dbn": (DecorrelatedBatchNorm2d, {}, zca),
    "iternorm": (IterNorm2d, {"iterations": 3}, newton(3)),
}


@pytest.mark.parametrize("name", list(WHITENING))
@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("eval_stats", ["average", "first"])
@pytest.mark.parametrize("running", ["covariance", "whitening"])
def test_whitening_matches_the_formula_per_emulated_gpu(name, chunks, eval_stats, running) -> None:
    cls, options, inverse_sqrt = WHITENING[name]
    ours = cls(8, group_size=4, momentum=0.2, eval_stats=eval_stats, running=running, **options)
    ours = ours.to(DT)
    params = randomize(ours)
    set_emulated_gpus(ours, chunks)
    formula = lambda x, p: whiten_formula(x, p, 4, inverse_sqrt)  # noqa: E731
    eps = 1e-5 * torch.eye(4, dtype=DT)
    # The running group statistic: the covariance (without eps) or the whitening matrix.
    mean, stat = torch.zeros(8, dtype=DT), torch.eye(4, dtype=DT).repeat(2, 1, 1)
    for step in range(2):
        x, up = data(seed=step)
        assert_same(run(ours, x, up), reference(interleaved(formula, chunks), x, up, params))
        means, stats = [], []
        for j in range(chunks):
            part = x[j::chunks]
            means.append(0.8 * mean + 0.2 * part.mean((0, 2, 3)))
            groups = part.permute(1, 0, 2, 3).reshape(2, 4, -1)
            centred = groups - groups.mean(-1, keepdim=True)
            sigma = centred @ centred.mT / centred.shape[-1]
            if running == "whitening":
                sigma = torch.stack([inverse_sqrt(s + eps) for s in sigma])
            stats.append(0.8 * stat + 0.2 * sigma)
        pick = (lambda t: torch.stack(t).mean(0)) if eval_stats == "average" else (lambda t: t[0])
        mean, stat = pick(means), pick(stats)
        close(ours.running_mean, mean)
        close(getattr(ours, "running_cov" if running == "covariance" else "running_wm"), stat)
    ours.eval()
    x, up = data(seed=9)
    wm = stat if running == "whitening" else torch.stack([inverse_sqrt(s + eps) for s in stat])

    def evaluated(x, p):
        groups = (x - per_channel(mean)).view(x.shape[0], 2, 4, -1)
        white = (wm @ groups).view(x.shape)
        return white * per_channel(p["weight"]) + per_channel(p["bias"])

    assert_same(run(ours, x, up), reference(evaluated, x, up, params))


def _moving_rank_deficient_batches(steps: int, n: int = 32) -> list[torch.Tensor]:
    """Batches of 4 channels spanning 2 dimensions, each batch in one of 4 planes in turn: the
    covariance of every batch is singular, that of all of them together is not."""
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(4, 4, 2, generator=g, dtype=DT)
    return [
        (planes[t % 4] @ torch.randn(2, n * 4, generator=g, dtype=DT)).T.reshape(n, 2, 2, 4)
        .permute(0, 3, 1, 2)
        for t in range(steps)
    ]  # fmt: skip


def test_dbn_evaluates_rank_deficient_moving_inputs_like_population_whitening() -> None:
    # As after a grayscale stem: every training batch's covariance is singular and its null
    # space moves from batch to batch. Whitening the average covariance stays close to
    # whitening by the population's statistics; averaging the batches' whitening matrices
    # applies each one's 1/sqrt(eps) scaling of its null space to inputs that are not null
    # there (the DBN paper's estimator).
    layers = {r: DecorrelatedBatchNorm2d(4, group_size=4, momentum=0.05, running=r).to(DT)
              for r in ("covariance", "whitening")}  # fmt: skip
    default = DecorrelatedBatchNorm2d(4, group_size=4, momentum=0.05).to(DT)
    with torch.no_grad():
        for x in _moving_rank_deficient_batches(200):
            for layer in (*layers.values(), default):
                layer(x)
        test = torch.cat(_moving_rank_deficient_batches(8))
        flat = test.permute(1, 0, 2, 3).reshape(4, -1)
        centred = flat - flat.mean(1, keepdim=True)
        sigma = centred @ centred.T / centred.shape[1] + 1e-5 * torch.eye(4, dtype=DT)
        population = (inverse_sqrt_eigh(sigma) @ centred).reshape(4, -1, 2, 2).transpose(0, 1)
        out = {r: layer.eval()(test) for r, layer in layers.items()}
        close(default.eval()(test), out["covariance"])  # the default estimator
    size = population.norm()
    assert torch.isfinite(out["covariance"]).all()
    assert (out["covariance"] - population).norm() < 0.1 * size
    assert out["whitening"].norm() > 10 * size


def test_dbn_output_has_identity_covariance_within_each_group() -> None:
    dbn = build_norm("dbn", 8, group_size=4).to(DT)
    x, _ = data(shape=(16, 8, 6, 6))
    mixed = torch.einsum("ij,njhw->nihw", torch.randn(8, 8, dtype=DT), x)  # correlated channels
    y = dbn(mixed).detach().permute(1, 0, 2, 3).reshape(8, -1)
    cov = torch.cov(y, correction=0)
    for start in (0, 4):
        block = cov[start : start + 4, start : start + 4]
        close(block, torch.eye(4, dtype=DT), 1e-4)  # eps keeps it a hair under I


def test_dbn_inverse_square_root_backward_passes_gradcheck_even_with_equal_eigenvalues() -> None:
    # eigh reads one triangle: perturb symmetrically, as a covariance matrix only ever moves.
    def symmetric(sigma: torch.Tensor) -> torch.Tensor:
        return inverse_sqrt_eigh((sigma + sigma.mT) / 2)

    a = torch.randn(3, 5, 5, dtype=DT)
    sigma = (a @ a.mT + 0.5 * torch.eye(5, dtype=DT)).requires_grad_(True)
    assert torch.autograd.gradcheck(symmetric, (sigma,))
    # A multiple of I has one repeated eigenvalue: autograd through eigh divides by zero there.
    eye = (2.0 * torch.eye(4, dtype=DT)).requires_grad_(True)
    assert torch.autograd.gradcheck(symmetric, (eye,))


def test_iternorm_with_many_iterations_approaches_zca() -> None:
    x, up = data()
    iternorm, dbn = (
        IterNorm2d(8, group_size=4, iterations=30).to(DT),
        build_norm("dbn", 8, group_size=4).to(DT),
    )
    close(iternorm(x), dbn(x), 1e-6)


@pytest.mark.parametrize("name", ["iternorm", "dbn", "evonorm_b0"])
def test_batch_dependent_members_reject_a_batch_not_divisible_by_chunks(name: str) -> None:
    layer = build_norm(name, 16)
    set_emulated_gpus(layer, 3)
    with pytest.raises(ValueError, match="batch of 8 samples cannot be split between 3"):
        layer(torch.randn(8, 16, 2, 2))


@pytest.mark.parametrize("name", ["iternorm", "dbn"])
def test_whitening_half_precision_input_keeps_its_dtype(name: str) -> None:
    layer = build_norm(name, 16)
    y = layer(torch.randn(4, 16, 3, 3).bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_evonorm_b0_backward_passes_gradcheck(mode: str) -> None:
    layer = EvoNormB0(3).to(DT).train(mode == "train")
    randomize(layer)
    with torch.no_grad():
        layer.running_var.fill_(0.7)
    x = torch.randn(4, 3, 3, 2, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *_: layer(x), (x, *layer.parameters()))


def test_evonorm_s0_backward_passes_gradcheck() -> None:
    layer = build_norm("evonorm_s0", 4, groups=2).to(DT)
    randomize(layer)
    x = torch.randn(2, 4, 3, 2, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *_: layer(x), (x, *layer.parameters()))


@pytest.mark.parametrize("name", ["iternorm", "dbn"])
def test_whitening_backward_passes_gradcheck(name: str) -> None:
    # The centring and covariance have a hand-written backward (_CentredCovariance).
    layer = build_norm(name, 4, group_size=2).to(DT)
    randomize(layer)
    x = torch.randn(3, 4, 3, 2, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *_: layer(x), (x, *layer.parameters()))


def _sync_worker(rank: int, world: int, store: str) -> None:
    """Running statistics of the new per-GPU norms agree across ranks after syncing."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        b0 = EvoNormB0(4, eval_stats="average").to(DT)
        first = IterNorm2d(4, group_size=2, eval_stats="first").to(DT)
        b0.running_var.fill_(1 + 2 * rank)
        first.running_mean.fill_(rank)
        first.running_cov.fill_(rank)
        sync_running_stats(nn.Sequential(b0, first))
        close(b0.running_var, torch.full((4,), 2.0, dtype=DT))  # the mean over ranks
        close(first.running_mean, torch.zeros(4, dtype=DT))  # rank 0's
        close(first.running_cov, torch.zeros(2, 2, 2, dtype=DT))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_running_stats_covers_the_new_per_gpu_norms(tmp_path) -> None:
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)
