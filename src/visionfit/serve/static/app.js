// The page of `visionfit serve`: pick or drop images, see each one's top classes.
// Every file name and every text from the server is shown with textContent, never as HTML.
"use strict";

const TOP_K = 3;
const PARALLEL_UPLOADS = 4; // the server answers 503 beyond --max-queue; stay well below it

let apiKey = null;
let limits = null; // from /info
let waiting = [];
let active = 0;
let counts = { done: 0, refused: 0, total: 0 };

function byId(id) {
  return document.getElementById(id);
}

function make(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}

function authHeaders() {
  return apiKey ? { Authorization: "Bearer " + apiKey } : {};
}

function percent(value) {
  return (100 * value).toFixed(1) + "%";
}

async function readJson(response) {
  try {
    return await response.json();
  } catch (error) {
    return null;
  }
}

function refusalText(response, data) {
  if (data && typeof data.error === "string") return data.error;
  if (response.status === 413 && limits) return "larger than the " + limits.max_body_mb + " MB the server accepts.";
  return "the server answered " + response.status + " " + response.statusText + ".";
}

function showKeyForm() {
  byId("key-form").hidden = false;
  byId("key-input").focus();
}

async function loadInfo() {
  const summary = byId("model-summary");
  let response;
  try {
    response = await fetch("info", { headers: authHeaders() });
  } catch (error) {
    summary.textContent = "The server could not be reached.";
    return;
  }
  if (response.status === 401) {
    summary.textContent = "Enter the API key to use this model.";
    showKeyForm();
    return;
  }
  const info = await readJson(response);
  if (!response.ok || !info) {
    summary.textContent = "The model cannot be shown: " + refusalText(response, info);
    return;
  }
  byId("key-form").hidden = true;
  limits = info.limits;
  byId("model-name").textContent = info.model.name;
  const parts = [info.classes.length + " classes", info.input_size + "×" + info.input_size + " pixels"];
  if (typeof info.test_accuracy === "number") parts.push("test accuracy " + percent(info.test_accuracy));
  summary.textContent = parts.join(" · ");
  const list = byId("classes");
  list.replaceChildren(...info.classes.map((name) => make("li", "", name)));
}

function makeCard(file) {
  const card = make("li", "card");
  card.dataset.state = "pending";
  const image = make("img");
  image.alt = "Preview of " + file.name;
  const url = URL.createObjectURL(file);
  image.addEventListener("load", () => {
    URL.revokeObjectURL(url);
    if (image.naturalWidth < 128) image.classList.add("pixelated"); // show small pictures' pixels sharply
  });
  image.addEventListener("error", () => {
    URL.revokeObjectURL(url);
    image.hidden = true; // not something the browser can show; the server will say why
  });
  image.src = url;
  card.append(image, make("p", "file-name", file.name), make("p", "pending", "Classifying…"));
  byId("results").append(card);
  return card;
}

// The "why?" toggle: the first press asks /explain for the picture with its Grad-CAM map (where the
// model looked for the class it chose); later presses show or hide it. The map comes as a PNG data
// URL and is shown through a blob: URL, which the page's Content-Security-Policy allows.
function pngBlobUrl(dataUrl) {
  const bytes = Uint8Array.from(atob(dataUrl.split(",")[1]), (character) => character.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
}

async function fetchExplanation(file, box) {
  const body = new FormData();
  body.append("files", file, file.name);
  let response;
  try {
    response = await fetch("explain?top_k=" + TOP_K, { method: "POST", body, headers: authHeaders() });
  } catch (error) {
    box.replaceChildren(make("p", "error", "The server could not be reached."));
    return;
  }
  const data = await readJson(response);
  if (!response.ok || !Array.isArray(data)) {
    box.replaceChildren(make("p", "error", "No explanation: " + refusalText(response, data)));
    return;
  }
  const overlay = make("img", "overlay");
  overlay.alt = "Where the model looked for " + data[0].explained;
  overlay.src = pngBlobUrl(data[0].overlay);
  box.replaceChildren(overlay, make("p", "overlay-caption", "Where the model looked for " + data[0].explained));
}

function addWhyToggle(card, file) {
  const button = make("button", "why", "why?");
  button.type = "button";
  button.setAttribute("aria-pressed", "false");
  const box = make("div", "explanation");
  box.hidden = true;
  button.addEventListener("click", () => {
    const showing = button.getAttribute("aria-pressed") === "true";
    button.setAttribute("aria-pressed", showing ? "false" : "true");
    box.hidden = showing;
    if (!showing && !box.dataset.loaded) {
      box.dataset.loaded = "yes";
      box.replaceChildren(make("p", "pending", "Explaining…"));
      fetchExplanation(file, box);
    }
  });
  card.append(button, box);
}

function showPrediction(card, record) {
  const list = make("ol", "classes");
  // A multi-label model answers with the set of labels at or above their thresholds.
  const entries = record.labels ?? record.top;
  list.setAttribute("aria-label", record.labels ? "Labels" : "Top classes");
  if (entries.length === 0) list.append(make("li", "", "no label above its threshold"));
  for (const entry of entries) {
    const item = make("li");
    const label = make("div", "bar-label");
    label.append(make("span", "class-name", entry.class), make("span", "probability", percent(entry.probability)));
    const bar = make("div", "bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = make("div", "bar-fill");
    fill.style.width = percent(entry.probability);
    bar.append(fill);
    item.append(label, bar);
    list.append(item);
  }
  card.querySelector(".pending").replaceWith(list);
  card.dataset.state = "done";
}

function showRefusal(card, text) {
  const message = make("p", "error", "Refused: " + text);
  message.setAttribute("role", "alert");
  card.querySelector(".pending").replaceWith(message);
  card.dataset.state = "refused";
}

async function classify(file, card) {
  const body = new FormData();
  body.append("files", file, file.name);
  let response;
  try {
    response = await fetch("predict?top_k=" + TOP_K, { method: "POST", body, headers: authHeaders() });
  } catch (error) {
    showRefusal(card, "the server could not be reached.");
    return false;
  }
  const data = await readJson(response);
  if (response.status === 401) showKeyForm();
  if (!response.ok || !Array.isArray(data)) {
    showRefusal(card, refusalText(response, data));
    return false;
  }
  showPrediction(card, data[0]);
  addWhyToggle(card, file);
  return true;
}

function updateStatus() {
  const finished = counts.done + counts.refused;
  let text = "Classified " + counts.done + " of " + counts.total + " image" + (counts.total === 1 ? "" : "s");
  if (counts.refused) text += "; " + counts.refused + " refused";
  if (finished < counts.total) text += "; " + (counts.total - finished) + " waiting";
  byId("status").textContent = text + ".";
}

function pump() {
  while (active < PARALLEL_UPLOADS && waiting.length) {
    const { file, card } = waiting.shift();
    active += 1;
    classify(file, card).then((accepted) => {
      active -= 1;
      counts[accepted ? "done" : "refused"] += 1;
      updateStatus();
      pump();
    });
  }
}

function addFiles(files) {
  for (const file of files) {
    waiting.push({ file, card: makeCard(file) });
    counts.total += 1;
  }
  updateStatus();
  pump();
}

function setUpDropping() {
  let depth = 0; // dragenter/dragleave fire for every child element crossed
  document.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) document.body.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
  });
}

function start() {
  const input = byId("file-input");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // choosing the same files again classifies them again
  });
  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = byId("key-input").value;
    loadInfo();
  });
  setUpDropping();
  loadInfo();
}

start();
