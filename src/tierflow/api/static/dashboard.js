// tierflow's live dashboard: polls GET /dashboard/state every second and drives the deployment.
// Plain JavaScript, no dependencies; every value from the server goes in as text, never as HTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const KEY_STORAGE = "tierflow_key";
  const TIER_ORDER = ["device", "edge", "cloud"];

  let apiKey = null;
  let polling = false;
  let pollTimer = null;
  let lastState = null;
  let lastContextId = null;
  const errors = { poll: "", action: "" };

  // ---- small helpers ---------------------------------------------------------------------

  const byId = (id) => document.getElementById(id);
  // an element of a row that may not be in the document yet
  const inRow = (row, id) => row.querySelector(`[id="${id}"]`);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else if (name in node) node[name] = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const dash = "\u2013";

  function fmtNum(x, digits) {
    if (!isNum(x)) return dash;
    return x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  // a duration given in seconds, shown in ms below a second
  function fmtSeconds(s) {
    if (!isNum(s)) return dash;
    if (s === 0) return "0 ms";
    if (Math.abs(s) < 0.001) return `${fmtNum(s * 1e6, 0)} \u00b5s`;
    if (Math.abs(s) < 1) return `${fmtNum(s * 1000, s < 0.01 ? 2 : 1)} ms`;
    return `${fmtNum(s, 2)} s`;
  }

  const fmtMs = (ms) => (isNum(ms) ? `${fmtNum(ms, ms < 10 ? 2 : 1)} ms` : dash);
  const fmtMbps = (m) => (isNum(m) ? `${fmtNum(m, m < 10 ? 2 : 1)} Mbit/s` : dash);

  function fmtBytes(b) {
    if (!isNum(b)) return dash;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(b) >= 1024 && i < units.length - 1) {
      b /= 1024;
      i += 1;
    }
    return `${fmtNum(b, i === 0 ? 0 : 1)} ${units[i]}`;
  }

  function fmtDuration(s) {
    if (!isNum(s)) return dash;
    if (s < 60) return `${fmtNum(s, 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function fmtClock(epochS) {
    if (!isNum(epochS)) return dash;
    return new Date(epochS * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  function tierNames(obj) {
    const names = Object.keys(obj || {});
    return names.sort((a, b) => {
      const ia = TIER_ORDER.indexOf(a), ib = TIER_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
  }

  function fmtSpans(spans) {
    const names = tierNames(spans).filter((t) => spans[t]);
    if (!names.length) return dash;
    return names.map((t) => `${t} ${spans[t]}`).join(" \u00b7 ");
  }

  // "2-4" -> [2, 4]; null when it is not a span
  function parseSpan(span) {
    const m = /^(\d+)\s*-\s*(\d+)$/.exec(String(span || "").trim()) || /^(\d+)$/.exec(String(span || "").trim());
    if (!m) return null;
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    return [Math.min(a, b), Math.max(a, b)];
  }

  function tierTag(tier) {
    return el("span", { class: `tier-tag tier-${tier}`, text: tier });
  }

  function emptyRow(tbody, columns, text) {
    tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colSpan: columns, text })));
  }

  // ---- errors ---------------------------------------------------------------------------

  function renderErrors() {
    const text = [errors.action, errors.poll].filter(Boolean).join(" \u2014 ");
    byId("error").textContent = text;
    byId("error-box").hidden = !text;
  }

  function setError(source, message) {
    errors[source] = message || "";
    renderErrors();
  }

  // the detail of a non-2xx answer: {"error": ..., "detail": ...}, or whatever the body says
  async function failure(response, what) {
    let detail = "";
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") detail = body.detail;
      else if (body && body.detail !== undefined) detail = JSON.stringify(body.detail);
      if (body && body.error) detail = detail ? `${body.error}: ${detail}` : String(body.error);
    } catch (_) {
      detail = response.statusText || "";
    }
    if (response.status === 401) needKey("the API key was refused");
    return `${what}: ${response.status}${detail ? " " + detail : ""}`;
  }

  // ---- the API key ------------------------------------------------------------------------

  function loadKey() {
    const hash = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    const fromHash = hash.get("key");
    if (fromHash) {
      try { localStorage.setItem(KEY_STORAGE, fromHash); } catch (_) { /* storage off: keep it in memory */ }
      // keep the key out of the address bar (and of screenshots, history and shoulder surfing)
      hash.delete("key");
      const rest = hash.toString();
      history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? "#" + rest : ""));
      return fromHash;
    }
    try { return localStorage.getItem(KEY_STORAGE); } catch (_) { return null; }
  }

  function needKey(reason) {
    byId("key-form").hidden = false;
    byId("key-change").hidden = true;
    setConn("nokey", reason || "no API key");
    byId("key-input").focus();
  }

  function useKey(key) {
    apiKey = key;
    try { localStorage.setItem(KEY_STORAGE, key); } catch (_) { /* memory only */ }
    byId("key-form").hidden = true;
    byId("key-change").hidden = false;
    setError("poll", "");
    schedulePoll(0);
  }

  function authHeaders(extra) {
    return Object.assign({ Authorization: `Bearer ${apiKey}` }, extra || {});
  }

  function setConn(state, text) {
    const conn = byId("conn");
    conn.dataset.state = state;
    conn.textContent = text;
  }

  // ---- polling ----------------------------------------------------------------------------

  function schedulePoll(delay) {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, delay);
  }

  async function poll() {
    pollTimer = null;
    if (!apiKey) return;
    if (polling) return schedulePoll(POLL_MS);
    polling = true;
    try {
      const response = await fetch("/dashboard/state", { headers: authHeaders(), cache: "no-store" });
      if (!response.ok) {
        setError("poll", await failure(response, "state"));
        if (response.status === 401) return; // wait for another key
        setConn("error", "state failed");
      } else {
        const state = await response.json();
        lastState = state;
        render(state);
        setError("poll", "");
        setConn("live", "live");
        byId("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB", { hour12: false })}`;
      }
    } catch (exc) {
      setError("poll", `the deployment does not answer (${exc.message || exc})`);
      setConn("error", "disconnected");
    } finally {
      polling = false;
    }
    if (apiKey) schedulePoll(POLL_MS);
  }

  function render(state) {
    byId("model").textContent = state.model || dash;
    byId("image-button").disabled = state.images === false || imageBusy;
    byId("image-button").title = state.images === false ? "this deployment has no image model (--image-model)" : "";
    renderTiers(state.tiers || {}, (state.matrix && state.matrix.tiers) || {}, (state.controls && state.controls.tiers) || []);
    renderLinks(state.links || {}, state.controls || {});
    renderPlan(state.plan || null);
    renderDevice(state.device || {});
    renderMatrix(state.matrix || null);
    renderRecent(state.recent || []);
    renderContexts(state.contexts || []);
  }

  // ---- tiers ------------------------------------------------------------------------------

  const pendingTier = {};

  // up: the node answers; down: its process is gone or it cannot be reached
  function tierStatus(info) {
    const proc = info.process;
    if (proc && proc.alive === false) return "down";
    if (info.available) return "up";
    if (proc && proc.alive) return "starting";
    return "down";
  }

  function renderTiers(tiers, loads, controllable) {
    const tbody = byId("tiers");
    const names = tierNames(tiers);
    if (!names.length) return emptyRow(tbody, 8, "no tiers reported");
    const rows = [];
    for (const name of names) {
      const info = tiers[name] || {};
      let row = byId(`tier-${name}`);
      if (!row) row = buildTierRow(name, controllable.includes(name));
      const status = tierStatus(info);
      row.dataset.status = status;
      const statusCell = inRow(row, `tier-${name}-status`);
      statusCell.textContent = pendingTier[name] ? `${status} (${pendingTier[name]}\u2026)` : status;
      statusCell.className = `status status-${status}`;
      row.querySelector(".c-layers").textContent = info.layers || "none";
      row.querySelector(".c-layer-ms").textContent = fmtMs(info.layer_ms);
      const load = loads[name] || {};
      row.querySelector(".c-load").textContent = isNum(load.load) ? `${fmtNum(load.load * 100, 0)} %` : dash;
      row.querySelector(".c-memory").textContent = isNum(info.memory_mib) ? `${fmtNum(info.memory_mib, 0)} MiB` : dash;
      const proc = info.process;
      row.querySelector(".c-process").textContent = proc ? `pid ${proc.pid}${proc.alive ? "" : " (exited)"}` : dash;
      const down = inRow(row, `tier-${name}-down`);
      const up = inRow(row, `tier-${name}-up`);
      if (down) down.disabled = Boolean(pendingTier[name]) || status === "down";
      if (up) up.disabled = Boolean(pendingTier[name]) || status === "up";
      rows.push(row);
    }
    tbody.replaceChildren(...rows);
  }

  function buildTierRow(name, controllable) {
    const actions = el("td", { class: "c-actions" });
    if (controllable) {
      actions.append(
        el("button", { type: "button", id: `tier-${name}-down`, class: "small danger", text: "take down",
                       onclick: () => tierAction(name, "down") }),
        el("button", { type: "button", id: `tier-${name}-up`, class: "small", text: "bring up",
                       onclick: () => tierAction(name, "up") }),
      );
    }
    return el("tr", { id: `tier-${name}`, "data-tier": name },
      el("th", { scope: "row" }, tierTag(name)),
      el("td", { id: `tier-${name}-status`, class: "status" }),
      el("td", { class: "c-layers mono" }),
      el("td", { class: "c-layer-ms num" }),
      el("td", { class: "c-load num" }),
      el("td", { class: "c-memory num" }),
      el("td", { class: "c-process mono nowrap" }),
      actions,
    );
  }

  async function tierAction(name, action) {
    pendingTier[name] = action === "down" ? "stopping" : "starting";
    if (lastState) renderTiers(lastState.tiers || {}, (lastState.matrix && lastState.matrix.tiers) || {}, (lastState.controls && lastState.controls.tiers) || []);
    try {
      const response = await fetch(`/deployment/tiers/${encodeURIComponent(name)}/${action}`, {
        method: "POST", headers: authHeaders(),
      });
      if (!response.ok) {
        setError("action", await failure(response, `${name} ${action}`));
      } else {
        setError("action", "");
        const body = await response.json();
        if (lastState && body.tiers) lastState.tiers = body.tiers;
      }
    } catch (exc) {
      setError("action", `${name} ${action}: ${exc.message || exc}`);
    } finally {
      delete pendingTier[name];
      if (lastState) renderTiers(lastState.tiers || {}, (lastState.matrix && lastState.matrix.tiers) || {}, (lastState.controls && lastState.controls.tiers) || []);
      schedulePoll(0);
    }
  }

  // ---- links ------------------------------------------------------------------------------

  // what each link carried since the previous poll, as a rate: the bandwidth in use, measured
  const carried = {};
  function measuredRate(name, link) {
    if (!isNum(link.bytes_up) || !isNum(link.bytes_down)) return "";
    const now = performance.now() / 1000;
    const before = carried[name];
    if (before && now - before.t < 0.5) return before.text; // drawn again within one poll
    let text = "";
    if (before && link.bytes_up >= before.up && link.bytes_down >= before.down) {
      const dt = now - before.t;
      const up = ((link.bytes_up - before.up) * 8) / dt / 1e6;
      const down = ((link.bytes_down - before.down) * 8) / dt / 1e6;
      text = `\nnow ${fmtNum(up, 2)} / ${fmtNum(down, 2)} Mbit/s`;
    }
    carried[name] = { t: now, up: link.bytes_up, down: link.bytes_down, text };
    return text;
  }

  function renderLinks(links, controls) {
    const tbody = byId("links");
    const names = Object.keys(links); // in the server's order
    if (!names.length) return emptyRow(tbody, 6, "no emulated links in this deployment");
    const profiles = controls.profiles || [];
    const rows = [];
    for (const name of names) {
      const link = links[name] || {};
      let row = byId(`link-${name}`);
      if (!row) row = buildLinkRow(name, link.profile, profiles);
      inRow(row, `link-${name}-profile`).textContent = link.profile || dash;
      row.querySelector(".c-bw").textContent = isNum(link.down_mbps) && isNum(link.up_mbps)
        ? `${fmtNum(link.down_mbps, 2)} / ${fmtNum(link.up_mbps, 2)} Mbit/s`
        : `${fmtMbps(link.down_mbps)} / ${fmtMbps(link.up_mbps)}`;
      row.querySelector(".c-rtt").textContent = isNum(link.measured_rtt_ms)
        ? `${fmtMs(link.rtt_ms)} (${fmtMs(link.measured_rtt_ms)})` : fmtMs(link.rtt_ms);
      row.querySelector(".c-rtt").title = "the profile's round trip (the one measured on the link)";
      row.querySelector(".c-bytes").textContent =
        `${fmtBytes(link.bytes_up)} / ${fmtBytes(link.bytes_down)}${measuredRate(name, link)}`;
      row.querySelector(".c-bytes").title = "bytes the emulator carried; now: the rate measured between two polls";
      const select = inRow(row, `link-${name}-select`);
      syncOptions(select, profiles, link.profile);
      const enabled = controls.links !== false && profiles.length > 0;
      select.disabled = !enabled || row.dataset.pending === "1";
      inRow(row, `link-${name}-apply`).disabled = !enabled || row.dataset.pending === "1";
      rows.push(row);
    }
    tbody.replaceChildren(...rows);
  }

  // the known profiles, and the link's own when it is none of them (the backhaul's, a trace's)
  function profileOptions(profiles, current) {
    return current && !profiles.includes(current) ? [...profiles, current] : profiles;
  }

  // keep the options in step with the known profiles, and the select on the link's profile
  // unless the user picked another one that is not applied yet
  function syncOptions(select, profiles, current) {
    const wanted = profileOptions(profiles, current);
    const have = Array.from(select.options).map((o) => o.value);
    const chosen = select.dataset.dirty === "1" ? select.value : current;
    if (have.join("\n") !== wanted.join("\n")) {
      select.replaceChildren(...wanted.map((p) => el("option", { value: p, text: p })));
    }
    if (wanted.includes(chosen) && select.value !== chosen) select.value = chosen;
  }

  function buildLinkRow(name, current, profiles) {
    const select = el("select", { id: `link-${name}-select`, "aria-label": `profile for ${name}`,
                                  onchange: () => { select.dataset.dirty = "1"; } });
    syncOptions(select, profiles, current);
    return el("tr", { id: `link-${name}`, "data-link": name },
      el("th", { scope: "row", class: "mono nowrap", text: name }),
      el("td", { id: `link-${name}-profile`, class: "profile" }),
      el("td", { class: "c-bw num" }),
      el("td", { class: "c-rtt num" }),
      el("td", { class: "c-bytes num" }),
      el("td", { class: "c-actions" }, select,
        el("button", { type: "button", id: `link-${name}-apply`, class: "small", text: "apply",
                       onclick: () => applyLink(name) })),
    );
  }

  async function applyLink(name) {
    const row = byId(`link-${name}`);
    const profile = byId(`link-${name}-select`).value;
    row.dataset.pending = "1";
    byId(`link-${name}-apply`).disabled = true;
    try {
      const response = await fetch(`/deployment/links/${encodeURIComponent(name)}`, {
        method: "PUT",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify({ profile }),
      });
      if (!response.ok) {
        setError("action", await failure(response, `link ${name}`));
      } else {
        setError("action", "");
        byId(`link-${name}-select`).dataset.dirty = "";
        const body = await response.json();
        if (lastState && body.links) {
          lastState.links = body.links;
        }
      }
    } catch (exc) {
      setError("action", `link ${name}: ${exc.message || exc}`);
    } finally {
      row.dataset.pending = "";
      if (lastState) renderLinks(lastState.links || {}, lastState.controls || {});
      schedulePoll(0);
    }
  }

  // ---- the layer plan ---------------------------------------------------------------------

  function spanStrip(spans) {
    const owner = [];
    for (const tier of tierNames(spans)) {
      const range = parseSpan(spans[tier]);
      if (!range) continue;
      for (let i = range[0]; i <= range[1]; i += 1) owner[i] = tier;
    }
    const strip = el("div", { class: "strip" });
    for (let i = 0; i < owner.length; i += 1) {
      const tier = owner[i];
      strip.append(el("span", { class: `layer ${tier ? "tier-" + tier : "unplaced"}`, title: `layer ${i}: ${tier || "nowhere"}`, text: String(i) }));
    }
    return strip;
  }

  function renderPlan(plan) {
    const box = byId("plan");
    if (!plan || !plan.spans) {
      box.replaceChildren(el("p", { class: "muted", text: "no layer plan (not a language model?)" }));
      return;
    }
    const spans = plan.spans;
    const list = el("ul", { class: "spans" });
    for (const tier of tierNames(spans)) {
      list.append(el("li", { id: `plan-${tier}` }, tierTag(tier), " ", el("span", { class: "mono", text: spans[tier] ? `layers ${spans[tier]}` : "no layers" })));
    }
    const children = [
      el("div", { class: "big" }, el("span", { id: "plan-token-ms", text: fmtMs(plan.token_ms) }), el("span", { class: "unit", text: " predicted per token" })),
      spanStrip(spans),
      list,
    ];
    const alts = plan.alternatives || [];
    if (alts.length) {
      const tbody = el("tbody");
      for (const alt of alts.slice(0, 6)) {
        tbody.append(el("tr", {}, el("td", { class: "mono", text: fmtSpans(alt.spans || {}) }), el("td", { class: "num", text: fmtMs(alt.token_ms) })));
      }
      children.push(el("details", { class: "alts" },
        el("summary", { text: `${alts.length} alternative${alts.length === 1 ? "" : "s"}` }),
        el("table", { class: "data" }, el("thead", {}, el("tr", {}, el("th", { text: "spans" }), el("th", { text: "per token" }))), tbody)));
    }
    const open = box.querySelector("details.alts");
    box.replaceChildren(...children);
    if (open && open.open) { const d = box.querySelector("details.alts"); if (d) d.open = true; }
  }

  // ---- device conditions ------------------------------------------------------------------

  function renderDevice(device) {
    const box = byId("device");
    const battery = device.battery;
    let batteryText = "unknown";
    if (battery && isNum(battery.level)) batteryText = `${fmtNum(battery.level, 0)} %${battery.charging ? ", charging" : ", on battery"}`;
    const metered = device.metered === true ? "yes" : device.metered === false ? "no" : "unknown";
    const network = device.network || "unknown";
    box.replaceChildren(
      el("dt", { text: "battery" }), el("dd", { id: "device-battery", text: batteryText }),
      el("dt", { text: "metered network" }), el("dd", { id: "device-metered", text: metered }),
      el("dt", { text: "access network" }), el("dd", { id: "device-network", text: network }),
    );
  }

  // ---- the task-resource matrix -----------------------------------------------------------

  function renderMatrix(matrix) {
    const table = byId("matrix");
    byId("matrix-alpha").textContent = matrix && isNum(matrix.alpha) ? `learning rate \u03b1 = ${matrix.alpha}` : "";
    if (!matrix || !matrix.tasks || !Object.keys(matrix.tasks).length) {
      table.replaceChildren(el("tbody", {}, el("tr", { class: "empty" }, el("td", { text: "no matrix" }))));
      return;
    }
    const tasks = Object.keys(matrix.tasks);
    const tierSet = {};
    for (const t of Object.keys(matrix.tiers || {})) tierSet[t] = true;
    for (const task of tasks) for (const t of Object.keys(matrix.tasks[task] || {})) tierSet[t] = true;
    const tiers = tierNames(tierSet);
    const units = matrix.units || {};
    const head = el("tr", {}, el("th", { text: "task" }), el("th", { text: "unit" }));
    for (const tier of tiers) {
      const info = (matrix.tiers || {})[tier] || {};
      const note = info.available === false ? " (unavailable)" : "";
      head.append(el("th", { class: info.available === false ? "off" : "" }, tierTag(tier), note));
    }
    const tbody = el("tbody");
    for (const task of tasks) {
      const unit = units[task] || units.other || "s";
      const per = unit.includes("/") ? "/" + unit.split("/")[1] : "";
      const row = el("tr", { "data-task": task }, el("th", { scope: "row", class: "mono", text: task }), el("td", { class: "muted", text: unit }));
      for (const tier of tiers) {
        const cell = (matrix.tasks[task] || {})[tier];
        if (!cell) { row.append(el("td", { class: "muted", text: dash })); continue; }
        const feasible = cell.feasible !== false;
        const known = isNum(cell.expected_s);
        const title = `expected ${fmtSeconds(cell.expected_s)}${per}; prior ${fmtSeconds(cell.prior_s)}; ` +
          `measured mean ${fmtSeconds(cell.mean_s)}; ${cell.count || 0} observation(s)` +
          (feasible ? "" : known ? "; not feasible now (tier unavailable)" : "; nothing known yet");
        const classes = ["cell", feasible ? "" : "infeasible", known ? "" : "unknown", cell.count ? "observed" : ""];
        row.append(el("td", { class: classes.filter(Boolean).join(" "), title, id: `matrix-${task}-${tier}` },
          el("span", { class: "num", text: known ? fmtSeconds(cell.expected_s) + per : "no estimate" }),
          el("span", { class: "count", text: ` n=${cell.count || 0}` }),
          known && !feasible ? el("span", { class: "flag", text: " not feasible" }) : null));
      }
      tbody.append(row);
    }
    const rules = matrix.rules || {};
    const ruleText = Object.entries(rules).filter(([, v]) => v && Object.keys(v).length).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("; ");
    const children = [el("thead", {}, head), tbody];
    if (ruleText) children.push(el("caption", { text: `rules \u2014 ${ruleText}` }));
    table.replaceChildren(...children);
  }

  // ---- recent requests --------------------------------------------------------------------

  function fmtEvents(events) {
    if (!events || !events.length) return "";
    return events.map((e) => {
      const name = e.event || "event";
      if (e.lost) return `${name} (lost ${e.lost})`;
      if (e.tier) return `${name} (${e.tier})`;
      return name;
    }).join(", ");
  }

  function fmtCompute(compute) {
    if (isNum(compute)) return fmtSeconds(compute);
    const names = tierNames(compute || {});
    if (!names.length) return dash;
    return names.map((t) => `${t} ${fmtSeconds(compute[t])}`).join(", ");
  }

  function fmtSpeed(r) {
    const speed = isNum(r.tokens_per_s) ? `${fmtNum(r.tokens_per_s, 1)} tok/s` : "";
    const tokens = isNum(r.tokens) ? `${r.tokens} token${r.tokens === 1 ? "" : "s"}` : "";
    return [speed, tokens && speed ? `(${tokens})` : tokens].filter(Boolean).join(" ") || dash;
  }

  function renderRecent(recent) {
    const tbody = byId("recent");
    if (!recent.length) return emptyRow(tbody, 11, "no requests yet");
    const rows = recent.map((r, i) => el("tr", { "data-kind": r.kind || "", "data-tier": r.tier || "", id: `recent-${i}` },
      el("td", { class: "mono", text: fmtClock(r.at) }),
      el("td", { class: "kind", text: r.kind || dash }),
      el("td", {}, r.tier ? tierTag(r.tier) : dash),
      el("td", { class: "mono", text: fmtSpans(r.spans || {}) }),
      el("td", { class: "num", text: fmtSeconds(r.wall_s) }),
      el("td", { class: "num", text: fmtSeconds(r.ttft_s) }),
      el("td", { class: "num", text: fmtSpeed(r) }),
      el("td", { class: "num", text: isNum(r.resolution) ? `${r.resolution} px` : dash }),
      el("td", { class: "num small-text", text: fmtCompute(r.compute_s) }),
      el("td", { class: "events", text: fmtEvents(r.events) }),
      el("td", { class: "reason", text: r.reason || dash, title: r.reason || "not routed: the plan in force" }),
    ));
    tbody.replaceChildren(...rows);
  }

  // ---- contexts ---------------------------------------------------------------------------

  function renderContexts(contexts) {
    const tbody = byId("contexts");
    if (!contexts.length) return emptyRow(tbody, 4, "no contexts");
    const rows = contexts.map((c) => {
      const spans = c.spans || {};
      const holders = el("td", { class: "holders" });
      const names = tierNames(spans).filter((t) => spans[t]);
      if (!names.length) holders.append(dash);
      for (const t of names) holders.append(el("span", { class: "holder" }, tierTag(t), el("span", { class: "mono", text: ` ${spans[t]}` })));
      return el("tr", { "data-context": c.context_id || "" },
        el("td", { class: "mono", text: c.context_id || dash, title: c.context_id || "" }),
        el("td", { class: "num", text: isNum(c.tokens) ? String(c.tokens) : dash }),
        el("td", { class: "num", text: fmtDuration(c.expires_in) }),
        holders);
    });
    tbody.replaceChildren(...rows);
  }

  // ---- text generation (server-sent events over fetch) ------------------------------------

  let textBusy = false;
  let imageBusy = false;

  function parseSse(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return null;
    let payload;
    try { payload = JSON.parse(data.join("\n")); } catch (_) { payload = data.join("\n"); }
    return { event, data: payload };
  }

  function routeSummary(route) {
    if (!route) return "";
    const parts = [];
    if (route.spans) parts.push(`spans ${fmtSpans(route.spans)}`);
    if (isNum(route.ttft_s)) parts.push(`first token ${fmtSeconds(route.ttft_s)}`);
    if (isNum(route.tokens_per_s)) parts.push(`${fmtNum(route.tokens_per_s, 1)} tok/s`);
    if (route.events && route.events.length) parts.push(`events: ${fmtEvents(route.events)}`);
    if (route.decision && route.decision.reason) parts.push(`router: ${route.decision.reason}`);
    return parts.join(" \u00b7 ");
  }

  async function generateText() {
    if (textBusy || !apiKey) return;
    const prompt = byId("prompt").value;
    if (!prompt) { setError("action", "generate: the prompt is empty"); return; }
    const body = {
      prompt,
      max_tokens: Number(byId("max-tokens").value) || 32,
      temperature: Number(byId("temperature").value) || 0,
      stream: true,
    };
    if (byId("continue").checked && lastContextId) body.context_id = lastContextId;
    textBusy = true;
    const button = byId("generate");
    button.disabled = true;
    const output = byId("output");
    const meta = byId("output-route");
    output.textContent = "";
    output.dataset.state = "streaming";
    meta.textContent = "generating\u2026";
    let tokens = 0;
    try {
      const response = await fetch("/generate", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        const message = await failure(response, "generate");
        setError("action", message);
        meta.textContent = message;
        output.dataset.state = "error";
        return;
      }
      setError("action", "");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let finished = false;
      const handle = (msg) => {
        if (!msg) return;
        if (msg.event === "token") {
          tokens += 1;
          output.append(document.createTextNode(msg.data && msg.data.text !== undefined ? msg.data.text : ""));
          meta.textContent = `${tokens} token${tokens === 1 ? "" : "s"}\u2026`;
        } else if (msg.event === "event") {
          const e = msg.data || {};
          meta.textContent = `${tokens} tokens\u2026 ${fmtEvents([e])}`;
        } else if (msg.event === "done") {
          finished = true;
          const reply = msg.data || {};
          if (reply.context_id) lastContextId = reply.context_id;
          if (typeof reply.text === "string" && reply.text !== output.textContent && !tokens) output.textContent = reply.text;
          meta.textContent = `${reply.tokens ?? tokens} tokens \u00b7 context ${reply.context_id || dash} \u00b7 ${routeSummary(reply.route)}`;
          output.dataset.state = "done";
        } else if (msg.event === "error") {
          finished = true;
          const e = msg.data || {};
          const text = `generate: ${e.error || "error"}${e.detail ? ": " + e.detail : ""}`;
          setError("action", text);
          meta.textContent = text;
          output.dataset.state = "error";
        }
      };
      for (;;) {
        const { value, done } = await reader.read();
        if (value) buffer += decoder.decode(value, { stream: true });
        if (done) buffer += decoder.decode();
        buffer = buffer.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          handle(parseSse(buffer.slice(0, cut)));
          buffer = buffer.slice(cut + 2);
        }
        if (done) break;
      }
      if (buffer.trim()) handle(parseSse(buffer));
      if (!finished) {
        meta.textContent = `${tokens} tokens; the stream ended without a reply`;
        output.dataset.state = "error";
        setError("action", "generate: the stream ended early");
      }
    } catch (exc) {
      const text = `generate: ${exc.message || exc}`;
      setError("action", text);
      meta.textContent = text;
      output.dataset.state = "error";
    } finally {
      textBusy = false;
      button.disabled = false;
      schedulePoll(0);
    }
  }

  // ---- images -----------------------------------------------------------------------------

  async function generateImage() {
    if (imageBusy || !apiKey) return;
    const prompt = byId("prompt").value;
    if (!prompt) { setError("action", "image: the prompt is empty"); return; }
    imageBusy = true;
    const button = byId("image-button");
    button.disabled = true;
    const meta = byId("image-route");
    meta.textContent = "generating\u2026";
    try {
      const response = await fetch("/v1/images/generations", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify({ prompt, size: byId("image-size").value }),
      });
      if (!response.ok) {
        const message = await failure(response, "image");
        setError("action", message);
        meta.textContent = message;
        return;
      }
      setError("action", "");
      const reply = await response.json();
      const b64 = reply.data && reply.data[0] && reply.data[0].b64_json;
      if (!b64) throw new Error("the answer has no image");
      const img = byId("image");
      img.src = `data:image/png;base64,${b64}`;
      img.hidden = false;
      const route = reply.route || {};
      const parts = [];
      if (route.tier) parts.push(`made on the ${route.tier}`);
      if (isNum(route.resolution)) parts.push(`${route.resolution} px`);
      if (isNum(route.wall_s)) parts.push(`in ${fmtSeconds(route.wall_s)}`);
      if (route.degraded) parts.push("degraded");
      if (route.failed && route.failed.length) parts.push(`failed: ${route.failed.map((f) => f.tier).join(", ")}`);
      if (route.decision && route.decision.reason) parts.push(`router: ${route.decision.reason}`);
      meta.textContent = parts.join(" \u00b7 ");
    } catch (exc) {
      const text = `image: ${exc.message || exc}`;
      setError("action", text);
      meta.textContent = text;
    } finally {
      imageBusy = false;
      button.disabled = Boolean(lastState && lastState.images === false);
      schedulePoll(0);
    }
  }

  // ---- wiring -----------------------------------------------------------------------------

  function start() {
    byId("generate").addEventListener("click", generateText);
    byId("image-button").addEventListener("click", generateImage);
    byId("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); generateText(); }
    });
    byId("error-dismiss").addEventListener("click", () => { errors.action = ""; errors.poll = ""; renderErrors(); });
    byId("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = byId("key-input").value.trim();
      if (key) { byId("key-input").value = ""; useKey(key); }
    });
    byId("key-change").addEventListener("click", () => needKey("paste another key"));
    window.addEventListener("hashchange", () => { const key = loadKey(); if (key && key !== apiKey) useKey(key); });
    const key = loadKey();
    if (key) useKey(key);
    else needKey();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
