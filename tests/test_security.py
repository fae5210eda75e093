"""Tests of copa.layerwise.security: the COPA index (authors' definition) and the per-layer security report."""

from __future__ import annotations

import json

import pytest
import torch

from copa.errors import InvalidSpecError, NotApplicableError
from copa.layerwise import analyse_chain, layer_system, numerical_rank
from copa.models import MODELS, create_model
from copa.layerwise.security import copa_index, security_report

# Chen & Campbell's released code (hybrid.py, rgap()) on their targets.py models.
PAPER_VALUES = {"cnn2_c1": (0, [0]), "cnn2_c2": (-1470, [-1470]), "cnn3_c1": (-2266, [0, -4533])}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", sorted(PAPER_VALUES))
def test_copa_index_reproduces_the_authors_values(name):
    index, deficits = PAPER_VALUES[name]
    report = security_report(name, condition=False)
    assert report.copa_index == index
    conv = [layer for layer in report.layers if layer.kind == "conv"]
    assert [layer.deficiency for layer in conv] == deficits
    assert sum(layer.contribution for layer in report.layers) == index
    assert report.layers[-1].kind == "fc" and report.layers[-1].weight == 0.0


def test_cnn3_c1_layer_counts():
    report = security_report("cnn3_c1", condition=False)
    first, second = report.layers[0], report.layers[1]
    # layer 0: conv 3→6 k3 on 3×32×32: A alone (5400 rows) determines the 3072 unknowns
    assert (first.unknowns, first.forward_rows, first.gradient_rows, first.padding_rows) == (3072, 5400, 162, 0)
    assert first.rank == 3072 and first.weight == 1.0
    # layer 1: conv 6→3 k4 s2 on 6×30×30: 588 + 288 rows, 3² = 9 of them dependent → rank 867
    assert (second.unknowns, second.forward_rows, second.gradient_rows, second.padding_rows) == (5400, 588, 288, 0)
    assert second.rank == 588 + 288 - 9 and second.deficiency == -4533
    assert second.weight == 0.5 and second.contribution == -2266  # round(-2266.5) = -2266 (half to even)
    assert second.rank_gap > 1e6  # the rank does not hinge on the tolerance
    assert report.normalised_score == pytest.approx(0.5 * 4533 / (3072 + 0.5 * 5400))


def test_index_does_not_depend_on_the_image_seed_or_delta_source():
    base = security_report("cnn3_c1", condition=False)
    other = security_report("cnn3_c1", seed=3, index=5, delta_source="random", condition=False)
    assert other.copa_index == base.copa_index
    assert [layer.rank for layer in other.layers] == [layer.rank for layer in base.layers]
    assert other.settings["delta_source"] == "random" and other.settings["index"] == 5


def test_copa_index_formula():
    assert copa_index([0, -4533], 3) == -2266
    assert copa_index([-1470], 2) == -1470
    assert copa_index([-3, -3, -3], 4) == round(-3.0) + round(-2.0) + round(-1.0)
    with pytest.raises(InvalidSpecError):
        copa_index([-1, -1], 2)


def test_padding_is_counted_as_unknowns_and_rows():
    report = security_report("cnn2_c5", condition=False)  # conv 3→3 k3 p1
    layer = report.layers[0]
    assert layer.unknowns == 3 * 34 * 34 and layer.padding_rows == 3 * 34 * 34 - 3 * 32 * 32
    assert layer.rank == layer.unknowns and report.copa_index == 0


def test_condition_number_matches_the_svd_of_u():
    from copa.layerwise.security import _reference_input

    model = create_model("cnn3_c1", in_shape=(3, 16, 16))
    report = security_report(model)
    # rebuild the layer systems from the same input (sample image 0) and take a full SVD of each U
    inputs, labels = _reference_input(model, "sample", 0, "image", 0, torch.device("cpu"))
    analysis = analyse_chain(model, inputs, labels)
    for la, layer in zip(analysis.conv_layers, report.layers):
        u = layer_system(la.weight, la.delta, la.pre_activation, la.grad_weight, la.geometry).matrix
        ref = numerical_rank(u)
        assert layer.rank == ref.rank
        expected = float(ref.singular_values[0] / ref.singular_values[ref.rank - 1])
        assert layer.condition_number == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_runs_on_every_chain_in_the_zoo():
    chains = [entry.name for entry in MODELS if entry.meta.get("is_chain")]
    assert {"cnn2_c1", "cnn4_c2", "cnn6", "cnn6-d"} <= set(chains)
    for name in chains:
        report = security_report(name, condition=False)
        conv = [layer for layer in report.layers if layer.kind == "conv"]
        assert conv and all(layer.deficiency <= 0 for layer in conv), name
        assert all(layer.rank <= min(layer.rows, layer.unknowns) for layer in conv), name
        assert report.copa_index == sum(layer.contribution for layer in conv), name
        assert 0.0 <= report.normalised_score <= 1.0, name
        assert (report.copa_index == 0) == (report.normalised_score == 0.0), name


def test_hidden_linear_layers_are_listed_but_not_counted():
    report = security_report("chain:c4k3:tanh fc32:tanh fc:identity", condition=False)
    kinds = [layer.kind for layer in report.layers]
    assert kinds == ["conv", "fc", "fc"]
    assert report.layers[1].deficiency == 0 and report.layers[0].weight == 1.0
    assert report.copa_index == report.layers[0].contribution


@pytest.mark.parametrize("name", ["convnet", "lenet-zhu", "cnn2_c1-relu"])
def test_non_chains_are_refused_with_a_reason(name):
    with pytest.raises(NotApplicableError, match="is not a chain"):
        security_report(name)


def test_report_serialises_and_prints():
    report = security_report("cnn2_c2")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["copa_index"] == -1470 and data["layers"][0]["deficiency"] == -1470
    assert data["layers"][0]["condition_number"] > 1
    table = report.to_table()
    assert table.count("\n|") >= 3 and "deficiency" in table and "COPA index: -1470" in table
    assert "normalised score" in table
    assert "propagated image fraction: 0.4785  (1470 of 3072 pixels" in table  # one conv: its own deficiency
    with pytest.raises(InvalidSpecError):
        security_report("cnn2_c2", delta_source="zeros")


def test_cli_security_prints_tables_and_writes_json(tmp_path, capsys):
    from copa.cli import main

    out = tmp_path / "security.json"
    assert main(["security", "--model", "cnn2_c2", "--model", "cnn2_c1", "--no-condition", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "COPA index: -1470" in printed and "COPA index: 0" in printed
    data = json.loads(out.read_text())
    assert [d["copa_index"] for d in data] == [-1470, 0]


@pytest.mark.parametrize("argv, message", [
    (["--model", "cnn2_c9"], "unknown model 'cnn2_c9'"),
    (["--model", "lenet-zhu"], "lenet-zhu is not a chain: conv layers 0, 1, 2 have a bias"),
    (["--model", "cnn2_c1", "--delta-source", "zeros"], "delta_source 'zeros' is invalid"),
    (["--model", "cnn2_c1", "--threads", "0"], "--threads 0 is invalid"),
    (["--model", "cnn2_c1", "--index", "3", "x"], "--index 'x' is invalid: expected integers"),
    (["--model", "cnn2_c1", "--index", "2", "99"], "index 99 is not in sample train (10 images"),
    (["--model", "cnn2_c1", "--index", "3,3"], "indices [3] are repeated"),
])
def test_cli_security_bad_inputs(tmp_path, capsys, argv, message):
    from copa.cli import main

    out = tmp_path / "s.json"
    assert main(["security", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# --- several images at once (security_reports / layer_ranks: weight-only work shared, issue 7) --------------------


@pytest.mark.parametrize("name, method", [
    ("cnn3_c1", "A_intᵀA_int"),  # layer 0: the tall-and-large Gram path; layer 1: svdvals
    ("cnn2_c2", "svdvals"),      # the SVD path only
])
def test_security_reports_equal_per_image_reports(cifar_npz, name, method):
    from copa.layerwise.security import security_reports

    spec, indices = f"npz:{cifar_npz}", [0, 1, 10000]
    batched = security_reports(name, dataset=spec, indices=indices, condition=False)
    assert method in batched[0].layers[0].rank_method
    assert [r.settings["index"] for r in batched] == indices
    for index, report in zip(indices, batched):
        single = security_report(name, dataset=spec, index=index, condition=False)
        assert (report.copa_index, report.normalised_score) == (single.copa_index, single.normalised_score)
        assert [(la.rank, la.deficiency, la.contribution, la.rank_method) for la in report.layers] == \
               [(la.rank, la.deficiency, la.contribution, la.rank_method) for la in single.layers]
        assert set(report.settings) == set(single.settings)
        assert {k: v for k, v in report.settings.items() if k != "seconds"} == \
               {k: v for k, v in single.settings.items() if k != "seconds"}


def test_layer_ranks_equal_per_delta_results(monkeypatch):
    from copa.layerwise import ConvGeometry, layer_rank, layer_ranks

    generator = torch.Generator().manual_seed(0)
    cases = [ConvGeometry(3, 4, 3, 1, 1, (8, 8)),   # padding: SVD path
             ConvGeometry(2, 3, 4, 2, 0, (10, 10)),  # stride: SVD path
             ConvGeometry(2, 8, 3, 1, 1, (4, 4)),    # K₁ of full column rank: nothing left to project
             ConvGeometry(1, 2, 3, 1, 0, (40, 40))]  # tall and large: the Gram path
    calls = []
    from copa.layerwise import ranks

    gram = ranks._interior_forward_gram
    monkeypatch.setattr(ranks, "_interior_forward_gram", lambda w, g: calls.append(g) or gram(w, g))
    for g in cases:
        weight = torch.randn(g.out_channels, g.in_channels, *g.kernel, generator=generator, dtype=torch.float64)
        deltas = torch.randn(3, g.out_channels, *g.output, generator=generator, dtype=torch.float64)
        deltas[2, :, ::2] = 0  # a rank-deficient K₁
        calls.clear()
        batched = layer_ranks(weight, deltas, g)
        assert len(calls) == (1 if g.input == (40, 40) else 0)  # the forward Gram is built once for the batch
        singles = [layer_rank(weight, d, g) for d in deltas]
        assert len(batched) == 3
        for got, ref in zip(batched, singles):
            assert (got.rank, got.padding_rank, got.gradient_rank, got.forward_rank, got.forward_method) == \
                   (ref.rank, ref.padding_rank, ref.gradient_rank, ref.forward_rank, ref.forward_method)
            assert got.gradient_tolerance == pytest.approx(ref.gradient_tolerance, rel=1e-12)
            assert got.forward_tolerance == pytest.approx(ref.forward_tolerance, rel=1e-12)
            torch.testing.assert_close(got.gradient_singular_values, ref.gradient_singular_values, rtol=1e-12,
                                       atol=1e-12 * float(ref.gradient_singular_values.max()))
        assert [r.rank for r in layer_ranks(weight, list(deltas.unsqueeze(1)), g)] == [r.rank for r in singles]
    assert "Gram" in batched[0].forward_method
    assert layer_ranks(weight, [], g) == []
    with pytest.raises(InvalidSpecError, match="do not fit the layer"):
        layer_ranks(weight, torch.zeros(2, 5), g)


def test_security_reports_of_random_deltas_and_bad_indices():
    from copa.layerwise.security import security_reports

    reports = security_reports("cnn2_c1", indices=[2, 0], delta_source="random", input_shape=(3, 16, 16))
    for report in reports:
        single = security_report("cnn2_c1", index=report.settings["index"], delta_source="random",
                                 input_shape=(3, 16, 16))
        assert [la.rank for la in report.layers] == [la.rank for la in single.layers]
        assert report.layers[0].condition_number == pytest.approx(single.layers[0].condition_number, rel=1e-9)
    with pytest.raises(InvalidSpecError, match="repeated"):
        security_reports("cnn2_c1", indices=[1, 1])
    with pytest.raises(InvalidSpecError, match="single number"):
        security_reports("cnn2_c1", indices=3)


def test_cli_security_with_several_indices(tmp_path, capsys):
    from copa.cli import main

    out = tmp_path / "security.json"
    argv = ["security", "--model", "cnn2_c2", "--input-shape", "3x16x16", "--no-condition", "--out", str(out)]
    assert main([*argv, "--index", "0", "3,5", "--index", "7"]) == 0
    printed = capsys.readouterr().out
    for index in (0, 3, 5, 7):
        assert f"sample train image {index} (delta source: image):\nCOPA security of cnn2_c2" in printed
    data = json.loads(out.read_text())
    assert [d["settings"]["index"] for d in data] == [0, 3, 5, 7]
    assert main([*argv, "--index", "5"]) == 0  # one index: the table alone, as before
    assert capsys.readouterr().out.startswith("COPA security of cnn2_c2")
    assert json.loads(out.read_text())["settings"]["index"] == 5


def _exact_free_dimensions(model) -> list[int]:
    """Per conv layer, the dimension of its input's directions that the gradients, the padding and the layers
    above leave undetermined, from dense null spaces (first order): layer i's unknowns v and the lost
    directions c of the layer above satisfy K v = 0, P v = 0, A v = diag(1/σ'(z_i)) N_{i+1} c."""
    from copa.layerwise.security import _reference_input

    inputs, labels = _reference_input(model, "sample", 0, "image", 0, torch.device("cpu"))
    conv = analyse_chain(model, inputs, labels).conv_layers
    basis, free = None, []
    for position in range(len(conv) - 1, -1, -1):
        la = conv[position]
        system = layer_system(la.weight, la.delta, la.pre_activation, la.grad_weight, la.geometry)
        u, forward = system.matrix, system.row_counts["forward"]
        if basis is not None and basis.shape[1]:
            channels, height, width = la.pre_activation.shape[1:]
            above = conv[position + 1].geometry
            interior = torch.zeros(channels, height + 2 * above.padding[0], width + 2 * above.padding[1],
                                   dtype=torch.bool)
            interior[:, above.padding[0]:above.padding[0] + height, above.padding[1]:above.padding[1] + width] = True
            lost = basis[interior.reshape(-1)] / la.activation.derivative(la.pre_activation).reshape(-1, 1)
            extra = torch.zeros(u.shape[0], basis.shape[1], dtype=u.dtype)
            extra[:forward] = -lost
            u = torch.cat([u, extra], dim=1)
        null = numerical_rank(u)
        _, _, vh = torch.linalg.svd(u, full_matrices=True)
        directions = vh[null.rank:].T[:system.matrix.shape[1]]
        if directions.shape[1]:
            left, values, _ = torch.linalg.svd(directions, full_matrices=False)
            directions = left[:, :int((values > values[0] * 1e-9).sum())]
        basis = directions
        free.append(basis.shape[1])
    return free[::-1]


# (spec on 3×8×8, whether its lost directions are in general position: unreached pixels of a strided layer
# are coordinate directions, the rows they spoil carry independent information, and the count undercounts)
PROPAGATION_CASES = [
    ("c4k3:tanh c2k3:tanh fc:identity", True),
    ("c2k3p1:tanh c6k3p1:tanh fc:identity", True),
    ("c6k3p1:tanh c2k3:tanh c8k2:tanh fc:identity", True),
    ("c2k3:tanh c12k2:tanh fc:identity", True),
    ("c8k3:tanh c4k3:tanh c2k2:tanh fc:identity", True),
    ("c4k3:tanh c8k3s2:tanh fc:identity", False),
    ("c3k3:sigmoid c1k3:tanh fc:identity", False),
]


@pytest.mark.parametrize("spec,general", PROPAGATION_CASES)
def test_propagated_free_dimensions_against_exact_null_spaces(spec, general):
    from copa.layerwise.security import propagated_free_dimensions

    model = create_model(f"chain:{spec}", in_shape=(3, 8, 8))
    report = security_report(model, condition=False)
    counted = propagated_free_dimensions(report.layers)
    assert counted == propagated_free_dimensions(report.to_dict()["layers"])
    exact = _exact_free_dimensions(model)
    conv = [layer for layer in report.layers if layer.kind == "conv"]
    assert counted[-1] == exact[-1] == -conv[-1].deficiency  # nothing above the last conv is lost
    assert all(c <= e for c, e in zip(counted, exact))  # a lower bound: at least that much is lost
    assert (counted == exact) == general
    assert all(c >= -layer.deficiency for c, layer in zip(counted, conv))


def test_propagated_free_dimensions_of_reports_without_forward_ranks():
    from copa.layerwise.security import propagated_free_dimensions

    layers = security_report("cnn3_c1", condition=False).to_dict()["layers"]
    assert propagated_free_dimensions(layers) is not None
    layers[1].pop("forward_rank")
    assert propagated_free_dimensions(layers) is None
