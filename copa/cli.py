"""The ``copa`` command line.

    copa list models|attacks|datasets|metrics|defences
    copa attack --attack NAME --model NAME --dataset SPEC --split train|test --index I [...] --out DIR
    copa observe --model NAME --dataset SPEC --index I [...] --out FILE.pt
    copa attack --attack NAME --observation FILE.pt [--targets FILE.npz] --out DIR
    copa security --model NAME [--index I [I ...]] [--json] [--out FILE]
    copa check --attack NAME [--plugin FILE] [--set KEY=VALUE]
    copa train --model NAME --dataset SPEC --epochs N --checkpoint-epochs 0,1,5 --out DIR
    copa verify RESULTS_DIR [--sample N] [--seed S] [--record-verdict]
    copa submit --plugin FILE.py --attack NAME --name ENTRY --contact ADDRESS [--config FILE] [--out DIR]
    copa site RESULTS_DIR [RESULTS_DIR ...] --out DIR

Bad inputs print one line ``copa: error: ...`` and exit with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import CopaError
from .hyperparameters import check_seed, check_threads
from .io import atomic_write_json, check_writable
from .sandbox import ALLOW_UNSANDBOXED

# Each command imports the wings it runs (and with them torch, ≈ 5 s) inside its function, so that `copa --help`
# and a bad flag answer at once.

EXIT_BAD_INPUT = 2


def _parse_indices(values: list[str]) -> tuple[int, ...]:
    indices = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            try:
                indices.append(int(part))
            except ValueError:
                raise CopaError(f"--index {value!r} is invalid: expected integers, e.g. --index 3 or --index 3,5") from None
    return tuple(indices)


DEFAULT_DEVICE = "cpu"


def _set_threads(threads: int | None) -> None:
    """``--threads`` (None: torch's default): checked against :data:`copa.hyperparameters.MAX_THREADS`, then
    applied to torch's and the BLAS pools."""
    if threads is None:
        return
    from .bench import set_threads

    set_threads(check_threads(threads, "--threads"), "--threads")


def _add_scenario_options(p: argparse.ArgumentParser, *, model_required: bool) -> None:
    """One option per field of :class:`copa.threat.Scenario` (its one declaration: name, help, default,
    choices), each with default None so that an explicitly given one can be told apart; plus --device."""
    from .threat import Scenario

    for option in Scenario.options():
        text = f"{option.help} (default {option.default_text})" if not option.required else option.help
        if option.field == "label_known":
            text = f"{option.help}: known or unknown (default known)"
        if option.kind is bool:
            p.add_argument(option.flag, dest=option.name, action="store_true", default=None, help=text)
        elif option.repeated:
            p.add_argument(option.flag, dest=option.name, action="append", default=None,
                           help=text + "; repeat" + (" or comma-separate" if option.kind is int else "") + " for more")
        else:
            p.add_argument(option.flag, dest=option.name, default=None, help=text,
                           required=option.required and model_required,
                           type=int if option.kind is int else None,
                           choices=list(option.choices) if option.choices and option.field == "label_known" else None)
    p.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N")


def _device(args) -> str:
    """``--device`` as given (an empty one too: :func:`copa.provenance.resolve_device` refuses it), else cpu."""
    return DEFAULT_DEVICE if args.device is None else args.device


def _given_scenario_options(args) -> list[str]:
    from .threat import Scenario

    return [option.flag for option in Scenario.options() if getattr(args, option.name, None) is not None]


def _scenario_from_args(args):
    from .threat import Scenario

    if args.model is None:
        raise CopaError("--model is required (or --observation FILE to attack an observation file)")
    given = {option.name: getattr(args, option.name) for option in Scenario.options()
             if getattr(args, option.name, None) is not None}
    if "indices" in given:
        given["indices"] = _parse_indices(given["indices"])
    return Scenario.from_config(given)


def _add_plugin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="an untrusted attack module or .py file: never imported here, run in the sandbox only "
                        "(docs/trust.md); repeat for more")
    p.add_argument("--extension", action="append", default=[], metavar="MODULE",
                   help="a trusted module or .py file registering models, defences, metrics or attacks, imported "
                        "here like copa's own code; repeat for more")
    p.add_argument("--allow-unsandboxed", action="store_true",
                   help=f"run plug-ins even where no sandbox (bubblewrap) works: they can then read every file "
                        f"you can (same as {ALLOW_UNSANDBOXED}=1)")


def _allow_unsandboxed(args) -> None:
    """``--allow-unsandboxed`` as the environment variable the sandbox reads (COPA_SANDBOX=required still wins)."""
    if getattr(args, "allow_unsandboxed", False):
        os.environ[ALLOW_UNSANDBOXED] = "1"


def build_parser() -> argparse.ArgumentParser:
    from .threat.observation_file import DEFAULT_LIMITS, LIMIT_FLAGS

    parser = argparse.ArgumentParser(prog="copa", description="Gradient-leakage attacks benchmark (copa-bench).")
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="list registered models, attacks, datasets or metrics")
    p_list.add_argument("what", choices=["models", "attacks", "datasets", "metrics", "defences"])
    _add_plugin_options(p_list)

    p_attack = sub.add_parser("attack", help="run one attack on one scenario (or on an observation file) and write "
                                             "its record")
    p_attack.add_argument("--attack", required=True, help="attack name (copa list attacks)")
    _add_scenario_options(p_attack, model_required=False)
    p_attack.add_argument("--observation", default=None, metavar="FILE",
                          help="attack the gradients in this observation file (copa observe, or your FL client; "
                               "docs/observations.md) instead of a scenario; the scenario options are then not accepted")
    p_attack.add_argument("--targets", default=None, metavar="FILE.npz",
                          help="with --observation: score against these images (npz: 'images' NxCxHxW in [0, 1], "
                               "optional 'labels')")
    for field, flag in LIMIT_FLAGS.items():  # copa.threat.observation_file.Limits
        if flag.startswith("--"):
            p_attack.add_argument(flag, dest=field, type=int, default=None, metavar="N",
                                  help=f"refuse an observation file or scenario with more, before allocating "
                                       f"(default {getattr(DEFAULT_LIMITS, field)})")
    p_attack.add_argument("--seed", type=int, default=0, help="attack seed (default 0)")
    p_attack.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p_attack.add_argument("--isolate", action="store_true",
                          help="run the attack in a sandboxed worker process even if it is built in (plug-in "
                               "attacks always run there; docs/trust.md)")
    p_attack.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="attack hyperparameter override, e.g. --set iterations=24000")
    p_attack.add_argument("--quiet", action="store_true",
                          help="no progress on standard error (default: a progress bar on a terminal, else a "
                               "line per stage and every 30 s: stage, step/total, the attack's loss, ETA)")
    _add_plugin_options(p_attack)
    p_attack.add_argument("--out", required=True, help="output directory (record.json, images.npz, reconstruction.png)")

    p_obs = sub.add_parser("observe", help="write the observation of a scenario (what the server sees: weights, "
                                           "gradients, labels if known; no images) to a file")
    _add_scenario_options(p_obs, model_required=True)
    p_obs.add_argument("--extension", action="append", default=[], metavar="MODULE",
                       help="trusted module or .py file registering models (imported here: docs/trust.md)")
    p_obs.add_argument("--out", required=True, metavar="FILE", help="observation file to write (.pt, atomically)")

    p_chk = sub.add_parser("check", help="check that an attack meets the contract of copa.attacks.check_attack "
                                         "(for plug-in authors)")
    p_chk.add_argument("--attack", required=True, help="attack name (copa list attacks)")
    _add_plugin_options(p_chk)
    p_chk.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="hyperparameters for a quick check, e.g. --set iterations=5")
    p_chk.add_argument("--model", default="cnn2_c1", help="model of the check's observations (default cnn2_c1)")
    p_chk.add_argument("--input-shape", default="3x16x16", help="their input shape (default 3x16x16)")

    p_sec = sub.add_parser("security", help="COPA security metric of a chain model: per-layer ranks and COPA index")
    p_sec.add_argument("--model", required=True, action="append",
                       help="model name or chain:SPEC; repeat for several models")
    p_sec.add_argument("--model-seed", type=int, default=0, help="model initialisation seed (default 0)")
    p_sec.add_argument("--dataset", default="sample",
                       help="dataset whose train image gives δ (default sample; the index does not depend on it)")
    p_sec.add_argument("--index", nargs="+", action="extend", default=None,
                       help="image index that gives δ (default 0); several (space- or comma-separated, or repeated) "
                            "give one report per image, their ranks computed together")
    p_sec.add_argument("--delta-source", default="image", help="image (default) or random")
    p_sec.add_argument("--input-shape", default="3x32x32", help="model input CxHxW (default 3x32x32)")
    p_sec.add_argument("--no-condition", action="store_true", help="skip condition numbers (faster)")
    p_sec.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p_sec.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p_sec.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p_sec.add_argument("--out", default=None, help="also write the JSON report to this file (atomically)")

    from .training import DEFAULTS as TRAIN_DEFAULTS

    p_train = sub.add_parser("train", help="train a model with SGD on a dataset's train split and write checkpoints "
                                           "(OUT/epochE.pt, OUT/epochE.json) for copa attack --checkpoint")
    p_train.add_argument("--model", required=True, help="model name or chain:SPEC (copa list models)")
    p_train.add_argument("--dataset", required=True, help="dataset spec (copa list datasets); trains on its train "
                                                          "split, measures accuracy on its test split if any")
    p_train.add_argument("--epochs", required=True, type=int, help="epochs of SGD (0: only the initialisation)")
    p_train.add_argument("--checkpoint-epochs", required=True, metavar="E,E,...",
                         help="epochs to write, comma-separated, e.g. 0,1,5 (0 = the untrained initialisation)")
    p_train.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p_train.add_argument("--lr", type=float, default=TRAIN_DEFAULTS["lr"],
                         help=f"SGD learning rate (default {TRAIN_DEFAULTS['lr']})")
    p_train.add_argument("--momentum", type=float, default=TRAIN_DEFAULTS["momentum"],
                         help=f"SGD momentum (default {TRAIN_DEFAULTS['momentum']})")
    p_train.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"],
                         help=f"mini-batch size (default {TRAIN_DEFAULTS['batch_size']})")
    p_train.add_argument("--weight-decay", type=float, default=TRAIN_DEFAULTS["weight_decay"],
                         help=f"SGD weight decay (default {TRAIN_DEFAULTS['weight_decay']})")
    p_train.add_argument("--seed", type=int, default=TRAIN_DEFAULTS["seed"],
                         help=f"seeds the initialisation and the data order (default {TRAIN_DEFAULTS['seed']})")
    p_train.add_argument("--preprocess", default=TRAIN_DEFAULTS["preprocess"],
                         help=f"center, normalize or none (default {TRAIN_DEFAULTS['preprocess']})")
    p_train.add_argument("--input-shape", default="3x32x32", help="model input CxHxW (default 3x32x32)")
    p_train.add_argument("--max-images", type=int, default=None, metavar="N",
                         help="train on the first N available train images only (quick runs)")
    p_train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p_train.add_argument("--data-root", default=None, help="dataset root folder")
    p_train.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")

    p_ver = sub.add_parser("verify", help="check every row of a published leaderboard against its config.yaml and "
                                          "stored reconstructions, then rerun a random sample of its records and "
                                          "compare (identical / within tolerance / different / tampered / cannot "
                                          "verify)")
    p_ver.add_argument("results_dir", metavar="RESULTS_DIR", help="a workflow's results_dir (config.yaml, records.csv)")
    p_ver.add_argument("--sample", type=int, default=10, help="records to rerun (default 10)")
    p_ver.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p_ver.add_argument("--rtol", type=float, default=None, help="relative tolerance of 'within tolerance' "
                                                                 "(default 1e-6)")
    p_ver.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the workflow's cells)")
    p_ver.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p_ver.add_argument("--out", default=None, metavar="FILE.md", help="also write the verdicts as a Markdown table")
    p_ver.add_argument("--rows", default=None, help=argparse.SUPPRESS)  # the kernel-set retry's child process
    p_ver.add_argument("--report", default=None, help=argparse.SUPPRESS)
    p_ver.add_argument("--allow-unsandboxed", action="store_true",
                       help=f"rerun plug-in attacks even where no sandbox works (same as {ALLOW_UNSANDBOXED}=1)")
    p_ver.add_argument("--record-verdict", action="store_true",
                       help="a submission folder only (copa submit): write the entry's verdict (verified, unverified "
                            "or failed) with the sample and the counts to RESULTS_DIR/verification.json")

    p_sub = sub.add_parser("submit", help="run the standard benchmark (config/submission.yaml) with your plug-in's "
                                          "attack and write a submission folder for maintainers to verify "
                                          "(docs/submitting.md)")
    p_sub.add_argument("--plugin", required=True, metavar="FILE.py",
                       help="your attack's .py file (untrusted: described and run in the sandbox only, docs/trust.md)")
    p_sub.add_argument("--attack", required=True, help="the attack name your plug-in registers")
    p_sub.add_argument("--name", required=True, help="the entry's name (its folder: submissions/NAME)")
    p_sub.add_argument("--contact", required=True, help="an e-mail address or web address for the maintainers")
    p_sub.add_argument("--config", default=None, metavar="FILE",
                       help="the benchmark config (default config/submission.yaml, the standard; another one makes "
                            "an entry marked non-standard, e.g. config/submission-smoke.yaml for a first try)")
    p_sub.add_argument("--out", default=None, metavar="DIR",
                       help="the entry's folder (default submissions/NAME; it must not exist)")
    p_sub.add_argument("--cores", type=int, default=None, help="cores for the workflow (default: all of this machine's)")
    p_sub.add_argument("--allow-unsandboxed", action="store_true",
                       help=f"run the plug-in even where no sandbox works (same as {ALLOW_UNSANDBOXED}=1; the records "
                            f"and the leaderboard then say so)")

    p_site = sub.add_parser("site", help="build the static website of published results folders (and submissions): "
                                         "leaderboard, studies, models, attacks, records")
    p_site.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR",
                        help="a published results folder (records.csv, leaderboard.csv, leaderboard.md) or a "
                             "submission (the same, with submission.json)")
    p_site.add_argument("--out", required=True, metavar="DIR",
                        help="the site's folder (new, empty, or a site built before: only changed files are written)")
    return parser


def cmd_submit(args) -> int:
    from .bench.submission import SUBMISSION_FILE, submit

    _allow_unsandboxed(args)
    entry = submit(plugin=args.plugin, attack=args.attack, name=args.name, contact=args.contact, out=args.out,
                   config_file=args.config, cores=args.cores, command=args.command_line,
                   log=lambda line: print(line, file=sys.stderr, flush=True))
    folder = args.out or f"submissions/{args.name}"
    counts = ", ".join(f"{n} {status}" for status, n in entry["records"].items())
    differences = entry["config"]["differences"]
    standard = "the standard benchmark" if not differences else \
        f"not the standard benchmark ({len(differences)} differences, listed in {SUBMISSION_FILE})"
    print(f"wrote {folder}: {args.attack}'s records {counts}; {standard}; plug-in sha256 {entry['plugin_sha256']}")
    print(f"maintainers verify it with: copa verify {folder} --sample 8 --seed SEED --record-verdict")
    return 0


def cmd_site(args) -> int:
    from .bench.site import write_site

    result = write_site(args.results_dirs, args.out)
    print(f"{result.out}: {len(result.written)} files written, {result.unchanged} unchanged, "
          f"{len(result.removed)} removed")
    return 0


def cmd_verify(args) -> int:
    from .bench.verify import DEFAULT_RTOL, VERDICTS, kernel_set_summary, verify_results, write_verification

    check_seed(args.seed, "--seed")
    _allow_unsandboxed(args)
    if args.out is not None:
        check_writable(args.out, what="--out", directory=False)
    rtol = DEFAULT_RTOL if args.rtol is None else args.rtol
    if not rtol >= 0:
        raise CopaError(f"--rtol {args.rtol} is invalid: expected a number ≥ 0")
    positions = None
    if args.rows is not None:  # the kernel-set retry's child process (copa.bench.verify._verify_in_child)
        try:
            positions = [int(p) for p in args.rows.split(",")]
        except ValueError:
            raise CopaError(f"--rows {args.rows!r} is invalid: expected row numbers of records.csv, e.g. 0,4") from None
    from .bench.submission import VERIFICATION_FILE, is_submission, verify_submission

    if args.record_verdict and not is_submission(args.results_dir):
        raise CopaError(f"--record-verdict writes a submission's verdict, and {args.results_dir} is not a submission "
                        f"(no submission.json: copa submit writes it)")
    if positions is None and is_submission(args.results_dir):
        verification, results = verify_submission(args.results_dir, sample=args.sample, seed=args.seed, rtol=rtol,
                                                   device=args.device, threads=args.threads,
                                                   command=args.command_line, record=args.record_verdict)
        if results:
            counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
            print(kernel_set_summary(results))
            print(f"{len(results)} records: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
        if args.out is not None:
            write_verification(results, args.out, command=args.command_line,
                               results_dir=portable_path(args.results_dir))
        print(f"{verification['name']}: {verification['verdict']} ({verification['sample']} of {verification['attack']}'s "
              f"records rerun" + (f"; {verification['reason']}" if verification.get("reason") else "") + ")"
              + (f"; wrote {Path(args.results_dir) / VERIFICATION_FILE}" if args.record_verdict else ""))
        return 1 if verification["verdict"] == "failed" else 0
    results = verify_results(args.results_dir, sample=args.sample, seed=args.seed, rtol=rtol, device=args.device,
                             threads=args.threads, positions=positions)
    if args.report is not None:
        atomic_write_json(args.report, [{"position": p, "verdict": r.verdict, "detail": r.detail}
                                        for p, r in zip(positions or [], results, strict=True)])
        return 0
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    print(kernel_set_summary(results))
    print(f"{len(results)} records: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    if args.out is not None:
        write_verification(results, args.out, command=args.command_line,
                           results_dir=portable_path(args.results_dir))
    consistent = results.consistency is None or results.consistency.consistent()
    return 0 if counts["different"] == counts["tampered"] == 0 and consistent else 1


def cmd_list(args) -> int:
    from . import data, metrics, models
    from .attacks import ATTACKS
    from .attacks import load_plugins

    _allow_unsandboxed(args)
    load_plugins(args.plugin, args.extension)  # extensions register models, defences, metrics; plug-ins attacks
    if args.what == "models":
        for entry in models.MODELS:
            chain = "chain" if entry.meta.get("is_chain") else "not a chain"
            print(f"{entry.name:14s} {chain:12s} {entry.meta.get('description', '')}")
        print(f"\nChain variants: append {', '.join(models.ACTIVATION_SUFFIXES)} to a chain's name "
              f"(e.g. cnn2_c1-sigmoid); any chain: chain:SPEC (see copa.models).")
    elif args.what == "attacks":
        for entry in ATTACKS:
            label = "label needed" if entry.obj.needs_label else ""
            batched = "batched" if entry.obj.batched else ""
            fedavg = "FedAvg" if "weight-delta" in entry.obj.update_kinds else ""
            print(f"{entry.name:14s} {label:13s} {batched:8s} {fedavg:7s} {entry.meta.get('paper', '')}")
        print("\nbatched: attacks B independent instances as one vectorised computation (README, "
              "\"Batched instances\").\nFedAvg: also reads the weight delta of a client that took several local "
              "steps (--local-steps K; README, \"FedAvg and batches\").")
    elif args.what == "datasets":
        for entry in data.DATASETS:
            print(f"{entry.meta.get('form', entry.name):16s} {entry.meta.get('description', '')}")
    elif args.what == "defences":
        from .threat import DEFENCES

        for entry in DEFENCES:
            params = ", ".join(f"{k}={p.default}" for k, p in entry.obj.parameters.items()) or "no parameters"
            print(f"{entry.name:14s} {params:28s} {entry.meta.get('paper', '')}")
        print("\nuse: --defence NAME[:key=value,...] (repeat to apply several, in order); config: defences: [...]")
    else:
        for entry in metrics.METRICS:
            print(f"{entry.name:8s} {metrics.metric_info(entry.name).heading:10s} {entry.meta.get('description', '')}")
        print("\n↑ / ↓: higher / lower is better. A plug-in registers more with copa.metrics.register_metric; "
              "config: metrics: [...]")
    return 0


def cmd_attack(args) -> int:
    from .attacks import create_attack, parse_overrides, progress
    from .bench import summary_line, write_outputs

    check_writable(args.out, what="--out", directory=True)
    out = Path(args.out)
    _set_threads(args.threads)
    if args.observation is None and args.targets is not None:
        raise CopaError("--targets only goes with --observation FILE (a scenario has its own images)")
    from .threat.observation_file import LIMIT_FLAGS, Limits

    given_limits = {field: getattr(args, field) for field in LIMIT_FLAGS if getattr(args, field, None) is not None}
    limits = Limits(**given_limits)
    if args.observation is not None:
        given = _given_scenario_options(args)
        if given:
            raise CopaError(f"--observation replaces the scenario: {', '.join(given)} cannot be used with it "
                            f"(the file holds the model, weights, gradients and labels)")
    check_seed(args.seed, "--seed")
    _allow_unsandboxed(args)
    attack = create_attack(args.attack, parse_overrides(args.overrides), plugins=args.plugin,
                           extensions=args.extension)
    isolation = "always" if args.isolate else "auto"
    with progress.reporting("quiet" if args.quiet else "auto", attack.name):
        record, reconstruction, truth, preprocess = _run_attack_command(args, attack, out, limits, isolation)
    write_outputs(out, record, reconstruction, truth, preprocess=preprocess)
    print(summary_line(record))
    return 0


def _run_attack_command(args, attack, out, limits, isolation):
    """``copa attack``'s run: on the scenario of the flags, or on ``--observation FILE``."""
    from .bench import attack_observation, run_attack

    if args.observation is None:
        scenario = _scenario_from_args(args)
        record, reconstruction, truth = run_attack(scenario, attack, seed=args.seed,
                                                   device=_device(args),
                                                   threads=args.threads, isolation=isolation, hide=[out],
                                                   limits=limits)
        return record, reconstruction, truth, None
    else:
        from .threat.observation_file import file_sha256, load_observation, load_targets
        from .threat import resolve_device

        device = resolve_device(_device(args))
        observation, source = load_observation(args.observation, device=device, limits=limits)
        truth = None
        if args.targets is not None:
            truth = load_targets(args.targets, observation)
            source["targets"] = {"path": str(args.targets), "sha256": file_sha256(args.targets)}
        record, reconstruction = attack_observation(observation, attack, truth=truth, seed=args.seed, device=device,
                                                    source=source, isolation=isolation,
                                                    hide=[out, *([args.targets] if args.targets else [])])
        return record, reconstruction, truth, observation.preprocess


def cmd_observe(args) -> int:
    from .plugins import import_trusted
    from .threat.observation_file import describe_payload, observe_meta, read_payload, save_observation
    from .threat import resolve_device

    out = Path(args.out)
    if args.out and out.is_dir():
        raise CopaError(f"--out {args.out!r} is a directory: expected a file name, e.g. observation.pt")
    check_writable(args.out, what="--out", directory=False)
    import_trusted(args.extension)  # a model of a trusted extension: the client's side runs trusted code only
    scenario = _scenario_from_args(args)
    observation, _truth = scenario.build(resolve_device(_device(args)))
    del _truth  # the file holds what the server sees, never the images
    save_observation(out, observation, model_seed=scenario.model_seed, meta=observe_meta(scenario.to_dict()))
    print(f"wrote {out}: {describe_payload(read_payload(out, limits=None))}")  # copa's own file: unbounded
    return 0


def cmd_check(args) -> int:
    from .attacks import ATTACKS, SandboxedAttack, check_attack, load_plugins, parse_overrides
    from .attacks.sandboxed import check_in_sandbox
    from .threat import parse_input_shape

    _allow_unsandboxed(args)
    load_plugins(args.plugin, args.extension)
    attack, overrides = ATTACKS.get(args.attack), parse_overrides(args.overrides)
    shape = parse_input_shape(args.input_shape)
    if issubclass(attack, SandboxedAttack):  # a plug-in's attack: checked where it runs, in its sandbox
        passed = check_in_sandbox(attack, overrides, args.model, shape)
    else:
        passed = check_attack(attack, overrides=overrides, model=args.model, input_shape=shape)
    print(f"{args.attack}: {len(passed)} checks passed ({', '.join(passed)})")
    return 0


def cmd_security(args) -> int:
    from .layerwise import security_reports
    from .threat import parse_input_shape

    shape = parse_input_shape(args.input_shape)
    check_seed(args.model_seed, "--model-seed")
    indices = list(_parse_indices(args.index)) if args.index else [0]
    if args.out is not None:
        check_writable(args.out, what="--out", directory=False)
    _set_threads(args.threads)
    # one report per (model, index), model-major; the images of one model share its weight-only work
    reports = [report for name in args.model
               for report in security_reports(name, seed=args.model_seed, dataset=args.dataset, indices=indices,
                                              delta_source=args.delta_source, input_shape=shape,
                                              condition=not args.no_condition, device=args.device)]
    payload = [r.to_dict() for r in reports]
    if args.out is not None:
        atomic_write_json(args.out, payload if len(payload) > 1 else payload[0])
    if args.json:
        print(json.dumps(payload if len(payload) > 1 else payload[0], indent=2))
    elif len(indices) == 1:
        print("\n\n".join(r.to_table() for r in reports))
    else:  # name the image above each table
        print("\n\n".join(f"{r.settings['dataset']} train image {r.settings['index']} "
                           f"(delta source: {r.settings['delta_source']}):\n{r.to_table()}" for r in reports))
    return 0


def cmd_train(args) -> int:
    from .threat import parse_input_shape
    from .training import check_epochs, parse_checkpoint_epochs, train

    check_epochs(args.epochs, "--epochs")
    epochs = parse_checkpoint_epochs(args.checkpoint_epochs)
    bad = [e for e in epochs if e < 0 or e > args.epochs]
    if bad:
        raise CopaError(f"--checkpoint-epochs {args.checkpoint_epochs!r} is invalid: epoch {bad[0]} is outside "
                        f"0 to {args.epochs} (--epochs)")
    if not args.lr > 0:
        raise CopaError(f"--lr {args.lr} is invalid: expected a number > 0")
    if args.batch_size < 1:
        raise CopaError(f"--batch-size {args.batch_size} is invalid: expected a positive integer")
    if args.max_images is not None and args.max_images < 1:
        raise CopaError(f"--max-images {args.max_images} is invalid: expected a positive integer")
    check_writable(args.out, what="--out", directory=True)
    shape = parse_input_shape(args.input_shape)
    _set_threads(args.threads)
    summary = train(args.model, args.dataset, epochs=args.epochs, checkpoint_epochs=epochs, lr=args.lr,
                    momentum=args.momentum, batch_size=args.batch_size, weight_decay=args.weight_decay,
                    seed=args.seed, preprocess=args.preprocess, input_shape=shape, data_root=args.data_root,
                    out_dir=args.out, device=args.device, max_images=args.max_images)
    print(f"wrote {len(summary['files'])} files to {args.out} in {summary['seconds']:.1f} s")
    return 0


def portable_path(value: str | Path, cwd: str | Path | None = None) -> str:
    """``value`` as published files write it: relative to the working directory when it is an absolute path below
    it, else as given, so that a file made in one checkout stays the same in another (an absolute ``--out`` once
    made the committed site stale in every fresh clone).

    >>> portable_path("/repo/results/v.md", cwd="/repo"), portable_path("/elsewhere/x", cwd="/repo")
    ('results/v.md', '/elsewhere/x')
    """

    path = Path(value)
    if not path.is_absolute():
        return str(value)
    try:
        return path.resolve().relative_to(Path(cwd if cwd is not None else Path.cwd()).resolve()).as_posix() or "."
    except ValueError:
        return str(value)


def portable_command_line(argv: Sequence[str], cwd: str | Path | None = None) -> str:
    """The command as published files record it (verification.md, submission.json): each argument, alone or as
    ``--opt=PATH``, through :func:`portable_path`.

    >>> portable_command_line(["verify", "/repo/results", "--out=/repo/results/v.md"], cwd="/repo")
    'copa verify results --out=results/v.md'
    """

    def portable(token: str) -> str:
        option, equals, value = token.partition("=") if token.startswith("--") else ("", "", token)
        return option + equals + portable_path(value, cwd)

    return "copa " + shlex.join(portable(token) for token in argv)


# each subcommand's handler (build_parser declares its arguments)
COMMANDS = {"list": cmd_list, "attack": cmd_attack, "observe": cmd_observe, "security": cmd_security,
            "check": cmd_check, "train": cmd_train, "verify": cmd_verify, "submit": cmd_submit, "site": cmd_site}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = portable_command_line(sys.argv[1:] if argv is None else list(argv))
    command = COMMANDS.get(args.command)
    if command is None:
        parser.error(f"unknown command {args.command!r}: accepted are {', '.join(COMMANDS)}")
    try:
        return command(args)
    except CopaError as exc:
        print(f"copa: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `copa list models | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
