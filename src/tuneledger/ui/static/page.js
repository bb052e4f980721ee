// The page's behaviour, in plain JavaScript: the server renders every row and section (one
// renderer), and this fetches the next one when asked: a sorted or filtered page of the versions
// table, the slow sections after the first paint, and the actions when the page has a key.
(function () {
  "use strict";

  // --- sections loaded after the first paint (a package from the DVC cache, a diff) -------------
  function loadFragments(root) {
    root.querySelectorAll("[data-fragment]").forEach(async (section) => {
      const response = await fetch(section.dataset.fragment, { headers: { "X-Fragment": "1" } });
      section.innerHTML = await response.text();
      section.dataset.loaded = response.ok ? "ok" : "error";
      window.drawCharts(section);
    });
  }

  // --- filters that reload the page (history, compare) ------------------------------------------
  function autosubmit(root) {
    root.querySelectorAll("form[data-autosubmit] select").forEach((select) => {
      select.addEventListener("change", () => select.form.submit());
    });
  }

  // --- the versions table: sorted, filtered and paged by the server -----------------------------
  function versionsTable() {
    const section = document.getElementById("versions");
    if (!section) return;
    const table = section.querySelector("table");
    const state = { sort: "created", order: "desc", q: "", stage: "", page: 1 };
    const size = Number(section.dataset.size);
    let total = Number(section.dataset.total);
    let pending = 0;

    async function refresh() {
      const ticket = ++pending;
      const response = await fetch("/versions/rows?" + new URLSearchParams(state), { headers: { "X-Fragment": "1" } });
      if (ticket !== pending) return; // a newer request was made meanwhile
      const body = await response.json();
      table.tBodies[0].innerHTML = body.html;
      total = body.total;
      document.getElementById("count").textContent = total;
      const pages = Math.max(1, Math.ceil(total / size));
      document.getElementById("page-label").textContent = `page ${state.page} of ${pages}`;
      document.getElementById("prev").disabled = state.page <= 1;
      document.getElementById("next").disabled = state.page >= pages;
      section.dataset.loaded = String(ticket);
    }

    table.querySelectorAll("th[data-sort]").forEach((header) => {
      header.addEventListener("click", () => {
        const key = header.dataset.sort;
        state.order = state.sort === key && state.order === "desc" ? "asc" : "desc";
        state.sort = key;
        state.page = 1;
        table.querySelectorAll("th[data-sort]").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
        header.classList.add("sorted-" + state.order);
        refresh();
      });
    });
    let typing;
    document.getElementById("filter").addEventListener("input", (event) => {
      clearTimeout(typing);
      typing = setTimeout(() => { state.q = event.target.value.trim(); state.page = 1; refresh(); }, 150);
    });
    document.getElementById("stage-filter").addEventListener("change", (event) => {
      state.stage = event.target.value;
      state.page = 1;
      refresh();
    });
    document.getElementById("prev").addEventListener("click", () => { state.page -= 1; refresh(); });
    document.getElementById("next").addEventListener("click", () => { state.page += 1; refresh(); });
    const pages = Math.max(1, Math.ceil(total / size));
    document.getElementById("page-label").textContent = `page 1 of ${pages}`;
  }

  // --- actions: only on a page started with a key, and each request carries the key ------------
  const KEY = "tuneledger-api-key";

  function element(tag, text, className) {
    const made = document.createElement(tag);
    if (text !== undefined) made.textContent = text;
    if (className) made.className = className;
    return made;
  }

  function gateTable(checks) {
    const table = element("table", undefined, "gate");
    const head = table.createTHead().insertRow();
    ["check", "result", "detail"].forEach((name) => head.appendChild(element("th", name)));
    const body = table.createTBody();
    for (const check of checks) {
      const row = body.insertRow();
      row.dataset.check = check.check;
      row.insertCell().textContent = check.check;
      row.insertCell().appendChild(element("span", check.ok ? "pass" : "FAIL", "pill " + (check.ok ? "ok" : "fail")));
      row.insertCell().textContent = check.detail;
    }
    return table;
  }

  function show(result, ok, body) {
    result.replaceChildren();
    result.className = "result " + (ok ? "done" : "refused");
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    result.appendChild(element("p", ok ? body.message : detail, "message"));
    if (body.checks) result.appendChild(gateTable(body.checks));
    if (ok) {
      const again = element("a", "Reload to see the registry as it is now");
      again.href = location.pathname;
      result.appendChild(again);
    }
  }

  async function act(form) {
    const fields = new FormData(form);
    const payload = Object.fromEntries([...fields.entries()].filter(([name]) => name !== "force"));
    if (form.elements.force) payload.force = form.elements.force.checked;
    const key = (document.getElementById("api-key") || {}).value || "";
    const headers = { "Content-Type": "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    const result = form.parentElement.querySelector(".result");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    result.className = "result";
    result.textContent = "Running the gate…";
    try {
      const response = await fetch("/actions/" + form.dataset.action, {
        method: "POST", headers: headers, body: JSON.stringify(payload),
      });
      const body = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
      show(result, response.ok, body);
    } finally {
      button.disabled = false;
    }
  }

  function actions() {
    const keyInput = document.getElementById("api-key");
    if (keyInput) {
      keyInput.value = sessionStorage.getItem(KEY) || "";
      keyInput.addEventListener("input", () => sessionStorage.setItem(KEY, keyInput.value));
      keyInput.form.addEventListener("submit", (event) => event.preventDefault());
    }
    document.querySelectorAll("form[data-action]").forEach((form) => {
      form.addEventListener("submit", (event) => { event.preventDefault(); act(form); });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    loadFragments(document);
    autosubmit(document);
    versionsTable();
    actions();
  });
})();
