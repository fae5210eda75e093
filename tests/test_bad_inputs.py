"""Every bad input of docs/reliability.md ("Bad inputs and their messages"): its exit status, its
message, nothing written; and the table itself, so that the documented messages cannot drift.

Each case runs once: through ``copa.cli.main`` in-process (what ``python -m copa`` runs; one case also
through a real subprocess), through ``snakemake -n`` on a one-line config in an empty directory, or
through the Python API. The table's placeholders: ``OUT`` is the output directory the command names,
``TMP`` a fresh temporary directory holding the case's files.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CIFAR_NPZ, ROOT

pytestmark = pytest.mark.usefixtures("single_thread")

DOC = ROOT / "docs" / "reliability.md"
SECTION = "## Bad inputs and their messages"
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")


# --------------------------------------------------------------------------------------------------
# Files the cases need, made in TMP


def tiny_npz(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
             train_labels=np.arange(4, dtype=np.int64))
    return path.read_bytes()


def truncated_npz(tmp: Path) -> None:
    raw = tiny_npz(tmp / "whole.npz")
    (tmp / "whole.npz").unlink()
    (tmp / "truncated.npz").write_bytes(raw[: len(raw) // 2])


def random_bytes_npz(tmp: Path) -> None:
    (tmp / "random.npz").write_bytes(np.random.default_rng(1).bytes(2048))


def corrupt_png(tmp: Path) -> None:
    folder = tmp / "photos" / "cat"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "ok.png")
    whole = (folder / "ok.png").read_bytes()
    (folder / "broken.png").write_bytes(whole[: len(whole) // 2])  # a download cut short


def _model(name: str):
    from copa.models import create_model

    return create_model(name)


def checkpoint_of_other_model(tmp: Path) -> None:
    torch.save(_model("cnn2_c2").state_dict(), tmp / "cnn2_c2.pt")


def pickled_model(tmp: Path) -> None:
    torch.save(_model("cnn2_c1"), tmp / "whole_model.pt")  # the module object, not its state_dict


def truncated_checkpoint(tmp: Path) -> None:
    torch.save(_model("cnn2_c1").state_dict(), tmp / "cut.pt")
    raw = (tmp / "cut.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(raw[: len(raw) // 2])


def zero_observation(**declared) -> dict:
    """An observation file's dict for cnn2_c1 with zero weights and gradients, overridden by ``declared``."""
    shapes = {"weight_layers.0.weight": (6, 3, 3, 3), "weight_layers.1.weight": (10, 5400),
              "weight_layers.1.bias": (10,)}
    payload = {"format": "copa-observation", "format_version": 1, "model": "cnn2_c1",
               "state_dict": {n: torch.zeros(s) for n, s in shapes.items()}, "parameter_names": list(shapes),
               "gradients": {n: torch.zeros(s) for n, s in shapes.items()}, "batch_size": 1,
               "input_shape": [3, 32, 32], "num_classes": 10, "preprocess": {"mode": "center", "mean": [], "std": []},
               "loss": "cross-entropy", "dtype": "float32"}
    return {**payload, **declared}


def huge_input_observation(tmp: Path) -> None:
    torch.save(zero_observation(input_shape=[3, 100000, 100000]), tmp / "huge-input.pt")


def huge_batch_observation(tmp: Path) -> None:
    torch.save(zero_observation(batch_size=10**12), tmp / "huge-batch.pt")


def nan_weight_observation(tmp: Path) -> None:
    payload = zero_observation()
    payload["state_dict"]["weight_layers.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(payload, tmp / "nan-weight.pt")


def bare_pickle_observation(tmp: Path) -> None:
    import pickle

    class Payload:  # what a hostile client could send: unpickling it would run a shell command
        def __reduce__(self):
            return (shutil.rmtree, ("/nonexistent-copa-test",))

    (tmp / "evil.pt").write_bytes(pickle.dumps({"state_dict": Payload()}))


def flipped_observation(tmp: Path) -> None:
    """A file written with its checksum, then 64 bytes of a weight's storage overwritten: 16 weights become 1e4
    (finite, so only the checksum can tell)."""
    import struct
    import zipfile

    from copa.threat.observation_file import write_payload

    path = write_payload(tmp / "flipped.pt", zero_observation())
    with zipfile.ZipFile(path) as archive:  # data/0: the first tensor's storage, state_dict's first weight
        entry = next(e for e in archive.infolist() if e.filename.endswith("/data/0"))
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_length + extra_length  # after the entry's local header (stored)
    raw[start:start + 64] = struct.pack("<16f", *[1e4] * 16)
    path.write_bytes(bytes(raw))


def renamed_observation(tmp: Path) -> None:
    torch.save(zero_observation(model="cnn2_c9", model_spec="c6k3:tanh fc:identity"), tmp / "renamed.pt")


LEADERBOARD_CONFIG = ("{dataset: sample, split: train, indices: [0], models: [cnn2_c1], attacks: [mean-image], "
                      "out: runs/published, seed: 0}")
RECORDS_HEADER = "model,attack,defence,index,status,config_hash,hyperparameters"


def leaderboard(tmp: Path, config: str = LEADERBOARD_CONFIG, records: str = "cnn2_c1,mean-image,none,0,ok,0,{}",
                header: str = RECORDS_HEADER) -> None:
    """A published leaderboard folder, TMP/leaderboard: config.yaml and records.csv (one record)."""
    folder = tmp / "leaderboard"
    folder.mkdir()
    (folder / "config.yaml").write_text(config + "\n")
    (folder / "records.csv").write_text(f"{header}\n{records}\n")


def leaderboard_bad_yaml(tmp: Path) -> None:
    leaderboard(tmp, config="dataset: sample\nattacks: [mean-image\nmodels: [cnn2_c1]")


def leaderboard_without_model_column(tmp: Path) -> None:
    leaderboard(tmp, header=RECORDS_HEADER.replace("model,", ""), records="mean-image,none,0,ok,0,{}")


def leaderboard_bad_index(tmp: Path) -> None:
    leaderboard(tmp, records="cnn2_c1,mean-image,none,0,ok,0,{}\ncnn2_c1,mean-image,none,abc,ok,0,{}")


def leaderboard_unknown_attack(tmp: Path) -> None:
    leaderboard(tmp, config=LEADERBOARD_CONFIG.replace("[mean-image]", "[mean-imag]"),
                records="cnn2_c1,mean-imag,none,0,ok,0,{}")


def empty_npz(tmp: Path) -> None:
    np.savez(tmp / "empty.npz", train_images=np.zeros((0, 3, 32, 32), dtype=np.uint8),
             train_labels=np.zeros((0,), dtype=np.int64))


def broken_plugins(tmp: Path) -> None:
    (tmp / "syntax.py").write_text("def f(:\n")
    (tmp / "raising.py").write_text("raise RuntimeError('boom')\n")


def unknown_metric() -> None:
    from copa.metrics import score_images

    x = torch.rand(1, 3, 32, 32)
    score_images(x, x, metrics=["psnrr"])


# --------------------------------------------------------------------------------------------------
# The cases


@dataclass(frozen=True)
class Case:
    id: str
    command: str                    # as documented: `copa ...`, `snakemake -n --configfile bad.yaml`, or Python
    expect: tuple[str, ...]         # the message must contain these: the bad value and what is accepted
    status: int | str = 2           # exit status, or the exception a Python call raises
    config: str = ""                # snakemake: bad.yaml, one line of YAML
    setup: Callable[[Path], None] | None = None
    call: Callable[[], None] | None = None
    needs: str = ""                 # "shared" (../shared/data), "no-cuda"

    @property
    def documented_input(self) -> str:
        return f"`{self.command}`" + (f" with bad.yaml `{self.config}`" if self.config else "")


GOOD = "dataset: sample, indices: [0], models: [cnn2_c1], attacks: [mean-image]"
CASES = [
    # names
    Case("unknown attack", "copa attack --attack mean-imag --model cnn2_c1 --out OUT",
         ("'mean-imag'", "Did you mean 'mean-image'?", "Known attacks:")),
    Case("unknown model", "copa attack --attack noise --model cnn2_c9 --out OUT",
         ("'cnn2_c9'", "Did you mean", "Known models:")),
    Case("unknown activation suffix", "copa attack --attack noise --model cnn2_c1-tanhh --out OUT",
         ("'cnn2_c1-tanhh'", "'-tanhh' is not accepted", "accepted suffixes are")),
    Case("unknown dataset", "copa attack --attack noise --model cnn2_c1 --dataset cifar11 --out OUT",
         ("'cifar11'", "Did you mean 'cifar10', 'cifar100'?", "Known datasets:")),
    Case("unknown metric", "copa.metrics.score_images(x, x, metrics=['psnrr'])",
         ("'psnrr'", "Did you mean 'psnr'?", "Known metrics:"), status="UnknownNameError", call=unknown_metric),
    # chain specs
    Case("chain spec without its final Linear", "copa attack --attack rgap --model 'chain:c6k3:tanh' --out OUT",
         ("'c6k3:tanh'", "the last layer must be the output Linear", "Accepted grammar:")),
    Case("chain spec with an unknown activation",
         "copa attack --attack rgap --model 'chain:c6k3:tanhh fc:identity' --out OUT",
         ("'tanhh'", "accepted are tanh, sigmoid", "Accepted grammar:")),
    Case("chain spec whose kernel exceeds its input",
         "copa attack --attack rgap --model 'chain:c6k40:tanh fc:identity' --out OUT",
         ("'c6k40:tanh'", "kernel 40 is larger than its padded input 32×32", "Accepted grammar:")),
    # indices
    Case("index out of range", "copa attack --attack noise --model cnn2_c1 --index 99 --out OUT",
         ("index 99", "sample train", "official indices present: 0–9")),
    Case("index absent from an npz subset",
         "copa attack --attack noise --model cnn2_c1 --dataset npz:../shared/data/cifar10_subset.npz --index 5000 "
         "--out OUT",
         ("index 5000", "official indices present: 0–931, 10000–10931"), needs="shared"),
    # data missing offline
    Case("dataset missing offline (CIFAR-10)",
         "copa attack --attack noise --model cnn2_c1 --dataset cifar10 --data-root TMP/data --out OUT",
         ("CIFAR-10 not found", "TMP/data/cifar-10-batches-py/", "--download", "npz:../shared/data/cifar10_subset.npz")),
    Case("dataset missing offline (MNIST)",
         "copa attack --attack noise --model cnn2_c1 --dataset mnist --data-root TMP/data --input-shape 1x28x28 "
         "--out OUT",
         ("MNIST train split not found", "train-images-idx3-ubyte[.gz]", "TMP/data/MNIST/raw/", "--download")),
    # corrupted files
    Case("truncated npz", "copa attack --attack noise --model cnn2_c1 --dataset npz:TMP/truncated.npz --out OUT",
         ("TMP/truncated.npz", "truncated or corrupted", "numpy.savez"), setup=truncated_npz),
    Case("npz that is not an archive",
         "copa attack --attack noise --model cnn2_c1 --dataset npz:TMP/random.npz --out OUT",
         ("TMP/random.npz", "no zip header", "numpy.savez"), setup=random_bytes_npz),
    Case("npz with no images", "copa attack --attack noise --model cnn2_c1 --dataset npz:TMP/empty.npz --out OUT",
         ("index 0 is not in npz:TMP/empty.npz train", "0 images"), setup=empty_npz),
    Case("npz path relative to another folder",
         "copa attack --attack noise --model cnn2_c1 --dataset npz:no/such/cifar10_subset.npz --out OUT",
         ("npz file no/such/cifar10_subset.npz not found", "relative to the current directory")),
    Case("truncated PNG in an image folder",
         "copa attack --attack noise --model cnn2_c1 --dataset folder:TMP/photos --out OUT",
         ("TMP/photos/cat/broken.png", "cannot be decoded", "replace or remove it"), setup=corrupt_png),
    # checkpoints
    Case("checkpoint of another architecture",
         "copa attack --attack noise --model cnn2_c1 --checkpoint TMP/cnn2_c2.pt --out OUT",
         ("TMP/cnn2_c2.pt", "does not fit model 'cnn2_c1'", "expected (6, 3, 3, 3), found (6, 3, 4, 4)"),
         setup=checkpoint_of_other_model),
    Case("checkpoint that is a pickled module, not a state_dict",
         "copa attack --attack noise --model cnn2_c1 --checkpoint TMP/whole_model.pt --out OUT",
         ("TMP/whole_model.pt", "copa.models.chains.ChainNet", "weights_only=True", "torch.save(model.state_dict(), PATH)"),
         setup=pickled_model),
    Case("truncated checkpoint", "copa attack --attack noise --model cnn2_c1 --checkpoint TMP/cut.pt --out OUT",
         ("TMP/cut.pt", "truncated or corrupted", "torch.save(model.state_dict(), PATH)"), setup=truncated_checkpoint),
    # observation files (from clients, who may be hostile)
    Case("observation file declaring a too-large input shape",
         "copa attack --attack rgap --observation TMP/huge-input.pt --out OUT",
         ("TMP/huge-input.pt", "'input_shape' is 3x100000x100000", "above the limit of 3145728 pixels",
          "--max-input-pixels"), setup=huge_input_observation),
    Case("observation file declaring a too-large batch",
         "copa attack --attack rgap --observation TMP/huge-batch.pt --out OUT",
         ("TMP/huge-batch.pt", "'batch_size' is 1000000000000", "above the limit of 4096", "--max-batch-size"),
         setup=huge_batch_observation),
    Case("chain spec of a huge model", "copa attack --attack noise --model 'chain:c999999999k3:tanh fc:identity' --out OUT",
         ("9026999990983 parameters", "above the limit of 200000000", "--max-parameters")),
    Case("input shape too large for a scenario",
         "copa attack --attack noise --model cnn2_c1 --input-shape 3x60000x60000 --out OUT",
         ("input shape 3x60000x60000", "10800000000 pixels", "above the limit of 3145728 pixels", "--max-input-pixels")),
    Case("observation file with a non-finite weight",
         "copa attack --attack rgap --observation TMP/nan-weight.pt --out OUT",
         ("TMP/nan-weight.pt", "'weight_layers.0.weight'", "1 non-finite value(s)", "must be finite"),
         setup=nan_weight_observation),
    Case("observation file that is a bare pickle", "copa attack --attack rgap --observation TMP/evil.pt --out OUT",
         ("TMP/evil.pt", "refused: not a weights-only file", "bare pickle", "the zip file torch.save writes"),
         setup=bare_pickle_observation),
    Case("observation file whose checksum does not match", "copa attack --attack rgap --observation TMP/flipped.pt "
         "--out OUT", ("TMP/flipped.pt", "checksum does not match its content", "changed or corrupted"),
         setup=flipped_observation),
    Case("observation file naming an unknown model beside a chain spec",
         "copa attack --attack rgap --observation TMP/renamed.pt --out OUT",
         ("TMP/renamed.pt", "key 'model'", "unknown model 'cnn2_c9'", "Known models:",
          "Accepted: a registered model", "or chain:SPEC, here 'chain:c6k3:tanh fc:identity'"),
         setup=renamed_observation),
    # attack hyperparameters
    Case("--set key the attack does not have", "copa attack --attack dlg --model cnn2_c1 --set iteratoins=5 --out OUT",
         ("'iteratoins'", "did you mean 'iterations'?", "accepted: history_size, iterations, lr, max_iter")),
    Case("--set value of the wrong type", "copa attack --attack dlg --model cnn2_c1 --set lr=fast --out OUT",
         ("lr='fast'", "expected float")),
    Case("--set value below its declared range", "copa attack --attack copa --model cnn2_c1 --set steps=-3 --out OUT",
         ("attack 'copa'", "steps='-3'", "below its minimum 0", "accepted are integers from 0 to 1000000")),
    Case("--set value an attack's own check refuses", "copa attack --attack copa --model cnn2_c1 --set lr=0 --out OUT",
         ("attack 'copa'", "lr=0.0", "expected > 0")),
    Case("--set step count beyond any run", "copa attack --attack dlg --model cnn2_c1 --set iterations=1e30 --out OUT",
         ("attack 'dlg'", "iterations='1e30'", "above its maximum 1000000")),
    Case("--set value out of range", "copa attack --attack dlg --model cnn2_c1 --set iterations=-5 --out OUT",
         ("iterations='-5'", "'dlg'", "accepted are integers from 1 to 1000000")),
    Case("--set step count above the attack's declared maximum",
         "copa attack --attack ig --model cnn2_c1 --set iterations=2000000 --out OUT",
         ("attack 'ig'", "iterations='2000000'", "above its maximum 1000000")),
    # device
    Case("CUDA requested where there is none", "copa attack --attack noise --model cnn2_c1 --device cuda --out OUT",
         ("'cuda'", "CUDA is not available", "--device cpu"), needs="no-cuda"),
    Case("threads below one", "copa attack --attack noise --model cnn2_c1 --threads 0 --out OUT",
         ("--threads 0", "accepted are integers from 1 to 1024")),
    Case("threads beyond any machine", "copa attack --attack noise --model cnn2_c1 --threads 99999999999 --out OUT",
         ("--threads 99999999999", "accepted are integers from 1 to 1024")),
    Case("empty device", "copa attack --attack noise --model cnn2_c1 --device '' --out OUT",
         ("device ''", "accepted are cpu, cuda or cuda:N")),
    Case("input too small for a metric", "copa attack --attack noise --model 'chain:c2k3:tanh fc:identity' "
         "--input-shape 3x8x8 --out OUT", ("3x8x8", "ssim", "at least 11×11")),
    # workflow configs: the JSON schema (snakemake's own message), then copa.bench.pipeline.check_config
    Case("plug-in file with a syntax error", "copa list models --plugin TMP/syntax.py",
         ("TMP/syntax.py", "syntax error at line 1"), setup=broken_plugins),
    Case("plug-in that raises on import", "copa list attacks --plugin TMP/raising.py",
         ("TMP/raising.py", "RuntimeError: boom"), setup=broken_plugins),
    Case("--out that cannot be written", "copa attack --attack noise --model cnn2_c1 --out /proc/copa-out",
         ("--out '/proc/copa-out'", "cannot be written")),
    Case("security --out that cannot be written", "copa security --model cnn2_c1 --out /proc/copa.json",
         ("--out '/proc/copa.json'", "cannot be written")),
    Case("empty --out", "copa attack --attack noise --model cnn2_c1 --out ''",
         ("--out ''", "empty path", "directory to write into")),
    Case("training epochs beyond the ceiling",
         "copa train --model cnn2_c1 --dataset sample --epochs 1000000000 --checkpoint-epochs 0 --out OUT",
         ("--epochs 1000000000", "accepted are integers from 0 to 1000")),
    Case("model seed out of range",
         "copa attack --attack noise --model cnn2_c1 --model-seed 100000000000000000000000 --out OUT",
         ("100000000000000000000000", "9223372036854775807")),
    Case("attack seed out of range", "copa attack --attack noise --model cnn2_c1 --seed -1 --out OUT",
         ("--seed -1", "from 0 to")),
    Case("index beyond any integer type",
         "copa attack --attack noise --model cnn2_c1 --index 100000000000000000000000 --out OUT",
         ("100000000000000000000000", "out of range")),
    Case("unknown defence", "copa attack --attack noise --model cnn2_c1 --defence prun --out OUT",
         ("'prun'", "Did you mean 'prune'?", "Known defences:")),
    Case("defence parameter out of range", "copa attack --attack noise --model cnn2_c1 --defence prune:p=1.5 --out OUT",
         ("p=1.5", "[0, 1)")),
    Case("defence parameter the defence does not have",
         "copa attack --attack noise --model cnn2_c1 --defence noise:sigma=1 --out OUT",
         ("'sigma'", "accepted: scale")),
    Case("DP-SGD after another defence",
         "copa attack --attack noise --model cnn2_c1 --defence prune --defence dp-gaussian --out OUT",
         ("'dp-gaussian' must come first", "'prune'")),
    Case("defence parameter given twice", "copa attack --attack noise --model cnn2_c1 --defence prune:p=0.5,p=0.6 "
         "--out OUT", ("'prune:p=0.5,p=0.6'", "'p' twice (p=0.5, p=0.6)", "each parameter once")),
    Case("defence with nothing after its colon",
         "copa attack --attack noise --model cnn2_c1 --defence prune: --out OUT",
         ("'prune:'", "nothing after ':'", "accepted are 'prune' (its defaults)", "key one of p")),
    # published leaderboards (copa verify): checked before any rerun
    Case("leaderboard config that is not YAML", "copa verify TMP/leaderboard",
         ("TMP/leaderboard/config.yaml", "not valid YAML", "at line 3, column 7"), setup=leaderboard_bad_yaml),
    Case("leaderboard records without a needed column", "copa verify TMP/leaderboard",
         ("TMP/leaderboard/records.csv", "lacks the column(s) model", "copa verify needs model, attack, index"),
         setup=leaderboard_without_model_column),
    Case("leaderboard record with an index that is not a number", "copa verify TMP/leaderboard",
         ("TMP/leaderboard/records.csv row 2", "index 'abc'", "an image index"), setup=leaderboard_bad_index),
    Case("leaderboard config naming an unknown attack", "copa verify TMP/leaderboard",
         ("TMP/leaderboard/config.yaml", "unknown attack 'mean-imag'", "Known attacks:"),
         setup=leaderboard_unknown_attack),
    Case("config key the schema does not have", "snakemake -n --configfile bad.yaml",
         ("'iterations' was unexpected",), status=1, config=f"{{{GOOD}, iterations: 5}}"),
    Case("config without a required key", "snakemake -n --configfile bad.yaml",
         ("'attacks' is a required property",), status=1,
         config="{dataset: sample, indices: [0], models: [cnn2_c1]}"),
    Case("config value outside the schema's choices", "snakemake -n --configfile bad.yaml",
         ("'valid'", "['train', 'test']"), status=1, config=f"{{{GOOD}, split: valid}}"),
    Case("config value of the wrong type", "snakemake -n --configfile bad.yaml",
         ("'0,1'", "'array'"), status=1,
         config="{dataset: sample, indices: '0,1', models: [cnn2_c1], attacks: [mean-image]}"),
    Case("config naming an unknown attack", "snakemake -n --configfile bad.yaml",
         ("'idgl'", "Did you mean 'idlg'", "Known attacks:"), status=1,
         config="{dataset: sample, indices: [0], models: [cnn2_c1], attacks: [idgl]}"),
    Case("config with a hyperparameter of the wrong type", "snakemake -n --configfile bad.yaml",
         ("attack_settings.dlg", "iterations='lots'", "expected int"), status=1,
         config="{dataset: sample, indices: [0], models: [cnn2_c1], attacks: [dlg], "
                "attack_settings: {dlg: {iterations: lots}}}"),
    Case("config asking for CUDA where there is none", "snakemake -n --configfile bad.yaml",
         ("device: 'cuda'", "CUDA is not available", "device: cpu or auto"), status=1,
         config=f"{{{GOOD}, device: cuda}}", needs="no-cuda"),
    Case("config naming an unknown defence", "snakemake -n --configfile bad.yaml",
         ("'prun'", "Did you mean 'prune'", "Known defences:"), status=1, config=f"{{{GOOD}, defences: [prun]}}"),
    Case("config whose out cannot be written", "snakemake -n --configfile bad.yaml",
         ("out '/proc/copa-out'", "cannot be written"), status=1, config=f"{{{GOOD}, out: /proc/copa-out}}"),
]
# The JSON-schema cases: the message names the offending key ("invalid config: KEY: ...", Snakefile).
SCHEMA_KEYS = {"config value outside the schema's choices": "split", "config value of the wrong type": "indices"}


# --------------------------------------------------------------------------------------------------
# Running a case


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def placeholders(text: str, tmp: Path) -> str:
    """Machine-specific paths -> the table's placeholders (TMP, resolved or not; ROOT, the checkout the commands
    run in)."""
    for path in {str(tmp.resolve()), str(tmp)}:
        text = text.replace(path, "TMP")
    return text.replace(str(ROOT), "ROOT")


def needs_met(case: Case) -> bool:
    if case.needs == "shared":
        return CIFAR_NPZ.is_file()
    if case.needs == "no-cuda":
        return not torch.cuda.is_available()
    return True


CHILD = """
import contextlib, io, json, os, sys
import torch
torch.set_num_threads(1)
from copa.cli import main
results = {}
for case_id, args, cwd in json.load(sys.stdin):
    os.chdir(cwd)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(args)
    results[case_id] = [status, err.getvalue(), out.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, tuple[Path, dict[str, int], int, str, str]]:
    """Every command-line case, run by copa.cli.main in one fresh interpreter (so that the registries hold
    what a user's `copa` holds, not what other tests registered): case -> (TMP, files before, status,
    stderr, stdout)."""
    jobs, dirs = [], {}
    for case in CASES:
        if not case.command.startswith("copa ") or not needs_met(case):
            continue
        tmp = tmp_path_factory.mktemp(re.sub(r"\W+", "-", case.id).strip("-"))
        if case.setup is not None:
            case.setup(tmp)
        dirs[case.id] = (tmp, snapshot(tmp))
        args = [arg.replace("OUT", str(tmp / "out")).replace("TMP", str(tmp))
                for arg in shlex.split(case.command)[1:]]
        jobs.append([case.id, args, str(ROOT)])  # run from the checkout: ../shared/data as in the README
    result = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(jobs), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    return {case_id: (*dirs[case_id], *runs[case_id]) for case_id in runs}


def snakemake_message(output: str) -> str:
    """What snakemake says after 'WorkflowError in file ...:' up to the blank line or traceback (one line)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("WorkflowError in file"))
    message = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("  File "):
            break
        message.append(line.strip())
    return " ".join(message)


def run_snakemake(case: Case, tmp: Path) -> tuple[int, str, str]:
    if SNAKEMAKE is None:
        pytest.skip("snakemake not installed")
    (tmp / "bad.yaml").write_text(case.config + "\n")
    workdir = tmp / "workdir"
    workdir.mkdir()
    result = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "-n",
                             "--configfile", str(tmp / "bad.yaml")], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert not any(workdir.iterdir()), f"snakemake wrote into its directory: {sorted(workdir.iterdir())}"
    return result.returncode, snakemake_message(output), output


# --------------------------------------------------------------------------------------------------
# The documented table


def table_rows() -> dict[str, dict[str, str]]:
    """The rows of the table under SECTION: case -> {input, status, message} (cells unescaped)."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC} has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.lower() for cell in split_row(rows[0])]
    assert header == ["case", "input", "exit status", "message"], header
    table = {}
    for line in rows[2:]:
        cells = split_row(line)
        assert len(cells) == 4, f"malformed row: {line}"
        table[cells[0]] = {"input": cells[1], "status": cells[2], "message": unquote(cells[3])}
    return table


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in cells]


def unquote(cell: str) -> str:
    return cell[1:-1] if len(cell) >= 2 and cell[0] == cell[-1] == "`" else cell


@pytest.fixture(scope="module")
def documented():
    return table_rows()


def test_the_table_has_one_row_per_case_with_its_input(documented):
    assert list(documented) == [case.id for case in CASES]
    for case in CASES:
        assert documented[case.id]["input"] == case.documented_input, case.id


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_with_its_documented_message_and_writes_nothing(case, documented, cli_runs,
                                                                        tmp_path_factory):
    if not needs_met(case):
        pytest.skip(f"shared data not present: {CIFAR_NPZ}" if case.needs == "shared" else "CUDA is available here")

    if case.command.startswith("copa "):
        tmp, before, status, err, out = cli_runs[case.id]
        assert out == "", "a failing command prints nothing on stdout"
        assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
        assert err.startswith("copa: error: "), err
        message = err.strip()
    else:
        tmp = tmp_path_factory.mktemp("case")
        before = snapshot(tmp)
        if case.call is not None:
            from copa.errors import CopaError

            with pytest.raises(CopaError) as raised:
                case.call()
            status, message = type(raised.value).__name__, str(raised.value)
        else:
            status, message, output = run_snakemake(case, tmp)
            if case.id in SCHEMA_KEYS:  # the key, in the one-line message
                assert message.startswith(f"invalid config: {SCHEMA_KEYS[case.id]}: ")
            (tmp / "bad.yaml").unlink()
            shutil.rmtree(tmp / "workdir")

    # (a) exit status, the bad value and what is accepted, nothing written
    assert status == case.status, message
    for fragment in case.expect:
        assert fragment in placeholders(message, tmp), f"{fragment!r} not in {message!r}"
    assert not (tmp / "out").exists()
    assert snapshot(tmp) == before, "files were written or changed"
    # (b) the documentation shows exactly this
    row = documented[case.id]
    assert row["status"] == str(status)
    assert row["message"] == placeholders(message, tmp)


@pytest.mark.slow
def test_the_real_command_line_prints_the_same_line_and_exits_2(tmp_path):
    """`python -m copa` in a subprocess: status 2, the documented line on stderr, nothing on stdout."""
    case = next(case for case in CASES if case.id == "unknown attack")
    args = [arg.replace("OUT", str(tmp_path / "out")) for arg in shlex.split(case.command)[1:]]
    result = subprocess.run([sys.executable, "-m", "copa", *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == table_rows()[case.id]["message"] + "\n"
    assert not (tmp_path / "out").exists()



def test_a_failed_download_names_the_files_and_leaves_no_empty_folders(tmp_path):
    """--download offline: the error says where to put the files, and the folders torchvision made are gone."""
    from dataclasses import replace

    from copa.data import torchvision_datasets
    from copa.errors import DataUnavailableError

    class Offline:
        def __init__(self, root, train, download):
            (Path(root) / "cifar-10-batches-py").mkdir(parents=True)
            raise OSError("<urlopen error [Errno -2] Name or service not known>")

    (tmp_path / "kept").mkdir()
    root = tmp_path / "kept" / "new" / "data"
    with pytest.raises(DataUnavailableError) as err:
        torchvision_datasets._download(replace(torchvision_datasets._TORCHVISION_DATASETS["cifar10"],
                                               dataset_class=Offline), root, "train")
    assert str(err.value).startswith("CIFAR-10 could not be downloaded (OSError: <urlopen error")
    assert f"expected {root}/cifar-10-batches-py/" in str(err.value)
    assert not (tmp_path / "kept" / "new").exists() and (tmp_path / "kept").is_dir()
