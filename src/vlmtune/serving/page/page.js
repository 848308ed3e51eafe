// The vlmtune serve page: photos -> POST /v1/listings (one request per photo, a few at a time)
// -> editable fields per photo -> CSV with predict's columns. No framework, no build step.
"use strict";
(function () {
  const COLUMNS = ["image", "title", "category3_code", "full_price", "raw_text", "error"];
  const PARALLEL = 4;
  const items = [];
  const queue = [];
  let running = 0;
  const $ = (id) => document.getElementById(id);

  function addFiles(files) {
    for (const file of files) {
      if (!file.type.startsWith("image/") && file.type !== "") continue;
      const item = { file, name: file.name, raw: "", error: "", done: false, node: card(file) };
      items.push(item);
      queue.push(item);
    }
    pump();
    refresh();
  }

  function card(file) {
    const node = $("card").content.firstElementChild.cloneNode(true);
    node.querySelector(".thumb").src = URL.createObjectURL(file);
    node.querySelector(".thumb").alt = file.name;
    node.querySelector(".name").textContent = file.name;
    node.querySelectorAll(".copy").forEach((button) => {
      button.addEventListener("click", () => copy(node.querySelector("." + button.dataset.field), button));
    });
    $("results").appendChild(node);
    return node;
  }

  async function copy(input, button) {
    try { await navigator.clipboard.writeText(input.value); button.textContent = "Copied"; }
    catch (e) { input.select(); document.execCommand("copy"); button.textContent = "Copied"; }
    setTimeout(() => { button.textContent = "Copy"; }, 1200);
  }

  function pump() {
    while (running < PARALLEL && queue.length) {
      const item = queue.shift();
      running += 1;
      send(item).finally(() => { running -= 1; item.done = true; refresh(); pump(); });
    }
  }

  async function send(item) {
    const body = new FormData();
    body.append("images", item.file, item.file.name);
    const headers = {};
    const key = $("apikey").value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    item.node.querySelector(".state").textContent = "generating…";
    try {
      const response = await fetch("/v1/listings", { method: "POST", body, headers });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error((data.error && data.error.message) || "HTTP " + response.status);
      show(item, data.listings[0]);
    } catch (err) {
      item.error = String(err.message || err);
      item.node.classList.add("failed");
      item.node.querySelector(".state").textContent = item.error;
    }
  }

  function show(item, listing) {
    const node = item.node;
    item.raw = listing.raw_text || "";
    node.querySelector(".title").value = listing.title || "";
    node.querySelector(".category").value = listing.category3_code || "";
    node.querySelector(".price").value = listing.full_price == null ? "" : Number(listing.full_price).toFixed(2);
    const seconds = (listing.timing.total_ms / 1000).toFixed(2);
    node.querySelector(".state").textContent = listing.parsed
      ? `done in ${seconds} s`
      : `done in ${seconds} s; could not read: ${Object.keys(listing.errors).join(", ")} (raw: ${item.raw})`;
    node.classList.add("done");
  }

  function refresh() {
    const done = items.filter((i) => i.done).length;
    $("status").textContent = items.length ? `${done} of ${items.length} photo(s) done` : "";
    $("download").disabled = done === 0;
  }

  function csvCell(value) {
    const text = value == null ? "" : String(value);
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function downloadCsv() {
    const lines = [COLUMNS.join(",")];
    for (const item of items.filter((i) => i.done)) {
      const get = (cls) => item.node.querySelector("." + cls).value.trim();
      const price = get("price");
      const row = [item.name, get("title"), get("category"), price && !isNaN(Number(price)) ? Number(price).toFixed(2) : price, item.raw, item.error];
      lines.push(row.map(csvCell).join(","));
    }
    const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "listings.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  const drop = $("drop");
  ["dragenter", "dragover"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (ev) => addFiles(ev.dataTransfer.files));
  $("files").addEventListener("change", (ev) => { addFiles(ev.target.files); ev.target.value = ""; });
  $("download").addEventListener("click", downloadCsv);
  $("clear").addEventListener("click", () => { items.length = 0; queue.length = 0; $("results").innerHTML = ""; refresh(); });
})();
