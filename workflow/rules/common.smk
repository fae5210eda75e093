# Paths and per-rule parameters shared by the rules (all values come from the validated config).
from copa.bench.pipeline import RUN_KEYS, workflow_scenario_keys


def cell_path(model, attack):
    return f"{OUT}/{TAG}/cells/{model}/{attack}.json"


def security_path(model):
    return f"{OUT}/{TAG}/security/{model}.json"


def scenario_params():
    """Everything that determines a record besides the attack: the scenario's keys (from the Scenario's
    one declaration) and the run's; a change reruns the affected jobs."""
    return {key: config[key] for key in (*workflow_scenario_keys(), *RUN_KEYS)}
