"""copa.leaderboard (aggregation, tables) and copa.plots on synthetic records in the records' real format."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from copa.bench import leaderboard as lb
from copa.bench import plots
from copa.bench.setting import defence_tag
from copa.errors import CopaError
from copa.io import atomic_write_json
from copa.threat import create_defence


def make_record(model, attack, index, status="ok", psnr=20.0, ssim=0.5, lpips=None, seconds=1.0, reason=None,
                defences=None, distortion=None):
    """A record; with ``defences`` (spec strings) also the scenario's chain, the observation's description of
    it and the update distortion (records without them are those written before defences were recorded)."""
    record = {"record_version": 1, "status": status, "reason": reason,
              "scenario": {"model": model, "dataset": "sample", "split": "train", "indices": [index]},
              "attack": {"name": attack}, "hyperparameters": {"steps": 3}, "seed": 0,
              "device": "cpu: test", "git_commit": "abc123", "finished_at": "2026-01-01T00:00:00+00:00"}
    if defences is not None:
        chain = [create_defence(spec) for spec in defences if spec != "none"]
        record["scenario"]["defences"] = [d.spec() for d in chain]
        record["observation"] = {"model": model, "defences": [d.describe() for d in chain]}
        record["update_distortion"] = distortion if distortion is not None else (0.5 if chain else 0.0)
    if status == "ok":
        record.update(seconds=seconds, metrics={"mean": {"psnr": psnr, "ssim": ssim, "lpips": lpips, "mse": 0.01},
                                                "label_accuracy": 1.0},
                      evaluations={"forward": 10, "gradient": 5})
    return record


def write_cell(root, model, attack, records):
    """Records and a cell summary laid out as copa.pipeline.run_cell writes them; returns the summary path."""
    entries = []
    tag = defence_tag(tuple(records[0]["scenario"].get("defences", ())))
    for record in records:
        index = record["scenario"]["indices"][0]
        directory = root / "records" / tag / model / attack / str(index)
        atomic_write_json(directory / "record.json", record)
        if record["status"] == "ok":
            rng = np.random.default_rng(index)
            target = rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
            np.savez(directory / "images.npz", target=target, reconstruction=np.clip(target + 0.1, 0, 1),
                     indices=np.array([index]))
        entries.append({"index": index, "record": str(directory / "record.json"), "status": record["status"]})
    summary = root / "cells" / tag / model / f"{attack}.json"
    atomic_write_json(summary, {"model": model, "attack": attack, "defence": tag, "records": entries})
    return summary


def write_security(root, model, status="ok", index=0, score=0.0, reason=None):
    path = root / "security" / f"{model}.json"
    atomic_write_json(path, {"model": model, "status": status, "reason": reason,
                             "copa_index": index if status == "ok" else None,
                             "normalised_score": score if status == "ok" else None, "seconds": 0.5})
    return path


@pytest.fixture
def run(tmp_path):
    """Three chains of increasing security and a non-chain; attacks 'good' (PSNR falls with security),
    'flaky' (one failed image), 'layerwise' (not applicable to the non-chain)."""
    cells, security = [], []
    chains = [("c0", 0, 0.0, 40.0), ("c1", -100, 0.2, 30.0), ("c2", -500, 0.6, 15.0)]
    for model, index, score, psnr in chains:
        security.append(write_security(tmp_path, model, index=index, score=score))
        cells.append(write_cell(tmp_path, model, "good", [make_record(model, "good", i, psnr=psnr + i) for i in (0, 1)]))
        cells.append(write_cell(tmp_path, model, "layerwise", [make_record(model, "layerwise", i, psnr=math.inf,
                                                                           ssim=1.0, seconds=0.1) for i in (0, 1)]))
    cells.append(write_cell(tmp_path, "c0", "flaky", [
        make_record("c0", "flaky", 0, psnr=12.0),
        make_record("c0", "flaky", 1, status="failed", reason="failed: RuntimeError: diverged | NaN")]))
    security.append(write_security(tmp_path, "lenet", status="not-applicable",
                                   reason="not applicable: 'lenet' is not a chain"))
    cells.append(write_cell(tmp_path, "lenet", "good", [make_record("lenet", "good", i, psnr=25.0) for i in (0, 1)]))
    cells.append(write_cell(tmp_path, "lenet", "layerwise", [
        make_record("lenet", "layerwise", i, status="not-applicable", reason="not applicable: lenet is not a chain")
        for i in (0, 1)]))
    return tmp_path, cells, security


def test_leaderboard_keeps_failed_and_not_applicable_runs(run):
    _, cells, security = run
    records = lb.records_from_cells(cells)
    assert len(records) == 18 and set(records["status"]) == {"ok", "failed", "not-applicable"}
    board = lb.leaderboard(records, lb.load_security(security), models=["c0", "c1", "c2", "lenet"],
                           attacks=["good", "layerwise", "flaky"])
    assert len(board) == 12  # every model × attack, also the cells without any record
    row = board.set_index(["model", "attack"])
    assert row.loc[("c0", "flaky"), ["runs", "ok", "failed", "not_applicable"]].tolist() == [2, 1, 1, 0]
    assert row.loc[("c0", "flaky"), "psnr_mean"] == 12.0
    assert row.loc[("lenet", "layerwise"), ["ok", "not_applicable"]].tolist() == [0, 2]
    assert math.isnan(row.loc[("lenet", "layerwise"), "psnr_mean"])
    assert row.loc[("c1", "flaky"), "runs"] == 0  # no record at all: still a row
    assert row.loc[("c1", "good"), "psnr_mean"] == pytest.approx(30.5)
    assert row.loc[("c1", "good"), "psnr_std"] == pytest.approx(np.std([30.0, 31.0], ddof=1))
    assert row.loc[("c2", "layerwise"), "psnr_mean"] == math.inf and math.isnan(row.loc[("c2", "layerwise"), "psnr_std"])
    assert row.loc[("c2", "good"), "copa_index"] == -500 and row.loc[("lenet", "good"), "security_status"] == "not-applicable"


def test_markdown_shows_every_status_with_reasons_and_the_header(run):
    _, cells, security = run
    records = lb.records_from_cells(cells)
    board = lb.leaderboard(records, lb.load_security(security))
    meta = lb.run_metadata(records, command="snakemake --cores 2", images_per_cell=2, date="2026-01-02")
    md = lb.leaderboard_markdown(board, records, meta, title="Test board")
    assert md.startswith("# Test board")
    for fact in ["**command**: `snakemake --cores 2`", "**commit**: `abc123`", "**device**: cpu: test",
                 "**images per cell**: 2", "**date**: 2026-01-02", "## c2 — COPA index -500, normalised score 0.600",
                 "## lenet — security metric not applicable", "| flaky     | 1 / 1 / 0",
                 "| failed         | RuntimeError: diverged \\| NaN", "| not-applicable | lenet is not a chain", "| inf "]:
        assert fact in md, fact
    assert "not applicable: lenet" not in md and "failed: RuntimeError" not in md  # the status is not said twice
    # metric columns from the registry: label, unit and direction; the headline metric with ± std; LPIPS, n/a in
    # every cell, is left out of the tables and named in the header
    header = next(line for line in md.splitlines() if line.startswith("| attack ") and "runs ok" in line)
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "attack", "runs ok / failed / n.a.", "PSNR dB ↑ (mean ± std)", "SSIM ↑", "MSE ↓", "label acc.",
        "seconds", "evaluations fwd / grad"]
    assert "## Overview: mean PSNR (dB)" in md and "Spearman ρ (mean PSNR vs normalised_score)" in md
    assert "Left out of the tables, n/a in every cell: LPIPS (its AlexNet weights were not available)." in md
    assert "LPIPS ↓" in lb.board_table(board, "c0", lb.board_metrics(board))  # asked for, it is still there
    one_lpips = board.copy()
    one_lpips.loc[(one_lpips["model"] == "c0") & (one_lpips["attack"] == "good"), "lpips_mean"] = 0.25
    shown = lb.leaderboard_markdown(one_lpips, records, meta)
    assert "Left out" not in shown and "| 0.2500" in shown and "n/a" in shown  # the others' LPIPS: n/a
    assert "Defence" not in md and "distortion" not in md  # one defence, none: the page of a run without defences
    overview = lb.overview_table(board)
    lenet_line = next(line for line in overview.splitlines() if line.startswith("| lenet"))
    assert "n.a." in lenet_line
    sec = lb.security_markdown(lb.load_security(security), meta)
    assert "not-applicable" in sec and "'lenet' is not a chain" in sec and "| c2 " in sec
    assert "not applicable: 'lenet'" not in sec


def test_spearman_per_attack(run):
    _, cells, security = run
    board = lb.leaderboard(lb.records_from_cells(cells), lb.load_security(security))
    rho = lb.spearman_by_attack(board, "normalised_score").set_index("attack")
    assert rho.loc["good", "spearman_rho"] == pytest.approx(-1.0) and rho.loc["good", "models"] == 3
    assert math.isnan(rho.loc["layerwise", "spearman_rho"])  # constant PSNR (all inf)
    assert math.isnan(rho.loc["flaky", "spearman_rho"]) and rho.loc["flaky", "models"] == 1
    by_index = lb.spearman_by_attack(board, "copa_index").set_index("attack")
    assert by_index.loc["good", "spearman_rho"] == pytest.approx(1.0)
    with pytest.raises(CopaError, match="security metric 'psnr' is invalid"):
        lb.spearman_by_attack(board, "psnr")


def test_write_tables_and_bad_inputs(run):
    root, cells, security = run
    out = root / "results"
    outputs = {k: out / f"{k}.{k.split('_')[-1]}" for k in
               ["records_csv", "leaderboard_csv", "leaderboard_md", "security_csv", "security_md"]}
    lb.write_tables(cells, security, outputs=outputs, command="snakemake", images_per_cell=2)
    assert len(pd.read_csv(outputs["records_csv"])) == 18
    assert len(pd.read_csv(outputs["leaderboard_csv"])) == 12
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in outputs.values())  # no temp files left
    with pytest.raises(CopaError, match="unknown outputs"):
        lb.write_tables(cells, security, outputs={"board_html": out / "x.html"})
    bad = make_record("c0", "good", 0, status="crashed")
    with pytest.raises(CopaError, match="status 'crashed'"):
        lb.record_row(bad)
    with pytest.raises(CopaError, match="does not exist"):
        lb.load_records([root / "missing" / "record.json"])


def test_plots_are_written(run):
    from PIL import Image

    root, cells, security = run
    records = lb.records_from_cells(cells)
    board = lb.leaderboard(records, lb.load_security(security))
    paths = [plots.reconstruction_grid(records, "c0", root / "p" / "grid.png", attacks=["good", "layerwise", "flaky"]),
             plots.reconstruction_grid(records, "lenet", root / "p" / "grid_lenet.png"),
             plots.psnr_vs_security(board, root / "p" / "security.png", psnr_cap=100),
             plots.psnr_distribution(records, root / "p" / "dist.png"),
             plots.time_vs_psnr(records, root / "p" / "time.png")]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 200 and image.size[1] > 150
    with pytest.raises(CopaError, match="no records for model 'nope'"):
        plots.reconstruction_grid(records, "nope", root / "p" / "x.png")
    # CSV round trip (the plots rule reads records.csv): inf PSNR survives
    records.to_csv(root / "records.csv", index=False)
    again = pd.read_csv(root / "records.csv")
    assert np.isinf(again["psnr"]).sum() == 6
    assert plots.reconstruction_grid(again, "c0", root / "p" / "grid_csv.png").stat().st_size > 0


def test_metric_columns_are_those_of_the_records_in_registry_order(tmp_path):
    """A metric the records hold is a column everywhere, after the registered ones when this process does
    not know it (a plug-in's, read back): shown by its name with 4 decimals; a metric no record holds is none."""
    records = [make_record("c0", "good", i, psnr=20.0 + i) for i in (0, 1)]
    for i, record in enumerate(records):
        record["metrics"]["mean"] = {"sharpness": 0.125 * (i + 1), "mse": 0.01, "psnr": 20.0 + i}
    cells = [write_cell(tmp_path, "c0", "good", records)]
    frame = lb.records_from_cells(cells)
    assert list(frame.columns)[7:10] == ["psnr", "mse", "sharpness"]
    board = lb.leaderboard(frame)
    assert list(board.columns)[7:12] == ["psnr_mean", "psnr_std", "psnr_median", "mse_mean", "sharpness_mean"]
    assert lb.board_metrics(board) == ["psnr", "mse", "sharpness"]
    table = lb.board_table(board, "c0")
    assert "| MSE ↓   | sharpness   |" in table and "| 0.0100  | 0.1875      |" in table
    board.to_csv(tmp_path / "board.csv", index=False)  # the table of a board read back is the same
    assert lb.board_table(pd.read_csv(tmp_path / "board.csv"), "c0") == table
    assert "SSIM" not in table and "LPIPS" not in table


PRUNE = ["prune:p=0.3", "prune:p=0.6", "prune:p=0.9"]


@pytest.fixture
def defended(tmp_path):
    """Models c0, c1 under none and three pruning ratios (PSNR falls with p; exact recoveries undefended);
    attacks 'good' and the 'mean-image' floor; one failed run under prune:p=0.9."""
    cells = []
    for (d, defence), model in itertools.product(enumerate(["none", *PRUNE]), ["c0", "c1"]):
        good = [make_record(model, "good", i, psnr=math.inf if d == 0 else 40.0 - 10 * d + i, ssim=1.0 - 0.2 * d,
                            defences=[defence], distortion=0.3 * d) for i in (0, 1)]
        if d == 3 and model == "c1":
            good[1] = make_record(model, "good", 1, status="failed", reason="failed: diverged", defences=[defence],
                                  distortion=0.9)
        floor = [make_record(model, "mean-image", i, psnr=12.0, ssim=0.1, defences=[defence], distortion=0.3 * d)
                 for i in (0, 1)]
        cells += [write_cell(tmp_path, model, "good", good), write_cell(tmp_path, model, "mean-image", floor)]
    return tmp_path, cells


def test_records_name_their_defence_and_its_distortion():
    row = lb.record_row(make_record("c0", "good", 0, defences=["prune:p=0.9"], distortion=0.25))
    assert (row["defence"], row["update_distortion"]) == ("prune:p=0.9", 0.25)
    chain = lb.record_row(make_record("c0", "good", 0, defences=["prune:p=0.5", "quantize:bits=4"]))
    assert chain["defence"] == "prune:p=0.5+quantize:bits=4,rounding='deterministic'"
    old = make_record("c0", "good", 0, defences=["prune:p=0.9"])
    del old["update_distortion"]  # written before the distortion was recorded: unknown when defended
    assert math.isnan(lb.record_row(old)["update_distortion"])
    legacy = lb.record_row(make_record("c0", "good", 0))  # no defences key: undefended, distortion 0
    assert (legacy["defence"], legacy["update_distortion"]) == ("none", 0.0)
    observed = make_record("c0", "good", 0, defences=["prune:p=0.9"])
    observed["scenario"] = None  # an observation file: the observation's defence names
    assert lb.record_row(observed)["defence"] == "prune"


def test_two_defences_give_two_sections_in_config_order(tmp_path):
    cells = []
    for defence, psnr in [("none", 30.0), ("prune:p=0.9", 15.0)]:
        for model in ("c0", "c1"):
            cells.append(write_cell(tmp_path, model, "good", [
                make_record(model, "good", i, psnr=psnr + i, defences=[defence], distortion=0.4 + 0.1 * i
                            if defence != "none" else None) for i in (0, 1)]))
    cells.append(write_cell(tmp_path, "c0", "flaky", [make_record("c0", "flaky", 0, status="failed",
                                                                  reason="failed: planned", defences=["prune:p=0.9"],
                                                                  distortion=0.45)]))
    security = [write_security(tmp_path, "c0", index=0, score=0.0), write_security(tmp_path, "c1", index=-9, score=0.3)]
    out = tmp_path / "results"
    outputs = {k: out / f"{k}.{k.split('_')[-1]}" for k in ["records_csv", "leaderboard_csv", "leaderboard_md"]}
    board = lb.write_tables(cells, security, outputs=outputs, defences=["prune:p=0.9", "none"])
    records = pd.read_csv(outputs["records_csv"])
    assert set(records["defence"]) == {"none", "prune:p=0.9"}
    assert records.groupby("defence")["update_distortion"].mean().to_dict() == pytest.approx(
        {"none": 0.0, "prune:p=0.9": 0.45})
    read = pd.read_csv(outputs["leaderboard_csv"])
    assert list(read.columns[:3]) == ["defence", "model", "attack"] and "update_distortion_mean" in read.columns
    assert len(board) == 2 * 2 * 2 and list(dict.fromkeys(board["defence"])) == ["prune:p=0.9", "none"]
    row = board.set_index(["defence", "model", "attack"])
    assert row.loc[("prune:p=0.9", "c1", "good"), ["psnr_mean", "update_distortion_mean"]].tolist() == pytest.approx(
        [15.5, 0.45])
    assert row.loc[("none", "c0", "good"), "update_distortion_mean"] == 0.0
    assert row.loc[("prune:p=0.9", "c0", "flaky"), "failed"] == 1 and row.loc[("none", "c0", "flaky"), "runs"] == 0
    md = outputs["leaderboard_md"].read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections == ["## Defence: `prune:p=0.9`", "## Defence: none (the undefended update)",
                        "## Failed and not-applicable runs"]
    for part in md.split("## Defence: ")[1:]:  # each section: the single-defence page's tables, one level down
        assert [line for line in part.splitlines() if line.startswith("### ")] == [
            "### Overview: mean PSNR (dB)", "### PSNR vs security metric across architectures",
            "### c0 — COPA index 0, normalised score 0.000", "### c1 — COPA index -9, normalised score 0.300"]
        assert "| model   | COPA index   | normalised score   | update distortion   | good " in part
    assert "| c1      | -9           | 0.300              | 0.450               | 15.50 " in md
    assert "| prune:p=0.9 | c0      | flaky    | 0       | failed   | planned  |" in md
    assert md.count("Spearman ρ (mean PSNR vs normalised_score)") == 2
    rho = lb.spearman_by_attack(board)
    assert list(zip(rho["defence"], rho["attack"])) == [("prune:p=0.9", "good"), ("prune:p=0.9", "flaky"),
                                                        ("none", "good"), ("none", "flaky")]


def test_privacy_curves(defended):
    from PIL import Image

    root, cells = defended
    records = lb.records_from_cells(cells)
    curves, skipped = plots.defence_settings(records)
    assert curves == {spec: ("prune", "p", float(spec.split("=")[1])) for spec in PRUNE} and skipped == []
    path = plots.privacy_curves(records, root / "p" / "privacy_curves.png", psnr_cap=50)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 300
    records.to_csv(root / "records.csv", index=False)  # the plots rule reads records.csv
    chain = make_record("c0", "good", 0, defences=["prune:p=0.5", "quantize:bits=4"], distortion=0.7)
    again = pd.concat([pd.read_csv(root / "records.csv"), pd.DataFrame([lb.record_row(chain)])], ignore_index=True)
    curves, skipped = plots.defence_settings(again)
    assert len(curves) == 3 and skipped == ["prune:p=0.5+quantize:bits=4,rounding='deterministic'"]
    assert plots.privacy_curves(again, root / "p" / "with_chain.png").stat().st_size > 0
    # the other plots show the undefended runs of a run with several defences
    assert plots._reference(records)[0]["defence"].unique().tolist() == ["none"]
    assert plots.psnr_distribution(records, root / "p" / "dist.png").stat().st_size > 0


def test_privacy_curves_without_defences_say_so(run):
    from PIL import Image

    root, cells, _ = run
    records = lb.records_from_cells(cells)
    assert plots.defence_settings(records) == ({}, [])
    path = plots.privacy_curves(records, root / "p" / "privacy_curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200


def test_model_ticks_share_close_names_and_never_overlap():
    """The PSNR-vs-security plot's top axis: equal or close scores share one tick (the issue: labels stacked)."""
    positions, labels = plots.model_ticks([0.0, 0.0, 0.0, 0.5, 0.51, 1.0],
                                          ["cnn2_c1", "random-chain:3", "random-chain:5", "cnn3_c1", "cnn4_c2", "cnn6"],
                                          (0.0, 1.0))
    assert positions == [0.0, 0.5, 1.0]
    assert labels == ["cnn2_c1, rc3 +1", "cnn3_c1, cnn4_c2", "cnn6"]
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, 200)
    positions, labels = plots.model_ticks(xs, [f"m{i}" for i in range(200)], (0.0, 1.0), gap=0.025)
    assert np.all(np.diff(positions) >= 0.025) and len(labels) == len(positions) <= 41
    named = sum(2 + int(label.rsplit("+", 1)[1]) if "+" in label else label.count(",") + 1 for label in labels)
    assert named == 200  # every model is counted in some tick


@pytest.fixture
def mae_metric():
    """A metric registered by the test, lower is better (as an extension would register it); removed after."""
    from copa import metrics

    saved = dict(metrics.METRICS._entries)
    metrics.register_metric("test_mae", lambda x, y: (x - y).abs().flatten(1).mean(1).double(), label="MAE",
                            higher_is_better=False, digits=3, description="test", unit="px")
    yield "test_mae"
    metrics.METRICS._entries.clear()
    metrics.METRICS._entries.update(saved)


def test_a_registered_metric_reaches_the_tables_and_plots_and_can_be_the_headline(tmp_path, mae_metric, monkeypatch):
    """Nothing in the tables or plots names PSNR: a metric registered in the test is a column of every table, and
    as the headline metric (lower is better) it has the std and median, the overview, the Spearman table and the
    plots' axes."""
    cells, security = [], []
    for model, index, score, mae in [("c0", 0, 0.0, 0.05), ("c1", -100, 0.2, 0.10), ("c2", -500, 0.6, 0.20)]:
        security.append(write_security(tmp_path, model, index=index, score=score))
        records = [make_record(model, "good", i, psnr=30.0 - 100 * mae + i) for i in (0, 1)]
        for i, record in enumerate(records):
            record["metrics"]["mean"][mae_metric] = mae + 0.01 * i
        cells.append(write_cell(tmp_path, model, "good", records))
    frame = lb.records_from_cells(cells, headline=mae_metric)
    board = lb.leaderboard(frame, lb.load_security(security), headline=mae_metric)
    assert lb.board_headline(board) == mae_metric and "test_mae_median" in board and "psnr_median" not in board
    assert board.set_index("model").loc["c1", "test_mae_mean"] == pytest.approx(0.105)
    md = lb.leaderboard_markdown(board, frame, {"command": "test"})
    assert "## Overview: mean MAE (px)" in md and "## MAE vs security metric across architectures" in md
    assert "| MAE px ↓ (mean ± std)   |" in md and "| 0.055 ± 0.007" in md and "| PSNR dB ↑   |" in md
    assert "Spearman ρ (mean MAE vs normalised_score)" in md
    rho = lb.spearman_by_attack(board).set_index("attack").loc["good", "spearman_rho"]
    assert rho == pytest.approx(1.0)  # more secure, larger error
    # the default headline keeps PSNR's statistics; the extra metric is a plain column after the registered ones
    default = lb.leaderboard(lb.records_from_cells(cells), lb.load_security(security))
    assert lb.board_headline(default) == "psnr" and lb.board_metrics(default)[-1] == mae_metric
    assert "| MAE px ↓   |" in lb.board_table(default, "c0")

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.psnr_vs_security(board, tmp_path / "s.png")
    plots.psnr_distribution(frame, tmp_path / "d.png", headline=mae_metric)
    plots.time_vs_psnr(frame, tmp_path / "t.png", headline=mae_metric)
    assert [fig.axes[0].get_ylabel() for fig in figures] == ["mean MAE (px)", "MAE per image (px)", "MAE (px)"]
    assert figures[0].axes[0].get_title().startswith("MAE vs security")


def test_privacy_curves_take_their_rows_from_the_headline_and_the_table_order(defended, mae_metric):
    root, cells = defended
    records = lb.records_from_cells(cells)
    assert plots.curve_metrics(records) == ["psnr", "ssim"]  # LPIPS is n/a in every record: no row
    assert plots.curve_metrics(records, headline="mse") == ["mse", "psnr"]
    assert plots.curve_metrics(records.drop(columns="ssim")) == ["psnr", "mse"]


def test_the_metric_legend_comes_from_the_registry(run, mae_metric):
    _, cells, security = run
    board = lb.leaderboard(lb.records_from_cells(cells), lb.load_security(security))
    legend = lb.metric_legend(board)
    assert legend.startswith("Statistics are over each cell's `ok` runs; ↑ / ↓: higher / lower is better; PSNR "
                             "`inf` is an exact recovery (its std is then undefined, –); n/a: the cell's ok runs lack "
                             "the metric (LPIPS: the AlexNet weights were not available); n.a. = not applicable.")
    assert legend.endswith("Left out of the tables, n/a in every cell: LPIPS (its AlexNet weights were not "
                           "available).")  # the records have no LPIPS
    without = board.drop(columns=["lpips_mean"])
    assert lb.metric_legend(without).endswith("lack the metric; n.a. = not applicable.")


def test_the_headline_metric_must_be_scored():
    from copa.bench.pipeline import headline_metric

    assert headline_metric({}) == "psnr" and headline_metric({"metrics": ["ssim"], "headline_metric": "ssim"}) == "ssim"
    with pytest.raises(CopaError, match="headline_metric 'ssim' is not among the configured metrics: accepted are "
                                        "mse, psnr"):
        headline_metric({"metrics": ["mse", "psnr"], "headline_metric": "ssim"})
