"""Every row of a published folder checked against its config.yaml and its stored reconstructions, before any
rerun (``copa verify``; docs/trust.md, "What copa verify checks").

``copa verify`` reruns a sample of records.csv; what it checks here covers every row, so that a folder's author
cannot choose which records are rechecked (issue "copa verify checks every row"):

* **hash**: the row's ``config_hash`` is :func:`copa.bench.record.config_hash` of the scenario rebuilt from
  config.yaml (:func:`copa.bench.pipeline.scenario_for`: the config's keys, the row's model, setting and images),
  the attack's hyperparameters as config.yaml builds them, and the config's seed. The scenario is plain data
  (:meth:`copa.threat.Scenario.to_dict`): no image is loaded, no model built, no attack run. A row made with
  hyperparameters the attack no longer has (a changed default) whose hash is that of its own ``hyperparameters``
  is ``stale`` — not checkable, not inconsistent; so is a row whose ``attack_source_sha256`` (the attack's file
  when the record was made) is not that of the attack's file now (:func:`source_staleness`);
* **design**: the rows are exactly config.yaml's design — each (setting, model, attack, instance) of
  :func:`copa.bench.setting.setting_axis` × ``models`` × ``attacks`` × :func:`copa.bench.pipeline.client_batches`
  once (a failed or not-applicable row is present with its status): no extra row, no repeated row, none missing;
* **record**: where the row's full record is present (its ``record`` column, :func:`record_folder`), its
  record.json has the row's status and config_hash;
* **rescoring**: every ok row's stored reconstruction (images.npz) scored by copa's own scorer against the ground
  truth rebuilt from the config (:meth:`copa.threat.Scenario.load_batch`: the client's images, no client step)
  gives the row's published metrics (:func:`rescoring_disagrees`), or the row is ``tampered``. It needs the full
  records: a submission carries them (an ok row without its record is ``tampered``); a results folder under
  ``results/`` publishes records.csv only (the records stay in the workflow's ``out``), so its rows are rescored
  only where ``out`` is at hand.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from .setting import setting_axis
import torch
from ..metrics import score_images
from .pipeline import attack_identity, build_attack, client_batches, configured_metrics, scenario_for
from .record import config_hash, jsonable, read_record

PROBLEMS = ("hash mismatch", "extra", "duplicate", "missing", "record mismatch", "tampered")
"""Findings that make a folder inconsistent (a submission with one fails)."""
STALE = "stale"
"""A row made with hyperparameters the attack no longer has (its hash cannot be rebuilt from config.yaml now), or
with an earlier version of the attack's source file (:func:`source_staleness`)."""
COUNT_KEYS = {kind: kind.replace(" ", "_") for kind in (*PROBLEMS, STALE)}

RESCORE_RTOL = 1e-3
"""Relative difference between a published metric and copa's rescoring of the stored reconstruction above which
a record is ``tampered``: the npz keeps the reconstruction in float32, which moves PSNR by ~1e-6 relative; a
faked score moves it by orders of magnitude more."""
EXACT_PSNR = 100.0
"""PSNR (dB) above which float32 storage cannot tell recoveries apart (its rounding alone gives ≈ 130–150 dB):
two PSNRs both above it agree."""


@dataclass
class Finding:
    """What is wrong with one row (``row``: its number in records.csv, from 1), or a design entry without a row
    (``row`` None)."""

    row: int | None
    key: str  # setting/model/attack/index
    kind: str  # one of PROBLEMS, or STALE
    detail: str

    def line(self) -> str:
        return f"{'' if self.row is None else f'row {self.row} '}{self.key}: {self.kind} ({self.detail})"


def finding_lines(findings: list[Finding]) -> list[str]:
    """One line per finding, except that stale rows with the same reason (a whole attack's cells after its file
    changed: dozens of rows) share one line: the first row's, then how many more and the last.

    >>> same = "made with an earlier version of the attack's source file"
    >>> rows = [Finding(n, f"none/cnn2_c1/copa/{n - 1}", STALE, same) for n in (1, 2, 3)]
    >>> finding_lines([*rows, Finding(4, "none/cnn2_c1/rgap/0", "duplicate", "repeats row 1")])
    ["row 1 none/cnn2_c1/copa/0: stale (made with an earlier version of the attack's source file) and 2 more rows \
for the same reason, the last row 3 none/cnn2_c1/copa/2", 'row 4 none/cnn2_c1/rgap/0: duplicate (repeats row 1)']
    """
    stale: dict[str, list[Finding]] = {}
    lines: list[str | list[Finding]] = []
    for finding in findings:
        if finding.kind != STALE:
            lines.append(finding.line())
        elif finding.detail in stale:
            stale[finding.detail].append(finding)
        else:
            lines.append(stale.setdefault(finding.detail, [finding]))
    out = []
    for entry in lines:
        if isinstance(entry, str) or len(entry) == 1:
            out.append(entry if isinstance(entry, str) else entry[0].line())
        else:
            last = entry[-1]
            out.append(f"{entry[0].line()} and {len(entry) - 1} more row{'s' if len(entry) > 2 else ''} for the same "
                       f"reason, the last row {last.row} {last.key}")
    return out


def hyperparameter_change(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """What differs between the hyperparameters a record was made with and the attack's now, in one short phrase.

    >>> hyperparameter_change({"lr": 0.001, "steps": 300, "old": 1}, {"lr": 0.01, "steps": 300, "floor_check": True})
    'lr 0.001 → 0.01; added floor_check=True; removed old=1'
    """
    changed = [f"{k} {recorded[k]!r} → {current[k]!r}" for k in recorded if k in current and recorded[k] != current[k]]
    added = [f"{k}={current[k]!r}" for k in current if k not in recorded]
    removed = [f"{k}={recorded[k]!r}" for k in recorded if k not in current]
    parts = changed + ([f"added {', '.join(added)}"] if added else []) + ([f"removed {', '.join(removed)}"] if removed else [])
    return "; ".join(parts) or "the same values"


@dataclass
class Consistency:
    """The whole-folder check's result: findings, and how many ok rows were rescored (``not_rescored``: ok rows
    whose full record is not at hand, in a results folder)."""

    rows: int
    findings: list[Finding] = field(default_factory=list)
    rescored: int = 0
    not_rescored: int = 0
    seconds: float = 0.0

    def consistent(self) -> bool:
        return not any(f.kind in PROBLEMS for f in self.findings)

    def counts(self) -> dict[str, Any]:
        """verification.json's ``consistency``: rows, consistent rows, one count per kind of finding, the rescoring."""
        flagged = {f.row for f in self.findings if f.row is not None}
        counts = {"rows": self.rows, "consistent": self.rows - len(flagged)}
        counts.update({key: sum(f.kind == kind for f in self.findings) for kind, key in COUNT_KEYS.items()})
        counts.update(rescored=self.rescored, not_rescored=self.not_rescored, seconds=round(self.seconds, 2))
        return counts

    def summary(self) -> str:
        """One line: ``48 rows: 48 consistent; 44 ok rows rescored (1.9 s)``, with each kind of finding counted."""
        counts = self.counts()
        parts = [f"{counts['consistent']} consistent"]
        parts += [f"{counts[key]} {kind}" for kind, key in COUNT_KEYS.items() if counts[key] and kind != "missing"]
        line = f"{self.rows} rows: " + ", ".join(parts)
        if counts["missing"]:
            line += f"; {counts['missing']} of config.yaml's design without a row"
        line += f"; {self.rescored} ok rows rescored"
        if self.not_rescored:
            line += f", {self.not_rescored} not (their full records are not at hand)"
        return line + f" ({self.seconds:.1f} s)"


def row_members(index: Any) -> tuple[int, ...] | None:
    """A records.csv ``index`` cell as the image indices it names (one, or a client batch's joined by commas),
    or None when it is not that."""
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return (int(index),) if index >= 0 else None
    parts = str(index).split(",")
    if not all(part.strip().isascii() and part.strip().isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def settings_by_label(config: dict[str, Any]):
    """records.csv's ``defence`` (the client setting's label, :func:`copa.bench.record.setting_label`) → the
    workflow's :class:`~copa.bench.setting.Setting`."""

    return {setting.label: setting for setting in setting_axis(config).values()}


def record_folder(results_dir: Path, record: Any) -> Path | None:
    """The folder of a records.csv row's full record (its ``record`` column): a relative path inside
    ``results_dir`` when it is there (a submission's, :mod:`copa.bench.submission`), else as written (relative to
    the current folder: the workflow's ``out``); None without one."""
    if not isinstance(record, str) or not record:
        return None
    path = Path(record)
    if not path.is_absolute() and (results_dir / path).is_file():
        return (results_dir / path).parent
    return path.parent


def _inside(results_dir: Path, record: Any) -> Path | None:
    """A submission's row's record folder, when its ``record`` names a record.json inside the submission."""
    if not isinstance(record, str) or not record:
        return None
    path = Path(record)
    if path.is_absolute() or ".." in path.parts or not (results_dir / path).is_file():
        return None
    return (results_dir / path).parent


def rescoring_disagrees(row, scenario, folder: Path, metrics: tuple[str, ...], device: str) -> str | None:
    """Why the record in ``folder`` is tampered — its stored reconstruction, scored with copa's own scorer against
    the client's images ``scenario`` loads (:meth:`~copa.threat.Scenario.load_batch`, the ground truth
    :meth:`~copa.threat.Scenario.build` gives the scorer), does not give the row's published metrics — or None.
    LPIPS (weights may be absent) and metrics the row does not publish are not compared."""


    path = folder / "images.npz"
    if not path.is_file():
        return "the record is ok but its images.npz is missing: its metrics cannot be rescored"
    try:
        with np.load(path) as arrays:
            reconstruction = torch.from_numpy(np.asarray(arrays["reconstruction"], dtype=np.float64))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the record's fault
        return f"its images.npz cannot be read ({type(exc).__name__})"
    target = scenario.load_batch(device).images01.detach().to(torch.float64).cpu()
    if tuple(reconstruction.shape) != tuple(target.shape):
        return f"its images.npz holds images of shape {tuple(reconstruction.shape)}, the scenario's are {tuple(target.shape)}"
    names = [m for m in metrics if m != "lpips" and m in row.index]
    rescored = score_images(reconstruction, target, metrics=names)["mean"]
    for name in names:
        published, now = row[name], rescored.get(name)
        if published is None or now is None or (isinstance(published, float) and math.isnan(published)):
            continue
        published, now = float(published), float(now)
        if name == "psnr" and published >= EXACT_PSNR and now >= EXACT_PSNR:
            continue
        if not abs(published - now) <= RESCORE_RTOL * abs(now) + 1e-12:
            return f"published {name} {published:.6g}, copa's scorer gives {now:.6g} on the stored reconstruction"
    return None


def check_consistency(results_dir: Path, config: dict[str, Any], rows, *, submission: bool = False,
                      device: str = "cpu", log: Callable[[str], None] = print) -> Consistency:
    """Every row of ``rows`` (records.csv, read by :func:`copa.bench.verify._read`) against ``config``
    (config.yaml, its plug-ins loaded) and its stored reconstruction (module docstring); each finding logged as one
    line, then the summary. ``submission``: the full records must be inside ``results_dir``."""

    start = time.perf_counter()
    settings = settings_by_label(config)
    models, attacks = [str(m) for m in config.get("models") or ()], [str(a) for a in config.get("attacks") or ()]
    instances = {label: client_batches(config, setting.client_batch) for label, setting in settings.items()}
    built = {attack: build_attack(config, attack) for attack in attacks}
    hyperparameters = {attack: jsonable(attack_obj.hp) for attack, attack_obj in built.items()}
    sources = {attack: attack_identity(config, attack, attack_obj)["source_sha256"] for attack, attack_obj in built.items()}
    metrics = configured_metrics(config)
    seed = int(config.get("seed", 0))
    result = Consistency(rows=len(rows))
    seen: dict[tuple, int] = {}

    def found(number: int | None, key: str, kind: str, detail: str) -> None:
        result.findings.append(finding := Finding(number, key, kind, detail))
        if kind != STALE:  # stale rows are logged together at the end (finding_lines)
            log(finding.line())

    for position in range(len(rows)):
        row, number = rows.iloc[position], position + 1
        model, attack = str(row["model"]), str(row["attack"])
        members = row_members(row["index"])
        label = str(row.get("defence", "none") or "none")
        key = f"{label}/{model}/{attack}/{','.join(map(str, members))}"
        if label not in settings or model not in models or attack not in attacks \
                or members not in instances[label]:
            what = (f"setting {label!r}" if label not in settings else f"model {model!r}" if model not in models
                    else f"attack {attack!r}" if attack not in attacks else f"instance {key.rsplit('/', 1)[1]}")
            found(number, key, "extra", f"{what} is not in config.yaml's design")
            continue
        identity = (label, model, attack, members)
        if identity in seen:
            found(number, key, "duplicate", f"repeats row {seen[identity]}")
            continue
        seen[identity] = number
        scenario = scenario_for(config, model, members, settings[label])
        why = _hash_problem(row, config_hash, scenario.to_dict(), attack, hyperparameters[attack], seed)
        if why is None and (changed := source_staleness(row.get("attack_source_sha256"), sources[attack])):
            why = STALE, changed
        if why is not None:
            found(number, key, *why)
            if why[0] != STALE:
                continue
        folder = _inside(results_dir, row.get("record")) if submission else record_folder(results_dir, row.get("record"))
        stored = read_record(folder) if folder is not None else None
        if stored is not None and (stored.get("status"), stored.get("config_hash")) != (row["status"], row["config_hash"]):
            found(number, key, "record mismatch", f"its record.json says status {stored.get('status')}, config_hash "
                                                  f"{str(stored.get('config_hash'))[:12]}…; the row {row['status']}, "
                                                  f"{str(row['config_hash'])[:12]}…")
            continue
        if str(row["status"]) != "ok":
            continue
        if stored is None:
            if submission:
                found(number, key, "tampered", "its full record (record.json, images.npz) is not in the submission: "
                                               "its metrics cannot be rescored")
            else:
                result.not_rescored += 1
            continue
        result.rescored += 1
        problem = rescoring_disagrees(row, scenario, folder, metrics, device)
        if problem is not None:
            found(number, key, "tampered", problem)
    for label, batches in instances.items():
        for model in models:
            for attack in attacks:
                for members in batches:
                    if (label, model, attack, tuple(members)) not in seen:
                        found(None, f"{label}/{model}/{attack}/{','.join(map(str, members))}", "missing",
                              "config.yaml's design has it, records.csv has no row")
    result.seconds = time.perf_counter() - start
    for line in finding_lines([f for f in result.findings if f.kind == STALE]):
        log(line)
    log(result.summary())
    return result


def source_staleness(recorded: Any, current: str | None) -> str | None:
    """Why a row is stale because its attack's source file changed after the record was made — ``recorded``: the
    row's ``attack_source_sha256``, ``current``: the file's SHA-256 now (:func:`copa.bench.pipeline.attack_identity`)
    — or None: the same file, or either hash unknown (rows made before records.csv had the column).

    >>> source_staleness("ab" * 32, "cd" * 32)
    "made with an earlier version of the attack's source file (SHA-256 ababababab…; now cdcdcdcdcd…): rerun the cell"
    >>> source_staleness("ab" * 32, "ab" * 32) is None and source_staleness(None, "cd" * 32) is None
    True
    """
    if not isinstance(recorded, str) or not recorded or not current or recorded == current:
        return None
    return (f"made with an earlier version of the attack's source file (SHA-256 {recorded[:10]}…; now {current[:10]}…): "
            f"rerun the cell")


def _hash_problem(row, config_hash, scenario: dict[str, Any], attack: str, hp: dict[str, Any],
                  seed: int) -> tuple[str, str] | None:
    """Why the row's ``config_hash`` is not what config.yaml gives (``hash mismatch``), or is that of hyperparameters
    the attack no longer has (``stale``); None when it is config.yaml's."""
    published = json.loads(row["hyperparameters"]) if isinstance(row["hyperparameters"], str) else None
    expected = config_hash(scenario, attack, hp, seed)
    if row["config_hash"] == expected:
        if published is not None and published != hp:
            return "hash mismatch", (f"its hyperparameters column says {published}, its config_hash is that of "
                                     f"{hp}")
        return None
    if published is not None and published != hp and row["config_hash"] == config_hash(scenario, attack, published, seed):
        return STALE, f"made with hyperparameters the attack no longer has: {hyperparameter_change(published, hp)}"
    return "hash mismatch", ("its config_hash is not that of config.yaml's scenario, attack, hyperparameters and "
                             "seed for this row")
