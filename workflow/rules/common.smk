# Paths and per-rule parameters shared by the rules (all values come from the validated config).
from copa.bench.pipeline import (RUN_KEYS, checkpoint_file, client_batches, instance_key, parse_model_entry,
                                 setting_axis, workflow_scenario_keys)

# The client settings: tag (path-safe, the wildcard "defence") -> Setting (defence chain and every federated axis
# of copa.bench.setting.AXES): the product of the config's defences and those axes.
SETTING_AXIS = setting_axis(config)
# Each setting's instances (directory names under a cell: an image index, or a client batch's indices).
INSTANCES = {tag: [instance_key(b) for b in client_batches(config, s.client_batch)] for tag, s in SETTING_AXIS.items()}


def instances_per_cell():
    """The tables' "images per cell": the number of indices, or per client setting its instances."""
    counts = {tag: len(keys) for tag, keys in INSTANCES.items()}
    if all(n == len(config["indices"]) and SETTING_AXIS[tag].client_batch == 1 for tag, n in counts.items()):
        return len(config["indices"])
    return "; ".join(f"{SETTING_AXIS[tag].label}: {n} " + ("images" if SETTING_AXIS[tag].client_batch == 1 else
                                                           f"batches of {SETTING_AXIS[tag].client_batch}")
                     for tag, n in counts.items())


def cell_path(defence, model, attack):
    """A cell's summary: one per (setting, model, attack); ``defence`` is a tag of the settings axis."""
    return f"{OUT}/{TAG}/cells/{defence}/{model}/{attack}.json"


def security_path(model):
    return f"{OUT}/{TAG}/security/{model}.json"


def model_checkpoint(wildcards):
    """The trained checkpoint a models-axis entry ARCH@epochE names (rule train), or nothing."""
    architecture, epoch = parse_model_entry(wildcards.model)
    return [] if epoch is None else [checkpoint_file(config, architecture, epoch)]


def scenario_params():
    """Everything that determines a record besides the attack: the scenario's keys (from the Scenario's
    one declaration) and the run's; a change reruns the affected jobs."""
    return {key: config[key] for key in (*workflow_scenario_keys(), *RUN_KEYS, "max_instances")}
