# Paths and per-rule parameters shared by the rules (all values come from the validated config).
from copa.bench.pipeline import (RUN_KEYS, checkpoint_file, client_batches, headline_metric, instance_key,
                                 parse_model_entry, setting_axis, workflow_scenario_keys)

# The headline metric of the tables, plots and validity study (config headline_metric, default PSNR).
HEADLINE = headline_metric(config)

# The client settings: tag (path-safe, the wildcard "defence") -> Setting (defence chain and every federated axis
# of copa.bench.setting.AXES): the product of the config's defences and those axes; a local_batch that does not
# divide a client_batch is left out of that pair, with one line saying so.
SETTING_AXIS = setting_axis(config, note=lambda line: print(f"note: {line}", file=sys.stderr))
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


# Per-job resources of the rules that run on cluster nodes (profiles/slurm; README.md, "Running on a cluster").
# Memory, measured 2026-12-06 (torch 2.14.1, 2-core Intel Xeon): SLURM's accounting (sacct MaxRSS, which sums a
# step's processes: its Snakemake, the script, the attack's worker) gave up to 2.2 GB per smoke cell and 2.0 GB
# per security report (config/smoke.yaml through profiles/slurm, two runs), about 1.1 GB more than the script's
# own peak (Snakemake's benchmark: max_rss). The heaviest cells tried, config/paper.yaml's largest models on 8 CIFAR-10 images batched
# at reduced step counts: rgap on cnn6-d and cnn4_c3 1.9 GB (max_rss), copa-gm and hybrid on cnn6-d 3.0 GB
# (ps RSS while running), so ≈ 4.1–4.4 GB per step; a cell gets 6000 MB, a security report 1.5 times its 2.0 GB.
CELL_MEM_MB = 6000
SECURITY_MEM_MB = 3000
# Wall minutes per instance of a cell at the published step counts: the costliest image of README.md's
# "What a full-fidelity paper run costs" (hybrid on cnn6, 322 CPU-s) times 3.5, the most that the
# published records' wall time exceeded their CPU time on shared cores (same section), rounded up.
CELL_MINUTES_PER_INSTANCE = 20
# Besides the attack a cell starts Python and torch and builds its model and data: ≤ 37 s per smoke cell step and
# ≤ 32 s per security report through SLURM at load 10 on 2 cores (sacct Elapsed); the limits leave room for more.
CELL_MINIMUM_MINUTES = 10
SECURITY_MINUTES = 10


def cell_runtime(wildcards):
    """A cell's SLURM time limit in minutes: its instances (images, or client batches) at the costliest
    shipped attack's per-image wall time; plug-in attacks and longer step counts: --set-resources cell:runtime=."""
    return max(CELL_MINIMUM_MINUTES, CELL_MINUTES_PER_INSTANCE * len(INSTANCES[wildcards.defence]))


def cell_gpus():
    """One GPU per cell where the config asks for CUDA (device: cuda or cuda:N), none otherwise: a CPU-only
    cluster rejects a GPU request, and device auto runs on whatever the node has."""
    return 1 if str(config["device"]).startswith("cuda") else 0
