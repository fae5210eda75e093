"""Batched attack instances (issue 7): B instances in one vectorised computation equal B sequential runs.

* :class:`copa.lbfgs.BatchedLBFGS` follows ``torch.optim.LBFGS`` per instance (iterates, evaluation
  counts, stopping tests) on problems whose instances converge at different times;
* DLG / iDLG / IG: ``reconstruct_batch`` of B observations equals B ``reconstruct`` calls with the same
  generators (≤ 1e-5 in float32). DLG's objective with L-BFGS at lr 1 and no line search amplifies
  rounding by orders of magnitude per step (``torch.optim.LBFGS`` against itself with the start
  perturbed by 1e-15 differs by 2e-4 after two steps: docs/baselines.md, "Batched instances"), so DLG is
  compared over its first three evaluations in float32 and over a whole L-BFGS step (21 evaluations,
  19 curvature pairs) in float64. IG's signed Adam is bit-identical until rounding flips the sign of a
  near-zero gradient entry (on these images after 30–60 iterations); it is compared over 30 (three lr decays).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from copa.attacks import create_attack
from copa.errors import CopaError
from copa.attacks.gradmatch import GradientModel
from copa.attacks.lbfgs import BatchedLBFGS
from copa.threat import Scenario

pytestmark = pytest.mark.usefixtures("single_thread")


def _observations(cifar_npz, indices, model="lenet-zhu", dtype="float32", label_known=True, split="test", **kw):
    return [Scenario(model=model, dataset=f"npz:{cifar_npz}", split=split, indices=(i,), dtype=dtype,
                     label_known=label_known, **kw).build()[0] for i in indices]


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# --- L-BFGS -----------------------------------------------------------------------------------------


def _quadratics(B, n, dtype, spread):
    """B convex quadratics ½ xᵀA_b x − c_bᵀx, condition numbers 10^(0.5 + spread·b) (so instances stop at
    different times)."""
    gen = torch.Generator().manual_seed(0)
    mats, vecs = [], []
    for b in range(B):
        q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
        eig = torch.logspace(0, 0.5 + spread * b, n, dtype=torch.float64)
        mats.append(((q * eig) @ q.T).to(dtype))
        vecs.append(torch.randn(n, generator=gen, dtype=torch.float64).to(dtype))
    return torch.stack(mats), torch.stack(vecs)


# float32: well-conditioned instances only — on ill-conditioned ones one-ulp differences (x + t·d fused in
# torch's add_ with alpha, not in a per-instance step) grow past 1e-5 in both implementations alike
@pytest.mark.parametrize("dtype, spread, tol", [(torch.float64, 1.0, 1e-10), (torch.float32, 0.2, 1e-5)])
def test_batched_lbfgs_follows_torch_lbfgs_per_instance(dtype, spread, tol):
    B, n, steps = 4, 12, 6
    A, c = _quadratics(B, n, dtype, spread)
    start = torch.linspace(-1, 1, B * n, dtype=dtype).reshape(B, n)
    kwargs = dict(lr=0.5, max_iter=7, history_size=3, tolerance_grad=1e-5, tolerance_change=1e-9)

    def loss(x, b):
        return 0.5 * x @ A[b] @ x - c[b] @ x

    reference, reference_evals = [], []
    for b in range(B):
        x = start[b].clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([x], **kwargs)
        evals = [0]

        def closure(x=x, b=b, optimizer=optimizer, evals=evals):
            optimizer.zero_grad()
            value = loss(x, b)
            value.backward()
            evals[0] += 1
            return value

        for _ in range(steps):
            optimizer.step(closure)
        reference.append(x.detach())
        reference_evals.append(evals[0])

    x = start.clone().requires_grad_(True)
    optimizer = BatchedLBFGS([x], **kwargs)
    evals = torch.zeros(B, dtype=torch.long)

    def batched_closure(count):
        x.grad = None
        values = 0.5 * torch.einsum("bi,bij,bj->b", x, A, x) - (c * x).sum(1)
        values.sum().backward()
        evals.add_(count.long())
        return values.detach()

    active = torch.ones(B, dtype=torch.bool)
    for _ in range(steps):
        optimizer.step(batched_closure, active)
    torch.testing.assert_close(x.detach(), torch.stack(reference), rtol=0, atol=tol)
    if dtype == torch.float64:
        assert evals.tolist() == reference_evals
        assert len(set(reference_evals)) > 1  # the instances really stopped at different times
    else:  # near convergence, float32 rounding decides a stopping test one evaluation earlier or later
        assert all(abs(a - b) <= 1 for a, b in zip(evals.tolist(), reference_evals))


def test_one_instance_lbfgs_is_torch_lbfgs_bit_for_bit():
    """B = 1 runs torch.optim.LBFGS itself (the fast path): the same iterates and evaluations to the last bit,
    and an inactive instance is evaluated but never moved."""
    A, c = _quadratics(1, 9, torch.float64, 1.0)
    kwargs = dict(lr=0.5, max_iter=7, history_size=3)
    x_ref = torch.linspace(-1, 1, 9, dtype=torch.float64).requires_grad_(True)
    reference = torch.optim.LBFGS([x_ref], **kwargs)

    def closure():
        reference.zero_grad()
        value = 0.5 * x_ref @ A[0] @ x_ref - c[0] @ x_ref
        value.backward()
        return value

    x = x_ref.detach().clone()[None].requires_grad_(True)
    optimizer = BatchedLBFGS([x], **kwargs)
    counted = []

    def batched_closure(count):
        x.grad = None
        values = (0.5 * x[0] @ A[0] @ x[0] - c[0] @ x[0])[None]  # the reference's arithmetic
        values.sum().backward()
        counted.append(bool(count[0]))
        return values.detach()

    for _ in range(4):
        reference.step(closure)
        optimizer.step(batched_closure, torch.ones(1, dtype=torch.bool))
        assert torch.equal(x.detach()[0], x_ref.detach())
    assert all(counted) and len(counted) > 4
    before = x.detach().clone()
    optimizer.step(batched_closure, torch.zeros(1, dtype=torch.bool))
    assert torch.equal(x.detach(), before) and counted[-1] is False


def test_batched_lbfgs_leaves_inactive_instances_untouched():
    A, c = _quadratics(3, 5, torch.float64, 1.0)
    x = torch.ones(3, 5, dtype=torch.float64, requires_grad=True)
    optimizer = BatchedLBFGS([x])

    def closure(count):
        x.grad = None
        values = 0.5 * torch.einsum("bi,bij,bj->b", x, A, x) - (c * x).sum(1)
        values.sum().backward()
        return values.detach()

    optimizer.step(closure, torch.tensor([True, False, True]))
    assert torch.equal(x.detach()[1], torch.ones(5, dtype=torch.float64))
    assert not torch.equal(x.detach()[0], torch.ones(5, dtype=torch.float64))


# --- attacks: batched == sequential --------------------------------------------------------------


def _assert_same(sequential, batched, atol, flips=0.0):
    """Equal up to ``atol`` — except, with ``flips`` > 0, for at most that fraction of pixels of an instance,
    which may differ by up to 0.01: signed Adam (IG) takes sign(g), so a float32 rounding difference of one
    ulp in a gradient entry near 0 flips that pixel's step, and the trajectories part there (measured: lenet-zhu,
    IG 30 iterations, CIFAR-10 test image 0, 1 thread: one pixel 1.07e-3 apart, every other pixel equal)."""
    for s, b in zip(sequential, batched, strict=True):
        assert s.images.shape == b.images.shape
        difference = (s.images - b.images).abs()
        assert float((difference > atol).float().mean()) <= flips, float(difference.max())
        assert float(difference.max()) <= (0.01 if flips else atol)
        assert s.forward_evals == b.forward_evals and s.gradient_evals == b.gradient_evals
        assert (s.labels is None) == (b.labels is None)
        if s.labels is not None:
            assert torch.equal(s.labels, b.labels)
        assert (s.loss is None) == (b.loss is None)
        if s.loss is not None:
            assert s.loss == pytest.approx(b.loss, rel=1e-4, abs=atol)


@pytest.mark.parametrize("attack, dtype, overrides, atol, label_known", [
    ("dlg", "float32", {"iterations": 1, "max_iter": 2}, 1e-5, True),
    ("dlg", "float32", {"iterations": 1, "max_iter": 2}, 1e-5, False),
    ("idlg", "float32", {"iterations": 1, "max_iter": 2}, 1e-5, False),
    ("dlg", "float64", {"iterations": 1}, 1e-5, True),
    ("dlg", "float64", {"iterations": 1}, 1e-5, False),
    ("ig", "float32", {"iterations": 30, "restarts": 2}, 1e-5, True),
    ("ig", "float32", {"iterations": 30}, 1e-5, False),
])
def test_batched_attacks_equal_sequential_runs(attack, dtype, overrides, atol, label_known, cifar_npz):
    """Each instance of a batch equals its own run (DLG/iDLG to 1e-5; IG's signed steps: see _assert_same)."""
    observations = _observations(cifar_npz, [0, 1, 2, 3], dtype=dtype, label_known=label_known)
    instance = create_attack(attack, overrides)
    assert type(instance).batched
    seeds = [7, 8, 9, 10]
    sequential = [instance.reconstruct(o, g) for o, g in zip(observations, _generators(seeds))]
    batched = instance.reconstruct_batch(observations, _generators(seeds))
    _assert_same(sequential, batched, atol, flips=1e-3 if attack == "ig" else 0.0)
    assert not torch.equal(batched[0].images, batched[1].images)


@pytest.mark.slow
def test_batched_ig_on_a_batchnorm_model_equals_sequential_runs(cifar_npz):
    # float64: in float32 rounding flips a near-zero signed-gradient entry within 20 iterations here
    observations = _observations(cifar_npz, [4, 5, 6], model="convnet", input_shape=(3, 16, 16), dtype="float64")
    state = {k: v.clone() for k, v in observations[0].model.state_dict().items()}
    instance = create_attack("ig", {"iterations": 20})
    sequential = [instance.reconstruct(o, g) for o, g in zip(observations, _generators([1, 2, 3]))]
    batched = instance.reconstruct_batch(observations, _generators([1, 2, 3]))
    _assert_same(sequential, batched, 1e-5)
    for key, value in observations[0].model.state_dict().items():  # running statistics untouched
        assert torch.equal(value, state[key]), key


def test_instances_of_different_weights_are_not_batched(cifar_npz):
    a = _observations(cifar_npz, [0])[0]
    b = Scenario(model="lenet-zhu", dataset=f"npz:{cifar_npz}", split="test", indices=(1,), model_seed=1).build()[0]
    with pytest.raises(CopaError, match="weights differ"):
        GradientModel([a, b])
    c = dataclasses.replace(a, model_name="other")
    with pytest.raises(CopaError, match="model differ"):
        GradientModel([a, c])


def test_unbatched_attacks_run_their_instances_one_after_the_other(cifar_npz):
    observations = _observations(cifar_npz, [0, 1])
    instance = create_attack("noise")
    assert not type(instance).batched
    batched = instance.reconstruct_batch(observations, _generators([0, 1]))
    sequential = [instance.reconstruct(o, g) for o, g in zip(observations, _generators([0, 1]))]
    for s, b in zip(sequential, batched, strict=True):
        assert torch.equal(s.images, b.images)


# --- layer-wise attacks: R-GAP, COPA, COPA-GM -----------------------------------------------------------


@pytest.mark.parametrize("attack, model, overrides, stages", [
    ("rgap", "cnn4_c1", {}, ()),
    ("copa", "cnn4_c1", {"steps": 25}, ("objective",)),  # null-space stage at layers 1 and 2
    ("copa-gm", "cnn4_c1", {"steps": 10, "steps_layer1": 0, "steps_image": 40}, ("objective", "gm_objective")),
    # the authors' hybrid (a baseline plug-in): its gradient-matching stage at every layer, batched (issue 32)
    ("hybrid", "cnn4_c1", {"steps_image": 40, "steps_layer1": 20, "steps_deeper": 10},
     ("objective_initial", "objective_final", "cos_final", "linear_final")),
])
def test_batched_layerwise_attacks_equal_sequential_runs(attack, model, overrides, stages, cifar_npz):
    """Per layer: B systems solved with shared weight-only blocks, then one vectorised Adam run per stage."""
    from copa.attacks import load_plugins

    load_plugins()
    observations = _observations(cifar_npz, [0, 1, 2], model=model, split="train", input_shape=(3, 16, 16))
    instance = create_attack(attack, overrides)
    assert type(instance).batched
    sequential = [instance.reconstruct(o, g) for o, g in zip(observations, _generators([0, 0, 0]))]
    batched = instance.reconstruct_batch(observations, _generators([0, 0, 0]))
    _assert_same(sequential, batched, 1e-5)
    for s, b in zip(sequential, batched):
        for layer_s, layer_b in zip(s.info["layers"], b.info["layers"], strict=True):
            assert layer_s["rank"] == layer_b["rank"] and layer_s.get("gm_stage") == layer_b.get("gm_stage")
            for key in stages:
                if key in layer_s:
                    assert layer_b[key] == pytest.approx(layer_s[key], rel=1e-8, abs=1e-12)
    ran = {key for r in batched for layer in r.info["layers"] for key in layer}
    assert set(stages) <= ran  # the stages compared did run
    assert not torch.equal(batched[0].images, batched[1].images)


def test_the_null_space_projector_of_instances_of_different_ranks(cifar_npz):
    """Instances whose systems differ in rank share one padded basis; each projection equals its own."""
    from copa.layerwise import NullProjector, solve_backwards_batch

    observations = _observations(cifar_npz, [0, 1], model="cnn4_c1", split="train", dtype="float64",
                                 input_shape=(3, 16, 16))
    captured = {}

    def refine(problems, contexts):
        if problems[0].index == 1:
            captured["problems"] = problems
        return [(p.solution, {}) for p in problems]

    solve_backwards_batch(observations, refine)
    problems = captured["problems"]
    assert problems[0].systems.side == "rows"  # the matrix-free branch (per-instance δ in the operator)
    problems[1].solve_info = dataclasses.replace(problems[1].solve_info, rank=problems[1].solve_info.rank - 7)
    v = torch.randn(2, problems[0].geometry.unknowns, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    together = NullProjector(problems)(v)
    for b, problem in enumerate(problems):
        alone = problem.project_null(v[b])
        assert float((together[b] - alone).abs().max()) < 1e-12 * float(v[b].abs().max())
    problems[0].systems.batched_factorisations = True  # the GPU path: one batched eigh for both instances
    batched_eigh = NullProjector(problems)(v)
    assert float((batched_eigh - together).abs().max()) < 1e-10 * float(v.abs().max())
    # a projection onto the null space: U Π v = 0 for the instance of full rank
    residual = problems[0].systems.matvec(0, together[0])
    assert float(residual.abs().max()) < 1e-8 * float(problems[0].systems.matvec(0, v[0]).abs().max())


def test_shared_layer_systems_equal_separate_solves(cifar_npz):
    """LayerSystems (A, P and their Gram blocks built once for B instances) = one solve_dense per instance."""
    from copa import layerwise as linalg

    observations = _observations(cifar_npz, [0, 1], model="cnn4_c1", split="train", dtype="float64",
                                 input_shape=(3, 16, 16))
    captured = {}

    def refine(problems, contexts):
        captured.setdefault("layers", []).append(problems)
        return [(p.solution, {}) for p in problems]

    from copa.layerwise import solve_backwards_batch

    solve_backwards_batch(observations, refine)
    sides = set()
    for problems in captured["layers"]:
        systems = problems[0].systems
        sides.add(systems.side)
        for problem in problems:
            system = linalg.layer_system(problem.module.weight, problem.delta, problem.z, problem.grad_weight,
                                         problem.geometry)
            assert torch.equal(problem.system.matrix.to_dense(), system.matrix)
            gram, side = linalg.gram_matrix(system.matrix)
            assert side == systems.side
            assert torch.allclose(systems.gram(problem.instance), gram, rtol=0, atol=1e-12 * float(gram.abs().max()))
            x, info = linalg.solve_dense(system.matrix, system.rhs, method="normal")
            assert info.rank == problem.solve_info.rank
            assert float((x - problem.solution).abs().max()) < 1e-9 * max(1.0, float(x.abs().max()))
        # the GPU path (dense products, one batched eigh for all instances), here on CPU tensors
        dense = linalg.LayerSystems(systems._weight, problems[0].geometry, [p.delta for p in problems],
                                    [p.z for p in problems], [p.grad_weight for p in problems], backend="dense")
        for problem, (x, info) in zip(problems, dense.solve(), strict=True):
            assert info.rank == problem.solve_info.rank and info.method == "normal equations (batched eigh)"
            assert float((x - problem.solution).abs().max()) < 1e-8 * max(1.0, float(x.abs().max()))
            assert info.residual_norm == pytest.approx(problem.solve_info.residual_norm, rel=1e-3, abs=1e-12)
    assert sides == {"rows", "columns"}


# --- the runner: a cell's images as one batch ---------------------------------------------------------


def test_run_attacks_batches_a_cells_images_and_equals_single_runs(cifar_npz):
    from copa.bench import run_attack, run_attacks

    scenarios = [Scenario(model="lenet-zhu", dataset=f"npz:{cifar_npz}", split="test", indices=(i,)) for i in (0, 1, 2)]
    batched = run_attacks(scenarios, "ig", overrides={"iterations": 10}, seeds=[3, 3, 3])
    for scenario, (record, reconstruction, _) in zip(scenarios, batched, strict=True):
        single_record, single, _ = run_attack(scenario, "ig", overrides={"iterations": 10}, seed=3)
        assert record["status"] == "ok" and record["batch"]["instances"] == 3
        assert record["seconds"] == pytest.approx(record["batch"]["seconds"] / 3)
        assert "batch" not in single_record
        assert torch.equal(reconstruction.images, single.images)
        assert record["metrics"]["mean"]["psnr"] == single_record["metrics"]["mean"]["psnr"]
        assert record["evaluations"]["gradient"] == single_record["evaluations"]["gradient"] == 10 + 2
    sequential = run_attacks(scenarios, "ig", overrides={"iterations": 10}, seeds=[3, 3, 3], batch=False)
    assert all("batch" not in record for record, _, _ in sequential)


def test_a_failing_batch_is_rerun_one_instance_at_a_time(cifar_npz):
    from copa.attacks import Attack, Reconstruction
    from copa.bench import run_attacks

    class FailsWhenBatched(Attack):
        name = "fails-when-batched"
        batched = True

        def reconstruct_batch(self, observations, generators):
            raise RuntimeError("vectorised path broke")

        def reconstruct(self, observation, generator):
            if int(observation.labels[0]) == 3:
                raise RuntimeError("this instance fails alone too")
            shape = (observation.batch_size, *observation.input_shape)
            return Reconstruction(images=torch.zeros(shape, dtype=observation.dtype), labels=observation.labels)

    scenarios = [Scenario(model="lenet-zhu", dataset=f"npz:{cifar_npz}", split="test", indices=(i,)) for i in (0, 1)]
    labels = [int(s.build()[1].labels[0]) for s in scenarios]
    assert labels == [3, 8]  # CIFAR-10 test 0: cat, 1: ship
    results = run_attacks(scenarios, FailsWhenBatched(), record_failures=True)
    (first, _, _), (second, reconstruction, _) = results
    for record in (first, second):
        assert "vectorised path broke" in record["batch"]["failed"] and record["batch"]["rerun"] == "one at a time"
    assert first["status"] == "failed" and "fails alone too" in first["reason"]
    assert second["status"] == "ok" and reconstruction is not None
    with pytest.raises(RuntimeError, match="vectorised path broke"):
        run_attacks(scenarios, FailsWhenBatched())


def test_batchnorm_models_take_the_plain_path_whose_second_derivative_is_right(cifar_npz):
    """vmap's double backward through batch_norm disagrees with finite differences; autograd agrees."""
    from copa.attacks.gradmatch import cosine_distance

    observations = _observations(cifar_npz, [4, 5], model="convnet", input_shape=(3, 16, 16), dtype="float64")
    assert not GradientModel(observations).vectorised and GradientModel(_observations(cifar_npz, [0, 1])).vectorised
    model = GradientModel(observations)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 3, 16, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    labels = torch.stack([o.labels for o in observations])

    def loss(images):
        return cosine_distance(model(images, labels), model.targets, batched=True).sum()

    leaf = x.clone().requires_grad_(True)
    loss(leaf).backward()
    with torch.no_grad():
        central = (loss(x + 1e-6 * v) - loss(x - 1e-6 * v)) / 2e-6
    assert float((leaf.grad * v).sum()) == pytest.approx(float(central), rel=1e-7)


def test_attacks_declare_whether_they_batch(capsys):
    from copa.attacks import ATTACKS, load_plugins
    from copa.cli import main

    load_plugins()
    names = ("dlg", "idlg", "ig", "rgap", "copa", "copa-gm", "hybrid", "noise", "mean-image")
    declared = {name: ATTACKS.get(name).describe()["batched"] for name in names}
    assert declared == {**dict.fromkeys(names[:7], True), "noise": False, "mean-image": False}
    assert main(["list", "attacks"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert " batched " in lines["copa"] and " batched " not in lines["noise"]


def test_a_cell_of_a_batched_attack_runs_in_batches_and_resumes(tmp_path):
    import json

    from copa.bench.pipeline import run_cell

    config = {"dataset": "sample", "split": "train", "indices": [0, 1, 2], "models": ["lenet-zhu"], "attacks": ["ig"],
              "attack_settings": {"ig": {"iterations": 5}}, "dtype": "float32", "device": "cpu", "seed": 0,
              "batch_size": 2, "out": str(tmp_path)}
    records = tmp_path / "records"
    cell = run_cell(config, "lenet-zhu", "ig", records_dir=records, summary=tmp_path / "cell.json", log=lambda _: None)
    assert cell["counts"]["ok"] == 3 and cell["batch_size"] == 2
    batches = {i: json.loads((records / str(i) / "record.json").read_text())["batch"] for i in (0, 1)}
    assert batches[0]["members"] == batches[1]["members"] == [[0], [1]] and batches[0]["instances"] == 2
    assert "batch" not in json.loads((records / "2" / "record.json").read_text())  # the last one ran alone
    (records / "1" / "record.json").unlink()  # as if killed before its batch was written
    cell = run_cell(config, "lenet-zhu", "ig", records_dir=records, summary=tmp_path / "cell.json", log=lambda _: None)
    assert [e["reused"] for e in cell["records"]] == [True, False, True]


def test_the_leaderboard_header_names_the_attacks_that_batch():
    from copa.bench.pipeline import batch_description

    assert batch_description({"batch_size": None}, ["mean-image", "rgap", "copa", "ig"]) == (
        "the whole cell (rgap, copa, ig: a cell's images as one vectorised batch; the other attacks one by one)")
    assert batch_description({"batch_size": 4}, ["copa-gm"]).startswith("4 (copa-gm: ")
    assert batch_description({"batch_size": 4}, ["noise", "mean-image"]) == (
        "1 (none of these attacks batches its instances)")


def test_the_null_space_stage_runs_in_cache_sized_groups_with_the_same_result(cifar_npz, monkeypatch):
    """On CPU, instances whose projector bases fit CPU_STAGE_CACHE_BYTES are optimised in groups that fit it
    (a batch of out-of-cache bases was 2× slower than one by one); groups are independent instances."""
    from copa.attacks import copa as copa_attack
    from copa.layerwise import solve_backwards_batch

    observations = _observations(cifar_npz, [0, 1, 2], model="cnn4_c1", split="train", input_shape=(3, 16, 16))
    captured = {}

    def refine(problems, contexts):
        captured.setdefault(problems[0].index, problems)
        return [(p.solution, {}) for p in problems]

    solve_backwards_batch(observations, refine)
    problems = captured[1]
    per_instance = problems[0].systems.shape[0] * max(int(p.solve_info.rank) for p in problems) * 8
    monkeypatch.setattr(copa_attack, "CPU_STAGE_CACHE_BYTES", 2 * per_instance)
    assert copa_attack._stage_chunks(problems, [0, 1, 2]) == [[0, 1], [2]]
    monkeypatch.setattr(copa_attack, "CPU_STAGE_CACHE_BYTES", per_instance - 1)  # bases stream from memory anyway
    assert copa_attack._stage_chunks(problems, [0, 2]) == [[0, 2]]
    attack = create_attack("copa", {"steps": 20})
    whole = attack.reconstruct_batch(observations, _generators([0, 0, 0]))
    monkeypatch.setattr(copa_attack, "CPU_STAGE_CACHE_BYTES", per_instance)  # groups of one
    grouped = attack.reconstruct_batch(observations, _generators([0, 0, 0]))
    _assert_same(whole, grouped, 1e-10)
