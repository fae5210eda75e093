"""Attacking a Flower deployment (issue "Realistic federated updates"): a real in-process Flower simulation
(flwr's simulation engine, 2 clients, 2 rounds of FedAvg on cnn2_c1 in float64, one CIFAR-10 train image
per client, one local SGD step) with copa's capture mod on the clients; the captured files round-trip
(the update is the gradient copa computes for that image and those weights) and R-GAP recovers each
client's image from its captured FedSGD update at ≥ 60 dB. Bad captures are refused with one line."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

flwr = pytest.importorskip("flwr", reason="the optional extra copa-bench[flower] is not installed")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from copa.attacks import create_attack  # noqa: E402
from copa.data import Preprocess, load_images  # noqa: E402
from copa.errors import InvalidSpecError  # noqa: E402
from copa.integrations.flower import capture_mod, update_payload  # noqa: E402
from copa.metrics import psnr  # noqa: E402
from copa.models import create_model  # noqa: E402
from copa.threat.observation_file import load_observation  # noqa: E402

from conftest import CIFAR_NPZ  # noqa: E402

LR = 0.1
MODEL = "cnn2_c1"
IMAGES = (0, 1)  # client (partition) p trains on CIFAR-10 train image IMAGES[p]


def _client_batch(partition: int):
    images = load_images(f"npz:{CIFAR_NPZ}", "train", [IMAGES[partition]])
    return Preprocess("center").apply(images.images.double()), images.labels


def _train(message: Message, context: Context) -> Message:
    """The client: one plain SGD step on its image (FedSGD), its weights back with num-examples."""
    torch.set_num_threads(1)
    model = create_model(MODEL).double()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    x, y = _client_batch(int(context.node_config["partition-id"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(message.content["config"]["lr"]))
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=message)


def _server(initial: dict[str, torch.Tensor], rounds: int) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=rounds,
                       train_config=ConfigRecord({"lr": LR}))

    return app


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"shared data not present: {CIFAR_NPZ}")
    import ray.cloudpickle
    from flwr.simulation import run_simulation

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's apps reach Ray's workers
    # COPA_FLOWER_CAPTURES=DIR keeps the captures in DIR (README: "Attacking a Flower deployment")
    out = Path(os.environ["COPA_FLOWER_CAPTURES"]) if os.environ.get("COPA_FLOWER_CAPTURES") else \
        tmp_path_factory.mktemp("flower")
    out.mkdir(parents=True, exist_ok=True)
    for earlier in out.glob("round-*-node-*.pt"):  # an earlier run's captures: this run's replace them
        earlier.unlink()
    client = ClientApp(mods=[capture_mod(out, model=MODEL, dtype="float64")])
    client.train()(_train)
    initial = create_model(MODEL, seed=0).double().state_dict()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(server_app=_server(initial, rounds=2), client_app=client, num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False,
                                                 "log_to_driver": False}})
    return out, initial


@pytest.mark.slow
def test_every_round_of_every_client_is_captured_as_an_observation_file(captured):
    out, _ = captured
    files = sorted(p.name for p in out.glob("*.pt"))
    assert len(files) == 4 and [f[:10] for f in files] == ["round-0001"] * 2 + ["round-0002"] * 2, files
    observation, source = load_observation(out / files[0])
    assert observation.update_kind == "gradient" and observation.labels is None and observation.batch_size == 1
    assert source["meta"]["server_round"] == 1 and source["meta"]["created_by"].startswith("copa.integrations")
    from copa.threat.observation_file import payload_checksum, read_payload

    for name in files:  # each written with its checksum (write_payload), which load_observation verifies
        payload = read_payload(out / name)
        assert payload["checksum"] == payload_checksum(payload)


def test_the_captured_update_is_the_gradient_of_the_clients_image(captured):
    out, initial = captured
    found = set()
    for path in sorted(out.glob("round-0001-*.pt")):
        observation, _ = load_observation(path)
        model = create_model(MODEL).double()
        model.load_state_dict(initial)  # round 1: the server sent its initial weights
        assert all(torch.equal(a, b) for a, b in zip(observation.model.state_dict().values(), initial.values()))
        for partition in range(len(IMAGES)):
            x, y = _client_batch(partition)
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            true = [p.grad for p in model.parameters()]
            if all(torch.allclose(g, t, rtol=1e-7, atol=1e-12) for g, t in zip(observation.gradients, true)):
                found.add(partition)
    assert found == {0, 1}  # each client's capture is its own image's gradient (to float64 rounding of the step)


def test_rgap_recovers_each_clients_image_from_its_captured_fedsgd_update(captured):
    out, _ = captured
    attack = create_attack("rgap")
    targets = [Preprocess("center").undo(_client_batch(p)[0]) for p in range(len(IMAGES))]
    best = []
    for path in sorted(out.glob("round-0001-*.pt")):
        observation, _ = load_observation(path)
        reconstruction = attack.reconstruct(observation, torch.Generator().manual_seed(0))
        image = observation.preprocess.undo(reconstruction.images)
        scores = [float(psnr(image, t)) for t in targets]
        best.append((max(scores), scores.index(max(scores))))
    assert sorted(i for _, i in best) == [0, 1]  # two clients, two different images
    assert all(db >= 60 or math.isinf(db) for db, _ in best), best


def test_a_reply_that_does_not_fit_the_declared_architecture_is_one_line(tmp_path):
    sent = create_model(MODEL).double().state_dict()
    returned = {k: v + 1e-3 for k, v in sent.items()}
    with pytest.raises(InvalidSpecError) as error:
        update_payload(sent, returned, model="cnn2_c2", batch_size=1, lr=LR)
    assert "\n" not in str(error.value) and "cnn2_c2" in str(error.value)
    wrong = dict(returned)
    wrong["weight_layers.0.weight"] = wrong["weight_layers.0.weight"][:1]
    with pytest.raises(InvalidSpecError, match=r"returned 'weight_layers.0.weight' of shape \(1, "):
        update_payload(sent, wrong, model=MODEL, batch_size=1, lr=LR)
    for bad in ({"lr": 0.0}, {"lr": math.nan}, {"local_steps": 0}, {"batch_size": 0}):
        with pytest.raises(InvalidSpecError, match=f"{next(iter(bad))}"):
            update_payload(sent, returned, **{"model": MODEL, "batch_size": 1, "lr": LR, **bad})
    with pytest.raises(InvalidSpecError, match="non-finite"):
        update_payload({**sent, "weight_layers.0.weight": sent["weight_layers.0.weight"] * math.nan},
                       returned, model=MODEL, batch_size=1, lr=LR)
    payload = update_payload(sent, returned, model=MODEL, batch_size=4, lr=LR, local_steps=3, local_batch=2)
    assert payload["update"] == {"kind": "weight-delta", "local_steps": 3, "local_lr": LR, "local_batch": 2}
    assert torch.allclose(payload["gradients"]["weight_layers.0.weight"],
                          torch.full_like(sent["weight_layers.0.weight"], 1e-3))
    assert not list(Path(tmp_path).iterdir())


def test_copa_attack_reads_a_captured_file_from_the_command_line(captured, tmp_path, capsys):
    """The auditor's path: ``copa attack --observation round-0002-node-N.pt`` (round 2: the weights FedAvg
    aggregated from round 1) writes a reconstruction without knowing the client's labels."""
    from copa.cli import main

    out, _ = captured
    path = sorted(out.glob("round-0002-*.pt"))[0]
    assert main(["attack", "--attack", "rgap", "--observation", str(path), "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0, capsys.readouterr().err
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert "record.json" in written, written
