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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from ..errors import CopaError
from ..metrics import metric_info
from .leaderboard import board_headline, board_metrics, defence_order, format_number
from .site_sources import (  # noqa: F401 - the published folders' names, public here as before
    REQUIRED_FILES, RESULTS_ROOT, TEMPLATES, SUBMISSION_FILE, SUBMISSION_VERDICTS, SUBMISSIONS_ROOT, VERIFICATION_FILE, Study,
    _distinct, _short, load_studies, provenance, published_folders, site_inputs, slug)
from .setting import AXES
from ..models import MODELS, RANDOM_CHAIN_PREFIX, chain_layer_counts, chain_layer_shapes, random_chain_spec
from ..threat import parse_input_shape
from .pipeline import parse_model_entry
from ..models import chain_not_chain_reason
from ..attacks import ATTACKS, SandboxedAttack
from ..plugins import import_trusted
from .pipeline import attack_identity
from .consistency import source_staleness
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from .record import metric_columns
from ..io import atomic_write, check_writable
from ..io import current_umask

"""The site's Jinja2 templates, stylesheet and script (package data)."""
STATIC_FILES = ("style.css", "site.js")
MANIFEST = "site.json"
GENERATOR = "copa site"
"""``<meta name="generator">`` of every page: an output folder holding an index.html with it is a site of ours."""
SECOND_METRIC = "ssim"
"""Shown beside each board's headline metric (issue "The leaderboard, published": PSNR and SSIM)."""


@dataclass
class Cell:
    """One (setting, model, attack) of a study's leaderboard, as the site shows it."""

    study: Study
    defence: str
    model: str
    attack: str
    row: dict[str, Any]
    anchor: str
    stale: str | None = None
    """Why the cell is stale (some record made with an earlier version of the attack's source file,
    :func:`copa.bench.consistency.source_staleness`), or None."""

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
        wanted = dict.fromkeys([*(board_headline(s.board) for s in studies), SECOND_METRIC])
        self.metrics = [m for m in wanted if any(m in board_metrics(s.board) for s in studies)]
        self.rows: dict[str, list[dict[str, Any]]] = {s.slug: self._rows(s) for s in studies}
        self.attacks = {group: list(dict.fromkeys(a for s in group_studies for a in s.board["attack"]))
                        for group, group_studies in (("project", self.project), ("submissions", self.submissions))}
        self.models = self._models()

    def _rows(self, study: Study) -> list[dict[str, Any]]:
        """The headline table's rows of ``study``: one per (setting, model), in the leaderboard's order."""
        board = study.board.copy()
        used: set[str] = set()
        stale = self._stale_cells(study)
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
                    cell = Cell(study, defence, model, row["attack"], row, anchor,
                                stale.get((defence, model, row["attack"])))
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
                    "best": {m: self._best(cells, m) for m in self.metrics},
                })
        return rows

    @staticmethod
    def _stale_cells(study: Study) -> dict[tuple[str, str, str], str]:
        """Why each stale cell of ``study`` is stale, by (setting, model, attack): some record made with another
        version of the attack's source file than this checkout's (records.csv ``attack_source_sha256``; a
        plug-in's attack is not imported here, so a submission is not checked)."""
        records = study.records
        if "attack_source_sha256" not in records.columns or study.is_submission:
            return {}
        keys = [records[c].astype(str) for c in ("defence", "model", "attack")]
        stale = {}
        for (defence, model, attack), hashes in records["attack_source_sha256"].groupby(keys, sort=False):
            current = _current_source_sha256(attack)
            reasons = [why for why in (source_staleness(h, current) for h in hashes) if why]
            if reasons:
                stale[(defence, model, attack)] = f"{len(reasons)} of {len(hashes)} records {reasons[0]}"
        return stale

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


@functools.lru_cache(maxsize=None)
def _current_source_sha256(attack: str) -> str | None:
    """The SHA-256 of a built-in or baseline attack's source file in this checkout; None for a plug-in's."""
    declaration = attack_declaration(attack)
    return None if declaration is None else declaration["source_sha256"]


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
                          "stale": cell.stale if cell is not None else None,
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
                        stale=[c for r in site.rows[study.slug] for c in r["cells"].values() if c.stale],
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

    return current_umask()
