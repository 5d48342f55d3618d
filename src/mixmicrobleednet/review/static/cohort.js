// The cohort page: every case of the output folder with its counts and each rater's review status.
const COLUMNS = [
  ["case_id", "case"], ["model", "model"], ["status", "run"], ["microbleed_count", "microbleeds"],
  ["lobar", "lobar"], ["deep", "deep"], ["infratentorial", "infratentorial"], ["strictly_lobar", "strictly lobar"],
  ["my_review", "my review"], ["reviews", "all raters"],
];
// Default order: my unfinished cases first, then the most microbleeds (the cases that need a look most).
const DEFAULT_SORT = { key: "default", label: "not done by me first, then most microbleeds" };
let data = null;
let sort = DEFAULT_SORT;

function value(row, key) {
  if (["lobar", "deep", "infratentorial"].includes(key)) return row.categories ? row.categories[key] : null;
  if (key === "reviews") return Object.entries(row.reviews).map(([r, s]) => `${r}: ${s}`).join(", ");
  return row[key];
}

function compare(a, b) {
  if (sort.key === "default") {
    return (a.my_review === "done") - (b.my_review === "done") ||
      (b.microbleed_count ?? -1) - (a.microbleed_count ?? -1) || a.case_id.localeCompare(b.case_id);
  }
  const x = value(a, sort.key), y = value(b, sort.key);
  const order = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 :
    typeof x === "number" ? x - y : String(x).localeCompare(String(y));
  return sort.descending ? -order : order;
}

function shown(row) {
  const text = document.getElementById("filter").value.trim().toLowerCase();
  const show = document.getElementById("show").value;
  if (text && ![row.case_id, row.subject, row.model].some((v) => String(v ?? "").toLowerCase().includes(text))) return false;
  if (show === "todo") return row.my_review !== "done";
  if (show === "done") return row.my_review === "done";
  if (show === "stale") return Object.values(row.reviews).includes("stale");
  return true;
}

function statusClass(status) {
  return { done: "done", stale: "stale", "in progress": "progress" }[status] ?? "";
}

function cell(row, key) {
  const td = document.createElement("td");
  const v = value(row, key);
  if (key === "case_id") {
    const link = document.createElement("a");
    link.href = `/cases/${encodeURIComponent(row.case_id)}`;
    link.textContent = row.case_id;
    td.append(link);
  } else if (key === "my_review") {
    td.textContent = v;
    td.className = statusClass(v);
  } else {
    td.textContent = v === null || v === undefined ? "" : String(v);
    if (typeof v === "number") td.className = "number";
  }
  if (key === "reviews" && row.problems.length) {
    const problem = document.createElement("div");
    problem.className = "problem";
    problem.textContent = `${row.problems.length} unusable review file(s)`;
    problem.title = row.problems.join("\n");
    td.append(problem);
  }
  return td;
}

function render() {
  const head = document.querySelector("#cases thead");
  head.replaceChildren(document.createElement("tr"));
  for (const [key, label] of COLUMNS) {
    const th = document.createElement("th");
    th.textContent = label + (sort.key === key ? (sort.descending ? " ▼" : " ▲") : "");
    th.onclick = () => {
      sort = sort.key === key ? { key, label, descending: !sort.descending } : { key, label, descending: false };
      render();
    };
    head.firstChild.append(th);
  }
  document.getElementById("sorted").textContent = sort.label;
  const body = document.querySelector("#cases tbody");
  body.replaceChildren(...data.cases.filter(shown).sort(compare).map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.case = row.case_id;
    tr.append(...COLUMNS.map(([key]) => cell(row, key)));
    return tr;
  }));
}

async function load() {
  const response = await fetch("/api/cohort");
  data = await response.json();
  document.getElementById("where").textContent = `${data.output_dir}: ${data.cases.length} case(s); rater ${data.rater}`;
  document.getElementById("messages").replaceChildren(...data.problems.map((text) => {
    const p = document.createElement("p");
    p.className = "problem";
    p.textContent = text;
    return p;
  }));
  render();
}

document.getElementById("filter").oninput = render;
document.getElementById("show").onchange = render;
load();
