"""benchmarks/run_cost.py: a finished run's cost, read from its records."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_cost():
    spec = importlib.util.spec_from_file_location("run_cost", ROOT / "benchmarks" / "run_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_record(root: Path, model: str, attack: str, index: int, seconds: float, layers=None) -> None:
    folder = root / model / attack / str(index)
    folder.mkdir(parents=True)
    record = {"status": "ok", "seconds": seconds, "workflow": {"model": model},
              "scenario": {"model": model, "indices": [index]}, "attack": {"name": attack},
              "metrics": {"mean": {"psnr": 20.0}}, "compute": {"cpu_model": "test CPU"},
              "attack_info": {"layers": [{"layer": layer, "seconds": s} for layer, s in (layers or {}).items()]}}
    (folder / "record.json").write_text(json.dumps(record))


def test_cells_totals_layer_profile_and_outliers(tmp_path, run_cost, capsys):
    for index, seconds in enumerate([60, 60, 60, 600]):        # the last one a 10x outlier
        write_record(tmp_path, "cnn6", "hybrid", index, seconds, layers={0: seconds - 20, 1: 20})
    for index in range(4):
        write_record(tmp_path, "cnn6", "dlg", index, 30)
    records = run_cost.load(tmp_path)
    minutes = run_cost.cell_minutes(records)
    assert minutes.loc["cnn6", "hybrid"] == pytest.approx(13.0)
    assert minutes.loc["all models", "all attacks"] == pytest.approx(15.0)
    profile = run_cost.layer_profile(records)
    assert list(profile.columns) == ["model", "attack", "images", "median per image", "layer 0", "layer 1"]
    assert profile.loc[0, "layer 0"] == pytest.approx(40.0)
    slow = run_cost.outliers(records, 3.0)
    assert list(slow["index"]) == [3]
    assert run_cost.main([str(tmp_path), "--cores", "2"]) == 0
    out = capsys.readouterr().out
    assert "0.25 CPU-hours" in out and "longest cell is cnn6/hybrid, 13.0 min" in out
    assert "2 cores: wall >= 0.22 h" in out          # the longest cell bounds it, not total / 2 = 0.125 h


def test_a_published_records_csv_is_read_with_the_full_records_it_names(tmp_path, run_cost):
    write_record(tmp_path / "records", "cnn6", "hybrid", 0, 100, layers={0: 80, 1: 20})
    rows = [{"model": "cnn6", "attack": "hybrid", "index": 0, "status": "ok", "seconds": 100,
             "record": "records/cnn6/hybrid/0/record.json"},               # relative to the csv's folder
            {"model": "cnn6", "attack": "dlg", "index": 0, "status": "ok", "seconds": 50,
             "record": "runs/elsewhere/record.json"}]                     # not at hand: its row still counts
    pd.DataFrame(rows).to_csv(tmp_path / "records.csv", index=False)
    records = run_cost.load(tmp_path / "records.csv")
    assert run_cost.cell_minutes(records).loc["all models", "all attacks"] == pytest.approx(2.5)
    assert records.loc[0, "layer_seconds"] == {0: 80.0, 1: 20.0} and records.loc[1, "layer_seconds"] == {}
    assert list(records["cpu_model"].fillna("-")) == ["test CPU", "-"]


def test_stage_profile_from_progress_logs(tmp_path, run_cost):
    log = tmp_path / "none" / "cnn4_c2" / "copa-gm.log"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join([
        "[progress] copa-gm: layer 1: started",
        "[progress] copa-gm: layer 1 null space (4 of 8): step 1000/1000, loss 0.007147, elapsed 2:45, ETA 0:00 — done",
        "[progress] copa-gm: layer 1 null space (4 of 8): step 1000/1000, loss 0.008303, elapsed 2:03, ETA 0:00 — done",
        "[progress] copa-gm: layer 1: elapsed 5:00 — done",
        "[progress] copa-gm: layer 0 gradient matching (8 of 8): step 10000/10000, loss 0.0018, elapsed 1:03:00, "
        "ETA 0:00 — done",
        "[progress] copa-gm: layer 0: elapsed 1:03:06 — done",
        "[0] copa-gm on cnn4_c2: PSNR 15.09 dB, 61.87 s"]))
    table = run_cost.stage_profile(tmp_path).set_index(["model", "attack", "layer"])
    assert table.loc[("cnn4_c2", "copa-gm", 1), "null space"] == pytest.approx(4.8)
    assert table.loc[("cnn4_c2", "copa-gm", 1), "layer total"] == pytest.approx(5.0)
    assert table.loc[("cnn4_c2", "copa-gm", 0), "gradient matching"] == pytest.approx(63.0)
    assert list(table.index.get_level_values("layer")) == [1, 0]       # from the output back, as the attack runs


def test_bad_inputs_one_line_exit_2(tmp_path, run_cost, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cost.main([str(tmp_path / "absent")])
    assert exit_info.value.code == 2
    assert "absent: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_cost.main([str(tmp_path), "--cores", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        run_cost.main([str(tmp_path)])                       # a folder without records
    assert exit_info.value.code == 2
