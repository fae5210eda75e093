"""Tests of copa.layerwise's linear algebra: the layer operators A, K(δ), P, the dense and matrix-free solves, ranks."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from copa.errors import InvalidSpecError, NotApplicableError
from copa.layerwise import (
    ConvGeometry,
    LayerOperator,
    analyse_chain,
    fc_input_from_gradients,
    forward_matrix,
    gradient_matrix,
    input_gradient,
    layer_rank,
    layer_system,
    lsqr,
    null_space,
    numerical_rank,
    padding_matrix,
    propagate_delta,
    solve_dense,
    solve_matrix_free,
    svdvals,
)
from copa.threat import Scenario


pytestmark = pytest.mark.usefixtures("single_thread")

# (in, out, kernel, stride, padding, (H, W)): stride and padding, rectangular inputs and kernels,
# and geometries whose last rows/columns no kernel window reaches ((H + 2p − k) % s ≠ 0).
GEOMETRIES = [
    (3, 4, 3, 1, 0, (8, 8)),
    (2, 3, 4, 2, 1, (9, 9)),
    (3, 5, 3, 2, 2, (7, 7)),
    (4, 2, 5, 3, 1, (12, 10)),
    (2, 3, (3, 2), (2, 1), (1, 0), (7, 6)),
    (1, 6, 3, 1, 1, (5, 5)),
]


def _conv(c, f, k, s, p, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(c, f, k, stride=s, padding=p, bias=False).double()


def _layer(spec, seed=0):
    c, f, k, s, p, hw = spec
    conv = _conv(c, f, k, s, p, seed)
    g = ConvGeometry.from_conv(conv, hw)
    x = torch.randn(1, c, *hw, dtype=torch.float64)
    z = conv(x)
    delta = torch.randn_like(z)
    grad = torch.autograd.grad((z * delta).sum(), conv.weight)[0]
    return conv, g, x, z.detach(), delta, grad


@pytest.mark.parametrize("spec", GEOMETRIES)
def test_forward_matrix_is_the_convolution(spec):
    conv, g, x, z, _, _ = _layer(spec)
    a = forward_matrix(conv.weight, g)
    assert a.shape == (g.forward_rows, g.unknowns) and a.dtype == torch.float64
    assert g.output == tuple(z.shape[-2:])
    torch.testing.assert_close(a @ g.pad(x).flatten(), z.flatten(), rtol=0, atol=1e-12)
    # every weight appears once per output position, nothing else
    assert int((a != 0).sum()) == g.forward_rows * g.in_channels * g.kernel[0] * g.kernel[1]


@pytest.mark.parametrize("spec", GEOMETRIES)
def test_gradient_matrix_gives_the_weight_gradient(spec):
    conv, g, x, _, delta, grad = _layer(spec)
    k = gradient_matrix(delta, g)
    assert k.shape == (g.gradient_rows, g.unknowns)
    torch.testing.assert_close(k @ g.pad(x).flatten(), grad.flatten(), rtol=0, atol=1e-12)
    # the same through PyTorch's own weight-gradient routine
    reference = torch.nn.grad.conv2d_weight(x, conv.weight.shape, delta, stride=conv.stride, padding=conv.padding)
    torch.testing.assert_close(k @ g.pad(x).flatten(), reference.flatten(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec", GEOMETRIES)
def test_padding_matrix_selects_exactly_the_padded_entries(spec):
    _, g, x, _, _, _ = _layer(spec)
    p = padding_matrix(g)
    assert p.shape == (g.padding_rows, g.unknowns)
    assert g.padding_rows == g.unknowns - g.interior_unknowns
    if g.padding_rows:
        torch.testing.assert_close(p @ p.T, torch.eye(g.padding_rows, dtype=torch.float64))
        # columns hit are the padded ones: zero on the padded input, one on a padded-entries indicator
        assert torch.all(p @ g.pad(x).flatten() == 0)
        indicator = (~g.interior_mask()).double().flatten()
        assert torch.all(p @ indicator == 1)
        assert torch.equal(p.sum(0) > 0, ~g.interior_mask().flatten())


@pytest.mark.parametrize("spec", GEOMETRIES)
def test_layer_system_holds_at_the_true_input(spec):
    conv, g, x, z, delta, grad = _layer(spec)
    system = layer_system(conv.weight, delta, z, grad, g)
    assert system.row_counts == {"forward": g.forward_rows, "gradient": g.gradient_rows, "padding": g.padding_rows}
    assert system.matrix.shape == (g.rows, g.unknowns)
    torch.testing.assert_close(system.matrix @ g.pad(x).flatten(), system.rhs, rtol=0, atol=1e-12)
    sparse = layer_system(conv.weight, delta, z, grad, g, layout="sparse")
    assert sparse.matrix.is_sparse
    torch.testing.assert_close(sparse.matrix.to_dense(), system.matrix, rtol=0, atol=0)
    no_pad = layer_system(conv.weight, delta, z, grad, g, include_padding=False)
    assert no_pad.matrix.shape[0] == g.forward_rows + g.gradient_rows


@pytest.mark.parametrize("spec", GEOMETRIES)
def test_operator_matches_dense_and_is_its_adjoint(spec):
    conv, g, x, z, delta, grad = _layer(spec)
    u = layer_system(conv.weight, delta, z, grad, g).matrix
    op = LayerOperator(conv.weight, delta, g)
    assert op.shape == tuple(u.shape)
    xs = torch.randn(2, 3, g.unknowns, dtype=torch.float64)  # leading batch dims
    ys = torch.randn(2, 3, op.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op.matvec(xs), xs @ u.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.rmatvec(ys), ys @ u, rtol=0, atol=1e-12)
    # adjoint identity <U x, y> = <x, Uᵀ y>
    lhs = (op.matvec(xs[0, 0]) * ys[0, 0]).sum()
    rhs = (xs[0, 0] * op.rmatvec(ys[0, 0])).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, abs(float(lhs)))
    torch.testing.assert_close(op.column_norms(), u.norm(dim=0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.rhs(z, grad), layer_system(conv.weight, delta, z, grad, g).rhs)


def test_input_gradient_and_propagate_delta_match_autograd():
    obs, truth = Scenario(model="cnn3_c1", dtype="float64").build()
    analysis = analyse_chain(obs.model, obs.preprocess.apply(truth.images01), truth.labels)
    layers = analysis.layers
    # δ from the last layer down, through a Linear and a Conv2d, equals autograd's δ
    delta1 = propagate_delta(layers[2].delta, layers[2].module, layers[1].activation, layers[1].pre_activation)
    torch.testing.assert_close(delta1, layers[1].delta, rtol=1e-10, atol=1e-14)
    delta0 = propagate_delta(layers[1].delta, layers[1].module, layers[0].activation, layers[0].pre_activation)
    torch.testing.assert_close(delta0, layers[0].delta, rtol=1e-10, atol=1e-14)
    # the observed gradients are what the analysis recomputes
    for la, grad in zip(layers, [obs.gradients[0], obs.gradients[1], obs.gradients[2]]):
        torch.testing.assert_close(la.grad_weight, grad, rtol=1e-10, atol=1e-14)
    g = layers[1].geometry
    x = layers[1].input.clone().requires_grad_(True)
    z = F.conv2d(x, layers[1].weight, stride=g.stride)
    expected = torch.autograd.grad((z * layers[1].delta).sum(), x)[0]
    torch.testing.assert_close(input_gradient(layers[1].delta, layers[1].weight, g), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_dense_and_matrix_free_solves_agree_on_cnn2_c1():
    obs, truth = Scenario(model="cnn2_c1", dtype="float64").build()
    analysis = analyse_chain(obs.model, obs.preprocess.apply(truth.images01), truth.labels)
    la = analysis.layers[0]
    g = la.geometry
    system = layer_system(la.weight, la.delta, la.pre_activation, la.grad_weight, g)
    x_dense, info = solve_dense(system.matrix, system.rhs)
    assert info.rank == g.unknowns  # cnn2_c1's conv is uniquely solvable
    op = LayerOperator(la.weight, la.delta, g)
    x_free, free_info = solve_matrix_free(op, op.rhs(la.pre_activation, la.grad_weight), tol=1e-12)
    assert free_info.converged
    rel = float((x_dense - x_free).norm() / x_dense.norm())
    assert rel <= 1e-6
    truth_x = g.pad(la.input).flatten()
    assert float((x_dense - truth_x).norm() / truth_x.norm()) <= 1e-10
    # the fast dense path (normal equations, pivoted Cholesky) gives the same solution
    x_normal, normal_info = solve_dense(system.matrix, system.rhs, method="normal")
    assert normal_info.rank == g.unknowns
    assert float((x_normal - x_dense).norm() / x_dense.norm()) <= 1e-8


def test_matrix_free_reconstructs_a_224_image_through_a_conv_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, bias=False).double()
    x = torch.rand(1, 3, 224, 224, dtype=torch.float64) - 0.5
    g = ConvGeometry.from_conv(conv, (224, 224))
    z = conv(x)
    delta = 1e-3 * torch.randn_like(z)
    grad = torch.autograd.grad((z * delta).sum(), conv.weight)[0]
    op = LayerOperator(conv.weight, delta, g)
    assert op.shape == (16 * 222 * 222 + 16 * 3 * 9, 3 * 224 * 224)
    x_hat, info = solve_matrix_free(op, op.rhs(z.detach(), grad), tol=1e-10, precondition=True)
    assert info.converged, info.stop_reason  # about 1 s on 2 CPU cores; no wall-clock limit (a busy machine)
    assert float((x_hat - x.flatten()).norm() / x.norm()) <= 1e-7


def test_fc_input_is_recovered_exactly_from_gradients():
    obs, truth = Scenario(model="cnn2_c1", dtype="float64").build()
    grads = obs.gradient_dict()
    x_hat = fc_input_from_gradients(grads["weight_layers.1.weight"], grads["weight_layers.1.bias"])
    fc_input = obs.model.trace(obs.preprocess.apply(truth.images01))[-1].input[0].detach()
    assert float((x_hat - fc_input).norm() / fc_input.norm()) <= 1e-6
    # batched over leading dims, and a zero bias gradient is refused
    stacked = fc_input_from_gradients(grads["weight_layers.1.weight"].expand(2, -1, -1),
                                      grads["weight_layers.1.bias"].expand(2, -1))
    torch.testing.assert_close(stacked[1], x_hat)
    with pytest.raises(NotApplicableError):
        fc_input_from_gradients(torch.zeros(3, 4), torch.zeros(3))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spec", GEOMETRIES)
def test_layer_rank_equals_the_svd_rank_of_u(spec, seed):
    conv, g, x, z, delta, grad = _layer(spec, seed)
    u = layer_system(conv.weight, delta, z, grad, g).matrix
    reference = numerical_rank(u)
    eps = torch.finfo(torch.float64).eps
    assert reference.tolerance == pytest.approx(float(reference.singular_values[0]) * max(u.shape) * eps)
    lr = layer_rank(conv.weight, delta, g)
    assert lr.rank == reference.rank
    assert lr.deficiency == reference.rank - g.unknowns
    assert lr.padding_rank == g.padding_rows


def test_layer_rank_counts_the_f_squared_dependencies():
    # Σ_{cuv} W[f',c,u,v] g[f,c,u,v] = Σ_{pq} δ[f,p,q] z[f',p,q]: F² dependent rows between K and A
    c, f = 3, 4
    conv, g, x, z, delta, grad = _layer((c, f, 4, 2, 0, (16, 16)))
    rows = g.forward_rows + g.gradient_rows
    assert rows - f * f < g.unknowns
    assert layer_rank(conv.weight, delta, g).rank == rows - f * f


@pytest.mark.parametrize("spec", GEOMETRIES + [(3, 4, 4, 2, 0, (16, 16)), (3, 6, 3, 1, 0, (14, 14))])
def test_layer_rank_gram_path_equals_the_svd_rank(spec, monkeypatch):
    # large layers get the rank of the projected forward block from a pivoted Cholesky of a Gram
    # matrix; force that path on small layers and compare with the SVD of the whole U
    from copa.layerwise import ranks

    monkeypatch.setattr(ranks, "GRAM_THRESHOLD", 10)
    conv, g, x, z, delta, grad = _layer(spec)
    u = layer_system(conv.weight, delta, z, grad, g).matrix
    lr = layer_rank(conv.weight, delta, g)
    assert "Gram" in lr.forward_method or lr.forward_method.startswith("none")
    assert lr.rank == numerical_rank(u).rank


@pytest.mark.parametrize("shape", [(40, 25), (25, 40)])
def test_null_space_and_svdvals(shape):
    torch.manual_seed(1)
    m, n = shape
    a = torch.randn(m, 7, dtype=torch.float64) @ torch.randn(7, n, dtype=torch.float64)  # rank 7
    basis = null_space(a)
    assert basis.shape == (n, n - 7)
    torch.testing.assert_close(basis.T @ basis, torch.eye(n - 7, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float((a @ basis).abs().max()) <= 1e-12
    torch.testing.assert_close(svdvals(a), torch.linalg.svdvals(a), atol=1e-12, rtol=0)
    assert numerical_rank(a).rank == 7


def _consistent_deficient_system(tall: bool):
    torch.manual_seed(2)
    m, n = (60, 30) if tall else (30, 60)
    a = torch.randn(m, 20, dtype=torch.float64) @ torch.randn(20, n, dtype=torch.float64)
    b = a @ torch.randn(n, dtype=torch.float64)
    return a, b


@pytest.mark.parametrize("tall", [True, False])
def test_rank_deficient_solves_give_the_minimum_norm_solution(tall):
    a, b = _consistent_deficient_system(tall)
    x_ref = torch.linalg.pinv(a) @ b
    x_lstsq, info = solve_dense(a, b)
    assert info.rank == 20
    x_normal, normal_info = solve_dense(a, b, method="normal")
    assert normal_info.rank == 20
    x_lsqr, lsqr_info = lsqr(lambda v: a @ v, lambda r: a.T @ r, b, atol=1e-14, btol=1e-14)
    for x in (x_lstsq, x_normal, x_lsqr):
        assert float((x - x_ref).norm() / x_ref.norm()) <= 1e-8
    sparse_x, _ = solve_dense(a.to_sparse(), b, method="normal")
    torch.testing.assert_close(sparse_x, x_normal)


def test_bad_inputs_are_refused():
    with pytest.raises(NotApplicableError):
        ConvGeometry.from_conv(nn.Conv2d(4, 4, 3, groups=2, bias=False), (8, 8))
    with pytest.raises(NotApplicableError):
        ConvGeometry.from_conv(nn.Linear(3, 3), (8, 8))
    with pytest.raises(InvalidSpecError):
        ConvGeometry(3, 4, 9, 1, 0, (5, 5))  # kernel larger than the input
    conv, g, *_ = _layer(GEOMETRIES[0])
    with pytest.raises(InvalidSpecError):
        forward_matrix(torch.zeros(2, 2, 3, 3), g)
    with pytest.raises(InvalidSpecError):
        gradient_matrix(torch.zeros(5), g)
    with pytest.raises(InvalidSpecError):
        solve_dense(torch.eye(3, dtype=torch.float64), torch.ones(3), method="qr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_paths_match_cpu():
    conv, g, x, z, delta, grad = _layer((3, 6, 3, 1, 1, (20, 20)))
    system = layer_system(conv.weight, delta, z, grad, g)
    x_cpu, _ = solve_dense(system.matrix, system.rhs)
    cuda = torch.device("cuda")
    system_gpu = layer_system(conv.weight.to(cuda), delta.to(cuda), z.to(cuda), grad.to(cuda), g)
    torch.testing.assert_close(system_gpu.matrix.cpu(), system.matrix)
    for method in ("lstsq", "normal"):
        x_gpu, _ = solve_dense(system_gpu.matrix, system_gpu.rhs, method=method)
        assert float((x_gpu.cpu() - x_cpu).norm() / x_cpu.norm()) <= 1e-8
    op = LayerOperator(conv.weight.to(cuda), delta.to(cuda), g)
    x_free, _ = solve_matrix_free(op, op.rhs(z, grad), tol=1e-12)
    assert float((x_free.cpu() - x_cpu).norm() / x_cpu.norm()) <= 1e-6
    assert layer_rank(conv.weight.to(cuda), delta.to(cuda), g).rank == layer_rank(conv.weight, delta, g).rank
