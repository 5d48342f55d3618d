// The case page: NiiVue on the T2* scan with the mask over it, the detections to decide, microbleeds
// to add by a click or from what the run set aside, a note and "case done". Every change is sent at once and the page shows the
// review the server wrote back: the page keeps no decision of its own.
import { Niivue, SLICE_TYPE } from "/static/niivue.js";

const caseId = decodeURIComponent(location.pathname.split("/").pop());
const api = `/api/cases/${encodeURIComponent(caseId)}`;
// view: the cube around a point the viewer shows ({centre, half} in RAS mm), or null for the whole scan
const state = { page: null, review: null, selected: 0, adding: false, ready: false, view: null };
const nv = new Niivue({
  backColor: [0, 0, 0, 1], crosshairColor: [0.1, 0.8, 1, 1], show3Dcrosshair: false, dragAndDropEnabled: false,
  multiplanarShowRender: 0,  // SHOW_RENDER.NEVER: three planes, no 3D tile
  isRadiologicalConvention: true,  // patient left on the right, as the QC pictures show it
  // NiiVue's own letter keys (view mode, clip plane) would act on ours: none for it
  viewModeHotKey: "None", clipPlaneHotKey: "None", cycleClipPlaneHotKey: "None",
});
window.review = { nv, state };  // for the browser test and the curious

function message(text, kind = "") {
  const p = document.createElement("p");
  p.className = kind;
  p.textContent = text;
  document.getElementById("messages").append(p);
}

function decisionOf(lesionId) {
  return state.review?.detections?.[String(lesionId)]?.decision ?? "";
}

function fixed(value, digits) {
  return value === null || value === undefined ? "" : Number(value).toFixed(digits);
}

function render() {
  const page = state.page;
  const review = state.review;
  document.getElementById("where").textContent = `${page.case_id}: ${page.detections.length} detection(s); rater ${page.rater}`;
  const status = !review ? (state.page.stale_review ? "stale" : "not started") : review.done ? "done" : "in progress";
  document.getElementById("status").textContent = status;
  document.body.dataset.status = status;
  document.getElementById("stale").hidden = !(page.stale_review && !review);
  const body = document.querySelector("#detections tbody");
  body.replaceChildren(...page.detections.map((d, index) => {
    const tr = document.createElement("tr");
    tr.dataset.lesion = d.lesion_id;
    tr.className = index === state.selected ? "selected" : "";
    const decision = decisionOf(d.lesion_id) || (page.stale_review && !review
      ? page.stale_review.detections[String(d.lesion_id)]?.decision ?? "" : "");
    for (const [text, cls] of [[d.lesion_id, "number"], [fixed(d.calibrated_probability ?? d.max_probability, 3), "number"],
      [fixed(d.volume_mm3, 1), "number"], [d.region ?? "", ""], [d.region_category ?? "", ""],
      [decision + (decision && !review ? " (stale)" : ""), decision]]) {
      const td = document.createElement("td");
      td.textContent = text;
      td.className = cls;
      tr.append(td);
    }
    tr.onclick = () => select(index);
    return tr;
  }));
  const added = review?.added ?? [];
  document.getElementById("set-aside-section").hidden = !page.set_aside.length;
  document.querySelector("#set-aside tbody").replaceChildren(...page.set_aside.map((s) => {
    const tr = document.createElement("tr");
    const why = s.set_aside === "edge rule" ? `edge rule: within ${s.edge_margin_mm} mm of the brain's edge`
      : `mimic check: under ${s.cut}`;
    for (const [text, cls] of [[why, ""], [fixed(s.calibrated_probability ?? s.max_probability, 3), "number"],
      [fixed(s.volume_mm3, 1), "number"]]) {
      const td = document.createElement("td");
      td.textContent = text;
      td.className = cls;
      tr.append(td);
    }
    const counted = added.find((a) => a.set_aside === s.set_aside && samePoint([a.x_ras_mm, a.y_ras_mm, a.z_ras_mm], where(s)));
    const count = document.createElement("button");
    count.textContent = counted ? `counted (#${counted.added_id})` : "count it";
    count.disabled = Boolean(counted);
    count.onclick = (event) => {
      event.stopPropagation();
      const [x, y, z] = where(s);
      send("added", { x_ras_mm: x, y_ras_mm: y, z_ras_mm: z, set_aside: s.set_aside });
    };
    const td = document.createElement("td");
    td.append(count);
    tr.append(td);
    tr.onclick = () => centre(where(s));
    return tr;
  }));
  document.querySelector("#added tbody").replaceChildren(...added.map((a) => {
    const tr = document.createElement("tr");
    tr.dataset.added = a.added_id;
    const where = [a.x_ras_mm, a.y_ras_mm, a.z_ras_mm].map((v) => v.toFixed(1)).join(", ");
    for (const text of [a.added_id, where, a.region ?? "(no region)", a.set_aside ? `set aside (${a.set_aside})` : "click"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    const remove = document.createElement("button");
    remove.textContent = "remove";
    remove.onclick = (event) => { event.stopPropagation(); send("remove_added", { added_id: a.added_id }); };
    const td = document.createElement("td");
    td.append(remove);
    tr.append(td);
    tr.onclick = () => centre([a.x_ras_mm, a.y_ras_mm, a.z_ras_mm]);
    return tr;
  }));
  const note = document.getElementById("note");
  if (document.activeElement !== note) note.value = review?.note ?? "";
  document.getElementById("done").classList.toggle("on", Boolean(review?.done));
  document.getElementById("done-time").textContent = review?.done ? `done ${review.done}` : "";
}

async function centre(mm) {
  if (!state.ready) return;
  const view = state.view;
  const margin = 8;  // mm: a microbleed near the cube's face is shown in a cube around it
  if (view && mm.some((v, i) => Math.abs(v - view.centre[i]) > view.half - margin)) await showImages(mm);
  nv.scene.crosshairPos = nv.mm2frac(mm, 0, true);
  nv.drawScene();
  showCrosshair();
}

function showCrosshair() {
  const mm = nv.frac2mm(nv.scene.crosshairPos, 0, true);
  document.getElementById("crosshair").textContent =
    `crosshair ${[0, 1, 2].map((i) => mm[i].toFixed(1)).join(", ")} (RAS mm)`;
}

function where(d) {
  return [d.centroid_x_ras_mm, d.centroid_y_ras_mm, d.centroid_z_ras_mm];
}

function samePoint(a, b) {
  return a.every((v, i) => Math.abs(v - b[i]) <= 0.01);  // the record's rounding of a set-aside mark's centre
}

async function select(index) {
  const detections = state.page.detections;
  if (!detections.length) return;
  state.selected = Math.max(0, Math.min(detections.length - 1, index));
  render();
  await centre(where(detections[state.selected]));
  document.querySelector("#detections tr.selected")?.scrollIntoView({ block: "nearest" });
}

async function send(what, body) {
  const response = await fetch(`${api}/${what}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) {
    message(answer.error ?? response.statusText, "problem");
    if (response.status === 409) await load();
    return false;
  }
  state.review = answer.review;
  render();
  return true;
}

async function decide(decision) {
  const d = state.page.detections[state.selected];
  if (!d) return;
  if (await send("decision", { lesion_id: d.lesion_id, decision: decision || null })) select(state.selected + 1);
}

function setAdding(on) {
  state.adding = on;
  document.getElementById("viewer").classList.toggle("adding", on);
  document.getElementById("add").classList.toggle("on", on);
}

async function load() {
  const response = await fetch(api);
  if (!response.ok) {
    message(`${caseId}: ${response.status} ${response.statusText}`, "problem");
    return;
  }
  state.page = await response.json();
  state.review = state.page.review;
  document.getElementById("messages").replaceChildren();
  for (const text of state.page.messages) message(text);
  for (const text of state.page.problems) message(text, "problem");
  if (state.page.qc) Object.assign(document.getElementById("qc"), { href: state.page.qc, hidden: false });
  render();
}

// The viewer shows a cube around `mm` (RAS), or the whole scan when `mm` is null: a cube is at full
// resolution and quick to show without a GPU, the whole scan is for looking for missed microbleeds.
async function showImages(mm) {
  const page = state.page;
  if (!page.mask) return;
  document.body.dataset.viewer = "loading";
  let t2s = page.t2s?.url, mask = page.mask;
  if (mm) {
    const at = `x=${mm[0]}&y=${mm[1]}&z=${mm[2]}`;
    t2s = page.t2s && `${page.view.url}/t2s?${at}`;
    mask = `${page.view.url}/mask?${at}` + (page.next_case ? `&ahead=${encodeURIComponent(page.next_case)}` : "");
  }
  const volumes = t2s
    ? [{ url: t2s, name: "t2s.nii" },
       { url: mask, name: "mask.nii", colormap: "red", opacity: 0.55, cal_min: 0.5, cal_max: 1 }]
    : [{ url: mask, name: "mask.nii", colormap: "gray" }];
  await nv.loadVolumes(volumes);
  state.view = mm ? { centre: mm, half: page.view.size_mm / 2 } : null;
  document.getElementById("view").textContent = mm
    ? `view: ${page.view.size_mm} mm around ${mm.map((v) => v.toFixed(0)).join(", ")}` : "view: whole scan";
  if (state.ready) document.body.dataset.viewer = "ready";
}

async function startViewer(attached) {
  const detections = state.page.detections;
  if (!state.page.mask) return;
  await attached;
  await showImages(detections.length ? where(detections[0]) : null);
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR);
  nv.onLocationChange = showCrosshair;
  state.ready = true;
  await select(0);
  showCrosshair();
  document.body.dataset.viewer = "ready";
}

async function toggleWholeScan() {
  if (!state.ready) return;
  const mm = Array.from(nv.frac2mm(nv.scene.crosshairPos, 0, true)).slice(0, 3);
  await showImages(state.view ? null : mm);
  nv.scene.crosshairPos = nv.mm2frac(mm, 0, true);
  nv.drawScene();
}

document.getElementById("viewer").addEventListener("mouseup", () => {
  // NiiVue has moved the crosshair to the click by now
  if (!state.adding || !state.ready) return;
  setAdding(false);
  const mm = nv.frac2mm(nv.scene.crosshairPos, 0, true);
  send("added", { x_ras_mm: mm[0], y_ras_mm: mm[1], z_ras_mm: mm[2] });
});

document.addEventListener("keydown", (event) => {
  if (event.target.closest("textarea, input") || event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    a: () => decide("accept"), r: () => decide("reject"), u: () => decide("unsure"), c: () => decide(""),
    j: () => select(state.selected + 1), n: () => select(state.selected + 1),
    k: () => select(state.selected - 1), p: () => select(state.selected - 1),
    N: () => { if (state.page.next_case) location.href = `/cases/${encodeURIComponent(state.page.next_case)}`; },
    d: () => send("done", { done: !state.review?.done }),
    m: () => setAdding(!state.adding), Escape: () => setAdding(false), w: toggleWholeScan,
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

for (const button of document.querySelectorAll("[data-decision]")) button.onclick = () => decide(button.dataset.decision);
document.getElementById("add").onclick = () => setAdding(!state.adding);
document.getElementById("done").onclick = () => send("done", { done: !state.review?.done });
document.getElementById("note").onchange = (event) => send("note", { note: event.target.value });
document.getElementById("start-again").onclick = async () => {
  if (await send("start_again", {})) await load();
};

document.getElementById("whole").onclick = toggleWholeScan;

// WebGL and NiiVue's shaders are set up while the case's page is read
const attached = nv.attachToCanvas(document.getElementById("viewer"));
await load();
await startViewer(attached);
