"""`copa verify` (issue "Trust": verifiable leaderboards): a published leaderboard's records rerun from what
the leaderboard folder holds; identical on the CPU, and a tampered number, a changed default or a scenario that
no longer matches are each reported as such. And the partial leaderboard of a run still under way."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from copa.bench.leaderboard import records_from_cells
from copa.bench.pipeline import run_cell
from copa.bench.verify import verify_results, worth_retrying
from copa.cli import main


def _config(tmp_path):
    return {"dataset": "sample", "split": "train", "indices": [0, 1], "models": ["cnn2_c1"],
            "attacks": ["mean-image", "rgap"], "attack_settings": {}, "plugins": [], "label": "known",
            "preprocess": "center", "dtype": "float64", "input_shape": "3x32x32", "num_classes": None,
            "model_seed": 0, "seed": 0, "device": "cpu", "threads": 1, "data_root": None, "download": False,
            "retry_failed": True, "defences": ["none", "noise:scale=0.01"], "defence_seed": 0,
            "batch_size": None, "out": str(tmp_path / "out")}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A leaderboard folder as the workflow writes it: config.yaml and records.csv, the full records beside."""
    tmp_path = tmp_path_factory.mktemp("published")
    config = _config(tmp_path)
    cells = []
    for defence in config["defences"]:
        tag = "none" if defence == "none" else "noise-scale-0.01"
        for attack in config["attacks"]:
            summary = tmp_path / "out" / "cells" / tag / f"{attack}.json"
            run_cell(config, "cnn2_c1", attack, records_dir=tmp_path / "out" / "records" / tag / attack,
                     summary=summary, log=lambda _: None, setting=defence)
            cells.append(summary)
    results = tmp_path / "results"
    results.mkdir()
    records_from_cells(cells).to_csv(results / "records.csv", index=False)
    (results / "config.yaml").write_text(yaml.safe_dump(config))
    return results


@pytest.mark.slow
def test_a_published_leaderboard_reruns_identically(published):
    results = verify_results(published, sample=8, seed=0, log=lambda _: None)
    assert len(results) == 8  # every record: 2 defences × 2 attacks × 2 images
    assert {r.verdict for r in results} == {"identical"}, [r.detail for r in results]
    assert {(r.defence, r.attack) for r in results} == {(d, a) for d in ("none", "noise:scale=0.01")
                                                      for a in ("mean-image", "rgap")}


def test_tampered_numbers_changed_defaults_and_scenarios_are_named(published, tmp_path, capsys):
    rows = pd.read_csv(published / "records.csv")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "config.yaml").write_text((published / "config.yaml").read_text())
    floor = (rows["attack"] == "mean-image") & (rows["defence"] == "none") & (rows["index"] == 0)
    rows.loc[floor, "psnr"] = rows.loc[floor, "psnr"] + 0.01  # a published number nobody can reproduce
    mean = (rows["attack"] == "mean-image") & (rows["index"] == 1) & (rows["defence"] == "none")
    rows.loc[mean, "hyperparameters"] = json.dumps({"level": 0.4})  # the default has changed since
    noisy = (rows["attack"] == "rgap") & (rows["defence"] != "none") & (rows["index"] == 1)
    rows.loc[noisy, "config_hash"] = "0" * 64  # a record of another scenario
    rows.to_csv(tampered / "records.csv", index=False)
    out = tmp_path / "verification.md"
    code = main(["verify", str(tampered), "--sample", "8", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1 and printed.strip().splitlines()[-1] == "8 records: 5 identical, 1 different, 2 cannot verify"
    table = out.read_text()
    assert table.startswith(f"# Verification of {tampered}\n")  # the results folder, not the table's own
    assert "| none | cnn2_c1 | mean-image | 0 | different | psnr" in table
    # the whole-folder check: both rows whose hash no longer follows from config.yaml, on the summary's line
    assert "5 identical, 1 different, 2 cannot verify of 8 sampled records; every row of records.csv: 8 rows: " \
           "6 consistent, 2 hash mismatch; " in table
    assert "none/cnn2_c1/mean-image/1: hash mismatch (its hyperparameters column says {'level': 0.4}" in table
    assert "noise:scale=0.01/cnn2_c1/rgap/1: hash mismatch (its config_hash is not that of" in table
    assert "| none | cnn2_c1 | mean-image | 1 | cannot verify | the attack's hyperparameters are now" in table
    assert "| noise:scale=0.01 | cnn2_c1 | rgap | 1 | cannot verify | the scenario rebuilt" in table


def test_a_faked_score_is_tampered_not_identical(published, tmp_path, capsys):
    """Issue "Trust, round two": a plug-in patched copa's scorer and every record of its run reported 92.61 dB;
    `copa verify` re-imported it and said identical. Now the stored reconstruction is rescored by copa's own
    scorer (this process imports no plug-in), before any rerun."""
    rows = pd.read_csv(published / "records.csv")
    faked = tmp_path / "faked"
    faked.mkdir()
    (faked / "config.yaml").write_text((published / "config.yaml").read_text())
    mean = (rows["attack"] == "mean-image") & (rows["defence"] == "none")
    honest = float(rows.loc[mean, "psnr"].iloc[0])
    rows.loc[mean, "psnr"] = 92.61
    rows.to_csv(faked / "records.csv", index=False)
    code = main(["verify", str(faked), "--sample", "8"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and printed[-1] == "8 records: 6 identical, 2 tampered"
    line = next(p for p in printed if "mean-image/0: tampered" in p)
    assert "published psnr 92.61" in line and f"{honest:.6g}" in line


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["verify", str(tmp_path), "--sample", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a leaderboard folder: config.yaml is missing" in err[0]
    assert main(["verify", str(tmp_path), "--sample", "0"]) == 2
    assert "--sample 0 is invalid: expected a positive integer" in capsys.readouterr().err


def test_a_partial_leaderboard_from_the_records_so_far(tmp_path):
    """Rule partial (issue "full fidelity": a stopped or running workflow can build its leaderboard): the
    records that exist, marked partial with cells complete / total."""
    from copa.bench.leaderboard import write_partial

    config = _config(tmp_path)
    records = tmp_path / "out" / "records"
    run_cell(config, "cnn2_c1", "mean-image", records_dir=records / "none" / "cnn2_c1" / "mean-image",
             summary=tmp_path / "cells" / "a.json", log=lambda _: None)
    halfway = {**config, "indices": [0]}  # the second defence's cell stopped after its first image
    run_cell(halfway, "cnn2_c1", "mean-image", records_dir=records / "noise-scale-0.01" / "cnn2_c1" / "mean-image",
             summary=tmp_path / "cells" / "b.json", log=lambda _: None, setting="noise:scale=0.01")
    outputs = {"records_csv": tmp_path / "partial" / "records.csv", "leaderboard_md": tmp_path / "partial" / "lb.md"}
    counts = write_partial(records, tmp_path / "security", outputs=outputs, models=["cnn2_c1"],
                           attacks=["mean-image", "rgap"], defences={"none": "none",
                                                                     "noise-scale-0.01": "noise:scale=0.01"},
                           indices=[0, 1], title="toy")
    assert counts == {"cells_complete": 1, "cells": 4, "records": 3, "records_expected": 8}
    page = outputs["leaderboard_md"].read_text()
    assert page.startswith("# toy — PARTIAL: 1 of 4 cells complete, 3 of 8 records")
    assert len(pd.read_csv(outputs["records_csv"])) == 3
    with pytest.raises(Exception, match="no records yet"):
        write_partial(tmp_path / "nothing", tmp_path / "security", outputs=outputs, models=["cnn2_c1"],
                      attacks=["rgap"], defences={"none": "none"}, indices=[0])


def _folder(tmp_path, name, config, records):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.yaml").write_text(config)
    (folder / "records.csv").write_text(records)
    return folder


CONFIG = "{dataset: sample, split: train, indices: [0], models: [cnn2_c1], attacks: [mean-image], seed: 0}\n"
HEADER = "model,attack,defence,index,status,config_hash,hyperparameters\n"


@pytest.mark.parametrize("config, records, message", [
    ("dataset: [sample\n", HEADER + "cnn2_c1,mean-image,none,0,ok,0,{}\n",
     r"config\.yaml is not valid YAML: .* at line 2, column 1; accepted: the config\.yaml a workflow run wrote"),
    (CONFIG, "attack,index,status\nmean-image,0,ok\n",
     r"records\.csv lacks the column\(s\) model, config_hash, hyperparameters: copa verify needs model, attack, "
     r"index, status, config_hash, hyperparameters"),
    (CONFIG, HEADER + "cnn2_c1,mean-image,none,0,ok,0,{}\ncnn2_c1,mean-image,none,-1,ok,0,{}\n",
     r"records\.csv row 2 \(line 3\): index '-1' is invalid: accepted are an image index"),
    (CONFIG, HEADER + "cnn2_c1,mean-image,none,\"0,x\",ok,0,{}\n", r"row 1 \(line 2\): index '0,x' is invalid"),
    (CONFIG, HEADER + "cnn2_c1,mean-image,none,0,ok,0,{level\n", r"row 1 \(line 2\): hyperparameters '\{level' are "
                                                                 r"not JSON"),
    (CONFIG, HEADER + "cnn2_c1,mean-imag,none,0,ok,0,{}\n", r"records\.csv: unknown attack 'mean-imag'\. Did you mean"),
    # an unknown attack in the config: refused even where the sampled records would never build it (exit 0 before)
    (CONFIG.replace("[mean-image]", "[mean-image, idgl]"), HEADER + "cnn2_c1,idgl,prune,0,ok,0,{}\n",
     r"config\.yaml: unknown attack 'idgl'\. Did you mean 'idlg', 'ig'\?"),
])
def test_a_malformed_leaderboard_is_one_line_before_any_rerun(tmp_path, capsys, config, records, message):
    import re

    folder = _folder(tmp_path, "lb", config, records)
    assert main(["verify", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and re.search(message, captured.err), captured.err
    assert str(folder) in captured.err
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "records.csv"]


@pytest.mark.slow
def test_a_record_not_reproduced_here_is_rerun_under_the_other_kernel_sets(published, tmp_path, monkeypatch, capsys):
    """Issue "The leaderboard, published": records made on AVX2 differed in the last bits on an AVX-512 machine.
    A record this process does not reproduce is rerun under the record's kernel set (older records: each narrower
    set this CPU runs) in a child process, and the verdict says which reproduced it. Here the child is replaced by
    one that reproduces whatever it is given; the rerun itself is tested below where the CPU has two kernel sets."""
    from copa.bench import verify as verify_mod

    rows = pd.read_csv(published / "records.csv")
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    (shifted / "config.yaml").write_text((published / "config.yaml").read_text())
    target = (rows["attack"] == "mean-image") & (rows["defence"] == "none") & (rows["index"] == 0)
    rows.loc[target, "psnr"] = rows.loc[target, "psnr"] * (1 + 1e-12)  # a last-bit difference
    rows.drop(columns="cpu_capability").to_csv(shifted / "records.csv", index=False)  # as records made before it
    asked = []

    def child(results_dir, positions, capability, *, rtol, threads):
        asked.append((capability, list(positions)))
        return [(p, "identical", "psnr, ssim equal to the last bit") for p in positions]

    monkeypatch.setattr(verify_mod, "_verify_in_child", child)
    monkeypatch.setattr(verify_mod, "capabilities_here", lambda: ["AVX512", "AVX2", "DEFAULT"])
    results = verify_results(shifted, sample=8, log=lambda _: None)
    retried = [r for r in results if "under ATEN_CPU_CAPABILITY" in r.detail]
    assert [r.verdict for r in retried] == ["identical"] and asked[0][0] == "AVX2" and len(asked) == 1
    assert "under ATEN_CPU_CAPABILITY=avx2 (this CPU's own AVX512 kernels gave: psnr" in retried[0].detail
    assert all(r.verdict == "identical" for r in results)



@pytest.mark.skipif("AVX2" not in __import__("copa.provenance").provenance.capabilities_here()[1:],
                    reason="this CPU runs a single x86 kernel set")
@pytest.mark.slow
def test_records_made_under_avx2_verify_identical_on_a_wider_cpu(tmp_path):
    """The real thing: a leaderboard computed in a process under ATEN_CPU_CAPABILITY=avx2 and MKL's AVX2 path (as an
    AVX2 CPU runs it) verifies identical here (directly, or through the rerun under its recorded kernel set, which
    narrows both: copa.bench.verify.MKL_INSTRUCTIONS)."""
    import os
    import subprocess
    import sys

    config = {**_config(tmp_path), "attacks": ["rgap"], "defences": ["none"], "indices": [0]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    code = ("import yaml, sys\nfrom copa.bench.pipeline import run_cell\nfrom copa.bench.leaderboard import "
            "records_from_cells\nc = yaml.safe_load(open(sys.argv[1]))\n"
            "run_cell(c, 'cnn2_c1', 'rgap', records_dir=sys.argv[2] + '/records', summary=sys.argv[2] + '/cell.json', "
            "log=lambda _: None)\nrecords_from_cells([sys.argv[2] + '/cell.json']).to_csv(sys.argv[2] + "
            "'/results/records.csv', index=False)\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "config.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "config.yaml"), str(tmp_path)], check=True,
                   env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
    rows = pd.read_csv(tmp_path / "results" / "records.csv")
    assert list(rows["cpu_capability"]) == ["AVX2"]
    results = verify_results(tmp_path / "results", sample=1, log=lambda _: None)
    assert [r.verdict for r in results] == ["identical"], results[0].detail


def test_exact_recoveries_that_differ_in_rounding_are_within_tolerance(published, tmp_path):
    """R-GAP's exact recoveries (PSNR ≈ 290 dB in float64) differ between CPUs in the last digits of MSE and PSNR;
    above copa.bench.verify.EXACT_PSNR they are float64 rounding, not a different result."""
    rows = pd.read_csv(published / "records.csv")
    rounded = tmp_path / "rounded"
    rounded.mkdir()
    (rounded / "config.yaml").write_text((published / "config.yaml").read_text())
    exact = (rows["attack"] == "rgap") & (rows["defence"] == "none") & (rows["index"] == 0)
    assert float(rows.loc[exact, "psnr"].iloc[0]) >= 100
    rows.loc[exact, "psnr"] = rows.loc[exact, "psnr"] * (1 + 5e-3)  # as on another CPU: 288 vs 290 dB
    rows.to_csv(rounded / "records.csv", index=False)
    results = verify_results(rounded, sample=8, log=lambda _: None)
    verdict = next(r for r in results if r.attack == "rgap" and r.defence == "none" and r.index == 0)
    assert verdict.verdict == "within tolerance" and "both exact recoveries" in verdict.detail


def test_a_row_not_reproduced_names_the_cpu_and_kernels_it_was_made_with(published, tmp_path):
    """Records keep their CPU and kernel fingerprint (records.csv cpu_model, kernel_fingerprint); a rerun that is not
    identical says where they differ from this machine's, since MKL rounds float64 matrix products by CPU
    (docs/reproducibility.md, "Determinism"), and says nothing where they are the same."""
    from copa.provenance import cpu_model, kernel_fingerprint

    rows = pd.read_csv(published / "records.csv")
    assert set(rows["cpu_model"]) == {cpu_model()} and set(rows["kernel_fingerprint"]) == {kernel_fingerprint()}
    elsewhere = "Some Other CPU @ 1.00GHz"
    changed = (rows["attack"] == "mean-image") & (rows["defence"] == "none") & (rows["index"] == 1)
    rows.loc[changed, "ssim"] = rows.loc[changed, "ssim"] * (1 + 1e-15)
    cases = {"same kernels": ({"cpu_model": elsewhere}, None),
             "other kernels": ({"cpu_model": elsewhere, "kernel_fingerprint": "0/1/2"},
                               f"made on {elsewhere}, rerun on {cpu_model()}, whose float64 kernels compute other bits "
                               f"(kernel fingerprint 0/1/2 then, {kernel_fingerprint()} here)"),
             "made before fingerprints": ({"cpu_model": elsewhere, "kernel_fingerprint": None},
                                          f"made on {elsewhere}, rerun on {cpu_model()}: MKL rounds")}
    for name, (columns, clause) in cases.items():
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        (folder / "config.yaml").write_text((published / "config.yaml").read_text())
        rows.assign(**columns).to_csv(folder / "records.csv", index=False)
        results = verify_results(folder, sample=8, log=lambda _: None)
        assert sum(r.verdict == "within tolerance" for r in results) == 1, name
        for result in results:
            named = clause is not None and clause in result.detail
            assert named == (clause is not None and result.verdict != "identical"), (name, result.detail)
            assert "made on" not in result.detail or clause is not None, (name, result.detail)


def _copy_folder(published, tmp_path, name):
    """A copy of the published folder's config.yaml with its records.csv as a DataFrame, to change and write."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.yaml").write_text((published / "config.yaml").read_text())
    return folder, pd.read_csv(published / "records.csv")


def test_every_row_of_a_published_leaderboard_is_consistent(published):
    """Issue "copa verify checks every row": before the sample is rerun, each of the 8 rows' config_hash is rebuilt
    from config.yaml, the rows are config.yaml's design and every ok row's stored reconstruction is rescored."""
    rows = pd.read_csv(published / "records.csv")
    ok = int((rows["status"] == "ok").sum())
    lines = []
    results = verify_results(published, sample=1, log=lines.append)
    counts = results.consistency.counts()
    assert {k: v for k, v in counts.items() if k != "seconds"} == {
        "rows": 8, "consistent": 8, "hash_mismatch": 0, "extra": 0, "duplicate": 0, "missing": 0,
        "record_mismatch": 0, "tampered": 0, "stale": 0, "rescored": ok, "not_rescored": 0}
    assert re.fullmatch(rf"8 rows: 8 consistent; {ok} ok rows rescored \(\d+\.\d s\)", lines[0]) and len(results) == 1


def test_added_dropped_rehashed_and_swapped_rows_are_each_reported(published, tmp_path, capsys):
    """What a folder's author could do to the rows that are not sampled — add a row, repeat one, drop one, give one
    another row's config_hash, put the ground-truth images into a record's images.npz — is each found on every
    row, and `copa verify` exits 1 though the one sampled record reruns identical."""
    import numpy as np

    from copa.bench.consistency import record_folder

    folder, rows = _copy_folder(published, tmp_path, "edited")

    def where(attack, defence, index):
        return rows.index[(rows["attack"] == attack) & (rows["defence"] == defence) & (rows["index"] == index)][0]

    swapped = where("mean-image", "none", 1)
    record = record_folder(published, rows.loc[swapped, "record"])
    copy = tmp_path / "record-copy"
    shutil.copytree(record, copy)
    with np.load(copy / "images.npz") as arrays:
        arrays = dict(arrays)
    arrays["reconstruction"] = arrays["target"]  # the ground truth where the attack's reconstruction was
    np.savez(copy / "images.npz", **arrays)
    rows.loc[swapped, "record"] = str(copy / "record.json")
    rehashed = where("rgap", "noise:scale=0.01", 0)
    rows.loc[rehashed, "config_hash"] = rows.loc[where("rgap", "none", 0), "config_hash"]
    added = rows.loc[[where("mean-image", "none", 0)]].assign(index=5)  # an image config.yaml does not have
    repeated = rows.loc[[where("rgap", "none", 0)]]
    dropped = where("rgap", "none", 1)
    edited = pd.concat([rows.drop(index=dropped), added, repeated], ignore_index=True)
    edited.to_csv(folder / "records.csv", index=False)
    number = {name: int(k) + 1 for name, k in (("swapped", swapped), ("rehashed", rehashed))}
    number = {name: n - (n > dropped + 1) for name, n in number.items()}  # the rows after the dropped one move up
    seed = next(s for s in range(100)  # copa verify's draw: a seed whose sampled record is none of the edited ones
                if int(np.random.default_rng(s).choice(len(edited), size=1, replace=False)[0]) + 1
                not in (*number.values(), 8, 9))

    code = main(["verify", str(folder), "--sample", "1", "--seed", str(seed)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and printed[-1] == "1 records: 1 identical"
    assert f"row {number['swapped']} none/cnn2_c1/mean-image/1: tampered (published mse " in "\n".join(printed)
    assert f"row {number['rehashed']} noise:scale=0.01/cnn2_c1/rgap/0: hash mismatch (its config_hash is not that of " \
           f"config.yaml's scenario" in "\n".join(printed)
    assert "row 8 none/cnn2_c1/mean-image/5: extra (instance 5 is not in config.yaml's design)" in printed
    assert "row 9 none/cnn2_c1/rgap/0: duplicate (repeats row 3)" in printed
    assert "none/cnn2_c1/rgap/1: missing (config.yaml's design has it, records.csv has no row)" in printed
    summary = next(line for line in printed if line.startswith("9 rows: "))
    assert summary.startswith("9 rows: 5 consistent, 1 hash mismatch, 1 extra, 1 duplicate, 1 tampered; 1 of "
                              "config.yaml's design without a row;"), summary


def test_a_consistent_fake_is_caught_only_when_sampled(published, tmp_path):
    """The limit of the whole-folder check, as docs/trust.md states it: ground-truth images in images.npz with the
    metrics they earn in records.csv agree with copa's scorer; only the record's rerun (when sampled) finds them."""
    import numpy as np

    from copa.bench.consistency import check_consistency, record_folder
    from copa.bench.verify import _read

    folder, rows = _copy_folder(published, tmp_path, "faked")
    faked = rows.index[(rows["attack"] == "mean-image") & (rows["defence"] == "none") & (rows["index"] == 0)][0]
    copy = tmp_path / "record-copy"
    shutil.copytree(record_folder(published, rows.loc[faked, "record"]), copy)
    with np.load(copy / "images.npz") as arrays:
        arrays = dict(arrays)
    arrays["reconstruction"] = arrays["target"]
    np.savez(copy / "images.npz", **arrays)
    rows.loc[faked, ["record", "psnr", "ssim", "mse"]] = [str(copy / "record.json"), float("inf"), 1.0, 0.0]
    rows.to_csv(folder / "records.csv", index=False)
    config, read = _read(folder)
    assert check_consistency(folder, config, read, log=lambda _: None).consistent()
    rerun = verify_results(folder, sample=1, positions=[int(faked)], log=lambda _: None)
    assert rerun[0].verdict == "different"


def test_the_published_table_names_paths_below_the_working_directory_relatively(published, tmp_path, monkeypatch):
    """Session 17: `copa verify ... --out /abs/path` wrote the absolute path into a committed verification.md,
    and the committed site (built from it) was stale in every fresh clone."""
    folder = tmp_path / "results" / "copy"
    folder.mkdir(parents=True)
    for name in ("config.yaml", "records.csv"):
        (folder / name).write_text((published / name).read_text())
    monkeypatch.chdir(tmp_path)
    out = folder / "verification.md"
    assert main(["verify", str(folder), "--sample", "1", "--out", str(out)]) == 0
    table = out.read_text()
    assert table.startswith("# Verification of results/copy\n")
    assert "Command: `copa verify results/copy --sample 1 --out results/copy/verification.md`" in table
    assert str(tmp_path) not in table


def test_a_row_made_with_an_earlier_attack_file_is_stale_not_inconsistent(published, tmp_path, capsys):
    """records.csv keeps the SHA-256 of the attack's file each record was made with; a row whose attack file has
    changed since is named stale (the site marks its cell), and the folder stays consistent."""
    rows = pd.read_csv(published / "records.csv")
    assert rows["attack_source_sha256"].str.fullmatch("[0-9a-f]{64}").all()  # the workflow records it
    older = tmp_path / "older"
    older.mkdir()
    (older / "config.yaml").write_text((published / "config.yaml").read_text())
    rows.loc[(rows["attack"] == "rgap") & (rows["defence"] == "none"), "attack_source_sha256"] = "0" * 64
    rows.to_csv(older / "records.csv", index=False)
    out = tmp_path / "verification.md"
    assert main(["verify", str(older), "--sample", "1", "--out", str(out)]) == 0
    table = out.read_text()
    assert "every row of records.csv: 8 rows: 6 consistent, 2 stale;" in table
    assert "none/cnn2_c1/rgap/0: stale (made with an earlier version of the attack's source file (SHA-256 " \
           "0000000000…; now " in table


def test_a_trained_model_is_retrained_when_its_checkpoint_is_not_at_hand(tmp_path, capsys, single_thread):
    """A results folder publishes a trained model's checkpoints/ARCH@epochE.json, not its weights: copa verify
    trains the checkpoint as the rule train does and reruns on it only if its losses and accuracy are the published
    ones to the last bit; otherwise (or with nothing published to compare) the rows cannot be verified. One torch
    thread, as the workflow's jobs and copa verify run (float32 sums depend on the thread count)."""
    from copa.bench.pipeline import checkpoint_file, train_checkpoint

    config = {**_config(tmp_path), "models": ["cnn2_c1@epoch1"], "attacks": ["mean-image"], "defences": ["none"],
              "training": {"max_images": 16, "batch_size": 8}}
    checkpoint = Path(checkpoint_file(config, "cnn2_c1", 1))
    train_checkpoint(config, "cnn2_c1", 1, out_dir=checkpoint.parent, log=None)
    run_cell(config, "cnn2_c1@epoch1", "mean-image", records_dir=tmp_path / "records", summary=tmp_path / "cell.json",
             log=lambda _: None)
    results = tmp_path / "results"
    (results / "checkpoints").mkdir(parents=True)
    records_from_cells([tmp_path / "cell.json"]).to_csv(results / "records.csv", index=False)
    (results / "config.yaml").write_text(yaml.safe_dump(config))
    published = results / "checkpoints" / "cnn2_c1@epoch1.json"
    shutil.copy(checkpoint.with_suffix(".json"), published)
    shutil.rmtree(tmp_path / "records")  # as in a fresh clone: neither the records nor the checkpoint
    shutil.rmtree(checkpoint.parent)

    verdicts = verify_results(results, sample=2, log=print)
    assert [v.verdict for v in verdicts] == ["identical", "identical"], [v.detail for v in verdicts]
    assert "training it as the workflow's rule train does" in capsys.readouterr().out
    assert checkpoint.is_file()

    meta = json.loads(published.read_text())
    published.write_text(json.dumps({**meta, "test_loss": meta["test_loss"] * (1 + 1e-15)}))
    shutil.rmtree(checkpoint.parent)
    verdicts = verify_results(results, sample=2, log=lambda _: None)
    assert {v.verdict for v in verdicts} == {"cannot verify"}
    assert verdicts[0].detail.startswith("the checkpoint trained here is not the published one: test_loss")
    assert not checkpoint.parent.exists()  # a model that is not the published one is not left where a run would take it

    published.unlink()
    verdicts = verify_results(results, sample=1, log=lambda _: None)
    assert verdicts[0].verdict == "cannot verify" and "is not published to check a retrained one" in verdicts[0].detail
    assert not worth_retrying(verdicts[0])  # no kernel set retrains what is not published: no child rerun


def test_verify_does_not_train_a_checkpoint_beyond_its_bound(tmp_path):
    """A results folder (a submission's above all) that names a trained model whose checkpoint is not at hand cannot
    make copa verify train it for more than VERIFY_RETRAINS_UP_TO_EPOCH epochs: the rows cannot be verified, and
    nothing is trained or written."""
    from copa.bench.verify import VERIFY_RETRAINS_UP_TO_EPOCH, checkpoint_problem

    epoch = VERIFY_RETRAINS_UP_TO_EPOCH + 1
    config = {**_config(tmp_path), "models": [f"cnn2_c1@epoch{epoch}"], "training": {"max_images": 16, "batch_size": 8}}
    results = tmp_path / "results"
    (results / "checkpoints").mkdir(parents=True)
    (results / "checkpoints" / f"cnn2_c1@epoch{epoch}.json").write_text(json.dumps({"test_loss": 2.3}))
    trained = []
    problem = checkpoint_problem(config, f"cnn2_c1@epoch{epoch}", results, log=trained.append)
    assert problem is not None and f"up to {VERIFY_RETRAINS_UP_TO_EPOCH} epochs, not {epoch}" in problem, problem
    assert not trained and not any(tmp_path.glob("**/*.pt"))
