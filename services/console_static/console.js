// cardiowatch central station: draws the console's view (services/console_view.py) and keeps
// it live from /api/events (server-sent events). Every value from the topics is put in the
// page as text (textContent / SVG attributes), never as HTML.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MM_PER_S = 25;      // paper speed
  const MM_PER_MV = 10;     // gain
  const PX_PER_MM = 4;      // on screen: a 6 s strip is 150 mm = 600 px wide
  const STALE_MS = 10000;   // no data for this long: the grid says so
  const RANK = { high: 2, medium: 1, low: 0 };

  const patients = new Map();   // patient_id -> view dict
  const alerts = new Map();     // alert_id -> view dict (open ones only)
  const cards = new Map();      // alert_id -> { el, seq, stripKey }
  const tiles = new Map();      // patient_id -> element
  let serverOffsetMs = 0;
  let status = { phase: "connecting", detail: "" };

  const $ = (id) => document.getElementById(id);
  const now = () => Date.now() + serverOffsetMs;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }
  function clock(ms) {
    if (ms === null || ms === undefined) return "—";
    const d = new Date(ms);
    return d.toISOString().slice(11, 19) + " UTC";
  }
  function ago(ms) {
    if (ms === null || ms === undefined) return "never";
    const s = Math.max(0, Math.round((now() - ms) / 1000));
    if (s < 120) return `${s} s ago`;
    if (s < 7200) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }
  const label = (name) => String(name).replace(/_/g, " ");

  // ------------------------------------------------------------------ state from the server
  function apply(kind, msg) {
    serverOffsetMs = msg.server_ms - Date.now();
    status = msg.status || status;
    $("team").textContent = msg.team ? `team ${msg.team}` : "all teams";
    if (kind === "snapshot") {
      patients.clear();
      alerts.clear();
    }
    for (const p of msg.patients || []) patients.set(p.patient_id, p);
    for (const a of msg.alerts || []) {
      if (a.open) alerts.set(a.alert_id, a); else alerts.delete(a.alert_id);
    }
    render();
  }

  function connect() {
    const es = new EventSource("/api/events");
    es.addEventListener("snapshot", (e) => apply("snapshot", JSON.parse(e.data)));
    es.addEventListener("delta", (e) => apply("delta", JSON.parse(e.data)));
    es.onerror = () => {  // EventSource reconnects by itself; the server then sends a snapshot
      status = { phase: "disconnected", detail: "connection to the console lost; reconnecting" };
      renderStatus();
    };
  }

  // ------------------------------------------------------------------ rendering
  function render() {
    renderStatus();
    renderPatients();
    renderAlerts();
    renderBanner();
  }

  function renderStatus() {
    const c = $("conn");
    c.dataset.phase = status.phase;
    c.textContent = status.phase === "live" ? "live" : `${status.phase}: ${status.detail}`;
    c.title = status.detail || "";
  }

  function renderPatients() {
    const box = $("patients");
    const ids = [...patients.keys()].sort();
    $("patient-count").textContent = `(${ids.length})`;
    ids.forEach((id, i) => {
      const p = patients.get(id);
      let t = tiles.get(id);
      if (!t) {
        t = el("div", "patient");
        t.dataset.patientId = id;
        t.append(el("div", "pid", id), el("div", "hr"), el("div", "rhythm"), el("div", "sq"), el("div", "since"));
        tiles.set(id, t);
      }
      t.className = "patient" + (p.priority ? ` prio-${p.priority}` : "");
      t.dataset.priority = p.priority || "none";
      const hr = t.querySelector(".hr");
      hr.textContent = p.hr_bpm === null ? "--" : String(Math.round(p.hr_bpm));
      hr.append(el("small", null, " bpm"));
      t.querySelector(".rhythm").textContent = p.rhythm;
      t.querySelector(".sq").textContent =
        p.signal_quality === null ? "signal quality —" : `signal quality ${Math.round(p.signal_quality * 100)} %`;
      if (box.children[i] !== t) box.insertBefore(t, box.children[i] || null);
    });
    for (const [id, t] of tiles) if (!patients.has(id)) { t.remove(); tiles.delete(id); }
    tickPatients();
  }

  function tickPatients() {
    for (const [id, t] of tiles) {
      const p = patients.get(id);
      const since = t.querySelector(".since");
      since.textContent = `last data ${ago(p.last_data_wall_ms)}`;
      t.classList.toggle("stale", p.last_data_wall_ms === null || now() - p.last_data_wall_ms > STALE_MS);
    }
  }

  function compareAlerts(a, b) {
    for (let i = 0; i < a.sort_key.length; i++) {
      if (a.sort_key[i] < b.sort_key[i]) return -1;
      if (a.sort_key[i] > b.sort_key[i]) return 1;
    }
    return 0;
  }

  function renderAlerts() {
    const box = $("alerts");
    const list = [...alerts.values()].sort(compareAlerts);
    $("alert-count").textContent = `(${list.length})`;
    $("no-alerts").hidden = list.length > 0;
    list.forEach((a, i) => {
      let c = cards.get(a.alert_id);
      if (!c) {
        c = { el: buildCard(a), seq: -1, stripKey: null };
        cards.set(a.alert_id, c);
      }
      if (c.seq !== a.seq) {
        fillCard(c, a);
        c.seq = a.seq;
      }
      if (box.children[i] !== c.el) box.insertBefore(c.el, box.children[i] || null);
    });
    for (const [id, c] of cards) if (!alerts.has(id)) { c.el.remove(); cards.delete(id); }
    tickAlerts();
  }

  function buildCard(a) {
    const card = el("article", "alert");
    card.dataset.alertId = a.alert_id;
    const head = el("header");
    head.append(el("span", "prio"), el("span", "patient-id"), el("span", "condition"), el("span", "state"));
    const dl = el("dl");
    for (const [name, cls] of [["rule", "rule"], ["onset", "onset"], ["raised", "raised"],
                               ["escalation", "escalation"], ["acknowledged", "acked"], ["condition", "cleared"]]) {
      dl.append(el("dt", null, name), el("dd", cls));
    }
    const strip = el("div", "strip-box");
    const actions = el("div", "actions");
    const ack = el("button", "ack", "Acknowledge");
    const resolve = el("button", "resolve", "Resolve");
    ack.type = resolve.type = "button";
    ack.addEventListener("click", () => act(a.alert_id, "ack", card));
    resolve.addEventListener("click", () => act(a.alert_id, "resolve", card));
    const result = el("span", "result");
    result.setAttribute("role", "status");
    const error = el("span", "error");
    error.setAttribute("role", "alert");
    actions.append(ack, resolve, result, error);
    card.append(head, dl, strip, actions);
    return card;
  }

  function fillCard(c, a) {
    const card = c.el;
    card.className = `alert prio-${a.priority} status-${a.status}` + (a.latched ? " latched" : "");
    card.dataset.status = a.status;
    card.dataset.priority = a.priority;
    card.dataset.latched = a.latched ? "true" : "false";
    card.querySelector(".prio").textContent = a.priority.toUpperCase();
    card.querySelector(".patient-id").textContent = a.patient_id;
    card.querySelector(".condition").textContent = label(a.condition) + (a.category === "technical" ? " (technical)" : "");
    card.querySelector(".state").textContent =
      a.latched ? "LATCHED — condition over, not yet acknowledged" : a.status.toUpperCase();
    card.querySelector(".rule").textContent = a.rule;
    card.querySelector(".onset").textContent = clock(a.onset_ts_ms);
    card.querySelector(".escalation").textContent = `level ${a.escalation_level}`;
    card.querySelector(".escalation").dataset.level = String(a.escalation_level);
    card.querySelector(".acked").textContent = a.acknowledged_by === null ? "not yet" :
      `${a.acknowledged_by}${a.acknowledged_team ? ` (${a.acknowledged_team})` : ""} at ${clock(a.acknowledged_ms)}`;
    card.querySelector(".cleared").textContent = a.cleared ?
      `ended at ${clock(a.cleared_ts_ms)}: ${a.cleared_rule || ""}` : "ongoing";
    card.querySelector("button.ack").disabled = a.status !== "open";
    const key = a.strip ? `${a.strip.start_ts_ms}:${a.strip.samples_mv.length}:${JSON.stringify(a.marks)}` :
      `none:${a.strip_problem}`;
    if (key !== c.stripKey) {
      const box = card.querySelector(".strip-box");
      box.replaceChildren(a.strip ? drawStrip(a.strip, a.marks) :
        el("p", "strip-missing", a.strip_problem ? `ECG strip unreadable: ${a.strip_problem}` : "no ECG strip with this alert"));
      c.stripKey = key;
    }
  }

  function tickAlerts() {
    for (const [id, c] of cards) {
      const a = alerts.get(id);
      const wall = a.raised_wall_ms === null ? "" : ` (${ago(a.raised_wall_ms)})`;
      c.el.querySelector(".raised").textContent = `${clock(a.raised_ts_ms)}${wall}`;
    }
  }

  // The ECG strip on ECG paper: 1 mm and 5 mm squares, 25 mm per second across and 10 mm
  // per millivolt up, one path point per sample; beats from the scores topic marked above.
  function drawStrip(strip, marks) {
    const samples = strip.samples_mv;
    const n = samples.length;
    const fs = strip.sample_rate_hz;
    const widthMm = (n / fs) * MM_PER_S;
    let lo = Infinity, hi = -Infinity;
    for (const v of samples) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const band = 6;  // mm above the trace for the beat marks
    const traceMm = Math.min(60, Math.max(20, Math.ceil(((hi - lo) * MM_PER_MV + 6) / 5) * 5));
    const heightMm = band + traceMm;
    const top = (hi + lo) / 2 + traceMm / 2 / MM_PER_MV;  // the mV at the trace area's top edge
    const y = (v) => band + (top - v) * MM_PER_MV;
    const x = (i) => (i / fs) * MM_PER_S;
    const id = `g${Math.random().toString(36).slice(2)}`;
    const s = svg("svg", {
      class: "strip", viewBox: `0 0 ${widthMm.toFixed(2)} ${heightMm}`,
      width: Math.round(widthMm * PX_PER_MM), height: Math.round(heightMm * PX_PER_MM),
      "data-samples": n, "data-mm-per-s": MM_PER_S, "data-mm-per-mv": MM_PER_MV,
      role: "img", "aria-label": `ECG strip, ${(n / fs).toFixed(1)} s`,
    });
    const defs = svg("defs");
    const small = svg("pattern", { id: `${id}s`, width: 1, height: 1, patternUnits: "userSpaceOnUse" });
    small.append(svg("path", { d: "M 1 0 L 0 0 0 1", fill: "none", stroke: "#f4c2c2", "stroke-width": 0.08 }));
    const big = svg("pattern", { id: `${id}b`, width: 5, height: 5, patternUnits: "userSpaceOnUse" });
    big.append(svg("rect", { width: 5, height: 5, fill: `url(#${id}s)` }),
               svg("path", { d: "M 5 0 L 0 0 0 5", fill: "none", stroke: "#e07a7a", "stroke-width": 0.18 }));
    defs.append(small, big);
    s.append(defs, svg("rect", { class: "paper", x: 0, y: 0, width: widthMm.toFixed(2), height: heightMm,
                                 fill: `url(#${id}b)` }));
    const pts = new Array(n);
    for (let i = 0; i < n; i++) pts[i] = `${x(i).toFixed(2)} ${y(samples[i]).toFixed(2)}`;
    s.append(svg("path", { class: "trace", d: "M " + pts.join(" L "), "data-samples": n }));
    let flagged = 0;
    for (const m of marks) {
      const bx = ((m.ts_ms - strip.start_ts_ms) / 1000) * MM_PER_S;
      const cls = m.flagged ? "beat flagged" : "beat";
      if (m.flagged) flagged++;
      s.append(svg("path", { class: cls, d: `M ${(bx - 1).toFixed(2)} 0.5 L ${(bx + 1).toFixed(2)} 0.5 ` +
                                            `L ${bx.toFixed(2)} 2.5 Z`, "data-ts-ms": m.ts_ms }));
      if (m.flagged && m.beat_class && m.beat_class !== "?") {
        const t = svg("text", { class: "beat-label", x: (bx + 1.2).toFixed(2), y: 2.6 });
        t.textContent = m.beat_class;
        s.append(t);
      }
    }
    s.dataset.flagged = String(flagged);
    const wrap = el("div", "strip-wrap");
    wrap.append(s);
    const scale = el("p", "strip-scale",
      `${(n / fs).toFixed(1)} s from ${clock(strip.start_ts_ms)} · 25 mm/s · 10 mm/mV · ` +
      `${marks.length} beats, ${flagged} flagged`);
    const box = el("div", "strip-holder");
    box.append(wrap, scale);
    return box;
  }

  // A HIGH alert nobody has acknowledged stays in this banner (and sounds, if the tone is
  // on) until someone acknowledges or resolves it, even after its condition is over.
  function unansweredHigh() {
    return [...alerts.values()].filter((a) => a.priority === "high" && a.status === "open").sort(compareAlerts);
  }
  function renderBanner() {
    const b = $("alarm-banner");
    const high = unansweredHigh();
    b.hidden = high.length === 0;
    b.replaceChildren(...high.map((a) => el("div", "alarm",
      `HIGH ALARM ${a.patient_id}: ${label(a.condition)}` +
      (a.latched ? " (latched: condition over, acknowledge to clear)" : "") +
      ` — raised ${clock(a.raised_ts_ms)}`)));
  }

  // ------------------------------------------------------------------ acknowledge / resolve
  const TOKEN_KEY = "cardiowatch.ack-token";
  async function act(alertId, action, card) {
    const error = card.querySelector(".error");
    const result = card.querySelector(".result");
    error.textContent = result.textContent = "";
    const token = $("token").value.trim();
    if (!token) {
      error.textContent = "Enter your acknowledgement token first (top of the page).";
      $("token").focus();
      return;
    }
    const buttons = card.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const r = await fetch(`/api/alerts/${encodeURIComponent(alertId)}/${action}`, {
        method: "POST", headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: "{}", cache: "no-store",
      });
      let body = {};
      try { body = await r.json(); } catch (_) { body = {}; }
      if (!r.ok) {
        error.textContent = `Not ${action === "ack" ? "acknowledged" : "resolved"}: HTTP ${r.status}: ` +
          `${body.error || r.statusText}`;
        return;
      }
      result.textContent = `${action === "ack" ? "Acknowledged" : "Resolved"} by ${body.by} (${body.team}).`;
      $("who").textContent = `acting as ${body.by} (${body.team})`;
    } catch (e) {
      error.textContent = `Not sent: ${e}`;
    } finally {
      const a = alerts.get(alertId);
      card.querySelector("button.resolve").disabled = false;
      card.querySelector("button.ack").disabled = !a || a.status !== "open";
    }
  }

  // ------------------------------------------------------------------ alarm tone
  let audio = null;
  let lastBurst = 0;
  function burst() {
    // IEC 60601-1-8's high-priority rhythm, shortened: 3 + 2 pulses
    const t0 = audio.currentTime + 0.05;
    [0, 0.2, 0.4, 0.9, 1.1].forEach((dt) => {
      const o = audio.createOscillator();
      const g = audio.createGain();
      o.frequency.value = 880;
      g.gain.setValueAtTime(0.0001, t0 + dt);
      g.gain.exponentialRampToValueAtTime(0.3, t0 + dt + 0.02);
      g.gain.exponentialRampToValueAtTime(0.0001, t0 + dt + 0.15);
      o.connect(g).connect(audio.destination);
      o.start(t0 + dt);
      o.stop(t0 + dt + 0.16);
    });
  }
  function tickTone() {
    if (!$("tone").checked || unansweredHigh().length === 0) return;
    if (!audio) audio = new (window.AudioContext || window.webkitAudioContext)();
    if (Date.now() - lastBurst >= 5000) {
      lastBurst = Date.now();
      burst();
      const box = $("tone");
      box.dataset.bursts = String(Number(box.dataset.bursts || 0) + 1);  // what has sounded
    }
  }

  // ------------------------------------------------------------------ start
  document.addEventListener("DOMContentLoaded", () => {
    const tok = $("token");
    tok.value = sessionStorage.getItem(TOKEN_KEY) || "";  // kept for this tab only, not on disk
    tok.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, tok.value));
    $("tone").addEventListener("change", () => { lastBurst = 0; tickTone(); });
    connect();
    setInterval(() => { tickPatients(); tickAlerts(); tickTone(); }, 1000);
  });
})();
