// The vocabulary explorer: every token of a run drawn on a canvas, on any two of the run's
// logged axes. Self-contained: the data is the JSON in #explorer-data (built from the
// run's logged vocabulary_projections.csv by embsvd/figures/explorer.py); no network.
// window.explorer exposes the state and the exports, so a test can drive the page.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  // the target red, other groups from a palette that keeps clear of the marks' colours
  const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f"];
  const TARGET_COLOUR = "#d62728", MATCH_COLOUR = "#ff7f0e", NEIGHBOUR_COLOUR = "#00897b";
  const SPECIAL_RGB = [176, 140, 220], SPECIAL_COLOUR = "#b08cdc", POINT_RGB = [120, 130, 140];
  const N_LABELLED_NEIGHBOURS = 5;
  const N_NEIGHBOURS = 15, MAX_MATCHES = 50, HOVER_PX = 6;
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas"), ctx = canvas.getContext("2d");

  function decodeFloats(b64) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Float32Array(bytes.buffer);
  }
  function decodeInts(b64) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Int32Array(bytes.buffer);
  }
  // A float32 holds the logged 6-significant-digit number exactly to those digits; this
  // writes it back as the table has it (Python's "%.6g"), so an export of every token is
  // the logged table, byte for byte.
  function exact(v) {
    const digits = DATA.precision;
    if (v === 0) return Object.is(v, -0) ? "-0" : "0";
    const exponent = Number(v.toExponential(digits - 1).split("e")[1]);
    const strip = (t) => (t.includes(".") ? t.replace(/0+$/, "").replace(/\.$/, "") : t);
    if (exponent < -4 || exponent >= digits) {
      const mantissa = strip(v.toExponential(digits - 1).split("e")[0]);
      return mantissa + "e" + (exponent < 0 ? "-" : "+") + String(Math.abs(exponent)).padStart(2, "0");
    }
    return strip(v.toFixed(digits - 1 - exponent));
  }

  const vocabularies = DATA.vocabularies.map((v) => {
    const n = v.texts.length;
    const ids = v.ids === null ? Int32Array.from({ length: n }, (_, i) => i) : decodeInts(v.ids);
    return { texts: v.texts, ids, n };
  });

  function loadRun(r) {
    const vocab = vocabularies[r.vocabulary];
    const n = vocab.n, k = r.axes.length;
    const flat = decodeFloats(r.coords); // axis-major: axis a is flat[a*n .. (a+1)*n)
    const coords = [];
    for (let a = 0; a < k; a++) coords.push(flat.subarray(a * n, (a + 1) * n));
    const names = Object.keys(r.groups).sort();
    const groupOf = new Array(n).fill("");
    const groupIndex = new Int16Array(n).fill(-1); // the first group drawn for a token
    names.forEach((g) => {
      for (const row of r.groups[g]) groupOf[row] = groupOf[row] ? groupOf[row] + DATA.separator + g : g;
    });
    const ordered = r.target && names.includes(r.target) ? [r.target, ...names.filter((g) => g !== r.target)] : names;
    ordered.slice().reverse().forEach((g) => { for (const row of r.groups[g]) groupIndex[row] = ordered.indexOf(g); });
    const special = new Uint8Array(n);
    for (const row of r.special) special[row] = 1;
    const colours = {};
    let p = 0;
    ordered.forEach((g) => { colours[g] = g === r.target ? TARGET_COLOUR : PALETTE[p++ % PALETTE.length]; });
    return { meta: r, vocab, n, k, coords, groupOf, groupIndex, ordered, colours, special };
  }

  const state = {
    run: 0, x: 0, y: 1, view: null, selected: null, matches: [], neighbours: [],
    shownGroups: {}, query: "", width: 0, height: 0, dpr: 1,
  };
  let run = null;

  // --- view: data <-> screen (CSS pixels) ----------------------------------------------
  function fitView() {
    const xs = run.coords[state.x], ys = run.coords[state.y];
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < run.n; i++) {
      if (run.special[i]) continue; // special tokens may sit far out; they stay drawn
      const x = xs[i], y = ys[i];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
    if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
    const pad = 0.05;
    const w = state.width - 2 * MARGIN, h = state.height - 2 * MARGIN;
    const scale = Math.min(w / ((x1 - x0) * (1 + 2 * pad)), h / ((y1 - y0) * (1 + 2 * pad)));
    state.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, sx: scale, sy: scale };
  }
  const MARGIN = 40;
  const toX = (x) => state.width / 2 + (x - state.view.cx) * state.view.sx;
  const toY = (y) => state.height / 2 - (y - state.view.cy) * state.view.sy;
  const fromX = (px) => state.view.cx + (px - state.width / 2) / state.view.sx;
  const fromY = (py) => state.view.cy - (py - state.height / 2) / state.view.sy;
  function viewBounds() {
    return { x0: fromX(0), x1: fromX(state.width), y0: fromY(state.height), y1: fromY(0) };
  }
  function inView(i) {
    const b = viewBounds(), x = run.coords[state.x][i], y = run.coords[state.y][i];
    return x >= b.x0 && x <= b.x1 && y >= b.y0 && y <= b.y1;
  }

  // --- drawing -------------------------------------------------------------------------
  function measure() {
    const box = $("plot").getBoundingClientRect();
    state.dpr = window.devicePixelRatio || 1;
    state.width = Math.max(100, box.width);
    state.height = Math.max(100, box.height);
    canvas.width = Math.round(state.width * state.dpr);
    canvas.height = Math.round(state.height * state.dpr);
  }
  function resize() { measure(); draw(); }

  function axisLabel(a) {
    const share = run.meta.explained[a];
    return "axis " + (a + 1) + (share === undefined ? "" : " (" + (100 * share).toFixed(1) + "% of the group's variance)");
  }

  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) ticks.push(Math.abs(t) < step / 1e6 ? 0 : t);
    return ticks;
  }

  function highlighted() {
    // [row, colour, radius, label?] drawn over the points, last on top
    const marks = [];
    run.ordered.slice().reverse().forEach((g) => {
      if (!state.shownGroups[g]) return;
      for (const row of run.meta.groups[g]) marks.push([row, run.colours[g], 3.5, g === run.meta.target]);
    });
    for (const row of state.matches) marks.push([row, MATCH_COLOUR, 4, false]);
    state.neighbours.forEach((nb, i) => marks.push([nb.row, NEIGHBOUR_COLOUR, 4, i < N_LABELLED_NEIGHBOURS]));
    if (state.selected !== null) marks.push([state.selected, "#000", 6, true]);
    return marks;
  }

  function draw() {
    if (!run || !state.view) return;
    const W = canvas.width, H = canvas.height, dpr = state.dpr;
    const image = ctx.createImageData(W, H), px = image.data;
    px.fill(255);
    const xs = run.coords[state.x], ys = run.coords[state.y];
    const size = Math.max(1, Math.round(1.5 * dpr));
    const showSpecial = $("show-special") ? $("show-special").checked : true;
    for (let i = 0; i < run.n; i++) {
      if (run.special[i] && !showSpecial) continue;
      const sx = Math.round(toX(xs[i]) * dpr), sy = Math.round(toY(ys[i]) * dpr);
      if (sx < 0 || sy < 0 || sx >= W - size || sy >= H - size) continue;
      const shade = run.special[i] ? SPECIAL_RGB : POINT_RGB;
      for (let dy = 0; dy < size; dy++) {
        let o = ((sy + dy) * W + sx) * 4;
        for (let dx = 0; dx < size; dx++, o += 4) { px[o] = shade[0]; px[o + 1] = shade[1]; px[o + 2] = shade[2]; }
      }
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.putImageData(image, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawAxes();
    ctx.font = "12px system-ui, sans-serif";
    for (const [row, colour, radius, label] of highlighted()) {
      const sx = toX(xs[row]), sy = toY(ys[row]);
      if (sx < -20 || sy < -20 || sx > state.width + 20 || sy > state.height + 20) continue;
      ctx.beginPath();
      ctx.arc(sx, sy, radius, 0, 2 * Math.PI);
      ctx.lineWidth = row === state.selected ? 2 : 1.5;
      ctx.strokeStyle = colour;
      ctx.stroke();
      if (label) {
        ctx.fillStyle = colour;
        ctx.fillText(run.vocab.texts[row], sx + radius + 2, sy - radius);
      }
    }
  }

  function drawAxes() {
    const b = viewBounds();
    ctx.strokeStyle = "#bbb"; ctx.fillStyle = "#444"; ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    if (b.x0 < 0 && b.x1 > 0) { ctx.beginPath(); ctx.moveTo(toX(0), 0); ctx.lineTo(toX(0), state.height); ctx.stroke(); }
    if (b.y0 < 0 && b.y1 > 0) { ctx.beginPath(); ctx.moveTo(0, toY(0)); ctx.lineTo(state.width, toY(0)); ctx.stroke(); }
    for (const t of niceTicks(b.x0, b.x1, 8)) ctx.fillText(formatTick(t), toX(t) + 2, state.height - 4);
    for (const t of niceTicks(b.y0, b.y1, 6)) ctx.fillText(formatTick(t), 3, toY(t) - 2);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText("x: " + axisLabel(state.x) + "   y: " + axisLabel(state.y), 60, 16);
  }
  const formatTick = (t) => String(Number(t.toPrecision(3)));

  // --- selection, search, neighbours -------------------------------------------------------
  function nearestRows(row) {
    const k = run.k, best = [];
    const target = [];
    for (let a = 0; a < k; a++) target.push(run.coords[a][row]);
    let worst = Infinity;
    for (let i = 0; i < run.n; i++) {
      if (i === row) continue;
      let d = 0;
      for (let a = 0; a < k; a++) { const e = run.coords[a][i] - target[a]; d += e * e; if (d >= worst) break; }
      if (d >= worst && best.length >= N_NEIGHBOURS) continue;
      best.push({ row: i, distance: d });
      if (best.length > N_NEIGHBOURS) { best.sort((p, q) => p.distance - q.distance); best.pop(); }
      if (best.length === N_NEIGHBOURS) worst = best.reduce((m, p) => Math.max(m, p.distance), 0);
    }
    best.sort((p, q) => p.distance - q.distance || p.row - q.row);
    return best.map((p) => ({ row: p.row, distance: Math.sqrt(p.distance) }));
  }

  function select(row, centre) {
    state.selected = row;
    state.neighbours = row === null ? [] : nearestRows(row);
    if (row !== null && centre) {
      state.view.cx = run.coords[state.x][row];
      state.view.cy = run.coords[state.y][row];
    }
    showSelected();
    draw();
  }

  function tokenCells(row) {
    const text = run.vocab.texts[row];
    return "<td class='mono'>" + escapeHtml(text) + "</td><td class='num'>#" + run.vocab.ids[row] + "</td>";
  }

  function showSelected() {
    const row = state.selected;
    if (row === null) { $("selected").textContent = "click a point, or search"; $("neighbours").innerHTML = ""; return; }
    const lines = ["<table><tr>" + tokenCells(row) + "</tr></table><table>"];
    for (let a = 0; a < run.k; a++) lines.push("<tr><td>axis " + (a + 1) + "</td><td class='num'>" + exact(run.coords[a][row]) + "</td></tr>");
    lines.push("</table>");
    if (run.groupOf[row]) lines.push("group: " + escapeHtml(run.groupOf[row]));
    if (run.special[row]) lines.push(" special token");
    $("selected").innerHTML = lines.join("");
    const rows = state.neighbours.map((nb) => "<tr class='pick' data-row='" + nb.row + "'>" + tokenCells(nb.row) +
      "<td class='num'>" + nb.distance.toPrecision(3) + "</td></tr>");
    $("neighbours").innerHTML = "<table><tr><th>token</th><th class='num'>id</th><th class='num'>distance</th></tr>" + rows.join("") + "</table>";
  }

  function normalise(text) { return text.replace(/^ /, "␣").toLowerCase(); }

  function search(query) {
    state.query = query;
    const q = query.trim() === "" ? "" : query.replace(/^ /, "␣");
    if (q === "") { state.matches = []; showMatches(); draw(); return []; }
    const texts = run.vocab.texts, found = [];
    const idMatch = /^#(\d+)$/.exec(q.trim());
    if (idMatch) {
      const id = Number(idMatch[1]);
      for (let i = 0; i < run.n; i++) if (run.vocab.ids[i] === id) found.push(i);
    } else {
      const exactRows = [], folded = [], part = [];
      const lower = normalise(q);
      for (let i = 0; i < run.n; i++) {
        const t = texts[i];
        if (t === q) exactRows.push(i);
        else if (t.toLowerCase() === lower || t.toLowerCase() === "␣" + lower) folded.push(i);
        else if (t.toLowerCase().includes(lower)) part.push(i);
      }
      found.push(...exactRows, ...folded, ...part);
    }
    state.matches = found.slice(0, MAX_MATCHES);
    showMatches(found.length);
    if (state.matches.length) select(state.matches[0], true); else draw();
    return state.matches;
  }

  function showMatches(total) {
    if (!state.query) { $("matches").textContent = ""; return; }
    if (!state.matches.length) { $("matches").textContent = "no token matches " + JSON.stringify(state.query); return; }
    const more = total > state.matches.length ? " (first " + state.matches.length + " of " + total + ")" : "";
    $("matches").innerHTML = state.matches.length + " matches" + more + "<table>" +
      state.matches.map((row) => "<tr class='pick' data-row='" + row + "'>" + tokenCells(row) + "</tr>").join("") + "</table>";
  }

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // --- exports ---------------------------------------------------------------------------
  function csvField(text) { return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text; }

  function csvText(scope) {
    const header = ["token_id", "text", "group", "special", ...run.meta.axes];
    const lines = [header.join(",")];
    for (let i = 0; i < run.n; i++) {
      if (scope === "view" && !inView(i)) continue;
      const cells = [run.vocab.ids[i], csvField(run.vocab.texts[i]), csvField(run.groupOf[i]), run.special[i] ? "true" : "false"];
      for (let a = 0; a < run.k; a++) cells.push(exact(run.coords[a][i]));
      lines.push(cells.join(","));
    }
    return lines.join("\r\n") + "\r\n";
  }

  function svgText() {
    const w = state.width, h = state.height, xs = run.coords[state.x], ys = run.coords[state.y];
    const points = [], special = [];
    for (let i = 0; i < run.n; i++) {
      const sx = toX(xs[i]), sy = toY(ys[i]);
      if (sx < 0 || sy < 0 || sx > w || sy > h) continue;
      (run.special[i] ? special : points).push("M" + sx.toFixed(1) + " " + sy.toFixed(1) + "h0");
    }
    const esc = (t) => t.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
    const parts = [
      '<svg xmlns="http://www.w3.org/2000/svg" width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + " " + h + '" font-family="sans-serif" font-size="12">',
      '<rect width="100%" height="100%" fill="#fff"/>',
      '<path d="' + points.join("") + '" stroke="#78828c" stroke-width="1.5" stroke-linecap="square" fill="none"/>',
      '<path d="' + special.join("") + '" stroke="#b08cdc" stroke-width="1.5" stroke-linecap="square" fill="none"/>',
    ];
    for (const [row, colour, radius, label] of highlighted()) {
      const sx = toX(xs[row]), sy = toY(ys[row]);
      if (sx < 0 || sy < 0 || sx > w || sy > h) continue;
      parts.push('<circle cx="' + sx.toFixed(1) + '" cy="' + sy.toFixed(1) + '" r="' + radius + '" fill="none" stroke="' + colour + '"/>');
      if (label) parts.push('<text x="' + (sx + radius + 2).toFixed(1) + '" y="' + (sy - radius).toFixed(1) + '" fill="' + colour + '">' + esc(run.vocab.texts[row]) + "</text>");
    }
    parts.push('<text x="60" y="16" fill="#444">' + esc("x: " + axisLabel(state.x) + "   y: " + axisLabel(state.y)) + "</text>", "</svg>");
    return parts.join("\n") + "\n";
  }

  function pngDataUrl() { return canvas.toDataURL("image/png"); }

  function download(name, blob) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  function fileStem() {
    return (run.meta.name + "__axes_" + (state.x + 1) + "_" + (state.y + 1)).replace(/[^A-Za-z0-9_.-]+/g, "_");
  }

  // --- controls ----------------------------------------------------------------------------
  function fillAxes() {
    for (const id of ["x-axis", "y-axis"]) {
      $(id).innerHTML = run.meta.axes.map((_, a) => "<option value='" + a + "'>" + escapeHtml(axisLabel(a)) + "</option>").join("");
    }
    state.x = 0; state.y = Math.min(1, run.k - 1);
    $("x-axis").value = state.x; $("y-axis").value = state.y;
  }

  function fillGroups() {
    state.shownGroups = {};
    const parts = run.ordered.map((g) => {
      state.shownGroups[g] = true;
      const n = run.meta.groups[g].length;
      return "<label><input type='checkbox' data-group='" + escapeHtml(g) + "' checked><span class='swatch' style='background:" +
        run.colours[g] + "'></span>" + escapeHtml(g) + (g === run.meta.target ? " (target)" : "") + " " + n + "</label>";
    });
    parts.push("<label><input type='checkbox' id='show-special' checked><span class='swatch' style='background:" + SPECIAL_COLOUR + "'></span>special tokens</label>");
    $("groups").innerHTML = parts.join("");
  }

  function showRun(index) {
    state.run = index;
    run = loadRun(DATA.runs[index]);
    state.selected = null; state.matches = []; state.neighbours = []; state.query = "";
    fillAxes(); fillGroups(); fitView();
    const m = run.meta;
    $("summary").innerHTML = escapeHtml(m.name) + "<br>" + run.n.toLocaleString("en") + " tokens (all, none sampled), " +
      run.k + " axes" + (m.model ? "; model " + escapeHtml(m.model) : "") + (m.target ? "; target group " + escapeHtml(m.target) : "");
    $("neighbours-note").textContent = "Nearest by Euclidean distance in the space of this run's " + run.k +
      " logged axes (the tokens' projections on the target group's axes), not in the model's full " +
      "embedding space: tokens close here may be far apart there.";
    showMatches(0); showSelected(); draw();
  }

  function wire() {
    $("title").textContent = DATA.title;
    if (DATA.runs.length > 1) {
      $("run").innerHTML = DATA.runs.map((r, i) => "<option value='" + i + "'>" + escapeHtml(r.name) + "</option>").join("");
      $("run").addEventListener("change", () => showRun(Number($("run").value)));
    } else {
      $("run-label").style.display = "none";
    }
    $("x-axis").addEventListener("change", () => { state.x = Number($("x-axis").value); fitView(); draw(); });
    $("y-axis").addEventListener("change", () => { state.y = Number($("y-axis").value); fitView(); draw(); });
    $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search($("search").value); });
    $("reset").addEventListener("click", () => { fitView(); draw(); });
    $("groups").addEventListener("change", (e) => {
      const g = e.target.getAttribute("data-group");
      if (g !== null) state.shownGroups[g] = e.target.checked;
      draw();
    });
    document.body.addEventListener("click", (e) => {
      const tr = e.target.closest("tr.pick");
      if (tr) select(Number(tr.getAttribute("data-row")), true);
    });
    $("export-view").addEventListener("click", () => download(fileStem() + "__view.csv", new Blob([csvText("view")], { type: "text/csv" })));
    $("export-all").addEventListener("click", () => download(fileStem() + "__all.csv", new Blob([csvText("all")], { type: "text/csv" })));
    $("export-svg").addEventListener("click", () => download(fileStem() + ".svg", new Blob([svgText()], { type: "image/svg+xml" })));
    $("export-png").addEventListener("click", () => canvas.toBlob((blob) => download(fileStem() + ".png", blob), "image/png"));
    wirePointer();
    window.addEventListener("resize", resize);
    $("about").innerHTML = DATA.about.map(escapeHtml).join("<br>");
  }

  function rowAt(px, py) {
    const xs = run.coords[state.x], ys = run.coords[state.y];
    let best = null, bestD = HOVER_PX * HOVER_PX;
    for (let i = 0; i < run.n; i++) {
      const dx = toX(xs[i]) - px, dy = toY(ys[i]) - py, d = dx * dx + dy * dy;
      if (d <= bestD) { bestD = d; best = i; }
    }
    return best;
  }

  function wirePointer() {
    let drag = null, pending = null;
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const f = Math.exp(-e.deltaY * 0.0015), x = fromX(e.offsetX), y = fromY(e.offsetY);
      state.view.sx *= f; state.view.sy *= f;
      state.view.cx = x - (e.offsetX - state.width / 2) / state.view.sx;
      state.view.cy = y + (e.offsetY - state.height / 2) / state.view.sy;
      draw();
    }, { passive: false });
    canvas.addEventListener("mousedown", (e) => { drag = { x: e.offsetX, y: e.offsetY, cx: state.view.cx, cy: state.view.cy, moved: false }; });
    window.addEventListener("mouseup", (e) => {
      if (drag && !drag.moved && e.target === canvas) { const row = rowAt(e.offsetX, e.offsetY); if (row !== null) select(row, false); }
      drag = null;
    });
    canvas.addEventListener("mousemove", (e) => {
      if (drag) {
        const dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        state.view.cx = drag.cx - dx / state.view.sx; state.view.cy = drag.cy + dy / state.view.sy;
        draw();
        return;
      }
      if (pending) return;
      pending = requestAnimationFrame(() => {
        pending = null;
        const row = rowAt(e.offsetX, e.offsetY), tip = $("tooltip");
        if (row === null) { tip.style.display = "none"; return; }
        tip.textContent = run.vocab.texts[row] + "  #" + run.vocab.ids[row] + (run.groupOf[row] ? "  [" + run.groupOf[row] + "]" : "");
        tip.style.left = e.offsetX + 12 + "px"; tip.style.top = e.offsetY + 12 + "px"; tip.style.display = "block";
      });
    });
    canvas.addEventListener("mouseleave", () => { $("tooltip").style.display = "none"; });
  }

  wire();
  measure();
  showRun(0);
  window.explorer = {
    state, search, select, csvText, svgText, pngDataUrl, showRun, draw,
    get run() { return run; },
    // the row's token id, text and logged coordinates, as the page holds them
    token(row) {
      return { token_id: run.vocab.ids[row], text: run.vocab.texts[row], group: run.groupOf[row],
        coordinates: run.coords.map((c) => Number(exact(c[row]))), screen: [toX(run.coords[state.x][row]), toY(run.coords[state.y][row])] };
    },
    ready: true,
  };
})();
