// The report's summary table and gallery: filter, sort and page through rows embedded as JSON.
// Rows are drawn a page at a time with textContent (never innerHTML), so thousands of scans stay fast and any
// file name shows as text.
"use strict";
(function () {
  const PAGE_ROWS = 100, PAGE_THUMBS = 24;
  const columns = JSON.parse(document.getElementById("columns-data").textContent);
  const rows = JSON.parse(document.getElementById("rows-data").textContent);
  const table = document.getElementById("summary-table");
  const state = { sortKey: null, sortDir: 1, filter: "", cls: "", fit: "", warnOnly: false, page: 0, galleryPage: 0 };
  let shown = rows;

  function numeric(v) { const x = parseFloat(v); return Number.isFinite(x) ? x : null; }
  function formatNumber(x) {  // three significant digits; tiny errors as 1.23e-7, never rounded to 0.000
    const a = Math.abs(x);
    return x === 0 ? "0" : a >= 0.01 && a < 1e5 ? String(Number(x.toPrecision(3))) : x.toExponential(2);
  }

  function buildHead() {
    const tr = table.tHead.rows[0];
    for (const col of columns) {
      const th = document.createElement("th");
      th.textContent = col.label;
      th.dataset.key = col.key;
      th.scope = "col";
      th.title = "sort by " + col.label;
      th.addEventListener("click", () => sortBy(col.key));
      tr.appendChild(th);
    }
  }

  function sortBy(key) {
    state.sortDir = state.sortKey === key ? -state.sortDir : 1;
    state.sortKey = key;
    for (const th of table.tHead.rows[0].cells) {
      if (th.dataset.key === key) th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    update(true);
  }

  function compare(key, kind) {
    return (a, b) => {
      if (kind === "num") {
        const x = numeric(a[key]), y = numeric(b[key]);
        if (x === null || y === null) return (x === null) - (y === null);  // blanks last either way
        return state.sortDir * (x - y);
      }
      return state.sortDir * String(a[key]).localeCompare(String(b[key]), undefined, { numeric: true });
    };
  }

  function update(resetPage) {
    const needle = state.filter.toLowerCase();
    shown = rows.filter((r) =>
      (!state.cls || r.predicted_class === state.cls) &&
      (!state.fit || r.fitness === state.fit) &&
      (!state.warnOnly || (r.warnings && r.warnings.length)) &&
      (!needle || columns.some((c) => String(r[c.key]).toLowerCase().includes(needle))));
    if (state.sortKey) {
      const col = columns.find((c) => c.key === state.sortKey);
      shown = shown.slice().sort(compare(col.key, col.type));
    }
    if (resetPage) { state.page = 0; state.galleryPage = 0; }
    drawTable();
    drawGallery();
    document.getElementById("shown").textContent = shown.length + " of " + rows.length + " scans";
  }

  function pager(which, page, size) {
    const el = document.querySelector('.pager[data-for="' + which + '"]');
    const pages = Math.max(1, Math.ceil(shown.length / size));
    const first = shown.length ? page * size + 1 : 0, last = Math.min(shown.length, (page + 1) * size);
    el.querySelector(".where").textContent = first + "–" + last + " of " + shown.length;
    el.querySelector('[data-step="-1"]').disabled = page <= 0;
    el.querySelector('[data-step="1"]').disabled = page >= pages - 1;
  }

  function drawTable() {
    const body = document.createElement("tbody");
    for (const r of shown.slice(state.page * PAGE_ROWS, (state.page + 1) * PAGE_ROWS)) {
      const tr = body.insertRow();
      tr.dataset.scan = r.scan_id;
      for (const col of columns) {
        const td = tr.insertCell();
        if (col.key === "scan_id") {
          const a = document.createElement("a");
          a.href = r._page;
          a.textContent = r.scan_id;
          td.appendChild(a);
        } else {
          const v = r[col.key];
          const x = col.type === "num" ? numeric(v) : null;
          if (col.key === "warnings" && v) {  // a note repeated on every row (the demo model's) must not
            const note = document.createElement("div");  // make each row a screen tall: two lines, all on hover
            note.textContent = v;
            td.title = v;
            td.className = "warn";
            td.appendChild(note);
            continue;
          }
          td.textContent = x === null ? v : formatNumber(x);
          if (col.type === "num") td.className = "num";
          else if (col.key === "source") td.className = "path";
        }
      }
    }
    table.replaceChild(body, table.tBodies[0]);
    pager("table", state.page, PAGE_ROWS);
  }

  function drawGallery() {
    const grid = document.getElementById("gallery-grid");
    const items = document.createDocumentFragment();
    for (const r of shown.slice(state.galleryPage * PAGE_THUMBS, (state.galleryPage + 1) * PAGE_THUMBS)) {
      const a = document.createElement("a");
      a.href = r._page;
      if (r._thumb) {
        const img = document.createElement("img");
        img.loading = "lazy";
        img.decoding = "async";
        img.src = r._thumb;
        img.alt = "overlay of " + r.scan_id;
        a.appendChild(img);
      }
      const label = document.createElement("span");
      label.textContent = r.scan_id + " · " + r.predicted_class;
      a.appendChild(label);
      items.appendChild(a);
    }
    grid.replaceChildren(items);
    pager("gallery", state.galleryPage, PAGE_THUMBS);
  }

  for (const el of document.querySelectorAll(".pager")) {
    el.addEventListener("click", (e) => {
      const step = Number(e.target.dataset.step || 0);
      if (!step) return;
      if (el.dataset.for === "table") { state.page += step; drawTable(); }
      else { state.galleryPage += step; drawGallery(); }
    });
  }
  let timer = null;
  document.getElementById("filter").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.filter = e.target.value; update(true); }, 120);
  });
  document.getElementById("class-filter").addEventListener("change", (e) => { state.cls = e.target.value; update(true); });
  document.getElementById("fitness-filter").addEventListener("change", (e) => { state.fit = e.target.value; update(true); });
  document.getElementById("warnings-only").addEventListener("change", (e) => {
    state.warnOnly = e.target.checked; update(true);
  });
  buildHead();
  update(true);
  document.body.dataset.ready = "true";
})();
