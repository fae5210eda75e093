"""copa.leaderboard (aggregation, tables) and copa.plots on synthetic records in the records' real format."""

import math

import numpy as np
import pandas as pd
import pytest

from copa.bench import leaderboard as lb
from copa.bench import plots
from copa.errors import CopaError
from copa.io import atomic_write_json


def make_record(model, attack, index, status="ok", psnr=20.0, ssim=0.5, lpips=None, seconds=1.0, reason=None):
    record = {"record_version": 1, "status": status, "reason": reason,
              "scenario": {"model": model, "dataset": "sample", "split": "train", "indices": [index]},
              "attack": {"name": attack}, "hyperparameters": {"steps": 3}, "seed": 0,
              "device": "cpu: test", "git_commit": "abc123", "finished_at": "2026-01-01T00:00:00+00:00"}
    if status == "ok":
        record.update(seconds=seconds, metrics={"mean": {"psnr": psnr, "ssim": ssim, "lpips": lpips, "mse": 0.01},
                                                "label_accuracy": 1.0},
                      evaluations={"forward": 10, "gradient": 5})
    return record


def write_cell(root, model, attack, records):
    """Records and a cell summary laid out as copa.pipeline.run_cell writes them; returns the summary path."""
    entries = []
    for record in records:
        index = record["scenario"]["indices"][0]
        directory = root / "records" / model / attack / str(index)
        atomic_write_json(directory / "record.json", record)
        if record["status"] == "ok":
            rng = np.random.default_rng(index)
            target = rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
            np.savez(directory / "images.npz", target=target, reconstruction=np.clip(target + 0.1, 0, 1),
                     indices=np.array([index]))
        entries.append({"index": index, "record": str(directory / "record.json"), "status": record["status"]})
    summary = root / "cells" / model / f"{attack}.json"
    atomic_write_json(summary, {"model": model, "attack": attack, "records": entries})
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
                 "failed: RuntimeError: diverged \\| NaN", "not applicable: lenet is not a chain", "| inf "]:
        assert fact in md, fact
    # metric columns from the registry: label, unit and direction; the headline metric with ± std
    header = next(line for line in md.splitlines() if line.startswith("| attack ") and "runs ok" in line)
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "attack", "runs ok / failed / n.a.", "PSNR dB ↑ (mean ± std)", "SSIM ↑", "LPIPS ↓", "MSE ↓", "label acc.",
        "seconds", "evaluations fwd / grad"]
    assert "## Overview: mean PSNR (dB)" in md and "Spearman ρ (mean PSNR vs normalised_score)" in md
    assert "n/a" in md  # LPIPS missing
    overview = lb.overview_table(board)
    lenet_line = next(line for line in overview.splitlines() if line.startswith("| lenet"))
    assert "n.a." in lenet_line
    sec = lb.security_markdown(lb.load_security(security), meta)
    assert "not-applicable" in sec and "'lenet' is not a chain" in sec and "| c2 " in sec


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
    assert list(board.columns)[6:11] == ["psnr_mean", "psnr_std", "psnr_median", "mse_mean", "sharpness_mean"]
    assert lb.board_metrics(board) == ["psnr", "mse", "sharpness"]
    table = lb.board_table(board, "c0")
    assert "| MSE ↓   | sharpness   |" in table and "| 0.0100  | 0.1875      |" in table
    board.to_csv(tmp_path / "board.csv", index=False)  # the table of a board read back is the same
    assert lb.board_table(pd.read_csv(tmp_path / "board.csv"), "c0") == table
    assert "SSIM" not in table and "LPIPS" not in table
