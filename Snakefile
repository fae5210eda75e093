# copa-bench workflow: `snakemake --cores 8` (README.md, "Workflow"). Other runs: --configfile config/paper.yaml.
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# The default config, unless config files are given (--configfile): Snakemake would otherwise merge them
# into it key by key, and e.g. config/paper.yaml would inherit this file's reduced attack_settings.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# Values from the command line arrive as strings ('--config indices=[0,1]' gives '0'): read them with the
# schema's types first, so that any key can be overridden with --config as README says.
import yaml
from pathlib import Path

from copa.bench.pipeline import coerce_to_schema

_schema = yaml.safe_load((Path(workflow.basedir) / "workflow/schemas/config.schema.yaml").read_text())
config.update(coerce_to_schema(dict(config), _schema))

try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as exc:  # one line naming the key, instead of Snakemake's dump of the whole schema
    error = exc.__context__  # jsonschema's ValidationError
    if error is None or not hasattr(error, "absolute_path"):
        raise
    key = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                  for i, p in enumerate(error.absolute_path)) or "(top level)"
    raise WorkflowError(f"invalid config: {key}: {error.message}") from None

from copa.errors import CopaError
from copa.bench.pipeline import (attack_identity, attack_overrides, check_config, dataset_tag, results_dir,
                                 setting_axis)
from copa.bench.site import published_folders, site_inputs

try:
    check_config(config)
except CopaError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None

OUT = config["out"].rstrip("/")
TAG = dataset_tag(config["dataset"], config["split"])
TRAIN_TAG = dataset_tag(config["dataset"], "train")  # trained models (ARCH@epochE) learn from the train split
RESULTS = results_dir(config).rstrip("/")
MODELS = config["models"]
ATTACKS = config["attacks"]
# The command line, for the tables' header. Kept out of params (a new command line must not rerun
# anything); the leaderboard rule runs locally, so it sees this process's config.
config["_command"] = shlex.join(["snakemake", *sys.argv[1:]])
# `snakemake --report`: the headline table on the report's first page (workflow/report/workflow.rst)
if any(arg.startswith("--report") and not arg.startswith("--report-") for arg in sys.argv[1:]):
    from copa.bench.leaderboard import report_overview

    config["_report_overview"] = report_overview(RESULTS)
    config["_report_privacy"] = any(s.defences for s in setting_axis(config).values())


wildcard_constraints:
    model=r"[A-Za-z0-9_.+-]+(@epoch[0-9]+)?|random-chain:[0-9]+",
    architecture=r"[A-Za-z0-9_.+-]+",
    epoch=r"[0-9]+",
    attack=r"[A-Za-z0-9_.+-]+",
    defence=r"[A-Za-z0-9_.+-]+",


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/security.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/leaderboard.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/validity.smk"
include: "workflow/rules/verify.smk"
include: "workflow/rules/partial.smk"
include: "workflow/rules/site.smk"

# The population study of the security metric only when the config declares it (config validity:).
STUDY = [rules.validity.output] if config.get("validity") else []


rule all:
    input:
        rules.leaderboard.output,
        rules.plots.output,
        STUDY,
    default_target: True
