"""copa site (copa.bench.site): the published results as a static website, and its test in a real browser.

The site is built from the real published folders (results/ and every study under it) and two small fake
submissions (one verified, one not; their attack a plug-in's) into a temporary folder beside a symlink to results/.
Checked without a browser: a second build writes nothing, a changed result rewrites its pages and removes stale
ones, bad inputs are refused with one line and nothing on disk, the submissions are shown apart with their
badges, every internal link and image resolves, every number links to the records it summarises, and the
committed site/ is what the published folders give. In headless Chromium (skipped where Debian's chromium,
chromedriver or selenium is absent): every page loads without console errors, every image has loaded, every
internal link (as the browser resolves it) reaches a file and its anchor, the headline table has one row per
(folder, setting, model) of the leaderboards, a click on a column's heading sorts it, the filters work, and the
index fits a phone's width. ``COPA_SITE_SCREENSHOT=docs/site-index.png`` saves the committed site's index as
README's screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse
from urllib.request import url2pathname

import pandas as pd
import pytest

from copa.bench.site import MANIFEST, build_site, published_folders, write_site
from copa.cli import main

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SCREENSHOT = os.environ.get("COPA_SITE_SCREENSHOT")
SUBMISSION_SOURCE = RESULTS / "realistic" / "batches"  # a small results folder, dressed as a third party's


def _submission(folder: Path, name: str, verdict: str | None) -> Path:
    folder.mkdir(parents=True)
    for file in ("records.csv", "leaderboard.csv", "leaderboard.md", "security.csv", "config.yaml"):
        shutil.copy(SUBMISSION_SOURCE / file, folder / file)
    for file in ("records.csv", "leaderboard.csv"):  # a plug-in's attack, which the project's pages do not know
        table = pd.read_csv(folder / file)
        table.assign(attack=table["attack"].replace({"dlg": "grey-guess"})).to_csv(folder / file, index=False)
    (folder / "submission.json").write_text(json.dumps({
        "name": name, "contact": "someone@example.org", "attack": "grey-guess", "plugin_file": "my_attack.py",
        "plugin_sha256": "0" * 64, "environment": {"torch": "2.14.1", "cpu": "test"},
        "command": "snakemake --cores 2 --configfile my.yaml"}))
    if verdict is not None:
        (folder / "verification.json").write_text(json.dumps({
            "verdict": verdict, "sample": 4, "counts": {"identical": 4, "within": 0, "different": 0, "tampered": 0},
            "command": f"copa verify submissions/{folder.name} --sample 4", "date": "2026-12-06"}))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A project root in tmp: results/ (a symlink to the published folders), two submissions, the site."""
    root = tmp_path_factory.mktemp("project")
    (root / "results").symlink_to(RESULTS, target_is_directory=True)
    _submission(root / "submissions" / "verified-entry", "Verified Entry", "verified")
    _submission(root / "submissions" / "pending-entry", "Pending Entry", None)
    folders = published_folders(root)
    out = root / "site"
    first = write_site(folders, out)
    return {"root": root, "out": out, "folders": folders, "first": first}


# --------------------------------------------------------------------------------------------------
# Without a browser


class _Page(HTMLParser):
    """The links, image sources, ids and headline-table rows of one page."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.ids = [], [], set()
        self.table, self.rows, self.cell_links = None, {}, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table":
            self.table = attrs.get("id")
        if tag == "tr" and "data-study" in attrs:
            self.rows.setdefault(self.table, []).append(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
            if "#" in attrs["href"] and "records/" in attrs["href"]:
                self.cell_links.setdefault(self.table, []).append(attrs["href"])
        if tag in ("img", "script") and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag == "link" and attrs.get("href") and not attrs["href"].startswith("data:"):
            self.links.append(attrs["href"])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _pages(out: Path) -> list[Path]:
    return sorted(out.rglob("*.html"))


def _leaderboard_rows(folders) -> int:
    """Rows of the headline tables: one per (folder, setting, model) of each leaderboard.csv."""
    return sum(len(pd.read_csv(Path(f) / "leaderboard.csv")[["defence", "model"]].drop_duplicates()) for f in folders)


def test_site_pages_and_second_build_writes_nothing(built):
    out = built["out"]
    assert built["first"].written and (out / "index.html").is_file() and (out / MANIFEST).is_file()
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MANIFEST}
    for page in ("studies/results.html", "studies/results-defences.html", "studies/results-metric-validity.html",
                 "studies/results-realistic-fedavg.html", "records/results.html", "models/cnn2_c1.html",
                 "models/random-chain-3.html", "models/cnn4_c2-epoch5.html", "attacks/copa.html", "attacks/rgap.html",
                 "entries/submissions-verified-entry.html"):
        assert (out / page).is_file(), page
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = write_site(built["folders"], out)
    assert again.written == [] and again.removed == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_a_changed_result_rewrites_its_pages_and_removes_stale_ones(tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(RESULTS / "realistic" / "batches", folder)
    out = tmp_path / "site"
    write_site([folder], out)
    text = (folder / "leaderboard.md").read_text()
    (folder / "leaderboard.md").write_text(text.replace("- **date**: ", "- **date**: 2030-01-01 (was ", 1))
    changed = write_site([folder], out)
    assert "index.html" in changed.written and "studies/results.html" in changed.written
    assert "style.css" not in changed.written
    assert "2030-01-01" in (out / "studies" / "results.html").read_text()
    board = pd.read_csv(folder / "leaderboard.csv")
    board[board["model"] == "lenet-zhu"].assign(model="cnn2_c1").to_csv(folder / "leaderboard.csv", index=False)
    records = pd.read_csv(folder / "records.csv")
    records.assign(model="cnn2_c1").to_csv(folder / "records.csv", index=False)
    moved = write_site([folder], out)
    assert "models/lenet-zhu.html" in moved.removed and not (out / "models" / "lenet-zhu.html").exists()
    assert (out / "models" / "cnn2_c1.html").is_file()


def test_every_internal_link_and_image_resolves(built):
    out = built["out"]
    pages = {p: _parse(p) for p in _pages(out)}
    ids = {p.resolve(): page.ids for p, page in pages.items()}
    for path, page in pages.items():
        for url in page.links + page.images:
            parsed = urlparse(url)
            if parsed.scheme or url.startswith("mailto:"):
                continue
            target_url, fragment = urldefrag(url)
            target = (path.parent / unquote(target_url)).resolve() if target_url else path.resolve()
            assert target.is_file(), f"{path.relative_to(out)}: {url} does not resolve"
            if fragment and target.suffix == ".html":
                assert fragment in ids[target], f"{path.relative_to(out)}: {url}: no id {fragment!r}"


def test_every_number_links_to_the_records_it_summarises(built):
    out = built["out"]
    index = _parse(out / "index.html")
    project = [f for f in built["folders"] if "submissions" not in Path(f).parts]
    assert len(index.rows["headline"]) == _leaderboard_rows(project)
    records = {}
    for url in index.cell_links["headline"]:
        page, anchor = url.split("#")
        if page not in records:
            records[page] = (out / page).read_text()
        start = records[page].index(f'<tbody id="{anchor}">')
        group = records[page][start:records[page].index("</tbody>", start)]
        assert group.count("<tr class=\"status-") >= 1, url
    # a cell's group holds exactly its records.csv rows (the paper's cnn2_c2 / copa cell: 8 images)
    table = (out / "records" / "results.html").read_text()
    start = table.index('<tbody id="none--cnn2_c2--copa">')
    assert table[start:table.index("</tbody>", start)].count('<tr class="status-ok">') == 8


def test_submissions_are_shown_apart_with_their_badge(built):
    out = built["out"]
    index_text = (out / "index.html").read_text()
    index = _parse(out / "index.html")
    assert {row["data-study"] for row in index.rows["headline"]}.isdisjoint(
        {"submissions/verified-entry", "submissions/pending-entry"})
    submitted = index.rows["submitted-table"]
    assert {row["data-study"] for row in submitted} == {"submissions/verified-entry", "submissions/pending-entry"}
    assert "Submitted entries" in index_text
    verified = (out / "entries" / "submissions-verified-entry.html").read_text()
    pending = (out / "entries" / "submissions-pending-entry.html").read_text()
    assert "badge-verified" in verified and "Verification: verified" in verified
    assert "badge-unverified" in pending and "not verified" in pending
    assert "0" * 64 in verified  # the plug-in's hash, as submitted
    assert "grey-guess" in index_text and not (out / "attacks" / "grey-guess.html").exists()


def test_the_best_attack_of_a_row_is_marked(built):
    text = (built["out"] / "studies" / "results.html").read_text()
    row = text[text.index('<tr data-study="results"'):]
    row = row[:row.index("</tr>")]
    cells = re.findall(r'<td data-attack="([^"]+)" data-sort="[^"]*" class="num( best)?', row)
    psnr = {attack: bool(best) for attack, best in cells[0::2]}  # each attack's PSNR, then its SSIM
    # cnn2_c1, the paper's first row: R-GAP, COPA and COPA-GM tie at 285.49 dB (exact recoveries)
    assert [a for a, best in psnr.items() if best] == ["rgap", "copa", "copa-gm"] and "285.49" in row


def test_a_cell_made_with_an_earlier_attack_file_is_marked_stale(tmp_path):
    """records.csv's attack_source_sha256 against the attack's file in this checkout: a cell with a record made
    with another version is marked ⚠ on the index and named on its study's page; the others are not."""
    folder = tmp_path / "results"
    shutil.copytree(RESULTS / "realistic" / "batches", folder)
    records = pd.read_csv(folder / "records.csv")
    assert records["attack_source_sha256"].notna().all()  # the published rows know their attack's file
    older = (records["attack"] == "dlg") & (records["defence"] == "none; client_batch=4")
    records.loc[older.idxmax(), "attack_source_sha256"] = "0" * 64
    records.to_csv(folder / "records.csv", index=False)
    out = tmp_path / "site"
    write_site([folder], out)
    index = (out / "index.html").read_text()
    marked = re.findall(r'<td data-attack="([^"]+)" data-sort="[^"]*" class="num[^"]* stale">.*?</td>', index)
    assert marked == ["dlg", "dlg"]  # its PSNR and SSIM, in the one row of B = 4
    assert 'title="stale: 1 of 4 records made with an earlier version of the attack&#39;s source file' in index
    study = (out / "studies" / "results.html").read_text()
    assert "1 cell of this folder is stale" in study and ">none; client_batch=4/lenet-zhu/dlg</a>" in study
    attack = (out / "attacks" / "dlg.html").read_text()
    assert attack.count("⚠ stale") == 1 and "⚠ stale" not in (out / "attacks" / "ig.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["nope", "--out", "{tmp}/site"], "RESULTS_DIR 'nope' does not exist"),
    (["{tmp}/empty", "--out", "{tmp}/site"], "has no records.csv"),
    (["results", "--out", "{tmp}/file.txt"], "exists and is not a folder"),
    (["results", "--out", "{tmp}/other"], "holds other files and no site"),
    (["results", "results", "--out", "{tmp}/site"], "is given twice"),
])
def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(ROOT)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["site", *[a.format(tmp=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_bad_submission_is_refused_by_name(tmp_path, capsys):
    entry = _submission(tmp_path / "entry", "x", "verified")
    (entry / "verification.json").write_text(json.dumps({"verdict": "probably"}))
    assert main(["site", str(entry), "--out", str(tmp_path / "site")]) == 2
    assert "verdict 'probably'" in capsys.readouterr().err and not (tmp_path / "site").exists()


def test_the_committed_site_is_what_the_published_folders_give():
    """site/ is rebuilt whenever the results change: `copa site` (README) must leave it as committed."""
    site = ROOT / "site"
    if not site.is_dir():
        pytest.fail("site/ is missing: build it with `snakemake site --cores 1` (README, \"The leaderboard site\")")
    pages = build_site(published_folders(ROOT), site)
    committed = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    stale = sorted(name for name, data in pages.items() if not (site / name).is_file() or (site / name).read_bytes() != data)
    extra = sorted(committed - set(pages))
    assert not stale and not extra, (f"site/ is stale ({len(stale)} files differ, {len(extra)} extra, e.g. "
                                     f"{(stale + extra)[:3]}): rebuild it with `snakemake site --cores 1`")


# --------------------------------------------------------------------------------------------------
# In a real browser


def _chromium():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    binary = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()), None)
    driver_path = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file()
                                                   else None)
    if binary is None or driver_path is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _chromium()
    yield driver
    driver.quit()


BROKEN_IMAGES = "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
LINKS = ("return Array.from(document.querySelectorAll('a[href], link[href], img[src], script[src]'))"
         ".map(e => e.href || e.src)")


@pytest.mark.slow
def test_every_page_loads_in_chromium_without_errors(built, browser):
    out = built["out"]
    problems = []
    ids, links = {}, []
    for path in _pages(out):
        browser.get(path.as_uri())
        errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        broken = browser.execute_script(BROKEN_IMAGES)
        if errors or broken:
            problems.append(f"{path.relative_to(out)}: console {errors}, images not loaded {broken}")
        ids[path.resolve()] = set(browser.execute_script(
            "return Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
        links += [(path, url) for url in browser.execute_script(LINKS)]
    for page, url in links:  # as the browser resolved them: a file, and its anchor on an HTML page
        parsed = urlparse(url)
        if parsed.scheme != "file":
            continue
        target = Path(url2pathname(unquote(parsed.path))).resolve()
        if not target.is_file():
            problems.append(f"{page.relative_to(out)}: link {url} does not resolve")
        elif parsed.fragment and target.suffix == ".html" and parsed.fragment not in ids.get(target, set()):
            problems.append(f"{page.relative_to(out)}: link {url}: no element with that id")
    assert links and not problems, "\n".join(problems[:20])


@pytest.mark.slow
def test_the_index_in_chromium_rows_sorting_filters_phone(built, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out = built["out"]
    project = [f for f in built["folders"] if "submissions" not in Path(f).parts]
    browser.set_window_size(1280, 900)
    browser.get((out / "index.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#headline tbody tr")
    assert len(rows) == _leaderboard_rows(project)
    if SCREENSHOT and (ROOT / "site" / "index.html").is_file():  # README's picture: the committed site's index
        browser.set_window_size(1400, 900)
        browser.get((ROOT / "site" / "index.html").as_uri())
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(Path(SCREENSHOT).resolve()))
        browser.set_window_size(1280, 900)
        browser.get((out / "index.html").as_uri())

    def column(col):
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#headline tbody tr')).map(r => r.cells[arguments[0]]"
            ".getAttribute('data-sort'))", col)

    header = browser.find_element(By.CSS_SELECTOR, "#headline thead th[data-col='5']")  # the COPA index
    header.click()
    values = [float(v) for v in column(5) if v != ""]
    assert values == sorted(values) and len(set(values)) > 2 and header.get_attribute("aria-sort") == "ascending"
    assert all(v == "" for v in column(5)[len(values):])  # models without the metric last
    header.click()
    values = [float(v) for v in column(5) if v != ""]
    assert values == sorted(values, reverse=True) and header.get_attribute("aria-sort") == "descending"

    psnr = browser.find_element(By.CSS_SELECTOR, "#headline thead th[data-attack='rgap'][data-col]")
    psnr.click()
    col = int(psnr.get_attribute("data-col"))
    values = [float(v) for v in column(col) if v != ""]
    assert values == sorted(values) and values[-1] > 100

    Select(browser.find_element(By.CSS_SELECTOR, "form[data-table='headline'] select[data-filter='attack']")) \
        .select_by_value("hybrid")
    shown = [r for r in browser.find_elements(By.CSS_SELECTOR, "#headline tbody tr") if r.is_displayed()]
    board = pd.concat([pd.read_csv(Path(f) / "leaderboard.csv") for f in project])
    assert len(shown) == len(board[board["attack"] == "hybrid"][["defence", "model"]].drop_duplicates())
    assert not browser.find_element(By.CSS_SELECTOR, "#headline thead th[data-attack='rgap']").is_displayed()
    Select(browser.find_element(By.CSS_SELECTOR, "form[data-table='headline'] select[data-filter='attack']")) \
        .select_by_value("")
    Select(browser.find_element(By.CSS_SELECTOR, "form[data-table='headline'] select[data-filter='local-steps']")) \
        .select_by_value("5")
    shown = [r for r in browser.find_elements(By.CSS_SELECTOR, "#headline tbody tr") if r.is_displayed()]
    assert len(shown) == len(board[board["defence"].str.contains("local_steps=5")][["defence", "model"]]
                             .drop_duplicates())

    browser.set_window_size(390, 844)  # a phone: the page fits, the tables scroll inside their frame
    browser.get((out / "index.html").as_uri())
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.set_window_size(1280, 900)
