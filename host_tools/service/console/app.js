// The fleet console (host_tools/service/console.py): views over the /v1 API, called with the
// session cookie and, on unsafe calls, the X-CSRF-Token header. Every list is paged by the server
// (the page stays fast at 10,000 devices); money stays integer minor units: amounts are read as
// their JSON text (never a float) and formatted by string arithmetic.

const view = document.getElementById("view");
const MONEY = new Set(["amount", "device_amount", "cloud_amount", "charged", "limit"]);
const EXP = { JPY: 0, KRW: 0, VND: 0, CLP: 0, ISK: 0, UGX: 0, BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3 };
let timer = null;          // the current view's refresh
let commands = null;       // /console/commands.json: name -> {args, actuating}
let alertsApi = true;      // false once /v1/alerts answered 404 (a server without alerts)

// ---- helpers -------------------------------------------------------------------------------
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of kids.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function csrf() {
  const m = document.cookie.match(/(?:^|; )edgepay_csrf=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : sessionStorage.getItem("csrf") || "";
}

// JSON with money fields kept as their source text (JSON.parse source access): never a float
export function parse(text) {
  return JSON.parse(text, (k, v, ctx) => (MONEY.has(k) && typeof v === "number" && ctx ? ctx.source : v));
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = csrf();
  const r = await fetch(path, { method, headers, credentials: "same-origin",
                                body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = text;
  try { data = text ? parse(text) : null; } catch { /* not JSON: keep the text */ }
  if (r.status === 401 && path !== "/v1/session") { location.hash = "#/login"; }
  return { status: r.status, ok: r.ok, data, next: nextLink(r.headers.get("link")) };
}

function nextLink(link) {
  const m = link && link.match(/<([^>]+)>;\s*rel="next"/);
  return m ? new URL(m[1], location.origin).searchParams : null;
}

function problem(r) {
  return (r.data && r.data.detail) || `HTTP ${r.status}`;
}

// integer minor units (a string of digits) with the currency's exponent, by string arithmetic
export function money(amount, cur) {
  if (amount === null || amount === undefined) return "";
  let s = String(amount);
  if (!/^-?\d+$/.test(s)) return s;
  const neg = s.startsWith("-");
  if (neg) s = s.slice(1);
  const e = EXP[cur] ?? 2;
  if (e) { s = s.padStart(e + 1, "0"); s = `${s.slice(0, -e)}.${s.slice(-e)}`; }
  return `${neg ? "-" : ""}${s}${cur ? " " + cur : ""}`;
}

const when = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "");
const ago = (t) => (t ? `${Math.max(0, Math.round(Date.now() / 1000 - t))} s ago` : "never");
const qs = (o) => new URLSearchParams(Object.entries(o).filter(([, v]) => v !== "" && v !== null && v !== undefined));
const items = (d) => (Array.isArray(d) ? d : (d && d.items) || []);

function every(ms, fn) {
  clearInterval(timer);
  fn();
  timer = setInterval(fn, ms);
}

async function loadCommands() {
  if (!commands) {
    const r = await api("/console/commands.json");
    if (r.ok) commands = Object.fromEntries(r.data.map((c) => [c.name, c]));
  }
  return commands || {};
}

async function openAlerts(device) {
  if (!alertsApi) return null;
  const r = await api("/v1/alerts?" + qs({ state: "open", device }));
  if (r.status === 404 && !device) { alertsApi = false; return null; }
  return r.ok ? items(r.data) : null;
}

async function deviceAlerts(device) {   // open and resolved, newest first
  if (!alertsApi) return null;
  const r = await api("/v1/alerts?" + qs({ device, limit: 20 }));
  return r.ok ? items(r.data) : null;
}

// ---- a command form: the command's arguments as fields; an actuating one is confirmed first ----
function commandForm(idp, onSend) {
  const sel = h("select", { id: `${idp}-name` });
  const args = h("span", { id: `${idp}-args`, class: "bar" });
  const timeout = h("input", { id: `${idp}-timeout`, type: "number", min: "1", max: "120", value: "10", size: "4" });
  const fill = () => {
    const c = commands[sel.value];
    args.replaceChildren(...(c.args === null
      ? [h("label", {}, "settings (k=v …)", h("input", { name: "settings" }))]
      : c.args.map((a) => h("label", {}, `${a.name}${a.required ? "" : "?"} (${a.type})`,
                             h("input", { name: a.name, "data-type": a.type })))));
  };
  loadCommands().then((cs) => {
    sel.replaceChildren(...Object.keys(cs).map((n) => h("option", { value: n, title: cs[n].help }, n)));
    sel.value = "display";
    fill();
  });
  sel.addEventListener("change", fill);
  const read = () => {
    const out = {};
    for (const i of args.querySelectorAll("input")) {
      const v = i.value.trim();
      if (v === "") continue;
      if (i.name === "settings") {
        for (const kv of v.split(/\s+/)) { const [k, x] = kv.split("="); out[k] = /^\d+$/.test(x) ? Number(x) : x; }
        continue;
      }
      const t = i.dataset.type;
      out[i.name] = t === "uint" && /^\d+$/.test(v) ? Number(v) : t === "bool" ? v === "true" : t === "list" ? JSON.parse(v) : v;
    }
    return out;
  };
  const send = h("button", { id: `${idp}-send`, type: "submit" }, "Send");
  const form = h("form", { id: `${idp}-form` }, h("label", {}, "command", sel), args,
                 h("label", {}, "timeout s", timeout), send);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    let body;
    try { body = { name: sel.value, args: read(), timeout: Number(timeout.value) || 10 }; } catch (e) {
      alert(`bad argument: ${e.message}`);
      return;
    }
    onSend(body, commands[sel.value]);
  });
  return form;
}

// one POST per device; the confirmation is asked once for all of them, before any is sent
async function dispatch(ids, body, spec, report) {
  let confirmed = false;
  const ask = () => confirm(`${body.name} acts on the world (it opens, ends or restarts something). ` +
                            `Send it to ${ids.length} device(s): ${ids.slice(0, 5).join(", ")}${ids.length > 5 ? " …" : ""}?`);
  if (spec && spec.actuating) {
    if (!ask()) { ids.forEach((id) => report(id, { state: "not sent", code: "not confirmed" })); return; }
    confirmed = true;
  }
  const queue = [...ids];
  const worker = async () => {
    for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
      report(id, { state: "pending" });
      const path = `/v1/devices/${encodeURIComponent(id)}/commands`;
      let r = await api(path, { method: "POST", body: { ...body, confirm: confirmed } });
      if (r.status === 428 && !confirmed && ask()) {   // the server knows a command this page did not
        confirmed = true;
        r = await api(path, { method: "POST", body: { ...body, confirm: true } });
      }
      report(id, r.ok ? r.data : { state: `HTTP ${r.status}`, code: problem(r) });
    }
  };
  await Promise.all(Array.from({ length: Math.min(4, ids.length) }, worker));
}

// ---- login ---------------------------------------------------------------------------------
function login() {
  clearInterval(timer);
  document.getElementById("nav").hidden = true;
  const msg = h("p", { id: "login-error", class: "error" });
  const form = h("form", { id: "login" },
    h("label", {}, "user", h("input", { id: "login-user", autocomplete: "username", required: true })),
    h("label", {}, "password", h("input", { id: "login-password", type: "password", autocomplete: "current-password", required: true })),
    h("button", { id: "login-submit", type: "submit" }, "Log in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("/v1/session", { method: "POST", body: { user: form.querySelector("#login-user").value,
                                                                   password: form.querySelector("#login-password").value } });
    if (!r.ok) { msg.textContent = problem(r); return; }
    sessionStorage.setItem("csrf", r.data.csrf);
    location.hash = "#/devices";
  });
  view.replaceChildren(h("section", {}, h("h2", {}, "Log in"), form, msg));
}

// ---- devices -------------------------------------------------------------------------------
const dev = { f: { status: "", kind: "", board: "", online: "", fw: "" }, after: "", back: [], next: null,
              selected: new Set(), results: new Map(), cols: { online: false, fw: false } };

function devices() {
  const field = (k, el) => { el.value = dev.f[k]; el.id = `f-${k}`; el.name = k; return h("label", { id: `l-${k}` }, k, el); };
  const opts = (...vs) => vs.map((v) => h("option", { value: v }, v || "any"));
  const filters = h("form", { id: "filters" },
    field("status", h("select", {}, opts("", "active", "revoked", "decommissioned"))),
    field("kind", h("select", {}, opts("", "gate", "vending", "rental"))),
    field("board", h("input", { size: "10" })),
    field("online", h("select", {}, h("option", { value: "" }, "any"), h("option", { value: "true" }, "online"),
                      h("option", { value: "false" }, "offline / never seen"))),
    field("fw", h("input", { size: "8" })),
    h("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    for (const k of Object.keys(dev.f)) dev.f[k] = filters.elements[k].value.trim();
    dev.after = ""; dev.back = [];
    load();
  });
  const body = h("tbody");
  const head = h("tr");
  const all = h("input", { type: "checkbox", id: "select-page", title: "select this page" });
  const count = h("span", { id: "selected-count" }, "0 selected");
  const status = h("span", { id: "devices-status", class: "muted" });
  const prev = h("button", { id: "prev", type: "button" }, "‹ Prev");
  const next = h("button", { id: "next", type: "button" }, "Next ›");
  const alerts = h("section", { id: "alerts", hidden: true });
  const showCount = () => { count.textContent = `${dev.selected.size} selected`; };
  all.addEventListener("change", () => {
    for (const c of body.querySelectorAll("input.sel")) { c.checked = all.checked; dev.selected[all.checked ? "add" : "delete"](c.value); }
    showCount();
  });
  prev.addEventListener("click", () => { if (dev.back.length) { dev.after = dev.back.pop(); load(); } });
  next.addEventListener("click", () => { if (dev.next) { dev.back.push(dev.after); dev.after = dev.next; load(); } });
  const bulk = commandForm("bulk", (b, spec) => {
    const ids = [...dev.selected];
    if (!ids.length) { alert("select devices first"); return; }
    dispatch(ids, b, spec, (id, out) => { dev.results.set(id, out); paint(lastRows); });
  });
  let lastRows = [];
  const rowCache = new Map();
  const paint = (rows) => {
    lastRows = rows;
    const cols = dev.cols;
    head.replaceChildren(h("th", {}, all), ...["device", "kind", "board", "status"].map((t) => h("th", {}, t)),
      cols.online ? h("th", {}, "online") : null, cols.fw ? h("th", {}, "firmware") : null,
      cols.alerts ? h("th", {}, "alerts") : null, h("th", {}, "last command"));
    // rows are kept per device and rebuilt only when what they show changed: a refresh never
    // takes a checkbox or a link away from under the pointer
    body.replaceChildren(...rows.map((d) => {
      const res = dev.results.get(d.id);
      const on = d.online === true ? "online" : d.online === false ? "offline" : "unknown";
      const alerts = cols.alerts ? String(cols.alerts.get(d.id) || "") : null;
      const sig = JSON.stringify([d, res, alerts, cols.online, cols.fw]);
      let r = rowCache.get(d.id);
      if (r && r.sig === sig) return r.tr;
      if (!r) {
        const box = h("input", { type: "checkbox", class: "sel", value: d.id });
        box.addEventListener("change", () => { dev.selected[box.checked ? "add" : "delete"](d.id); showCount(); });
        r = { tr: h("tr", { "data-id": d.id }), box };
        rowCache.set(d.id, r);
      }
      r.sig = sig;
      r.box.checked = dev.selected.has(d.id);
      r.tr.replaceChildren(
        h("td", {}, r.box), h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.id)),
        h("td", {}, d.kind), h("td", {}, d.board), h("td", { class: d.status }, d.status),
        cols.online ? h("td", { class: on, title: d.since ? `since ${when(d.since)}` : "" }, on) : null,
        cols.fw ? h("td", {}, d.fw ?? "") : null,
        alerts !== null ? h("td", { class: "num alerts" }, alerts) : null,
        h("td", { class: `result ${res ? res.state : ""}`, title: res && res.code ? res.code : "" },
          res ? `${res.name || ""} ${res.state}${res.code && res.state !== "SUCCEEDED" ? ` (${res.code})` : ""}` : ""));
      return r.tr;
    }));
    if (rowCache.size > 500) for (const id of rowCache.keys()) if (!rows.some((d) => d.id === id)) rowCache.delete(id);
    showCount();
  };
  const load = async () => {
    const r = await api("/v1/devices?" + qs({ ...dev.f, after: dev.after, limit: 50 }));
    if (!r.ok) { status.textContent = problem(r); return; }
    const rows = r.data;
    // presence columns appear when the server has them (or when it was asked to filter on them)
    dev.cols.online = rows.some((d) => "online" in d);
    dev.cols.fw = rows.some((d) => "fw" in d);
    for (const k of ["online", "fw"]) document.getElementById(`l-${k}`).hidden = !dev.cols[k] && !dev.f[k];
    const open = await openAlerts();
    dev.cols.alerts = open && new Map();
    if (open) for (const a of open) dev.cols.alerts.set(a.device, (dev.cols.alerts.get(a.device) || 0) + 1);
    alerts.hidden = !open || !open.length;
    if (open) alerts.replaceChildren(h("h2", {}, `Open alerts (${open.length})`), alertTable(open));
    dev.next = r.next && r.next.get("after");
    prev.disabled = !dev.back.length; next.disabled = !dev.next;
    paint(rows);
    status.textContent = `page ${dev.back.length + 1} · ${rows.length} devices · updated ${new Date().toLocaleTimeString()}`;
  };
  view.replaceChildren(alerts, h("section", {}, h("h2", {}, "Devices"), filters,
    h("div", { class: "bar" }, count, h("span", { class: "muted" }, "send to the selection:")), bulk,
    h("table", { id: "devices" }, h("thead", {}, head), body), h("div", { class: "bar" }, prev, next, status)));
  every(3000, load);
}

function alertTable(list) {
  return h("table", { class: "alerts" }, h("tr", {}, ...["device", "kind", "raised", "resolved", "detail"].map((t) => h("th", {}, t))),
    ...list.map((a) => h("tr", {}, h("td", {}, a.device), h("td", {}, a.kind), h("td", {}, when(a.raised_at)),
                         h("td", { class: a.resolved_at ? "" : "offline" }, a.resolved_at ? when(a.resolved_at) : "open"),
                         h("td", {}, detail(a.detail)))));
}

function detail(d) {
  if (d === null || typeof d !== "object") return d ?? "";
  return Object.entries(d).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
}

// ---- one device ----------------------------------------------------------------------------
function plot(title, pts, key) {
  const W = 320, H = 120, P = 28;
  const s = (n, a) => { const e = document.createElementNS("http://www.w3.org/2000/svg", n);
                        for (const [k, v] of Object.entries(a)) e.setAttribute(k, v); return e; };
  const svg = s("svg", { class: "plot", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-key": key });
  const t = s("text", { x: 4, y: 12 }); t.textContent = title; svg.append(t);
  const ps = pts.filter((p) => p[key] !== null && p[key] !== undefined);
  if (!ps.length) { const e = s("text", { x: P, y: H / 2 }); e.textContent = "no heartbeats"; svg.append(e); return svg; }
  const xs = ps.map((p) => p.at), ys = ps.map((p) => p[key]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const X = (x) => P + ((x - x0) / (x1 - x0 || 1)) * (W - P - 6), Y = (y) => H - 16 - ((y - y0) / (y1 - y0 || 1)) * (H - 36);
  svg.append(s("polyline", { points: ps.map((p) => `${X(p.at).toFixed(1)},${Y(p[key]).toFixed(1)}`).join(" ") }));
  const end = ps[ps.length - 1];   // the latest point, also the only one a new device has
  svg.append(s("circle", { cx: X(end.at).toFixed(1), cy: Y(end[key]).toFixed(1), r: 2.5 }));
  for (const [y, v] of y1 === y0 ? [[Y(y0) + 4, y0]] : [[Y(y1) + 4, y1], [Y(y0) + 4, y0]]) {
    const e = s("text", { x: 2, y }); e.textContent = v; svg.append(e);
  }
  const e = s("text", { x: P, y: H - 3 }); e.textContent = `${when(x0).slice(11)} – ${when(x1).slice(11)} (${ps.length} points)`;
  svg.append(e);
  return svg;
}

function sessionTable(id, rows, withDevice = true) {
  const reauth = rows.some((s) => s.reauth !== undefined);   // offline sessions: their re-authorisation
  const cols = [...(withDevice ? ["device"] : []), "sid", "state", "payer", "start", "end", "amount", "reason",
                ...(reauth ? ["reauth"] : [])];
  return h("table", { id }, h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, ...rows.map((s) => h("tr", { "data-sid": s.sid },
      withDevice ? h("td", {}, h("a", { href: `#/device/${encodeURIComponent(s.device)}` }, s.device)) : null,
      h("td", {}, s.sid), h("td", { class: s.state }, s.state + (s.offline ? " (offline)" : "")), h("td", {}, s.payer ?? ""),
      h("td", {}, when(s.t0)), h("td", {}, when(s.t1)), h("td", { class: "num amount" }, money(s.amount, s.cur)),
      h("td", {}, s.reason ?? ""), reauth ? h("td", { class: `reauth ${s.reauth}` }, s.reauth ?? "") : null))));
}

function flagTable(rows) {
  return h("table", { class: "flags" }, h("tr", {}, ...["device", "kind", "sid", "detail", "charged"].map((t) => h("th", {}, t))),
    ...rows.map((f) => h("tr", {}, h("td", {}, f.device), h("td", {}, f.kind), h("td", {}, f.sid ?? ""),
                         h("td", {}, f.detail ?? ""), h("td", { class: "num" }, money(f.charged, f.cur)))));
}

// "600 CNY of 2000 (30%), 1 of 5 sessions (20%)": charged and opened offline, not yet re-authorised
function budgetText(b) {
  const pct = (f) => (f === null || f === undefined ? "" : ` (${Math.round(f * 100)}%)`);
  if (b.total_cap === undefined) return `${b.off_amt} charged, ${b.off_n} sessions (no policy pushed)`;
  return `${b.off_amt} ${b.cur} of ${b.total_cap}${pct(b.amt_used)}, ${b.off_n} of ${b.max_sessions} sessions${pct(b.n_used)}`;
}

function device(id) {
  const info = h("dl", { id: "device-info" });
  const plots = h("div", { class: "plots", id: "plots" });
  const sess = h("div", { id: "device-sessions" });
  const extra = h("div");
  const history = h("div", { id: "device-history" });
  const log = h("ul", { id: "cmd-log" });
  const form = commandForm("cmd", (b, spec) => {
    const li = h("li", {}, `${new Date().toLocaleTimeString()} ${b.name} `);
    const st = h("span", { class: "state pending" }, "pending");
    li.append(st);
    log.prepend(li);
    dispatch([id], b, spec, (_, out) => {
      st.className = `state ${out.state}`;
      st.textContent = out.state + (out.code && out.state !== "SUCCEEDED" ? ` (${out.code})` : "") +
        (out.elapsed_ms !== undefined ? ` in ${out.elapsed_ms} ms` : "");
      if (out.cti) li.title = `command ${out.cti}, seq ${out.seq}`;
    });
  });
  const load = async () => {
    const enc = encodeURIComponent(id);
    const [d, hb, ss, fl, al, ch, up] = await Promise.all([api(`/v1/devices/${enc}`), api(`/v1/devices/${enc}/heartbeats`),
      api(`/v1/sessions?device=${enc}&limit=20`), api(`/v1/flags?device=${enc}`), deviceAlerts(id),
      api(`/v1/devices/${enc}/commands?limit=20`), api(`/v1/devices/${enc}/campaigns?limit=20`)]);
    if (!d.ok) { info.replaceChildren(h("p", { class: "error" }, problem(d))); return; }
    const last = hb.ok ? hb.data.last : null;
    const row = (k, v, cls) => [h("dt", {}, k), h("dd", { class: cls, id: `dd-${k.replace(/\W+/g, "-")}` }, v ?? "")];
    const x = d.data;
    info.replaceChildren(...row("kind", x.kind), ...row("board", x.board), ...row("status", x.status, x.status),
      ...row("key version", x.key_version),
      ...("online" in x ? row("online", x.online ? "online" : "offline", x.online ? "online" : "offline") : []),
      ...("since" in x ? row("since", when(x.since)) : []), ...("fw" in x ? row("firmware", x.fw) : []),
      ...row("last heartbeat", last ? `${when(last.at)} (${ago(last.at)})` : "none"),
      ...(last ? [...row("heap", last.heap), ...row("RSSI", last.rssi), ...row("journal depth", last.jdepth),
                  ...row("uptime s", last.uptime)] : []),
      ...(x.offline_budget ? row("offline budget used", budgetText(x.offline_budget)) : []));
    const pts = hb.ok ? hb.data.points : [];
    plots.replaceChildren(plot("heap (bytes, avg)", pts, "heap_avg"), plot("RSSI (dBm)", pts, "rssi_max"),
                          plot("journal depth (max)", pts, "jdepth_max"));
    sess.replaceChildren(ss.ok ? sessionTable("sessions", ss.data, false) : h("p", { class: "muted" }, problem(ss)));
    history.replaceChildren(
      ...(ch.ok ? [h("h2", {}, "Command history"), h("table", { id: "device-commands" },
        h("tr", {}, ...["when", "command", "state", "by"].map((t) => h("th", {}, t))),
        ...ch.data.map((c) => h("tr", {}, h("td", {}, when(c.at)), h("td", {}, c.name ?? ""),
          h("td", { class: `state ${c.state ?? ""}` }, c.state ?? `HTTP ${c.http}`), h("td", {}, c.by ?? ""))))] : []),
      ...(up.ok && up.data.length ? [h("h2", {}, "Updates and campaigns"), h("table", { id: "device-campaigns" },
        h("tr", {}, ...["campaign", "what", "state", "reason", "finished"].map((t) => h("th", {}, t))),
        ...up.data.map((c) => h("tr", {}, h("td", {}, c.campaign), h("td", {}, `${c.action}: ${c.what ?? ""}`),
          h("td", { class: `state ${c.state}` }, c.state), h("td", {}, c.reason ?? ""),
          h("td", {}, c.finished_at ? when(c.finished_at) : ""))))] : []));
    extra.replaceChildren(...(fl.ok && fl.data.length ? [h("h2", {}, "Flags"), h("div", { id: "device-flags" }, flagTable(fl.data))] : []),
                          ...(al && al.length ? [h("h2", {}, "Alerts"), h("div", { id: "device-alerts" }, alertTable(al))] : []));
  };
  view.replaceChildren(
    h("section", {}, h("h2", { id: "device-title" }, `Device ${id}`), info),
    h("section", {}, h("h2", {}, "Heartbeats, last 24 h"), plots),
    h("section", {}, h("h2", {}, "Send a command"), form,
      h("p", { class: "muted" }, "Commands sent from this page, newest first, with their final state:"), log, history),
    h("section", {}, h("h2", {}, "Sessions"), sess, extra));
  every(5000, load);
}

// ---- sessions and flags --------------------------------------------------------------------
const ses = { f: { device: "", payer: "" }, before: { open: "", closed: "", offline: "" } };

function sessions() {
  const filters = h("form", { id: "session-filters" },
    ...Object.keys(ses.f).map((k) => h("label", {}, k, h("input", { name: k, value: ses.f[k], size: "14" }))),
    h("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    for (const k of Object.keys(ses.f)) ses.f[k] = filters.elements[k].value.trim();
    ses.before = { open: "", closed: "", offline: "" };
    load();
  });
  const part = (state, title) => {
    const box = h("div", { id: `sessions-${state}` });
    const more = h("button", { type: "button" }, "Older ›");
    const first = h("button", { type: "button" }, "« Newest");
    first.addEventListener("click", () => { ses.before[state] = ""; load(); });
    return { state, box, more, first, el: h("section", {}, h("h2", {}, title), box, h("div", { class: "bar" }, first, more)) };
  };
  // offline: sessions a device opened while offline and still open, with where their
  // re-authorisation stands (granted, refused, awaiting)
  const parts = [part("open", "In progress"), part("offline", "Opened offline: re-authorisation"),
                 part("closed", "Settled")];
  const query = (state) => (state === "offline" ? { state: "open", offline: "true" } : { state });
  const flags = h("section", { id: "flags" });
  const load = async () => {
    for (const p of parts) {
      const r = await api("/v1/sessions?" + qs({ ...ses.f, ...query(p.state), before: ses.before[p.state], limit: 50 }));
      if (!r.ok) { p.box.replaceChildren(h("p", { class: "error" }, problem(r))); continue; }
      const totals = {};
      for (const s of r.data) if (s.amount !== null && s.cur) totals[s.cur] = (totals[s.cur] || 0n) + BigInt(s.amount);
      p.box.replaceChildren(sessionTable(`table-${p.state}`, r.data),
        h("p", { class: "muted totals" }, `${r.data.length} on this page` +
          Object.entries(totals).map(([c, v]) => ` · ${money(v, c)}`).join("")));
      const nxt = r.next && r.next.get("before");
      p.more.disabled = !nxt;
      p.more.onclick = () => { ses.before[p.state] = nxt; load(); };
    }
    const fl = await api("/v1/flags?" + qs({ device: ses.f.device }));
    flags.replaceChildren(h("h2", {}, "Flags"), fl.ok ? flagTable(fl.data) : h("p", { class: "muted" }, problem(fl)));
    await recon.load();
  };
  const recon = reconciliation();
  view.replaceChildren(h("section", {}, h("h2", {}, "Sessions"), filters), ...parts.map((p) => p.el), revenue(),
                       recon.el, flags);
  every(5000, load);
}

// revenue per hour and device over the last 24 h, from the finance export (on demand: a site's
// day can be many sessions); sums of integer minor units in BigInt
function revenue() {
  const site = h("input", { id: "rev-site", size: "12", placeholder: "site (id prefix)" });
  const go = h("button", { id: "rev-go", type: "button" }, "Revenue per hour, last 24 h");
  const out = h("div", { id: "revenue-table" });
  go.addEventListener("click", async () => {
    const now = Math.floor(Date.now() / 1000);
    const r = await api("/v1/ledger/export?" + qs({ from: now - 86400, to: now + 1, site: site.value.trim() }));
    if (!r.ok) { out.replaceChildren(h("p", { class: "error" }, problem(r))); return; }
    const by = new Map(), all = new Map();
    for (const s of r.data.sessions) {
      const k = [s.device, s.t1.slice(0, 13), s.currency].join("|");
      by.set(k, (by.get(k) || 0n) + BigInt(s.amount));
      all.set(s.currency, (all.get(s.currency) || 0n) + BigInt(s.amount));
    }
    const keys = [...by.keys()].sort((a, b) => { const [da, ha] = a.split("|"), [db, hb] = b.split("|");
                                                  return da < db ? -1 : da > db ? 1 : ha < hb ? 1 : -1; });
    out.replaceChildren(h("table", {}, h("tr", {}, ...["device", "hour (UTC)", "revenue"].map((c) => h("th", {}, c))),
      ...keys.map((k) => { const [d, hr, cur] = k.split("|");
                           return h("tr", {}, h("td", {}, d), h("td", {}, `${hr.replace("T", " ")}:00`),
                                    h("td", { class: "num" }, money(by.get(k), cur))); })),
      h("p", { class: "muted" }, `${r.data.count} settled sessions` +
        [...all].map(([c, v]) => ` · ${money(v, c)}`).join("")));
  });
  return h("section", {}, h("h2", {}, "Revenue"), h("div", { class: "bar" }, site, go), out);
}

// where each device of a site stands with its money (GET /v1/reconciliation): the site's totals,
// then its devices that are not reconciled first (mismatch, flagged, pending, unknown), then the rest
function reconciliation() {
  const site = h("input", { id: "recon-site", size: "12", placeholder: "site (id prefix)" });
  const out = h("div", { id: "recon-table" });
  const order = ["mismatch", "flagged", "pending", "unknown", "reconciled"];
  const load = async () => {
    const r = await api("/v1/reconciliation?" + qs({ site: site.value.trim(), limit: 1000 }));
    if (!r.ok) { out.replaceChildren(h("p", { class: "error" }, problem(r))); return; }
    const t = r.data.totals;
    const rows = [...r.data.devices].sort((a, b) => order.indexOf(a.status) - order.indexOf(b.status)
                                                    || (a.device < b.device ? -1 : 1));
    out.replaceChildren(
      h("p", { class: "totals", id: "recon-totals" }, `${t.devices} devices: ` +
        order.map((s) => `${t[s]} ${s}`).join(" · ")),
      h("table", {}, h("tr", {}, ...["device", "status", "why", "records", "last seq", "open"].map((c) => h("th", {}, c))),
        ...rows.map((d) => h("tr", { "data-id": d.device, class: `recon-${d.status}` },
          h("td", {}, d.device), h("td", { class: "status" }, d.status), h("td", {}, d.why),
          h("td", { class: "num" }, String(d.records)), h("td", { class: "num" }, d.last_seq === null ? "" : String(d.last_seq)),
          h("td", { class: "num" }, String(d.open_sessions))))));
  };
  site.addEventListener("change", load);
  return { load, el: h("section", {}, h("h2", {}, "Reconciliation"), h("div", { class: "bar" }, site), out) };
}

// ---- the router ----------------------------------------------------------------------------
async function route() {
  const [, page, arg] = location.hash.split("/");
  if (page === "login") return login();
  const me = await api("/v1/me");
  if (!me.ok) return login();
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = `${me.data.user} (${me.data.role})`;
  if (page === "device" && arg) return device(decodeURIComponent(arg));
  if (page === "sessions") return sessions();
  if (page !== "devices") { location.hash = "#/devices"; return; }
  devices();
}

document.getElementById("logout").addEventListener("click", async () => {
  await api("/v1/session", { method: "DELETE" });
  sessionStorage.removeItem("csrf");
  location.hash = "#/login";
});
window.addEventListener("hashchange", route);
route();
