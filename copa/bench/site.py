"""The published leaderboard as a static website (``copa site RESULTS_DIR... --out DIR``, rule ``site``).

Reads the workflow's published results folders — each holding ``records.csv``, ``leaderboard.csv`` and
``leaderboard.md`` (:func:`copa.bench.leaderboard.write_tables`), optionally ``security.csv``, ``config.yaml``,
``verification.md``, ``plots/``, ``validity/`` — and third-party submissions (a results folder with a
``submission.json``; once maintainers checked it, a ``verification.json``), and writes HTML pages through Jinja2
templates (``copa/bench/templates/site/``):

* ``index.html`` — the headline table: one row per (results folder, client setting, model), one PSNR and one SSIM
  column per attack (the leaderboard's cell means), the best attack per row marked, the model's security metric;
  sortable by any column and filterable by dataset, setting (defence, FedAvg K, client batch) and attack
  (``site.js``, vanilla JavaScript); the submitted entries in a table of their own, with their verification badge;
* ``studies/SLUG.html`` — one per results folder: its header (command, commit, date), plots, verification and,
  for the security-metric study, the verdict of ``validity/validity.md``;
* ``records/SLUG.html`` — every record of ``records.csv``, one group per cell: every number on the site links to
  the group of records it summarises;
* ``models/NAME.html`` — architecture (chain spec, layer shapes, per-layer rank by counting,
  :func:`copa.models.chain_layer_counts`), security metric and reconstruction grids;
* ``attacks/NAME.html`` — paper, hyperparameters with the source of each default, the SHA-256 of the attack's
  source file, which cells ran where and how long;
* ``entries/NAME.html`` — one per submission, with its ``submission.json`` and verification.

Every page names the command, commit, CPU, torch version and date of the results it shows and how to verify them.
Images are referenced by relative path into the results folders, never copied. The pages hold no build time:
the same folders give the same bytes, and a build writes only the files whose bytes changed
(:func:`write_site`); ``site.json`` lists every file with its SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from ..errors import CopaError
from ..metrics import metric_info
from .leaderboard import HEADLINE_METRIC, board_metrics, defence_order, format_number

TEMPLATES = Path(__file__).parent / "templates" / "site"
"""The site's Jinja2 templates, stylesheet and script (package data)."""
STATIC_FILES = ("style.css", "site.js")
MANIFEST = "site.json"
GENERATOR = "copa site"
"""``<meta name="generator">`` of every page: an output folder holding an index.html with it is a site of ours."""
SITE_METRICS = (HEADLINE_METRIC, "ssim")
"""The headline table's metrics (issue "The leaderboard, published": PSNR and SSIM)."""
REQUIRED_FILES = ("records.csv", "leaderboard.csv", "leaderboard.md")
SUBMISSION_FILE = "submission.json"
VERIFICATION_FILE = "verification.json"
SUBMISSION_VERDICTS = ("verified", "unverified", "failed")
RESULTS_ROOT = "results"
SUBMISSIONS_ROOT = "submissions"


# --------------------------------------------------------------------------------------------------
# Reading the published folders


@dataclass
class Study:
    """One published results folder (or one submission) as the site reads it."""

    path: Path
    slug: str
    name: str
    """The folder as the site names it: its path relative to the folders' common parent (``results/defences``)."""
    title: str
    meta: dict[str, str]
    board: pd.DataFrame
    records: pd.DataFrame
    security: pd.DataFrame | None
    config: dict[str, Any] | None
    submission: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    """A submission's ``verification.json`` (None: not checked by maintainers yet)."""
    verification_md: list[str] = field(default_factory=list)
    """The first lines of ``verification.md`` (its command and summary)."""
    readme: Path | None = None
    plots: list[Path] = field(default_factory=list)
    validity: dict[str, Any] | None = None

    @property
    def is_submission(self) -> bool:
        return self.submission is not None

    @property
    def badge(self) -> str:
        """A submission's verification status: its ``verification.json`` verdict, else unverified."""
        return (self.verification or {}).get("verdict") or "unverified"


def _bad(path: Path, problem: str) -> CopaError:
    return CopaError(f"RESULTS_DIR {str(path)!r} {problem}")


def _read_csv(path: Path, folder: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except (OSError, ValueError) as exc:
        raise _bad(folder, f"has an unreadable {path.name}: {exc}; accepted are the CSV files the workflow "
                           f"writes (copa.bench.leaderboard.write_tables)") from None


def read_markdown_header(text: str) -> tuple[str, dict[str, str]]:
    """The title and the ``- **key**: value`` facts of a page written by
    :func:`copa.bench.leaderboard.markdown_header` (backticks around a value removed)."""
    lines = text.splitlines()
    title = lines[0].removeprefix("# ").strip() if lines and lines[0].startswith("# ") else ""
    meta: dict[str, str] = {}
    for line in lines[1:]:
        match = re.match(r"- \*\*(?P<key>[^*]+)\*\*: (?P<value>.*)$", line)
        if match:
            value = match["value"].strip()
            meta[match["key"]] = value[1:-1] if len(value) > 1 and value[0] == value[-1] == "`" else value
        elif meta and line.strip() == "":
            break
        elif meta:
            break
    return title, meta


def _read_json(path: Path, folder: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _bad(folder, f"has an unreadable {path.name}: {exc}") from None
    if not isinstance(value, dict):
        raise _bad(folder, f"has a {path.name} that is not a JSON object")
    return value


def _check_submission(submission: dict[str, Any], verification: dict[str, Any] | None, folder: Path) -> None:
    keys = ("name", "contact", "attack", "plugin_file", "plugin_sha256", "environment", "command")
    missing = [k for k in keys if k not in submission]
    if missing:
        raise _bad(folder, f"has a submission.json without {', '.join(missing)}: accepted is an object with "
                           f"{', '.join(keys)}")
    if verification is not None and verification.get("verdict") not in SUBMISSION_VERDICTS:
        raise _bad(folder, f"has a verification.json with verdict {verification.get('verdict')!r}: accepted are "
                           f"{', '.join(SUBMISSION_VERDICTS)}")


def _readme(folder: Path, base: Path) -> Path | None:
    """The README.md that describes ``folder``: its own, else the nearest one above it, up to ``base``."""
    here = folder
    while True:
        if (here / "README.md").is_file():
            return here / "README.md"
        if here == base or here.parent == here or base not in here.parents:
            return None
        here = here.parent


def _validity(folder: Path) -> dict[str, Any] | None:
    """The security-metric study of ``folder/validity`` (:mod:`copa.bench.validity`): its verdict (the paragraph
    under the title of validity.md), header, tables and scatter plots."""
    page = folder / "validity" / "validity.md"
    if not page.is_file():
        return None
    text = page.read_text()
    title, meta = read_markdown_header(text)
    paragraphs = [p.strip() for p in text.split("\n\n")]
    verdict = next((p for p in paragraphs[1:] if p and not p.startswith(("#", "- **"))), "")
    return {"title": title, "meta": meta, "verdict": verdict, "page": page,
            "tables": sorted((folder / "validity").glob("*.csv")),
            "plots": sorted((folder / "validity").glob("*.png"))}


def load_study(folder: str | os.PathLike, name: str, base: Path) -> Study:
    """Read one results folder (or submission) ``folder``; one line naming what is wrong, else."""
    path = Path(folder)
    if not path.exists():
        raise _bad(path, "does not exist: accepted are results folders of the workflow (records.csv, leaderboard.csv, "
                         "leaderboard.md), e.g. results or results/defences")
    if not path.is_dir():
        raise _bad(path, "is not a folder: accepted are results folders of the workflow (records.csv, "
                         "leaderboard.csv, leaderboard.md)")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise _bad(path, f"has no {', '.join(missing)}: accepted are results folders of the workflow "
                         f"({', '.join(REQUIRED_FILES)}), e.g. results or results/defences")
    title, meta = read_markdown_header((path / "leaderboard.md").read_text())
    board = _read_csv(path / "leaderboard.csv", path)
    records = _read_csv(path / "records.csv", path)
    for frame, wanted, file in ((board, ("defence", "model", "attack", "ok", "failed", "not_applicable"),
                                 "leaderboard.csv"),
                                (records, ("model", "attack", "status", "index"), "records.csv")):
        absent = [c for c in wanted if c not in frame.columns]
        if absent:
            raise _bad(path, f"has a {file} without the columns {', '.join(absent)}: accepted are the tables the "
                             f"workflow writes (copa.bench.leaderboard.write_tables)")
    if "defence" not in records:
        records["defence"] = "none"
    security = _read_csv(path / "security.csv", path) if (path / "security.csv").is_file() else None
    config = None
    if (path / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((path / "config.yaml").read_text())
        except yaml.YAMLError as exc:
            raise _bad(path, f"has an unreadable config.yaml: {' '.join(str(exc).split())}") from None
    submission = verification = None
    if (path / SUBMISSION_FILE).is_file():
        submission = _read_json(path / SUBMISSION_FILE, path)
        if (path / VERIFICATION_FILE).is_file():
            verification = _read_json(path / VERIFICATION_FILE, path)
        _check_submission(submission, verification, path)
    verification_md = []
    if (path / "verification.md").is_file():
        verification_md = [line.replace("`", "") for line in (path / "verification.md").read_text().splitlines()[1:6]
                           if line.strip() and not line.startswith("|")]
    return Study(path=path, slug=slug(name), name=name, title=title or name, meta=meta, board=board,
                 records=records, security=security, config=config if isinstance(config, dict) else None,
                 submission=submission, verification=verification, verification_md=verification_md,
                 readme=_readme(path, base), plots=sorted((path / "plots").glob("*.png")),
                 validity=_validity(path))


def slug(text: str) -> str:
    """A file- and id-safe name: every run of characters other than letters, digits, ``_``, ``.`` and ``-``
    becomes ``-`` (``random-chain:3`` → ``random-chain-3``, ``cnn4_c2@epoch5`` → ``cnn4_c2-epoch5``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-.") or "x"


def load_studies(folders: Sequence[str | os.PathLike]) -> list[Study]:
    """The studies of ``folders`` (each given once), the project's results first, each group in path order; names
    relative to the folders' common parent."""
    if not folders:
        raise CopaError("no RESULTS_DIR given: accepted are one or more results folders, e.g. results results/defences")
    paths = [Path(f) for f in folders]
    resolved = [p.resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise _bad(paths[i], "is given twice: list each results folder once")
    for p in paths:
        if not p.exists():
            load_study(p, "", p)  # the one-line refusal of a missing folder
    absolute = [Path(os.path.abspath(p)) for p in paths]  # names and links as given: a symlinked folder stays so
    common = Path(os.path.commonpath([str(a) for a in absolute]))
    base = common.parent if common in absolute else common
    studies = [load_study(a, a.relative_to(base).as_posix(), base) for a in absolute]
    slugs = [s.slug for s in studies]
    clash = sorted({s for s in slugs if slugs.count(s) > 1})
    if clash:
        raise CopaError(f"RESULTS_DIRs {[s.name for s in studies if s.slug in clash]} share the page name "
                        f"{clash[0]!r}: accepted are folders whose paths differ in more than punctuation")
    return sorted(studies, key=lambda s: (s.is_submission, Path(s.name).parts))


def published_folders(root: str | os.PathLike = ".") -> list[Path]:
    """Every published results folder under ``root/results`` (a folder holding records.csv, leaderboard.csv and
    leaderboard.md; a partial leaderboard has no leaderboard.csv) and every submission under ``root/submissions``
    (a folder holding submission.json): what the rule ``site`` builds from."""
    root = Path(root)
    found = set()
    if (root / RESULTS_ROOT).is_dir():
        found = {p.parent for p in (root / RESULTS_ROOT).rglob("records.csv")
                 if all((p.parent / f).is_file() for f in REQUIRED_FILES)}
    if (root / SUBMISSIONS_ROOT).is_dir():
        found |= {p.parent for p in (root / SUBMISSIONS_ROOT).glob(f"*/{SUBMISSION_FILE}")}
    return sorted(found, key=lambda p: p.parts)


def site_inputs(folders: Iterable[str | os.PathLike]) -> list[str]:
    """The files a site of ``folders`` is built from (every file in them, and the templates): the rule ``site``'s
    input, so that a change to any of them rebuilds it."""
    files = {p for folder in folders for p in Path(folder).rglob("*") if p.is_file()}
    files |= {p for p in TEMPLATES.iterdir() if p.is_file()}
    return sorted(str(p) for p in files)


# --------------------------------------------------------------------------------------------------
# Facts shown on the pages


def _distinct(frame: pd.DataFrame, column: str) -> list[str]:
    if column not in frame:
        return []
    return sorted(v for v in frame[column].dropna().astype(str).unique() if v.strip())


def _torch(versions: Iterable[str]) -> list[str]:
    return sorted({m for text in versions for m in re.findall(r"\btorch ([^,|\s]+)", text)})


def _short(commit: str) -> str:
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def provenance(study: Study) -> dict[str, Any]:
    """What every page says of the results it shows: command, commit(s), CPU, torch, date, and how to verify."""
    records, meta = study.records, study.meta
    commits = _distinct(records, "git_commit") or [c.strip() for c in meta.get("commit", "").split(",")
                                                   if c.strip() and c.strip() != "–"]
    cpu = _distinct(records, "device") or [meta.get("device", "–")]
    capability = _distinct(records, "cpu_capability")
    cpu_text = "; ".join(cpu) + (f" (torch kernel set {', '.join(capability)})" if capability else
                                 " (CPU model not in records.csv)")
    sample = ((study.config or {}).get("verify") or {}).get("sample", 10)
    seed = ((study.config or {}).get("verify") or {}).get("seed", 0)
    if study.is_submission:
        verify = (study.verification or {}).get("command") or f"copa verify {study.name} --sample {sample} --seed {seed}"
    else:
        verify = f"copa verify {study.name} --sample {sample} --seed {seed}"
    return {
        "study": study, "command": study.meta.get("command") or (study.submission or {}).get("command") or "–",
        "commits": commits, "cpu": cpu_text,
        "torch": ", ".join(_torch(_distinct(records, "versions") or [meta.get("package versions", "")])) or "–",
        "date": meta.get("date", "–"), "verify": verify, "verification": study.verification_md,
    }


@dataclass
class Cell:
    """One (setting, model, attack) of a study's leaderboard, as the site shows it."""

    study: Study
    defence: str
    model: str
    attack: str
    row: dict[str, Any]
    anchor: str

    def value(self, metric: str) -> float:
        return _number(self.row.get(f"{metric}_mean"))

    def text(self, metric: str) -> str:
        """The mean as the leaderboard prints it, or why there is none (n.a., failed (N), –)."""
        row = self.row
        if row["ok"]:
            value = self.value(metric)
            return "n/a" if math.isnan(value) else format_number(value, metric_info(metric).digits)
        if row["not_applicable"] and not row["failed"]:
            return "n.a."
        if row["failed"]:
            return f"failed ({int(row['failed'])})"
        return "–"

    def sort_key(self, metric: str) -> str:
        value = self.value(metric) if self.row["ok"] else math.nan
        return "" if math.isnan(value) else ("Infinity" if value == math.inf else repr(float(value)))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def parse_setting(label: str) -> dict[str, str]:
    """A leaderboard's ``defence`` column (:attr:`copa.bench.setting.Setting.label`: ``none; local_steps=2;
    client_batch=4``) as its parts: defence, and each federated axis that differs from the paper's setting."""
    from .setting import AXES

    parts = [p.strip() for p in str(label).split(";")]
    values = {"defence": parts[0]}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        values[key.strip()] = value.strip()
    for axis in AXES:
        values.setdefault(axis.name, axis.text(axis.paper))
    return values


def metric_heading(metric: str) -> dict[str, str]:
    info = metric_info(metric)
    arrow = "↑" if info.higher_is_better else "↓"
    return {"name": metric, "label": info.label, "unit": info.unit, "arrow": arrow, "digits": info.digits,
            "title": f"{info.label}{' (' + info.unit + ')' if info.unit else ''}, {arrow} "
                     f"{'higher' if info.higher_is_better else 'lower'} is better: {info.description}"}


class Site:
    """Everything the pages show, gathered once from the studies."""

    def __init__(self, studies: list[Study], command: str):
        self.studies = studies
        self.command = command
        self.project = [s for s in studies if not s.is_submission]
        self.submissions = [s for s in studies if s.is_submission]
        self.cells: dict[tuple[str, str, str, str], Cell] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {s.slug: self._rows(s) for s in studies}
        self.metrics = [m for m in SITE_METRICS if any(m in board_metrics(s.board) for s in studies)]
        self.attacks = {group: list(dict.fromkeys(a for s in group_studies for a in s.board["attack"]))
                        for group, group_studies in (("project", self.project), ("submissions", self.submissions))}
        self.models = self._models()

    def _rows(self, study: Study) -> list[dict[str, Any]]:
        """The headline table's rows of ``study``: one per (setting, model), in the leaderboard's order."""
        board = study.board.copy()
        used: set[str] = set()
        rows = []
        datasets = {}
        if {"dataset", "split"} <= set(study.records.columns):
            for (defence, model), group in study.records.groupby(["defence", "model"], sort=False):
                datasets[(defence, model)] = ", ".join(sorted({f"{d} ({s})" for d, s in
                                                               zip(group["dataset"], group["split"])}))
        for defence in defence_order(board):
            for model in dict.fromkeys(board.loc[board["defence"] == defence, "model"]):
                sub = board[(board["defence"] == defence) & (board["model"] == model)]
                cells = {}
                for row in sub.to_dict("records"):
                    anchor = slug(f"{defence}--{model}--{row['attack']}")
                    while anchor in used:
                        anchor += "-"
                    used.add(anchor)
                    cell = Cell(study, defence, model, row["attack"], row, anchor)
                    cells[row["attack"]] = cell
                    self.cells[(study.slug, defence, model, row["attack"])] = cell
                first = sub.iloc[0]
                status = first.get("security_status")
                missing = "n.a." if status == "not-applicable" else "–"
                copa_index, score = _number(first.get("copa_index")), _number(first.get("normalised_score"))
                rows.append({
                    "study": study, "defence": defence, "setting": parse_setting(defence), "model": model,
                    "dataset": datasets.get((defence, model), study.meta.get("dataset", "–")), "cells": cells,
                    "copa_index": missing if math.isnan(copa_index) else f"{int(round(copa_index))}",
                    "copa_index_sort": "" if math.isnan(copa_index) else repr(copa_index),
                    "score": format_number(score, 3, missing), "score_sort": "" if math.isnan(score) else repr(score),
                    "best": {m: self._best(cells, m) for m in SITE_METRICS},
                })
        return rows

    @staticmethod
    def _best(cells: dict[str, Cell], metric: str) -> set[str]:
        """The attacks of a row whose mean ``metric`` is the best shown (ties, as printed, all marked)."""
        shown = {a: c for a, c in cells.items() if c.row["ok"] and not math.isnan(c.value(metric))}
        if not shown:
            return set()
        pick = max if metric_info(metric).higher_is_better else min
        best = pick(c.value(metric) for c in shown.values())
        text = format_number(best, metric_info(metric).digits)
        return {a for a, c in shown.items() if c.text(metric) == text}

    def _models(self) -> dict[str, list[Study]]:
        models: dict[str, list[Study]] = {}
        for study in self.project:
            for model in dict.fromkeys(study.board["model"]):
                models.setdefault(model, []).append(study)
        return dict(sorted(models.items(), key=lambda item: _natural(item[0])))


def _natural(text: str) -> list[Any]:
    """Sort key: digits compared as numbers (random-chain:2 before random-chain:10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------------------------------
# Models and attacks


@functools.lru_cache(maxsize=None)
def model_architecture(model: str, input_shape: str = "3x32x32") -> dict[str, Any]:
    """What the model page says of ``model``'s architecture: its registry entry, chain spec, layer shapes and, for
    a chain, each conv layer's unknowns, rows and rank by counting (:func:`copa.models.chain_layer_counts`: the
    measured rank on the paper's chains, an upper bound on random chains)."""
    from ..models import MODELS, RANDOM_CHAIN_PREFIX, chain_layer_counts, chain_layer_shapes, random_chain_spec
    from ..threat import parse_input_shape
    from .pipeline import parse_model_entry

    architecture, epoch = parse_model_entry(model)
    info: dict[str, Any] = {"architecture": architecture, "epoch": epoch, "description": "", "spec": None,
                            "source": "", "layers": [], "is_chain": None, "not_chain_reason": None}
    try:
        shape = parse_input_shape(input_shape)
    except CopaError:
        shape = (3, 32, 32)
    info["input_shape"] = "×".join(map(str, shape))
    if architecture.startswith(RANDOM_CHAIN_PREFIX):
        seed = architecture.removeprefix(RANDOM_CHAIN_PREFIX)
        spec = random_chain_spec(int(seed), in_shape=shape) if seed.isdigit() else None
        info["description"] = ("a seeded random chain of the security-metric study (copa.models.random_chain_spec; "
                               "even seeds rank-deficient, odd full-rank)")
    elif architecture in MODELS:
        meta = MODELS.entry(architecture).meta
        spec = meta.get("spec")
        info.update(description=meta.get("description", ""), source=meta.get("source", ""),
                    is_chain=meta.get("is_chain"), not_chain_reason=meta.get("not_chain_reason"))
    else:
        spec = None
        info["description"] = "not registered in this checkout (copa list models)"
    info["spec"] = spec
    if spec:
        from ..models import chain_not_chain_reason

        reason = chain_not_chain_reason(spec)
        info.update(is_chain=reason is None, not_chain_reason=reason)
        shapes = chain_layer_shapes(spec, shape)
        counts = iter(chain_layer_counts(spec, shape) if reason is None else [])
        for token, layer_shape in zip(spec.split(), shapes):
            layer = {"token": token, "input": "×".join(map(str, layer_shape.input)),
                     "output": "×".join(map(str, layer_shape.output)), "count": None}
            if token.startswith("c") and reason is None:
                count = next(counts)
                layer["count"] = {"unknowns": count.unknowns, "rows": count.rows, "rank": count.rank_bound,
                                  "deficiency": count.predicted_deficiency}
            info["layers"].append(layer)
    return info


def attack_declaration(name: str) -> dict[str, Any] | None:
    """The declaration of a built-in or baseline attack (trusted code: ``copa.plugins.import_trusted``): paper,
    code, description, hyperparameters with the source of each default, and the SHA-256 of its source file
    (:func:`copa.bench.pipeline.attack_identity`). None for a name not registered here — a plug-in's attack,
    which is never imported outside its sandbox."""
    from ..attacks import ATTACKS, SandboxedAttack
    from ..plugins import import_trusted
    from .pipeline import attack_identity

    import_trusted(())
    if name not in ATTACKS:
        return None
    cls = ATTACKS.get(name)
    if issubclass(cls, SandboxedAttack):
        return None
    identity = attack_identity({}, name, built=cls())
    return {"name": name, "paper": cls.paper, "code": cls.code, "description": cls.description,
            "needs_label": cls.needs_label, "batched": cls.batched, "update_kinds": list(cls.update_kinds),
            "hyperparameters": [{"name": k, "default": hp.default, "source": hp.source, "help": hp.help,
                                 "range": _range(hp)} for k, hp in cls.hyperparameters.items()],
            "source": identity["source"], "source_sha256": identity["source_sha256"]}


def _range(hp) -> str:
    if hp.minimum is None and hp.maximum is None:
        return ""
    low = "" if hp.minimum is None else f"{hp.minimum:g}"
    high = "" if hp.maximum is None else f"{hp.maximum:g}"
    return f"{low} … {high}"


def _used_hyperparameters(records: pd.DataFrame) -> list[str]:
    """The distinct hyperparameter sets (JSON, as records.csv holds them) of some records."""
    return _distinct(records, "hyperparameters")


def _attack_runs(site: Site, attack: str) -> list[dict[str, Any]]:
    """Per study and cell of ``attack``: counts, where it ran (device, kernel set, commit) and how long."""
    runs = []
    for study in site.project:
        records = study.records[study.records["attack"] == attack]
        if records.empty:
            continue
        cells = []
        for (defence, model), group in records.groupby(["defence", "model"], sort=False):
            cell = site.cells.get((study.slug, defence, model, attack))
            seconds = pd.to_numeric(group.get("seconds"), errors="coerce") if "seconds" in group else pd.Series()
            ok = group[group["status"] == "ok"]
            cells.append({"defence": defence, "model": model, "cell": cell, "runs": len(group), "ok": len(ok),
                          "failed": int((group["status"] == "failed").sum()),
                          "not_applicable": int((group["status"] == "not-applicable").sum()),
                          "device": "; ".join(_distinct(group, "device")) or "–",
                          "kernels": "; ".join(_distinct(group, "cpu_capability")) or "–",
                          "commits": [_short(c) for c in _distinct(group, "git_commit")],
                          "seconds_total": format_number(float(seconds.sum()) if seconds.notna().any() else math.nan, 1),
                          "seconds_mean": format_number(float(seconds.mean()) if seconds.notna().any() else math.nan, 2)})
        runs.append({"study": study, "cells": cells, "hyperparameters": _used_hyperparameters(records)})
    return runs


# --------------------------------------------------------------------------------------------------
# Rendering


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["j2", "html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["short"] = _short
    env.filters["slug"] = slug
    env.filters["fmt"] = lambda value, digits=2: format_number(_number(value), digits)
    return env


class Renderer:
    """Renders each page into bytes; links are relative (the site opens from the file system)."""

    def __init__(self, site: Site, out: Path):
        self.site = site
        self.out = Path(os.path.abspath(out))
        self.env = _environment()
        self.pages: dict[str, bytes] = {}

    def link_to_file(self, page: str, target: Path) -> str:
        """A relative URL from the page ``page`` (a path inside the site) to the file ``target`` outside it."""
        here = (self.out / page).parent
        relative = os.path.relpath(os.path.abspath(target), here)
        return quote(Path(relative).as_posix())

    @staticmethod
    def root(page: str) -> str:
        return "../" * page.count("/")

    def model_page(self, model: str) -> str:
        return f"models/{slug(model)}.html"

    def render(self, page: str, template: str, **context: Any) -> None:
        root = self.root(page)
        html = self.env.get_template(template).render(
            site=self.site, root=root, page=page, file_link=lambda target: self.link_to_file(page, target),
            model_page=lambda m: root + self.model_page(m),
            attack_page=lambda a: f"{root}attacks/{slug(a)}.html" if a in self.site.attacks["project"] else "",
            cell_link=lambda cell: f"{root}records/{cell.study.slug}.html#{cell.anchor}",
            study_page=lambda s: f"{root}{'entries' if s.is_submission else 'studies'}/{s.slug}.html",
            metric_heading=metric_heading, **context)
        self.pages[page] = html.encode()

    def all(self) -> dict[str, bytes]:
        site = self.site
        every = [provenance(s) for s in site.studies]
        self.render("index.html", "index.html.j2", provenances=every, title="copa-bench leaderboard",
                    site_rows=[r for s in site.project for r in site.rows[s.slug]],
                    submitted_rows=[r for s in site.submissions for r in site.rows[s.slug]])
        for study in site.studies:
            prov = [provenance(study)]
            folder = "entries" if study.is_submission else "studies"
            self.render(f"{folder}/{study.slug}.html", "study.html.j2", study=study, provenances=prov,
                        rows=site.rows[study.slug], attacks=list(dict.fromkeys(study.board["attack"])),
                        title=study.title)
            self.render(f"records/{study.slug}.html", "records.html.j2", study=study, provenances=prov,
                        groups=self._record_groups(study), metrics=_record_metrics(study.records),
                        title=f"Records: {study.name}")
        for model, studies in site.models.items():
            input_shape = next((str((s.config or {}).get("input_shape") or "3x32x32") for s in studies), "3x32x32")
            sections = []
            for study in studies:
                rows = [r for r in site.rows[study.slug] if r["model"] == model]
                grid = study.path / "plots" / f"reconstructions_{model}.png"
                security = None
                if study.security is not None:
                    match = study.security[study.security["model"] == model]
                    security = match.iloc[0].to_dict() if len(match) else None
                checkpoint = study.path / "checkpoints" / f"{model}.json"
                sections.append({"study": study, "rows": rows, "grid": grid if grid.is_file() else None,
                                 "security": security, "checkpoint": _checkpoint(checkpoint),
                                 "checkpoint_path": checkpoint if checkpoint.is_file() else None,
                                 "attacks": list(dict.fromkeys(study.board["attack"]))})
            self.render(self.model_page(model), "model.html.j2", model=model, title=f"Model {model}",
                        architecture=model_architecture(model, input_shape), sections=sections,
                        provenances=[provenance(s) for s in studies])
        for attack in site.attacks["project"]:
            runs = _attack_runs(site, attack)
            self.render(f"attacks/{slug(attack)}.html", "attack.html.j2", attack=attack, title=f"Attack {attack}",
                        declaration=attack_declaration(attack), runs=runs,
                        provenances=[provenance(r["study"]) for r in runs])
        for name in STATIC_FILES:
            self.pages[name] = (TEMPLATES / name).read_bytes()
        manifest = {"generator": GENERATOR, "command": site.command,
                    "results": [{"folder": s.name, "submission": s.is_submission} for s in site.studies],
                    "files": {p: hashlib.sha256(b).hexdigest() for p, b in sorted(self.pages.items())}}
        self.pages[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
        return self.pages

    def _record_groups(self, study: Study) -> list[dict[str, Any]]:
        """The records of each cell of ``study``'s leaderboard (in its order), then any others."""
        records = study.records
        groups = []
        keys = list(zip(records["defence"].astype(str), records["model"].astype(str), records["attack"].astype(str)))
        by_cell: dict[tuple[str, str, str], list[int]] = {}
        for position, key in enumerate(keys):
            by_cell.setdefault(key, []).append(position)
        for row in self.site.rows[study.slug]:
            for attack, cell in row["cells"].items():
                positions = by_cell.pop((row["defence"], row["model"], attack), [])
                groups.append({"cell": cell, "defence": row["defence"], "model": row["model"], "attack": attack,
                               "anchor": cell.anchor, "records": [_record_row(records.iloc[p]) for p in positions]})
        for (defence, model, attack), positions in by_cell.items():  # records of no leaderboard cell
            groups.append({"cell": None, "defence": defence, "model": model, "attack": attack,
                           "anchor": slug(f"other--{defence}--{model}--{attack}"),
                           "records": [_record_row(records.iloc[p]) for p in positions]})
        return groups


def _record_metrics(records: pd.DataFrame) -> list[str]:
    from .record import metric_columns

    metrics = metric_columns(records.columns)
    return [m for m in metrics if pd.to_numeric(records[m], errors="coerce").notna().any()]


def _record_row(row: pd.Series) -> dict[str, Any]:
    values = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.to_dict().items()}
    return values


def _checkpoint(path: Path) -> dict[str, Any] | None:
    """A trained checkpoint's summary (``copa train``'s epochE.json): epoch and test accuracy."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def site_command(folders: Sequence[Path], out: Path) -> str:
    """The command that builds this site, with paths relative to the output folder's parent (the repository
    root for ``--out site``): the same whatever the current folder."""
    base = Path(os.path.abspath(out)).parent
    names = [os.path.relpath(os.path.abspath(f), base) for f in folders]
    return shlex.join(["copa", "site", *names, "--out", os.path.relpath(os.path.abspath(out), base)])


def build_site(folders: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, bytes]:
    """Every file of the site of ``folders`` for the output folder ``out``, as bytes (nothing written)."""
    out = Path(out)
    studies = load_studies(folders)
    site = Site(studies, site_command([s.path for s in studies], out))
    return Renderer(site, out).all()


def _is_site(out: Path) -> bool:
    index = out / "index.html"
    if (out / MANIFEST).is_file():
        try:
            return json.loads((out / MANIFEST).read_text()).get("generator") == GENERATOR
        except (OSError, ValueError, AttributeError):
            return False
    return index.is_file() and f'<meta name="generator" content="{GENERATOR}">' in index.read_text(errors="replace")


def _previous_files(out: Path) -> set[str]:
    """The files of the site already in ``out`` (its manifest's, else every file under it)."""
    try:
        return set(json.loads((out / MANIFEST).read_text())["files"]) | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


@dataclass
class SiteWrite:
    """What :func:`write_site` did."""

    out: Path
    written: list[str]
    unchanged: int
    removed: list[str]


def write_site(folders: Sequence[str | os.PathLike], out: str | os.PathLike) -> SiteWrite:
    """Build the site of ``folders`` into ``out``: a new folder is filled in a temporary folder beside it and moved
    into place; a site built before is updated file by file — only the files whose bytes changed are written
    (atomically), files of the old site that the new one lacks are removed. ``out`` must be a new or empty folder
    or a site of ours; every bad input is refused before anything is written."""
    from ..io import atomic_write, check_writable

    out = Path(out)
    if not str(out):
        raise CopaError("--out '' is an empty path: expected the folder to write the site into, e.g. site")
    if out.exists() and not out.is_dir():
        raise CopaError(f"--out {str(out)!r} exists and is not a folder: expected a new, empty or earlier site folder")
    check_writable(out, what="--out", directory=True)
    if out.is_dir() and any(out.iterdir()) and not _is_site(out):
        raise CopaError(f"--out {str(out)!r} is a folder that holds other files and no site of `copa site` "
                        f"(no {MANIFEST}): expected a new, empty or earlier site folder")
    pages = build_site(folders, out)
    if not out.is_dir() or not any(out.iterdir()):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for name, data in pages.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            os.chmod(tmp, 0o777 & ~_umask())
            if out.is_dir():
                out.rmdir()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return SiteWrite(out, sorted(pages), 0, [])
    old = _previous_files(out)
    written = []
    for name, data in pages.items():
        target = out / name
        if target.is_file() and target.read_bytes() == data:
            continue
        atomic_write(target, lambda p, data=data: p.write_bytes(data))
        written.append(name)
    removed = sorted(old - set(pages))
    for name in removed:
        (out / name).unlink(missing_ok=True)
    for folder in sorted({(out / n).parent for n in removed}, key=lambda p: len(p.parts), reverse=True):
        if folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return SiteWrite(out, written, len(pages) - len(written), removed)


def _umask() -> int:
    from ..io import current_umask

    return current_umask()
