// The station page: no framework, no build step. Reads /api/*, follows /api/events.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  // A token given as ?token= (a station beyond loopback): sent as a bearer
  // header by fetch, and in the query where headers cannot be (events, images).
  const token = new URLSearchParams(location.search).get("token");
  const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
  const get = (url) =>
    fetch(url, { headers: token ? { Authorization: "Bearer " + token } : {} }).then((r) => {
      if (r.status === 401) throw new Error("401: this station needs its token: open the page as /?token=…");
      if (!r.ok) throw new Error(url + ": " + r.status);
      return r.json();
    });
  // A refused token stays on screen (the event stream's errors do not hide it).
  let denied = false;
  const problem = (e) => { if (!denied) text($("live"), String(e)); if (String(e).includes("401")) denied = true; };
  const KEEP = 30;
  let results = [];
  let shown = null;
  let view = "heatmap";

  const text = (el, s) => { el.textContent = s; return el; };
  const make = (tag, cls, s) => { const e = document.createElement(tag); if (cls) e.className = cls; if (s !== undefined) e.textContent = s; return e; };
  const num = (x, d = 3) => (typeof x === "number" ? x.toFixed(d) : "–");

  function showLatest(r) {
    shown = r;
    const img = $("latest-img");
    const url = view === "image" && r.links.image ? r.links.image : r.links.heatmap || r.links.image;
    if (url) { img.src = withToken(url); img.hidden = false; $("empty").hidden = true; }
    else { img.hidden = true; $("empty").hidden = false; text($("empty"), r.verdict === "error" ? r.error || "error" : "no picture kept"); }
    img.alt = (view === "image" ? "Picture" : "Heatmap") + " of result " + r.id;
    const v = $("verdict"); v.className = "verdict " + r.verdict; text(v, r.verdict.toUpperCase());
    if (typeof r.score === "number" && typeof r.threshold === "number") {
      const top = Math.max(r.score, r.threshold) * 1.25 || 1;
      $("scorebar").hidden = false;
      $("scorefill").style.width = Math.min(100, (100 * r.score) / top) + "%";
      $("scorefill").style.background = r.verdict === "fail" ? "var(--fail)" : "var(--pass)";
      $("thresh").style.left = (100 * r.threshold) / top + "%";
      text($("score"), "score " + num(r.score) + " vs threshold " + num(r.threshold) + (r.early_exit ? " (early exit)" : ""));
    } else { $("scorebar").hidden = true; text($("score"), r.error || ""); }
    text($("meta"), [r.source, r.recipe, r.inspected_at, r.file, r.latency_ms !== null && r.latency_ms !== undefined ? num(r.latency_ms, 0) + " ms" : ""].filter(Boolean).join(" · "));
    const ol = $("regions"); ol.replaceChildren();
    for (const g of r.regions || []) ol.append(make("li", "", "box " + g.box.join(", ") + " · peak " + num(g.peak) + " · " + (100 * g.area_fraction).toFixed(1) + " %"));
    const open = $("open-heatmap");
    if (r.links.heatmap) { open.href = withToken(r.links.heatmap); open.hidden = false; } else open.hidden = true;
    $("show-image").disabled = !r.links.image;
    for (const li of $("strip").children) li.classList.toggle("selected", li.dataset.id === r.id);
  }

  function drawStrip() {
    const failOnly = $("fail-only").checked;
    const strip = $("strip"); strip.replaceChildren();
    for (const r of results) {
      if (failOnly && r.verdict !== "fail") continue;
      const li = make("li", r.verdict); li.dataset.id = r.id; li.title = r.verdict + " " + num(r.score) + " " + (r.file || "");
      if (r.links.heatmap) { const img = make("img"); img.loading = "lazy"; img.alt = r.verdict; img.src = withToken(r.links.heatmap); li.append(img); }
      else li.append(make("div", "noimg", r.verdict));
      li.append(make("span", "", r.verdict + " " + num(r.score, 2)));
      li.addEventListener("click", () => showLatest(r));
      if (shown && shown.id === r.id) li.classList.add("selected");
      strip.append(li);
    }
  }

  function add(r) {
    results = [r, ...results.filter((x) => x.id !== r.id)].slice(0, KEEP);
    showLatest(r);
    drawStrip();
  }

  function drawState(s) {
    text($("station"), s.station);
    const items = [
      ["model", s.model || "none"], ["bank", s.bank || "none"], ["object", s.object || "–"],
      ["threshold", s.threshold === null ? "–" : s.threshold], ["device", s.device || "–"],
      ...Object.entries(s.active_recipes || {}).map(([src, rec]) => ["recipe", src + ": " + rec]),
      [s.paused ? "PAUSED" : "inspecting", "", s.paused],
      [s.mqtt_connected ? "broker connected" : "BROKER DISCONNECTED", "", !s.mqtt_connected],
      ["outbox", s.outbox_pending, s.outbox_pending > 0], ["queue", s.queue_depth],
    ];
    const ul = $("state"); ul.replaceChildren();
    for (const [k, v, bad] of items) { const li = make("li", bad ? "bad" : "", v === "" ? k : k + " " + v); ul.append(li); }
  }

  // Control: only where the station takes commands from here (commands on,
  // a token configured) and this page was given the token.
  function drawControl(s) {
    $("control").hidden = !(s.control && token);
    $("pause").disabled = s.paused; $("resume").disabled = !s.paused;
  }

  function command(body) {
    const out = $("control-reply");
    return fetch("api/commands", { method: "POST", headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then((r) => r.json())
      .then((r) => { out.className = r.ok ? "" : "bad"; text(out, r.ok ? body.command + ": done" : r.error); refresh(); })
      .catch((e) => { out.className = "bad"; text(out, String(e)); });
  }

  function drawStats(s) {
    const p = (x) => (x ? num(x.p50, 0) + " / " + num(x.p90, 0) + " / " + num(x.p99, 0) + " ms" : "–");
    const rows = [["pass", s.pass], ["fail", s.fail], ["errors", s.errors], ["inspect p50/p90/p99", p(s.inspect_ms)], ["latency p50/p90/p99", p(s.latency_ms)], ["busy triggers", s.busy_triggers], ["published", s.published], ["uptime", s.uptime_s + " s"]];
    const dl = $("counters"); dl.replaceChildren();
    for (const [k, v] of rows) { dl.append(make("dt", "", k), make("dd", "", String(v))); }
  }

  const refresh = () => Promise.all([get("api/state").then((s) => { drawState(s); drawControl(s); }), get("api/stats").then(drawStats)]).catch(problem);
  const reload = () => get("api/results?limit=" + KEEP).then((j) => { results = j.results; if (results.length) showLatest(results[0]); drawStrip(); });

  function follow() {
    const es = new EventSource(withToken("api/events"));
    es.addEventListener("open", () => { text($("live"), "live"); document.body.dataset.live = "1"; });
    es.addEventListener("result", (e) => { add(JSON.parse(e.data)); refresh(); });
    es.addEventListener("lagged", reload);
    es.addEventListener("error", () => { if (!denied) text($("live"), "reconnecting…"); document.body.dataset.live = "0"; });
  }

  const setView = (v) => { view = v; $("show-heatmap").setAttribute("aria-pressed", v === "heatmap"); $("show-image").setAttribute("aria-pressed", v === "image"); if (shown) showLatest(shown); };
  $("show-heatmap").addEventListener("click", () => setView("heatmap"));
  $("show-image").addEventListener("click", () => setView("image"));
  $("fail-only").addEventListener("change", drawStrip);
  $("threshold-set").addEventListener("click", () => { const v = parseFloat($("threshold-value").value); if (Number.isFinite(v)) command({ command: "threshold", value: v }); });
  $("threshold-clear").addEventListener("click", () => command({ command: "threshold", value: null }));
  $("pause").addEventListener("click", () => command({ command: "pause" }));
  $("resume").addEventListener("click", () => command({ command: "resume" }));
  reload().catch(problem);
  refresh();
  setInterval(refresh, 5000);
  follow();
})();
