// The dashboard's live part: one EventSource per page; each message is the page's data again,
// and the render functions below patch the page in place (no reloads, nothing fetched from
// elsewhere).
"use strict";

const page = document.body.dataset.page;
const key = document.body.dataset.key;
const csrf = document.querySelector('meta[name="csrf-token"]').content;
window.__stepShown = {};  // step -> when the page showed it (the latency measure reads it)
window.__loadedAt = performance.timeOrigin;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== "") node.textContent = text;
  return node;
}

function setBar(container, percent, step, total) {
  if (!container) return;
  const fill = container.querySelector(".fill");
  const label = container.querySelector(".bar span");
  if (fill) fill.style.width = percent + "%";
  if (label) label.textContent = `${step}/${total || "?"}`;
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node && node.textContent !== String(text)) node.textContent = text;
}

function stateBadge(state) {
  return el("span", { class: `state ${state}` }, state);
}

function renderRows(jobs, columns) {
  const body = document.getElementById("job-rows");
  if (!body) return;
  const empty = body.querySelector(".empty");
  if (empty && jobs.length) empty.remove();
  for (const job of jobs) {
    let row = body.querySelector(`tr[data-id="${job.id}"]`);
    if (!row) {
      row = el("tr", { "data-id": job.id });
      const link = el("td"); link.append(el("a", { href: `/jobs/${job.id}` }, job.id));
      row.append(link);
      for (const name of columns) {
        const cell = el("td", { class: name });
        if (name === "progress") { const bar = el("div", { class: "bar" }); bar.append(el("div", { class: "fill" }), el("span")); cell.append(bar); }
        else if (name !== "state") cell.textContent = job[name];
        row.append(cell);
      }
      body.prepend(row);
    }
    const stateCell = row.querySelector("td:nth-child(" + (columns.indexOf("state") + 2) + ")");
    const badge = stateCell.querySelector(".state");
    if (!badge || badge.textContent !== job.state) {
      if (badge) badge.replaceWith(stateBadge(job.state)); else stateCell.prepend(stateBadge(job.state));
    }
    setBar(row.querySelector(".progress"), job.percent, job.step, job.total);
    for (const name of ["where", "loss", "eta", "age"]) {
      const cell = row.querySelector(`td.${name}`);
      if (cell && cell.textContent !== job[name]) cell.textContent = job[name];
    }
  }
}

function renderCurve(points) {
  const svg = document.getElementById("loss-curve");
  if (!svg || !points.length) return;
  const steps = points.map(p => p[0]), losses = points.map(p => p[1]);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  const [y0, y1] = [Math.min(...losses), Math.max(...losses)];
  const sx = s => (x1 > x0 ? (s - x0) / (x1 - x0) : 0.5) * 590 + 5;
  const sy = l => 195 - (y1 > y0 ? (l - y0) / (y1 - y0) : 0.5) * 190;
  svg.querySelector("polyline").setAttribute("points", points.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "));
  svg.dataset.points = points.length;
  setText("loss-range", `steps ${x0}–${x1} · loss ${y0.toFixed(4)}–${y1.toFixed(4)}`);
}

function zoom(url, caption) {
  const dialog = document.getElementById("zoom");
  dialog.querySelector("img").src = url;
  dialog.querySelector("p").textContent = caption;
  dialog.showModal();
}
document.getElementById("zoom").addEventListener("click", event => event.currentTarget.close());

function thumb(url, caption) {
  const figure = el("figure");
  const img = el("img", { src: url, alt: caption, loading: "lazy" });
  img.addEventListener("click", () => zoom(url, caption));
  figure.append(img, el("figcaption", {}, caption));
  return figure;
}

function renderGallery(groups) {
  const box = document.getElementById("gallery");
  const signature = JSON.stringify(groups);
  if (!box || box.dataset.signature === signature) return;
  box.dataset.signature = signature;
  box.replaceChildren();
  if (!groups.length) box.append(el("p", { class: "meta" }, "No samples yet."));
  for (const group of groups) {
    const section = el("div", { class: "group" });
    section.append(el("h3", {}, group.prompt));
    const strip = el("div", { class: "strip" });
    for (const sample of group.samples) strip.append(thumb(sample.url, `step ${sample.step}`));
    section.append(strip);
    box.append(section);
  }
}

function renderJob(data) {
  const job = data.job;
  const badge = document.getElementById("state");
  if (badge.textContent !== job.state) { badge.textContent = job.state; badge.className = `state ${job.state}`; }
  setBar(document.getElementById("bar"), job.percent, job.step, job.total);
  if (!(job.step in window.__stepShown)) window.__stepShown[job.step] = Date.now();
  setText("step", `${job.step}/${job.total || "?"}`);
  setText("loss", job.loss); setText("eta", job.eta); setText("where", job.where);
  setText("why", data.waiting_for || data.forecast);
  const error = document.getElementById("error");
  error.hidden = !data.error; setText("error", data.error);
  renderCurve(data.points);
  renderGallery(data.gallery);
  const log = document.getElementById("log");
  const text = data.log.join("\n");
  if (log.textContent !== text) {
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    log.textContent = text;
    if (atEnd) log.scrollTop = log.scrollHeight;
  }
  const history = document.getElementById("history");
  history.replaceChildren(...data.history.map(e => {
    const row = el("tr");
    for (const value of [e.at, e.attempt ?? "", e.event ?? "", e.worker ?? "", e.step ?? "", e.error ?? ""]) row.append(el("td", {}, String(value)));
    return row;
  }));
  if (data.manifest) setText("manifest", data.manifest);
}

function renderBatch(data) {
  renderRows(data.jobs, ["name", "state", "where", "progress", "loss", "eta"]);
  setBar(document.getElementById("overall"), data.percent, data.done, data.count);
  setText("done", data.done);
  const sheet = document.getElementById("sheet");
  const signature = JSON.stringify(data.sheet);
  if (sheet.dataset.signature === signature) return;
  sheet.dataset.signature = signature;
  sheet.replaceChildren();
  if (!data.sheet.length) sheet.append(el("p", { class: "meta" }, "No samples yet."));
  for (const row of data.sheet) {
    const section = el("div", { class: "group" });
    section.append(el("h3", {}, row.prompt));
    const strip = el("div", { class: "strip sheet-row" });
    for (const job of data.jobs) {
      const cell = row.cells[job.id];
      if (cell) strip.append(thumb(cell.url, `${job.name} · step ${cell.step}`));
    }
    section.append(strip);
    sheet.append(section);
  }
}

function renderFleet(data) {
  const body = document.getElementById("workers");
  body.replaceChildren(...data.workers.map(w => {
    const row = el("tr");
    const failures = w.failures + (w.suspect ? " suspect" : "");
    for (const value of [w.name, w.host, w.gpu, w.model, w.memory, w.utilisation, w.temperature, w.jobs.join(", ") || "-", failures]) row.append(el("td", {}, String(value)));
    if (w.suspect) row.classList.add("suspect");
    return row;
  }));
  if (!data.workers.length) body.append(el("tr", {}, "No live worker: start `autotrain worker` on each GPU host."));
  const queues = document.getElementById("queues");
  queues.replaceChildren(...Object.entries(data.queues).map(([name, depth]) => {
    const row = el("tr"); row.append(el("td", {}, name), el("td", {}, String(depth))); return row;
  }));
}

const renderers = {
  jobs: data => renderRows(data.jobs, ["name", "profile", "state", "where", "progress", "loss", "eta", "age"]),
  job: renderJob, batch: renderBatch, fleet: renderFleet,
};

function render(data) { renderers[page](data); }

for (const button of document.querySelectorAll("button[data-action]")) {
  button.addEventListener("click", async () => {
    const response = await fetch(`/jobs/${key}/${button.dataset.action}`, {
      method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
    });
    const reply = await response.json().catch(() => ({ error: response.statusText }));
    setText("said", reply.message || reply.error);
  });
}

// The page's CSP allows no inline style: bars rendered on the server get their width here.
for (const fill of document.querySelectorAll(".fill[data-percent]")) fill.style.width = fill.dataset.percent + "%";
render(JSON.parse(document.getElementById("initial").textContent));
const query = new URLSearchParams(location.search);
query.set("page", page); query.set("key", key);
const banner = document.getElementById("connection");
const events = new EventSource(`/events?${query}`);
events.onmessage = event => { banner.hidden = true; render(JSON.parse(event.data)); };
events.addEventListener("reconnecting", () => { banner.hidden = false; });
events.addEventListener("connected", () => { banner.hidden = true; });
events.onerror = () => { banner.textContent = "Reconnecting…"; banner.hidden = false; };
events.onopen = () => { banner.textContent = "Reconnecting to Redis…"; };
