# Paths and per-rule parameters shared by the rules (all values come from the validated config).


def cell_path(model, attack):
    return f"{OUT}/{TAG}/cells/{model}/{attack}.json"


def security_path(model):
    return f"{OUT}/{TAG}/security/{model}.json"


def scenario_params():
    """Everything that determines a record besides the attack: a change reruns the affected jobs."""
    keys = ["dataset", "split", "indices", "label", "preprocess", "dtype", "input_shape", "num_classes",
            "model_seed", "seed", "data_root", "download", "device", "retry_failed", "plugins"]
    return {key: config[key] for key in keys}
