# Paths and per-rule parameters shared by the rules (all values come from the validated config).
from copa.bench.pipeline import RUN_KEYS, defence_axis, workflow_scenario_keys

# The defences axis: tag (path-safe, a wildcard value) -> the entry as the config gives it.
DEFENCE_AXIS = {tag: "+".join(chain) or "none" for tag, chain in defence_axis(config).items()}


def cell_path(defence, model, attack):
    """A cell's summary: one per (defence, model, attack); ``defence`` is a tag of the defences axis."""
    return f"{OUT}/{TAG}/cells/{defence}/{model}/{attack}.json"


def security_path(model):
    return f"{OUT}/{TAG}/security/{model}.json"


def scenario_params():
    """Everything that determines a record besides the attack: the scenario's keys (from the Scenario's
    one declaration) and the run's; a change reruns the affected jobs."""
    return {key: config[key] for key in (*workflow_scenario_keys(), *RUN_KEYS)}
