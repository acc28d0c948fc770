// The genoray query page (genoray/serving/page.py). Same origin only: every request goes through
// api(), which resolves a relative path against this script's own address (so a route prefix
// such as /name/ui works). The API key lives in sessionStorage (this tab) and nowhere else.
// Every value from the service is put into the page as text (textContent), never as markup.
"use strict";

(function () {
  const BASE = new URL("../", document.currentScript.src); // .../ui/page.js -> the app's root
  const KEY_SLOT = "genoray.apiKey";
  const $ = (id) => document.getElementById(id);
  let limits = null; // from GET v1/info: max_sequences, max_length, max_total_bases, max_k, max_body_bytes
  let threshold = null; // the bundle's OOD flag threshold (GET v1/info)

  function api(path, options) {
    return fetch(new URL(path, BASE), Object.assign({ credentials: "omit", cache: "no-store" }, options || {}));
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "n/a";
    return typeof v === "number" ? v.toFixed(digits === undefined ? 3 : digits) : String(v);
  }

  function showError(msg) {
    const box = $("error");
    box.textContent = msg;
    box.hidden = !msg;
  }

  function headers() {
    const key = $("key").value.trim();
    const h = { "Content-Type": "application/json" };
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function clearData() {
    $("results").replaceChildren();
    $("bundle").hidden = true;
    $("answered").textContent = "";
  }

  // An error answer as one sentence: 401, 413, 422 (FastAPI's list of {loc, msg}), 429, 503, 504.
  async function errorText(resp) {
    let detail = "";
    try {
      const body = await resp.json();
      detail = Array.isArray(body.detail)
        ? body.detail.map((d) => (d.loc || []).filter((p) => p !== "body").join(".") + ": " + d.msg).join("; ")
        : String(body.detail || "");
    } catch (e) {
      detail = resp.statusText;
    }
    if (resp.status === 401) return "Wrong or missing API key (401): " + detail;
    if (resp.status === 413) return "Over the service's limit (413): " + detail;
    if (resp.status === 422) return "Rejected by the service (422): " + detail;
    if (resp.status === 429) return "Rate limit (429): retry in " + (resp.headers.get("Retry-After") || "a few") + " s";
    return "The service answered " + resp.status + ": " + detail;
  }

  // Sequences from the text box: FASTA records (id = first word of the header) or one per line.
  function parseInput(text) {
    const lines = text.split(/\r?\n/);
    const fasta = lines.some((l) => l.startsWith(">"));
    const ids = [];
    const seqs = [];
    if (!fasta) {
      for (const l of lines) {
        const s = l.replace(/\s+/g, "");
        if (s) seqs.push(s);
      }
      return { ids: null, sequences: seqs };
    }
    for (const l of lines) {
      if (l.startsWith(">")) {
        ids.push(l.slice(1).trim().split(/\s+/)[0] || "seq" + (ids.length + 1));
        seqs.push("");
      } else if (seqs.length) {
        seqs[seqs.length - 1] += l.replace(/\s+/g, "");
      }
    }
    return { ids: ids, sequences: seqs };
  }

  // The first limit of GET v1/info the input breaks, as a sentence; "" when within them all.
  function overLimit(q, k) {
    if (!limits) return "";
    if (q.sequences.length > limits.max_sequences) {
      return "Limit: at most " + limits.max_sequences + " sequences per request; this input has " + q.sequences.length + ".";
    }
    let total = 0;
    for (let i = 0; i < q.sequences.length; i++) {
      const n = q.sequences[i].length;
      if (n > limits.max_length) {
        const name = q.ids ? q.ids[i] : "sequence " + (i + 1);
        return "Limit: " + name + " is " + n + " bp; the service accepts at most " + limits.max_length + " bp per sequence.";
      }
      total += n;
    }
    if (total > limits.max_total_bases) {
      return "Limit: " + total + " bases in total; the service accepts at most " + limits.max_total_bases + " per request.";
    }
    if (k > limits.max_k) return "Limit: k must be at most " + limits.max_k + ".";
    return "";
  }

  function fact(dl, name, value) {
    dl.append(el("dt", name), el("dd", value));
  }

  function bars(container, entries) {
    for (const [name, p] of entries) {
      const bar = el("div", null, "bar");
      const fill = el("span");
      fill.style.width = Math.max(0, Math.min(100, 100 * p)).toFixed(1) + "%"; // CSSOM: allowed by the CSP
      bar.append(fill);
      container.append(el("span", name), bar, el("span", fmt(p), "num"));
    }
  }

  function renderBundle(info) {
    const facts = $("bundle-facts");
    facts.replaceChildren();
    const index = info.index || {};
    const recall = index.recall_at_10;
    fact(facts, "version", info.bundle_version);
    fact(facts, "classes", (info.classes || []).join(", "));
    fact(facts, "index", (index.factory || "?") + " (" + fmt(index.ntotal, 0) + " vectors)");
    fact(facts, "recall@10", recall ? fmt(recall.value) + (recall.queries ? " on " + recall.queries + " queries" : "") : "n/a");
    const enc = info.encoder || {};
    const model = enc.config && (enc.config.model || enc.config.name || enc.config.k);
    fact(facts, "encoder", (enc.type || "?") + (model ? " " + (enc.type === "kmer" ? "k=" : "") + model : "") + " (" + info.fingerprint + ")");
    const ood = info.ood || {};
    threshold = ood.flag_if_score_above === undefined ? null : ood.flag_if_score_above;
    fact(facts, "OOD", (ood.method || "?") + "; flag if score > " + fmt(ood.flag_if_score_above));
    const lc = info.length_calibration;
    const temps = lc ? (lc.temperatures || []).map((t, i) => "T " + fmt(t, 2) + " at " + lc.lengths[i] + " bp") : [];
    fact(facts, "calibration", lc ? "per query length: " + temps.join(", ") : "one temperature (no length calibration)");
    if (info.shard_groups) fact(facts, "shard groups", info.shard_groups);
    fact(facts, "created", info.created_at);
    fact(facts, "swaps", info.swaps);
    const drift = info.drift || {};
    const d = $("drift-facts");
    d.replaceChildren();
    fact(d, "requests", drift.requests);
    fact(d, "OOD rate", fmt(drift.ood_rate_window) + " over the last " + (drift.window_rows || 0) + " of " + (drift.window || "?") + " predictions");
    fact(d, "replica", info.replica);
    const mix = $("class-mix");
    mix.replaceChildren();
    bars(mix, Object.entries(drift.class_mix || {}));
    $("bundle").hidden = false;
    limits = info.limits || null;
    $("limits").textContent = limits
      ? "Limits: " + limits.max_sequences + " sequences, " + limits.max_length + " bp each, " + limits.max_total_bases + " bp in total, k <= " + limits.max_k + "."
      : "";
  }

  async function connect() {
    showError("");
    sessionStorage.setItem(KEY_SLOT, $("key").value.trim());
    let resp;
    try {
      resp = await api("v1/info", { headers: headers() });
    } catch (e) {
      clearData();
      showError("Cannot reach the service: " + e.message);
      return false;
    }
    if (!resp.ok) {
      clearData();
      limits = null;
      showError(await errorText(resp));
      return false;
    }
    renderBundle(await resp.json());
    return true;
  }

  function renderPrediction(p, i) {
    const card = el("article", null, "prediction");
    const title = el("h3");
    title.append(el("span", (p.seq_id || "sequence " + (i + 1)) + ": "), el("span", p.label, "label"));
    const badge = el("span", p.ood ? "OOD" : "in distribution", "badge " + (p.ood ? "ood" : "in"));
    badge.dataset.ood = String(Boolean(p.ood));
    title.append(badge);
    card.append(title);
    card.append(el("p", "OOD score " + fmt(p.ood_score) + " (threshold " + fmt(threshold) + ")", "hint"));
    const probs = el("div", null, "bars");
    bars(probs, Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]));
    card.append(probs);
    const table = el("table", null, "neighbours");
    const head = el("tr");
    head.append(el("th", "neighbour"), el("th", "label"), el("th", "similarity", "num"));
    table.append(head);
    for (const n of p.neighbours) {
      const tr = el("tr");
      tr.append(el("td", n.seq_id), el("td", n.label), el("td", fmt(n.similarity), "num"));
      table.append(tr);
    }
    card.append(table);
    return card;
  }

  async function predict() {
    showError("");
    const q = parseInput($("sequences").value);
    const k = parseInt($("k").value, 10) || 5;
    if (!q.sequences.length) {
      showError("Enter at least one sequence.");
      return;
    }
    if (!limits && !(await connect())) return;
    const over = overLimit(q, k);
    if (over) {
      $("results").replaceChildren();
      $("answered").textContent = "";
      showError(over);
      return;
    }
    const body = { sequences: q.sequences, k: k };
    if (q.ids) body.ids = q.ids;
    $("predict").disabled = true;
    try {
      const resp = await api("v1/predict", { method: "POST", headers: headers(), body: JSON.stringify(body) });
      if (!resp.ok) {
        $("results").replaceChildren();
        $("answered").textContent = "";
        if (resp.status === 401) clearData();
        showError(await errorText(resp));
        return;
      }
      const out = await resp.json();
      const cards = out.predictions.map((p, i) => renderPrediction(p, i));
      $("results").replaceChildren(el("h2", "Predictions"), ...cards);
      $("answered").textContent = "Answered by bundle " + out.bundle_version +
        (resp.headers.get("X-Genoray-Replica") ? " on replica " + resp.headers.get("X-Genoray-Replica") : "");
      await connect(); // the drift window and the version may have moved on
    } catch (e) {
      showError("Cannot reach the service: " + e.message);
    } finally {
      $("predict").disabled = false;
    }
  }

  function loadFile(file) {
    const cap = limits ? limits.max_body_bytes : 1 << 20;
    if (file.size > cap) {
      showError("Limit: " + file.name + " is " + file.size + " bytes; the service accepts requests up to " + cap + " bytes.");
      return;
    }
    file.text().then((text) => {
      $("sequences").value = text;
      showError("");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("key").value = sessionStorage.getItem(KEY_SLOT) || "";
    $("connect").addEventListener("click", connect);
    $("forget").addEventListener("click", function () {
      sessionStorage.removeItem(KEY_SLOT);
      $("key").value = "";
      limits = null;
      clearData();
    });
    $("key").addEventListener("change", function () {
      limits = null;
    });
    $("predict").addEventListener("click", predict);
    $("file").addEventListener("change", function () {
      if (this.files && this.files[0]) loadFile(this.files[0]);
    });
    const box = $("sequences");
    box.addEventListener("dragover", function (e) {
      e.preventDefault();
      box.classList.add("drop");
    });
    box.addEventListener("dragleave", function () {
      box.classList.remove("drop");
    });
    box.addEventListener("drop", function (e) {
      e.preventDefault();
      box.classList.remove("drop");
      if (e.dataTransfer.files && e.dataTransfer.files[0]) loadFile(e.dataTransfer.files[0]);
    });
    if ($("key").value) connect();
  });
})();
