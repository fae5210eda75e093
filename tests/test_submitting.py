"""Submissions (issue "The leaderboard, published"): README's grey-guess goes from plug-in source to a verified
entry by docs/submitting.md's commands alone (run as written, in a scratch clone), and every way of getting it
wrong is one line, or a clear verdict, with nothing partial left on disk."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from test_readme import readme_blocks, scratch_clone

from copa.bench.submission import SUBMISSION_FILE, VERIFICATION_FILE, standard_differences, validated_config
from copa.cli import main

DOC = ROOT / "docs" / "submitting.md"
NOT_RUN = {
    "copa submit --plugin my_attack.py --attack grey-guess --name grey-guess --contact you@example.org":
        "the standard benchmark (six architectures × 8 CIFAR-10 images, R-GAP and the floor beside the attack): "
        "minutes (docs/submitting.md's measured time); its result is the committed example entry "
        "submissions/grey-guess/, checked by test_the_example_entry_is_verified_and_its_anchors_equal_the_published_records; "
        "the same path runs here with config/submission-smoke.yaml",
    "copa verify submissions/grey-guess --sample 8 --seed 0 --record-verdict":
        "verifies the standard entry of the command above (not run here); the example entry's verification.json is "
        "checked, and the smoke entry's verify runs here",
}
"""docs/submitting.md's commands that are not run here, with the reason."""
SMOKE = "grey-guess-smoke"
TABLES = ("records.csv", "leaderboard.md", "leaderboard.csv", "security.md", "security.csv", "config.yaml")
CONTRACT_SUBMISSION = {"name", "contact", "attack", "plugin_file", "plugin_sha256", "environment", "command"}
CONTRACT_VERIFICATION = {"verdict", "sample", "counts", "command", "date"}


def readme_plugin() -> str:
    """README's "Add your attack" example, the grey-guess plug-in, as its ```python block has it."""
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    return next(block for block in blocks if 'name = "grey-guess"' in block)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_of(folder: Path) -> list[dict[str, str]]:
    with (folder / "records.csv").open(newline="") as source:
        return list(csv.DictReader(source))


def environment() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def documented(tmp_path_factory):
    """docs/submitting.md's commands, each run as written and in order in a scratch clone (no entries in it yet),
    with README's grey-guess saved as my_attack.py: ``(clone, {command: completed process})``."""
    clone = scratch_clone(tmp_path_factory.mktemp("submitting"))
    for name in ("submissions", "my_attack.py"):  # the clone's own, not the checkout's (linked)
        if (clone / name).is_symlink():
            (clone / name).unlink()
    (clone / "my_attack.py").write_text(readme_plugin())
    done = {}
    for block in readme_blocks(DOC.read_text()):
        for command in block:
            if command in NOT_RUN:
                continue
            done[command] = subprocess.run(["bash", "-c", command], cwd=clone, env=environment(), capture_output=True,
                                           text=True)
            assert done[command].returncode == 0, f"{command}\n{done[command].stdout[-2000:]}\n" \
                                                  f"{done[command].stderr[-4000:]}"
    return clone, done


def test_every_command_of_the_doc_is_run_or_listed_with_a_reason():
    commands = [command for block in readme_blocks(DOC.read_text()) for command in block]
    assert set(NOT_RUN) <= set(commands) and all(reason.strip() for reason in NOT_RUN.values())
    assert any(c.startswith("copa check ") for c in commands) and any(c.startswith("copa submit ") for c in commands)
    assert "(docs/submitting.md)" in (ROOT / "README.md").read_text()
    assert "(submitting.md)" in (ROOT / "docs" / "trust.md").read_text()


@pytest.mark.slow
def test_grey_guess_goes_from_plugin_to_a_verified_entry_by_the_documented_commands(documented):
    clone, done = documented
    check = next(r for c, r in done.items() if c.startswith("copa check "))
    assert "grey-guess: 7 checks passed (declaration, bad input, applicability, output, observation untouched, " \
           "determinism, batch)" in check.stdout
    entry = clone / "submissions" / SMOKE
    for name in (*TABLES, "plots", "run", "plugin/my_attack.py", SUBMISSION_FILE, VERIFICATION_FILE):
        assert (entry / name).exists(), name
    assert not list((ROOT / "results").rglob(f"*{SMOKE}*"))  # entries live apart from the project's results

    submission = json.loads((entry / SUBMISSION_FILE).read_text())
    assert CONTRACT_SUBMISSION <= set(submission)
    assert submission["name"] == SMOKE and submission["attack"] == "grey-guess"
    assert submission["contact"] == "you@example.org"
    assert (entry / submission["plugin_file"]).read_text() == readme_plugin()
    assert submission["plugin_sha256"] == sha256(entry / submission["plugin_file"]) == sha256(clone / "my_attack.py")
    submit = next(c for c in done if c.startswith("copa submit "))
    assert submission["command"] == submit
    assert submission["environment"]["packages"]["torch"] and submission["environment"]["compute"]["cpu_model"]
    assert submission["config"]["file"] == "config/submission-smoke.yaml" and submission["config"]["standard"] is False
    assert any(d.startswith("dataset: 'sample'") for d in submission["config"]["differences"])
    assert submission["records"] == {"ok": 2}

    rows = rows_of(entry)
    assert sorted((r["attack"], r["index"], r["status"]) for r in rows) == [
        ("grey-guess", "0", "ok"), ("grey-guess", "1", "ok"), ("mean-image", "0", "ok"), ("mean-image", "1", "ok")]
    for row in rows:  # the full records travel with the folder, found from it
        assert not Path(row["record"]).is_absolute() and (entry / row["record"]).is_file()
        assert (entry / row["images"]).is_file()
    config = yaml.safe_load((entry / "config.yaml").read_text())
    assert config["attacks"] == ["mean-image", "grey-guess"] and config["results_dir"] == f"submissions/{SMOKE}"
    assert config["plugins"] == [f"submissions/{SMOKE}/plugin/my_attack.py"]
    grey = [r for r in rows if r["attack"] == "grey-guess"]
    assert all(float(r["psnr"]) < 20 for r in grey)  # a constant grey image: near the floor, scored by copa

    verification = json.loads((entry / VERIFICATION_FILE).read_text())
    assert CONTRACT_VERIFICATION <= set(verification)
    assert verification["verdict"] == "verified" and verification["sample"] == 2
    assert verification["counts"] == {"identical": 2, "within": 0, "different": 0, "tampered": 0, "cannot_verify": 0}
    assert verification["command"] == next(c for c in done if c.startswith("copa verify "))
    assert verification["plugin_sha256"] == submission["plugin_sha256"] and verification["standard"] is False
    assert {r["attack"] for r in verification["records"]} == {"grey-guess"}  # the submitted attack's records
    verify = next(r for c, r in done.items() if c.startswith("copa verify "))
    assert f"{SMOKE}: verified (2 of grey-guess's records rerun)" in verify.stdout

    site = clone / "site-preview"  # the entry on the site: its own page and badge, in the submitted entries' table
    page = (site / "entries" / f"submissions-{SMOKE}.html").read_text()
    assert "<h3>Verification: verified</h3>" in page and 'class="badge badge-verified"' in page
    index = (site / "index.html").read_text()
    assert f'<tr data-study="submissions/{SMOKE}"' in index and '<tr data-study="results"' in index


def _copy_entry(documented, tmp_path) -> Path:
    clone, _ = documented
    copy = tmp_path / "submissions" / SMOKE
    shutil.copytree(clone / "submissions" / SMOKE, copy)
    (copy / VERIFICATION_FILE).unlink()
    return copy


def _forget(entry: Path) -> None:
    """The in-process verify registered the entry's plug-in copy: forget it (the registry as before)."""
    from copa.attacks.sandboxed import forget_plugin

    forget_plugin(str((entry / "plugin" / "my_attack.py").resolve()))


@pytest.mark.slow
def test_tampered_records_fail_the_entry(documented, tmp_path, capsys):
    entry = _copy_entry(documented, tmp_path)
    rows = rows_of(entry)
    for row in rows:
        if row["attack"] == "grey-guess":
            row["psnr"] = "38.5"  # a better score than the grey image earns
    with (entry / "records.csv").open("w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    try:
        code = main(["verify", str(entry), "--sample", "8", "--record-verdict"])
    finally:
        _forget(entry)
    printed = capsys.readouterr().out
    # found on every row before any rerun (copa.bench.consistency): the entry fails with nothing rerun
    assert code == 1 and f"{SMOKE}: failed (0 of grey-guess's records rerun; records.csv has 2 inconsistent row(s) " \
                         f"and 0 missing, nothing rerun; first: row " in printed
    assert "grey-guess/0: tampered (published psnr 38.5, copa's scorer gives" in printed
    verification = json.loads((entry / VERIFICATION_FILE).read_text())
    assert verification["verdict"] == "failed" and verification["consistency"]["tampered"] == 2
    assert verification["sample"] == 0


@pytest.mark.slow
def test_a_plugin_other_than_the_submitted_one_fails_with_both_hashes(documented, tmp_path, capsys):
    entry = _copy_entry(documented, tmp_path)
    plugin = entry / "plugin" / "my_attack.py"
    submitted = sha256(plugin)
    plugin.write_text(plugin.read_text().replace("Hyperparameter(0.4,", "Hyperparameter(0.5,"))
    code = main(["verify", str(entry), "--sample", "8", "--record-verdict"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and len(printed) == 2
    assert printed[0] == f"failed: the plug-in's sha256 is {sha256(plugin)} (plugin/my_attack.py), submission.json " \
                         f"says {submitted}"
    verification = json.loads((entry / VERIFICATION_FILE).read_text())
    assert verification["verdict"] == "failed" and verification["sample"] == 0 and submitted in verification["reason"]


@pytest.mark.slow
def test_bad_inputs_are_one_line_and_leave_nothing(documented, tmp_path, monkeypatch, capsys):
    clone, _ = documented
    monkeypatch.chdir(clone)
    plugin = clone / "my_attack.py"
    smoke = str(ROOT / "config" / "submission-smoke.yaml")
    extensions = tmp_path / "with-extensions.yaml"
    extensions.write_text(yaml.safe_dump({**yaml.safe_load(Path(smoke).read_text()), "extensions": ["trusted.py"]}))
    missing_image = tmp_path / "missing-image.yaml"
    missing_image.write_text(yaml.safe_dump({**yaml.safe_load(Path(smoke).read_text()), "indices": [0, 99]}))
    base = ["submit", "--plugin", str(plugin), "--attack", "grey-guess", "--contact", "you@example.org",
            "--config", smoke]
    cases = [
        (["submit", "--plugin", "nowhere.py", "--attack", "grey-guess", "--name", "x", "--contact", "you@example.org"],
         "--plugin 'nowhere.py' does not exist or is not a .py file"),
        ([*base, "--name", SMOKE], f"--out 'submissions/{SMOKE}' exists (complete): an entry named '{SMOKE}' is there"),
        ([*base, "--name", "grey guess"], "--name 'grey guess' is invalid: expected 1 to 64 letters"),
        ([*base[:5], "--contact", "nobody", "--config", smoke, "--name", "g2"], "--contact 'nobody' is invalid"),
        ([*base, "--name", "g2", "--out", "results/g2"], "--out 'results/g2' is invalid: an entry's folder is "
                                                         "submissions/g2"),
        ([*base[:-1], str(extensions), "--name", "g2"], "names extensions ['trusted.py']: a submission's config names "
                                                        "none"),
        ([*base[:4], "grey-gues", *base[5:], "--name", "g2"],
         "--attack 'grey-gues' is not registered by plug-in 'my_attack.py': it registers 'grey-guess'"),
        ([*base[:4], "rgap", *base[5:], "--name", "g2"], "--attack 'rgap' is copa-bench's own attack"),
        (["verify", str(ROOT / "results"), "--record-verdict"], "is not a submission (no submission.json"),
    ]
    before = sorted(p.relative_to(clone).as_posix() for p in (clone / "submissions").rglob("*"))
    try:
        for argv, message in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and message in err[0], (argv, err)
        # a config whose problem only the workflow finds: the run starts, fails, and its folder goes
        assert main([*base[:-1], str(missing_image), "--name", "g3"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert [line for line in err if line.startswith("copa: error:")] == [err[-1]]
        assert "invalid config: indices [99] are not in sample train" in err[-1]
    finally:
        from copa.attacks.sandboxed import forget_plugin

        forget_plugin(str(plugin.resolve()))  # described in this process by the checks of --attack
    assert sorted(p.relative_to(clone).as_posix() for p in (clone / "submissions").rglob("*")) == before
    bad = tmp_path / "submissions" / "bad"
    shutil.copytree(clone / "submissions" / SMOKE, bad)
    submission = json.loads((bad / SUBMISSION_FILE).read_text())
    (bad / SUBMISSION_FILE).write_text(json.dumps({**submission, "plugin_file": "../../my_attack.py"}))
    assert main(["verify", str(bad), "--record-verdict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plugin_file '../../my_attack.py' is invalid: expected the path of the plug-in's .py " \
                             "file inside the folder" in err[0]


def test_the_standard_config_is_the_published_leaderboards_scenario():
    """config/submission.yaml scores an attack on the scenario of every attack in results/: every key the two
    validated configs share is equal but the run's own (title, folders, attacks and their settings) and the device
    (the published run said auto on a machine without a GPU; the standard says cpu)."""
    standard = validated_config(yaml.safe_load((ROOT / "config" / "submission.yaml").read_text()))
    published = yaml.safe_load((ROOT / "results" / "config.yaml").read_text())
    own = {"title", "out", "results_dir", "attacks", "attack_settings", "device", "verify", "plots"}
    shared = (set(standard) & set(published)) - own
    assert {"dataset", "split", "indices", "models", "label", "preprocess", "dtype", "seed", "model_seed",
            "defences", "local_steps", "metrics", "batch_size", "security", "input_shape"} <= shared
    assert {key: standard[key] for key in shared} == {key: published[key] for key in shared}
    assert set(standard["attacks"]) <= set(published["attacks"])
    assert standard_differences({**standard, "attacks": [*standard["attacks"], "theirs"]}) == []
    assert standard_differences({**standard, "indices": [0]}) == ["indices: [0] (standard: [0, 1, 2, 3, 4, 5, 6, 7])"]


EXAMPLE = ROOT / "submissions" / "grey-guess"


def test_the_example_entry_is_verified_and_its_anchors_equal_the_published_records():
    """The committed example (docs/submitting.md's standard command, then the maintainers' verify): the contract's
    files and keys, README's plug-in with its hash, the verdict, and the anchors — mean-image and R-GAP — with the
    config hashes and metrics of results/records.csv (same scenario; another CPU may round the last bits)."""
    submission = json.loads((EXAMPLE / SUBMISSION_FILE).read_text())
    verification = json.loads((EXAMPLE / VERIFICATION_FILE).read_text())
    assert CONTRACT_SUBMISSION <= set(submission) and CONTRACT_VERIFICATION <= set(verification)
    assert (EXAMPLE / submission["plugin_file"]).read_text() == readme_plugin()
    assert sha256(EXAMPLE / submission["plugin_file"]) == submission["plugin_sha256"] == verification["plugin_sha256"]
    assert submission["config"] == {**submission["config"], "file": "config/submission.yaml", "standard": True,
                                    "differences": []}
    assert submission["config"]["sha256"] == sha256(ROOT / "config" / "submission.yaml")
    assert verification["verdict"] == "verified" and verification["standard"] is True
    counts = verification["counts"]
    assert verification["sample"] == counts["identical"] + counts["within"] > 0
    assert counts["different"] == counts["tampered"] == counts["cannot_verify"] == 0
    rows = rows_of(EXAMPLE)
    assert submission["records"] == {"ok": sum(r["attack"] == "grey-guess" for r in rows)} == {"ok": 48}
    for name in TABLES:
        assert (EXAMPLE / name).is_file()
    assert not (ROOT / "results" / "grey-guess").exists()  # entries live apart from the project's results
    with (ROOT / "results" / "records.csv").open(newline="") as source:
        published = {(r["model"], r["attack"], r["index"]): r for r in csv.DictReader(source)}
    anchors = [r for r in rows if r["attack"] in ("mean-image", "rgap")]
    assert len(anchors) == 96
    for row in anchors:
        theirs = published[(row["model"], row["attack"], row["index"])]
        assert row["config_hash"] == theirs["config_hash"] and row["status"] == theirs["status"], row
        for metric in ("psnr", "ssim", "mse"):
            if row["status"] != "ok":
                continue
            ours, reference = float(row[metric]), float(theirs[metric])
            exact = metric in ("psnr", "mse") and float(row["psnr"]) >= 100 and float(theirs["psnr"]) >= 100
            assert exact or math.isclose(ours, reference, rel_tol=1e-6), (row["model"], row["attack"], metric)


def test_the_documented_data_snippet_writes_the_standards_images(tmp_path, monkeypatch, cifar_npz):
    """docs/submitting.md's snippet for a clone without ../shared/data, with torchvision's CIFAR-10 stood in for by
    the shared subset (no network here): the file it writes gives the standard's 8 images exactly as the subset."""
    import numpy as np
    import torchvision
    from PIL import Image

    from copa.data import load_images

    with np.load(cifar_npz) as arrays:
        order = {int(i): k for k, i in enumerate(arrays["train_index"])}
        images, labels, classes = arrays["train_images"], arrays["train_labels"], arrays["classes"]

    class StandIn:
        def __init__(self, root, train, download):
            assert train and download
            self.classes = [str(c) for c in classes]

        def __getitem__(self, i):
            k = order[i]
            return Image.fromarray(images[k].transpose(1, 2, 0)), int(labels[k])

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", StandIn)
    snippet = next(block for block in re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
                   if "savez" in block)
    (tmp_path / "clone").mkdir()
    monkeypatch.chdir(tmp_path / "clone")
    exec(compile(snippet, "docs/submitting.md", "exec"), {})
    written = tmp_path / "shared" / "data" / "cifar10_subset.npz"
    ours = load_images(f"npz:{written}", "train", list(range(8)))
    theirs = load_images(f"npz:{cifar_npz}", "train", list(range(8)))
    assert np.array_equal(ours.images.numpy(), theirs.images.numpy())
    assert np.array_equal(np.asarray(ours.labels), np.asarray(theirs.labels))


@pytest.mark.slow
@pytest.mark.skipif(__import__("copa.sandbox").sandbox.sandbox_tool()[0] is None, reason="no sandbox here")
def test_rows_the_sample_would_not_rerun_fail_the_entry(tmp_path, monkeypatch, capsys, cifar_npz):
    """Issue "copa verify checks every row": on a copy of the example entry, a row added, one dropped, one with
    another row's config_hash and one whose images.npz holds the ground truth — none of them the submitted attack's
    sampled records — are each reported, the entry fails before any rerun and verification.json counts them."""
    import numpy as np

    monkeypatch.chdir(ROOT)  # the entry's config names its data as ../shared/data/..., from the checkout
    entry = tmp_path / "submissions" / "grey-guess"
    shutil.copytree(EXAMPLE, entry)
    (entry / VERIFICATION_FILE).unlink()
    rows = rows_of(entry)

    def position(attack, model, index):
        return next(k for k, r in enumerate(rows) if (r["attack"], r["model"], r["index"]) == (attack, model, index))

    swapped = position("mean-image", "cnn3_c1", "2")
    npz = entry / Path(rows[swapped]["record"]).parent / "images.npz"
    with np.load(npz) as arrays:
        arrays = dict(arrays)
    np.savez(npz, **{**arrays, "reconstruction": arrays["target"]})  # the ground truth in place of the floor's image
    rehashed = position("rgap", "cnn2_c2", "5")
    rows[rehashed]["config_hash"] = rows[position("rgap", "cnn2_c2", "4")]["config_hash"]
    dropped = rows.pop(position("grey-guess", "cnn4_c1", "6"))
    rows.append({**rows[0], "index": "9"})  # an image the standard does not have
    with (entry / "records.csv").open("w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    try:
        code = main(["verify", str(entry), "--sample", "8", "--record-verdict"])
    finally:
        _forget(entry)
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert any(line.startswith(f"row {swapped + 1} none/cnn3_c1/mean-image/2: tampered (published ") for line in printed)
    assert f"row {rehashed + 1} none/cnn2_c2/rgap/5: hash mismatch (its config_hash is not that of config.yaml's " \
           f"scenario, attack, hyperparameters and seed for this row)" in printed
    assert f"row {len(rows)} none/cnn2_c1/mean-image/9: extra (instance 9 is not in config.yaml's design)" in printed
    assert f"none/{dropped['model']}/grey-guess/6: missing (config.yaml's design has it, records.csv has no row)" in printed
    assert printed[-1].startswith("grey-guess: failed (0 of grey-guess's records rerun; records.csv has 3 "
                                  "inconsistent row(s) and 1 missing, nothing rerun; first: row ")
    verification = json.loads((entry / VERIFICATION_FILE).read_text())
    assert CONTRACT_VERIFICATION <= set(verification) and verification["verdict"] == "failed"
    assert verification["sample"] == 0 and sum(verification["counts"].values()) == 0
    consistency = verification["consistency"]
    assert {key: consistency[key] for key in ("rows", "consistent", "hash_mismatch", "extra", "duplicate", "missing",
                                              "tampered", "stale")} == {
        "rows": 144, "consistent": 141, "hash_mismatch": 1, "extra": 1, "duplicate": 0, "missing": 1, "tampered": 1,
        "stale": 0}
    assert consistency["rescored"] == 134  # 136 ok rows less the dropped and the rehashed; the added one is no design row
