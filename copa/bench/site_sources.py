"""The published folders a site is built from (:mod:`copa.bench.site`): results folders and third-party
submissions read and checked once (:class:`Study`, :func:`load_studies`), where they are found
(:func:`published_folders`) and what each page says it came from (:func:`provenance`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import CopaError
from ..io import read_yaml_mapping

TEMPLATES = Path(__file__).parent / "templates" / "site"
"""The site's Jinja2 templates and static files (package data)."""


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
        config = read_yaml_mapping(path / "config.yaml", expected="the config.yaml a workflow run wrote (a YAML mapping)")
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
    capability, models = _distinct(records, "cpu_capability"), _distinct(records, "cpu_model")
    notes = ([f"torch kernel set {', '.join(capability)}"] if capability else []) + \
        ([] if models else ["CPU model not in records.csv"])
    cpu_text = "; ".join(cpu) + (f" on {', '.join(models)}" if models else "") + (f" ({'; '.join(notes)})" if notes else "")
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
