// copa-bench site: sortable and filterable tables, vanilla JavaScript (no library, no network).
"use strict";

function cellValue(row, col) {
  const cell = row.cells[col];
  if (!cell) return "";
  return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
}

function compareValues(a, b) {
  // empty values last in either direction is handled by the caller; numbers numerically, else text
  const x = Number(a), y = Number(b);
  if (a !== "" && b !== "" && !Number.isNaN(x) && !Number.isNaN(y)) return x - y;
  return a.localeCompare(b, undefined, { numeric: true });
}

function sortTable(table, header) {
  const col = Number(header.getAttribute("data-col"));
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th[aria-sort]").forEach(th => th.removeAttribute("aria-sort"));
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((r, s) => {
    const a = cellValue(r, col), b = cellValue(s, col);
    if (a === "" || b === "") return (a === "") - (b === "");
    return ascending ? compareValues(a, b) : compareValues(b, a);
  });
  rows.forEach(row => body.appendChild(row));
}

function applyFilters(form) {
  const table = document.getElementById(form.getAttribute("data-table"));
  const wanted = {};
  form.querySelectorAll("select[data-filter]").forEach(select => { wanted[select.getAttribute("data-filter")] = select.value; });
  const attack = wanted["attack"] || "";
  let shown = 0;
  Array.from(table.tBodies[0].rows).forEach(row => {
    let visible = true;
    for (const [key, value] of Object.entries(wanted)) {
      if (!value) continue;
      if (key === "attack") visible = visible && row.getAttribute("data-attacks").split(" ").includes(value);
      else visible = visible && row.getAttribute("data-" + key) === value;
    }
    row.classList.toggle("hidden", !visible);
    if (visible) shown += 1;
  });
  table.querySelectorAll("[data-attack]").forEach(cell => {
    cell.classList.toggle("hidden", attack !== "" && cell.getAttribute("data-attack") !== attack);
  });
  const count = form.querySelector(".count");
  if (count) count.textContent = shown + " of " + table.tBodies[0].rows.length + " rows";
}

document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("thead th[data-col]").forEach(header => {
    header.setAttribute("tabindex", "0");
    header.addEventListener("click", () => sortTable(table, header));
    header.addEventListener("keydown", event => { if (event.key === "Enter") sortTable(table, header); });
  });
});
document.querySelectorAll("form.filters").forEach(form => {
  form.querySelectorAll("select").forEach(select => select.addEventListener("change", () => applyFilters(form)));
});
