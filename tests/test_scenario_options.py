"""The Scenario is the one declaration of its fields: the CLI's options and the workflow's config keys
(schema defaults included) follow Scenario.options(), and both build scenarios through from_config."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from copa.bench.pipeline import NOT_IN_WORKFLOW, SCENARIO_AXES, scenario_for, workflow_scenario_keys
from copa.cli import _scenario_from_args, build_parser
from copa.errors import CopaError, InvalidSpecError
from copa.threat import Scenario

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
SCHEMA, REQUIRED = SCHEMA_FILE["properties"], set(SCHEMA_FILE["required"])


def test_every_field_has_one_option():
    options = Scenario.options()
    assert [o.field for o in options] == [f.name for f in fields(Scenario)]
    assert all(o.help for o in options)


@pytest.mark.parametrize("command", ["attack", "observe"])
def test_the_cli_offers_every_field_with_its_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    flags = {flag: action for action in sub._actions for flag in action.option_strings}
    for option in Scenario.options():
        assert option.flag in flags, f"copa {command} lacks {option.flag}"
        if not option.required and option.field != "label_known":
            assert f"(default {option.default_text})" in flags[option.flag].help


def test_the_workflow_schema_declares_every_scenario_key_with_the_scenarios_default():
    keys = workflow_scenario_keys()
    assert set(keys) | set(SCENARIO_AXES.values()) | {o.name for o in Scenario.options()
                                                       if o.field in NOT_IN_WORKFLOW or o.field in SCENARIO_AXES} \
        >= {o.name for o in Scenario.options() if o.field not in SCENARIO_AXES}
    for option in Scenario.options():
        if option.field in NOT_IN_WORKFLOW:
            continue
        key = SCENARIO_AXES.get(option.field, option.name)
        assert key in SCHEMA, f"schema lacks {key}"
        if option.field in SCENARIO_AXES or key in REQUIRED:
            continue  # an axis, or a key every workflow config must set (dataset, indices)
        assert SCHEMA[key]["default"] == option.default, f"{key}: schema default {SCHEMA[key]['default']!r}"
        if option.choices:
            assert SCHEMA[key]["enum"] == list(option.choices)


def test_the_workflows_rules_take_their_keys_from_the_declaration():
    common = (ROOT / "workflow/rules/common.smk").read_text()
    assert "workflow_scenario_keys()" in common


def test_cli_and_workflow_build_the_same_scenario():
    args = build_parser().parse_args(["attack", "--attack", "noise", "--model", "cnn2_c1", "--index", "3",
                                      "--label", "unknown", "--dtype", "float64", "--input-shape", "3x16x16",
                                      "--out", "x"])
    config = {"dataset": "sample", "split": "train", "indices": [0, 3], "label": "unknown", "dtype": "float64",
              "input_shape": "3x16x16", "preprocess": "center", "model_seed": 0, "num_classes": None,
              "data_root": None, "download": False, "defences": [], "defence_seed": 0, "seed": 7}
    assert _scenario_from_args(args) == scenario_for(config, "cnn2_c1", 3)
    assert Scenario(model="cnn2_c1") == Scenario.from_config({"model": "cnn2_c1"})


def test_from_config_refuses_bad_values_by_name():
    with pytest.raises(InvalidSpecError, match="label 'maybe' is invalid"):
        Scenario.from_config({"model": "cnn2_c1", "label": "maybe"})
    with pytest.raises(InvalidSpecError, match="needs a model"):
        Scenario.from_config({})
    with pytest.raises(CopaError, match="unknown defence .prun."):
        Scenario.from_config({"model": "cnn2_c1", "defences": ["prun"]})
