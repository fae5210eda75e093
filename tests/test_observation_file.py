"""Observation files: `copa observe` then `copa attack --observation` reproduces `copa attack` bit for bit;
the file holds no images; bad files (missing keys, wrong shapes, gradients not matching the parameters,
truncated, arbitrary pickles, non-finite weights) are refused with a clear error naming the key; checkpoints
and observation files are loaded with weights_only=True only; small files declaring huge sizes are refused
before anything is allocated (Limits)."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from copa.cli import main
from copa.errors import CopaError
from copa.threat.observation_file import (KEYS, Limits, load_observation, observation_payload, read_payload,
                                          save_observation)
from copa.threat import Scenario

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SAMPLE = ["--model", "cnn2_c1", "--dtype", "float64", "--index", "3"]


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """`copa observe` on sample image 3 (cnn2_c1, float64) and `copa attack` directly on the same scenario."""
    tmp = tmp_path_factory.mktemp("observed")
    assert main(["observe", *SAMPLE, "--out", str(tmp / "obs.pt")]) == 0
    assert main(["attack", "--attack", "rgap", *SAMPLE, "--out", str(tmp / "direct")]) == 0
    return tmp


def test_round_trip_gives_the_direct_attacks_reconstruction_bit_for_bit(observed, tmp_path, capsys):
    code, out, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt",
                          "--out", tmp_path / "via-file")
    assert code == 0, err
    assert "rgap on cnn2_c1" in out and "no ground truth" in out
    with np.load(observed / "direct" / "images.npz") as direct, np.load(tmp_path / "via-file" / "images.npz") as via:
        assert via.files == ["reconstruction"]  # only the reconstruction: the file has no targets
        assert via["reconstruction"].dtype == np.float32
        assert np.array_equal(via["reconstruction"], direct["reconstruction"])  # bit-identical
        assert np.abs(direct["reconstruction"] - direct["target"]).max() < 1e-6  # rgap is exact here
    record = json.loads((tmp_path / "via-file" / "record.json").read_text())
    direct_record = json.loads((observed / "direct" / "record.json").read_text())
    assert record["status"] == "ok" and record["metrics"] is None and "no ground truth" in record["metrics_note"]
    assert record["scenario"] is None and record["source"]["kind"] == "observation file"
    assert record["source"]["sha256"] == __import__("hashlib").sha256((observed / "obs.pt").read_bytes()).hexdigest()
    assert record["source"]["meta"]["created_by"] == "copa observe"
    for key in ["attack", "hyperparameters", "seed", "observation", "attack_info", "evaluations", "attack_loss"]:
        assert record[key] == direct_record[key], key
    for key in ["seconds", "git_commit", "versions", "device", "finished_at", "config_hash"]:
        assert key in record, key
    assert (tmp_path / "via-file" / "reconstruction.png").stat().st_size > 0


def test_targets_score_the_observations_reconstruction_as_the_direct_run(observed, tmp_path, capsys):
    with np.load(observed / "direct" / "images.npz") as direct:
        np.savez(tmp_path / "targets.npz", images=direct["target"], labels=np.array([3]))
    code, out, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt",
                          "--targets", tmp_path / "targets.npz", "--out", tmp_path / "scored")
    assert code == 0, err
    record = json.loads((tmp_path / "scored" / "record.json").read_text())
    direct = json.loads((observed / "direct" / "record.json").read_text())
    assert record["metrics"]["per_image"]["psnr"] == pytest.approx(direct["metrics"]["per_image"]["psnr"], rel=1e-6)
    assert record["metrics"]["label_accuracy"] == 1.0
    assert record["source"]["targets"]["path"] == str(tmp_path / "targets.npz")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 3, 32, 32)))
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt",
                        "--targets", tmp_path / "bad.npz", "--out", tmp_path / "never")
    assert code == 2 and "'images' is float64 of shape (2, 3, 32, 32): expected float of shape (1, 3, 32, 32)" in err
    assert not (tmp_path / "never").exists()


def test_the_images_npz_that_copa_attack_writes_is_accepted_as_targets(observed, tmp_path, capsys):
    """copa's own images.npz (key ``target``, beside ``reconstruction`` and ``indices``) scores as well."""
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt",
                        "--targets", observed / "direct" / "images.npz", "--out", tmp_path / "scored")
    assert code == 0, err
    record = json.loads((tmp_path / "scored" / "record.json").read_text())
    direct = json.loads((observed / "direct" / "record.json").read_text())
    assert record["metrics"]["per_image"]["psnr"] == pytest.approx(direct["metrics"]["per_image"]["psnr"], rel=1e-6)
    np.savez(tmp_path / "other.npz", pictures=np.zeros((1, 3, 32, 32)))
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt",
                        "--targets", tmp_path / "other.npz", "--out", tmp_path / "never")
    assert code == 2 and "has no array 'images'" in err and "'target' of an images.npz" in err


def test_written_files_respect_the_umask(tmp_path):
    """Atomic writes give the mode a plain open() would (0o666 less the umask), not mkstemp's 0o600."""
    from copa.io import atomic_write_text

    before = os.umask(0o022)
    try:
        assert (atomic_write_text(tmp_path / "a.txt", "x").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (atomic_write_text(tmp_path / "b.txt", "x").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(before)


@pytest.mark.parametrize("index", [0, 10001])
def test_round_trip_on_the_shared_cifar_subset(cifar_npz, tmp_path, capsys, index):
    scenario = ["--model", "cnn2_c1", "--dtype", "float64", "--dataset", f"npz:{cifar_npz}", "--index", str(index)]
    assert _run(capsys, "observe", *scenario, "--out", tmp_path / "o.pt")[0] == 0
    assert _run(capsys, "attack", "--attack", "rgap", *scenario, "--out", tmp_path / "d")[0] == 0
    assert _run(capsys, "attack", "--attack", "rgap", "--observation", tmp_path / "o.pt", "--out", tmp_path / "f")[0] == 0
    with np.load(tmp_path / "d" / "images.npz") as d, np.load(tmp_path / "f" / "images.npz") as f:
        assert np.array_equal(d["reconstruction"], f["reconstruction"])


def test_the_file_holds_what_the_server_sees_and_no_images(observed):
    payload = read_payload(observed / "obs.pt")
    assert set(payload) == set(KEYS)
    assert payload["format"] == "copa-observation" and payload["format_version"] == 1
    assert payload["model"] == "cnn2_c1" and payload["model_spec"] == "c6k3:tanh fc:identity"
    assert payload["labels"].tolist() == [3] and payload["dtype"] == "float64" and payload["batch_size"] == 1
    assert payload["preprocess"] == {"mode": "center", "mean": [], "std": []}
    assert "index" not in json.dumps(payload["meta"]) and "indices" not in payload["meta"]
    observation, truth = Scenario(model="cnn2_c1", dtype="float64", indices=(3,)).build()
    images = [truth.images01, truth.preprocess.apply(truth.images01)]

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for value in obj.values():
                yield from tensors(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                yield from tensors(value)

    found = list(tensors(payload))
    assert len(found) == 7  # 3 weights, 3 gradients, the labels
    for tensor in found:
        for image in images:
            assert tensor.numel() != image.numel() or not torch.equal(tensor.reshape(image.shape).to(image), image)
    for name, grad in zip(observation.parameter_names, observation.gradients):
        assert torch.equal(payload["gradients"][name], grad)


def _edited(src, dst, edit):
    """``src`` edited by ``edit``, without its checksum (the edit changes the content: each case tests the check
    that names the edited key, as for a file written before checksums)."""
    payload = torch.load(src, weights_only=True)
    del payload["checksum"]
    edit(payload)
    legacy = payload.pop("_legacy", False)  # the pre-1.6 format allocates the sizes its pickle declares
    torch.save(payload, dst, _use_new_zipfile_serialization=not legacy)
    return dst


def _shared_nest(depth):
    """2**depth leaves in a few hundred bytes of pickle (each level holds the one below twice)."""
    value = ["x"]
    for _ in range(depth):
        value = [value, value]
    return value


BAD_FILES = [
    ("missing-key", lambda p: p.pop("gradients"), r"lacks the key\(s\) 'gradients'"),
    ("unknown-key", lambda p: p.__setitem__("images", torch.zeros(1)), r"unknown key\(s\) 'images': accepted are format"),
    ("version", lambda p: p.__setitem__("format_version", 7), r"key 'format_version' is 7: this copa reads version 1"),
    ("grad-missing", lambda p: p["gradients"].pop("weight_layers.1.bias"),
     r"key 'gradients' does not match 'parameter_names': no gradient for weight_layers\.1\.bias"),
    ("grad-shape", lambda p: p["gradients"].__setitem__("weight_layers.1.bias", torch.zeros(5, dtype=torch.float64)),
     r"key 'gradients'\['weight_layers\.1\.bias'\] has shape \(5,\): the parameter has shape \(10,\)"),
    ("grad-dtype", lambda p: p["gradients"].__setitem__("weight_layers.1.bias", torch.zeros(10)),
     r"key 'gradients'\['weight_layers\.1\.bias'\] has dtype torch\.float32: the file declares dtype 'float64'"),
    ("weights-shape", lambda p: p["state_dict"].__setitem__("weight_layers.0.weight",
                                                            torch.zeros(2, 3, 3, 3, dtype=torch.float64)),
     r"key 'state_dict' does not fit model 'cnn2_c1'.*weight_layers\.0\.weight: expected shape \(6, 3, 3, 3\), "
     r"found \(2, 3, 3, 3\)"),
    ("order", lambda p: p.__setitem__("parameter_names", p["parameter_names"][::-1]),
     r"key 'parameter_names' is weight_layers\.1\.bias, .*has the trainable parameters weight_layers\.0\.weight"),
    ("labels", lambda p: p.__setitem__("labels", torch.tensor([11])), r"key 'labels' holds \[11\]: expected class "
                                                                     r"indices in \[0, 10\)"),
    ("input-shape", lambda p: p.__setitem__("input_shape", [3, 32]), r"key 'input_shape' is \[3, 32\]: expected \[C, H, W\]"),
    ("loss", lambda p: p.__setitem__("loss", "mse"), r"key 'loss' is 'mse': accepted is 'cross-entropy"),
    ("model", lambda p: (p.__setitem__("model", "cnn2_c9"), p.__setitem__("model_spec", None)),
     r"key 'model': unknown model 'cnn2_c9'"),
    ("model-beside-spec", lambda p: p.__setitem__("model", "cnn2_c9"),  # the spec never replaces the name
     r"key 'model': unknown model 'cnn2_c9'\..*Accepted: a registered model \(an extension's model needs --extension\) or "
     r"chain:SPEC, here 'chain:c6k3:tanh fc:identity' \(the file's model_spec\)$"),
    ("chain-not-its-spec", lambda p: p.__setitem__("model", "chain:c6k5:tanh fc:identity"),
     r"key 'model_spec' is 'c6k3:tanh fc:identity', but model 'chain:c6k5:tanh fc:identity' here is "
     r"'c6k5:tanh fc:identity'"),
    ("checksum-format", lambda p: p.__setitem__("checksum", "md5:abc"),
     r"key 'checksum' is 'md5:abc': expected None or 'sha256:' and 64 lowercase hex digits"),
    ("spec", lambda p: p.__setitem__("model_spec", "c6k5:tanh fc:identity"),
     r"key 'model_spec' is 'c6k5:tanh fc:identity', but model 'cnn2_c1' here is 'c6k3:tanh fc:identity'"),
    ("preprocess", lambda p: p.__setitem__("preprocess", {"mode": "whiten"}),
     r"key 'preprocess': preprocess mode 'whiten' is invalid"),
    ("non-finite-weight", lambda p: p["state_dict"]["weight_layers.0.weight"].view(-1)[:2].copy_(
        torch.tensor([float("nan"), float("inf")])),
     (r"key 'state_dict'\['weight_layers\.0\.weight'\] holds 2 non-finite value\(s\) \(NaN or Inf\) of 162: "
      r"the weights the server sent must be finite")),
    ("batch-limit", lambda p: (p.__setitem__("batch_size", 5000), p.__setitem__("labels", None)),
     r"key 'batch_size' is 5000, above the limit of 4096 \(raise it with --max-batch-size\)$"),
    ("classes-limit", lambda p: (p.__setitem__("num_classes", 200_000)),
     r"key 'num_classes' is 200000, above the limit of 100000 \(raise it with Limits\(max_num_classes=\.\.\.\)\)"),
    ("meta-bomb", lambda p: p.__setitem__("meta", {"nest": _shared_nest(64)}),
     r"key 'meta' holds more than 100000 values or nests deeper than 32 levels"),
    ("meta-object", lambda p: p.__setitem__("meta", {"t": torch.zeros(1)}),
     r"key 'meta' holds a Tensor: expected JSON-compatible data"),
    ("legacy-format", lambda p: p.__setitem__("_legacy", True),
     r"cannot be read: truncated or corrupt, or not a torch\.save file \(BadZipFile: .*copa reads the zip format"),
]


@pytest.mark.parametrize("name, edit, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_refused_naming_the_key(observed, tmp_path, capsys, name, edit, message):
    path = _edited(observed / "obs.pt", tmp_path / f"{name}.pt", edit)
    with pytest.raises(CopaError, match=message):
        load_observation(path)
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--observation", path, "--out", tmp_path / "never")
    assert code == 2 and re.search(message, err) and str(path) in err
    assert not (tmp_path / "never").exists()


def _flip_first_weight(path, code="d"):
    """Overwrite the first 16 values of the archive's first tensor record (state_dict's first weight; ``code``:
    its struct format, d for float64) with 1e4, in place, as a transmission error or an edit by hand would:
    torch.load does not notice (it checks no CRC)."""
    import struct

    with zipfile.ZipFile(path) as archive:
        entry = next(e for e in archive.infolist() if e.filename.endswith("/data/0"))
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_length + extra_length
    values = struct.pack(f"<16{code}", *[1e4] * 16)
    raw[start:start + len(values)] = values
    path.write_bytes(bytes(raw))


def test_files_carry_a_checksum_that_a_changed_byte_breaks(observed, tmp_path, capsys):
    from copa.threat.observation_file import payload_checksum, write_payload

    payload = read_payload(observed / "obs.pt")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", payload["checksum"])
    assert payload_checksum(payload) == payload["checksum"]
    # canonical: neither the keys' order nor the tensors' memory layout changes it; any value does
    reordered = dict(reversed(list(payload.items())))
    reordered["state_dict"] = {k: v.t().contiguous().t() if v.dim() == 2 else v
                               for k, v in reversed(list(payload["state_dict"].items()))}
    assert payload_checksum(reordered) == payload["checksum"]
    changed = {**payload, "meta": {**payload["meta"], "created_by": "someone else"}}
    assert payload_checksum(changed) != payload["checksum"]
    nudged = {**payload, "gradients": {**payload["gradients"]}}
    name = next(iter(nudged["gradients"]))
    nudged["gradients"][name] = nudged["gradients"][name].clone()
    nudged["gradients"][name].view(-1)[0] += 1e-12
    assert payload_checksum(nudged) != payload["checksum"]

    # bytes flipped inside a weight's storage: finite weights, only the checksum can tell
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes((observed / "obs.pt").read_bytes())
    _flip_first_weight(flipped)
    assert read_payload(flipped)["state_dict"]["weight_layers.0.weight"].view(-1)[:16].tolist() == [1e4] * 16
    with pytest.raises(CopaError, match=r"flipped\.pt' was refused: its checksum does not match its content"):
        load_observation(flipped)
    code, out, err = _run(capsys, "attack", "--attack", "rgap", "--observation", flipped, "--out", tmp_path / "never")
    assert code == 2 and out == "" and err.count("\n") == 1 and "checksum does not match" in err
    assert not (tmp_path / "never").exists()

    # a file of before checksums: read, with one warning line on stderr
    old = tmp_path / "old.pt"
    torch.save({k: v for k, v in payload.items() if k != "checksum"}, old)
    capsys.readouterr()
    observation, _ = load_observation(old)
    assert observation.batch_size == 1
    assert capsys.readouterr().err == (f"copa: WARNING: observation file {str(old)!r} has no checksum: its content "
                                       f"could not be checked for corruption (files written by copa observe or the "
                                       f"Flower mod carry one)\n")
    load_observation(observed / "obs.pt")
    assert capsys.readouterr().err == ""  # a checked file: no warning
    # write_payload adds the checksum to a dict of one's own (and replaces a stale one)
    rewritten = write_payload(tmp_path / "rewritten.pt", {**payload, "checksum": "sha256:" + "0" * 64})
    assert read_payload(rewritten)["checksum"] == payload["checksum"]
    load_observation(rewritten)
    assert capsys.readouterr().err == ""


def test_truncated_corrupt_and_missing_files(observed, tmp_path):
    data = (observed / "obs.pt").read_bytes()
    for cut in (len(data) // 2, 100, 0):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(CopaError, match=r"observation file .*cut\.pt' cannot be read: truncated or corrupt"):
            load_observation(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(CopaError, match="cannot be read: truncated or corrupt"):
        load_observation(tmp_path / "text.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CopaError, match=r"holds a list: expected the dict of format 'copa-observation'"):
        load_observation(tmp_path / "list.pt")
    with pytest.raises(CopaError, match=r"observation file .*nope\.pt' does not exist"):
        load_observation(tmp_path / "nope.pt")


class Payload:
    """An arbitrary object whose unpickling would run a command: must never be unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_arbitrary_pickles_are_refused_never_unpickled(observed, tmp_path):
    marker = tmp_path / "unpickled"
    payload = read_payload(observed / "obs.pt")
    payload["meta"] = {"x": Payload(marker)}
    torch.save(payload, tmp_path / "evil-observation.pt")
    with pytest.raises(CopaError, match=r"evil-observation\.pt' was refused: it holds Python objects other than "
                                        r"tensors.*weights_only=True.*GLOBAL"):
        load_observation(tmp_path / "evil-observation.pt")
    torch.save({"weight_layers.0.weight": Payload(marker)}, tmp_path / "evil-checkpoint.pt")
    from copa.models import create_model

    with pytest.raises(CopaError, match=r"evil-checkpoint\.pt.*weights_only"):
        create_model("cnn2_c1", checkpoint=tmp_path / "evil-checkpoint.pt")
    assert not marker.exists()  # nothing was unpickled


def test_observe_and_attack_refuse_bad_options_and_write_nothing(observed, tmp_path, capsys):
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt", "--model", "cnn2_c1",
                        "--index", "2", "--out", tmp_path / "never")
    assert code == 2 and "--observation replaces the scenario: --model, --index cannot be used with it" in err
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--out", tmp_path / "never")
    assert code == 2 and "--model is required (or --observation FILE" in err
    code, _, err = _run(capsys, "attack", "--attack", "rgap", *SAMPLE, "--targets", "t.npz", "--out", tmp_path / "never")
    assert code == 2 and "--targets only goes with --observation" in err
    code, _, err = _run(capsys, "observe", "--model", "cnn2_c1", "--index", "99", "--out", tmp_path / "o.pt")
    assert code == 2 and "99" in err
    code, _, err = _run(capsys, "observe", "--model", "cnn2_c1", "--out", tmp_path)
    assert code == 2 and "is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing partial, no temporary files


def test_the_docs_client_example_writes_a_file_that_copa_attacks(tmp_path, capsys):
    """docs/observations.md's example, as written (torch only), then rgap on the file recovers its image."""
    doc = (ROOT / "docs" / "observations.md").read_text()
    example = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    imports = re.findall(r"^\s*(?:import|from)\s+(\w+)", example, re.M)
    assert set(imports) == {"torch"}, imports  # a client writes it with torch alone
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace = {"__name__": "__doc_example__"}
        exec(compile(example, "docs/observations.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    observation, source = load_observation(tmp_path / "client-step.pt")
    assert observation.labels.tolist() == [3] and source["meta"] == {"client": "my FL client", "round": 17}
    code, out, err = _run(capsys, "attack", "--attack", "rgap", "--observation", tmp_path / "client-step.pt",
                          "--out", tmp_path / "r")
    assert code == 0, err
    with np.load(tmp_path / "r" / "images.npz") as npz:
        error = np.abs(npz["reconstruction"] - namespace["images"].numpy()).max()
    assert error < 1e-3, error  # the client's private image, recovered from the file alone


def test_save_observation_round_trips_in_process(tmp_path):
    observation, _ = Scenario(model="lenet-zhu", dtype="float32", indices=(0, 1), label_known=False).build()
    save_observation(tmp_path / "o.pt", observation, meta={"note": "test"})
    loaded, source = load_observation(tmp_path / "o.pt")
    assert loaded.labels is None and loaded.batch_size == 2 and loaded.dtype == torch.float32
    assert loaded.parameter_names == observation.parameter_names
    assert all(torch.equal(a, b) for a, b in zip(loaded.gradients, observation.gradients))
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 observation.model.state_dict().values()))
    assert loaded.model.training and source["meta"] == {"note": "test"}
    assert observation_payload(loaded)["model_seed"] == 0


# --------------------------------------------------------------------------------------------------
# Resource bounds: small files that declare huge sizes


def _bomb(**declared):
    """A hand-made payload of one tiny tensor (shared by state_dict and gradients) that declares ``declared``."""
    tensor = torch.zeros(1)
    payload = {"format": "copa-observation", "format_version": 1, "model": "cnn2_c1",
               "state_dict": {"w": tensor}, "parameter_names": ["w"], "gradients": {"w": tensor},
               "batch_size": 1, "input_shape": [3, 32, 32], "num_classes": 10,
               "preprocess": {"mode": "center", "mean": [], "std": []}, "loss": "cross-entropy", "dtype": "float32"}
    return {**payload, **declared}


BOMBS = {
    "batch": (_bomb(batch_size=10**12),
              "key 'batch_size' is 1000000000000, above the limit of 4096 (raise it with --max-batch-size)"),
    "shape": (_bomb(input_shape=[3, 100000, 100000]),
              ("key 'input_shape' is 3x100000x100000 (30000000000 pixels, C·H·W), above the limit of 3145728 "
               "pixels (raise it with --max-input-pixels)")),
    "chain": (_bomb(model="chain:c100000k3:tanh fc:identity"),
              ("model 'chain:c100000k3:tanh fc:identity' (10 classes, input 3x32x32) has 902700010 parameters, "
               "above the limit of 200000000 (raise it with --max-parameters)")),
}

# Loads each file in a fresh interpreter whose address space may grow by 1 GiB at most (the chain alone
# would take 3.6 GB, the input shape's cnn2_c1 2.4 TB): an allocation fails there instead of swapping.
LIMITED_CHILD = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from copa.errors import CopaError
from copa.threat.observation_file import load_observation
size = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))
before, results = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, {}
for path in sys.argv[1:]:
    try:
        load_observation(path)
        results[path] = "loaded"
    except CopaError as err:
        results[path] = str(err)
results["rss_growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(results))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmSize from /proc (Linux)")
@pytest.mark.slow
def test_small_files_declaring_huge_sizes_are_refused_before_allocating(tmp_path):
    paths = {}
    for name, (payload, _) in BOMBS.items():
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(payload, paths[name])
        assert paths[name].stat().st_size < 2000, name
    result = subprocess.run([sys.executable, "-c", LIMITED_CHILD, *map(str, paths.values())],
                            check=False, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr  # no MemoryError, RuntimeError or kill
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (_, message) in BOMBS.items():
        assert results[str(paths[name])] == f"observation file {str(paths[name])!r}: {message}", name
    assert results["rss_growth_kib"] < 200 * 1024, results["rss_growth_kib"]


def test_limits_raised_by_the_caller_admit_what_the_defaults_refuse(observed, tmp_path, capsys):
    path = _edited(observed / "obs.pt", tmp_path / "big-batch.pt",
                   lambda p: (p.__setitem__("batch_size", 5000), p.__setitem__("labels", None)))
    with pytest.raises(CopaError, match="above the limit of 4096"):
        load_observation(path)
    observation, _ = load_observation(path, limits=Limits(max_batch_size=5000))
    assert observation.batch_size == 5000 and observation.labels is None
    assert "has no checksum" in capsys.readouterr().err  # the edited file has none (_edited)
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt",
                        "--max-input-pixels", "3000", "--out", tmp_path / "never")
    assert code == 2 and err == (f"copa: error: observation file '{observed / 'obs.pt'}': key 'input_shape' is 3x32x32 "
                                 f"(3072 pixels, C·H·W), above the limit of 3000 pixels (raise it with "
                                 f"--max-input-pixels)\n")
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt",
                        "--max-parameters", "54171", "--out", tmp_path / "never")
    assert code == 2 and "has 54172 parameters, above the limit of 54171 (raise it with --max-parameters)" in err
    code, _, err = _run(capsys, "attack", "--attack", "rgap", *SAMPLE, "--max-input-pixels", "3000", "--out",
                        tmp_path / "never")  # a scenario's sizes are bounded too, by the same flags
    assert code == 2 and err == ("copa: error: input shape 3x32x32 has 3072 pixels (C·H·W), above the limit of 3000 "
                                 "pixels (raise it with --max-input-pixels)\n")
    code, _, err = _run(capsys, "attack", "--attack", "rgap", "--observation", observed / "obs.pt",
                        "--max-batch-size", "0", "--out", tmp_path / "never")
    assert code == 2 and "--max-batch-size 0 is invalid: expected a positive integer" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-batch.pt"]


def test_file_and_unpacked_sizes_are_bounded_before_torch_load(tmp_path):
    limits = Limits(max_parameters=1)  # files up to 24 bytes + 64 MiB
    with (tmp_path / "sparse.pt").open("wb") as fh:
        fh.truncate(65 << 20)  # sparse: 65 MiB on paper, nothing on disk
    with pytest.raises(CopaError, match=r"sparse\.pt' is 68157440 bytes, above the limit of 67108888 bytes, 24 per "
                                        r"parameter \+ 64 MiB \(raise it with --max-parameters\)$"):
        load_observation(tmp_path / "sparse.pt", limits=limits)
    torch.save(_bomb(), tmp_path / "zip.pt")  # one record recompressed: 65 MiB of zeros in ~65 kB
    with zipfile.ZipFile(tmp_path / "zip.pt") as src, zipfile.ZipFile(tmp_path / "deflated.pt", "w") as dst:
        for info in src.infolist():
            data = bytes(65 << 20) if info.filename.endswith("data/0") else src.read(info)
            dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    assert (tmp_path / "deflated.pt").stat().st_size < 200_000
    with pytest.raises(CopaError, match=r"deflated\.pt' unpacks to \d+ bytes, above the limit of 67108888 bytes"):
        load_observation(tmp_path / "deflated.pt", limits=limits)


def test_a_model_that_cannot_be_built_on_the_meta_device_is_built_for_real(observed, monkeypatch):
    """A plug-in's factory may need real tensors: the shapes are then checked on the real model."""
    import copa.models
    import copa.threat.observation_file

    create_model = copa.models.create_model

    def needs_real_tensors(*args, **kwargs):
        if torch.get_default_device().type == "meta":
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return create_model(*args, **kwargs)

    monkeypatch.setattr(copa.threat.observation_file, "create_model", needs_real_tensors)  # the name it calls
    loaded, _ = load_observation(observed / "obs.pt")
    assert loaded.model.weight_layers[0].weight.device.type == "cpu"
    with pytest.raises(CopaError, match="has 54172 parameters, above the limit of 54171"):
        load_observation(observed / "obs.pt", limits=Limits(max_parameters=54171))
