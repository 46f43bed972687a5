// The page of `vqa serve`: choose an image (drop, upload, or pick one of the run's), ask questions,
// show the top answers with score bars, the attention heatmap (attention runs; boxes for a run on
// detector regions, which also takes the photo's regions file) and the questions already asked
// about the image. Everything shown is set with textContent or as an attribute of
// an element made here, never parsed as HTML, so a question or file name cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, histories: new Map(), asked: 0, busy: false, attention: false, regions: false };

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

// --- choosing the image --------------------------------------------------------------------------

function chooseFile(file) {
  if (!file) return;
  if (state.image && state.image.url && state.image.kind === "file") URL.revokeObjectURL(state.image.url);
  const key = `file:${file.name}:${file.size}:${file.lastModified}`;
  state.image = { kind: "file", file: file, key: key, name: file.name, url: URL.createObjectURL(file) };
  showImage([]);
}

function chooseRunImage(image) {
  state.image = { kind: "id", id: image.id, key: `id:${image.id}`, name: `run image ${image.id}`,
                  url: `/api/images/${encodeURIComponent(image.id)}` };
  showImage(image.questions || []);
}

function showImage(suggested) {
  $("preview").src = state.image.url;
  $("preview-name").textContent = state.image.name;
  $("preview-box").hidden = false;
  $("result").hidden = true;
  showError("");
  setStatus("");
  const suggestions = $("suggestions");
  suggestions.replaceChildren();
  for (const question of suggested) {
    const chip = element("button", "chip", question);
    chip.type = "button";
    chip.addEventListener("click", () => { $("question").value = question; $("question").focus(); });
    suggestions.append(chip);
  }
  showHistory();
  $("question").focus();
}

function setUpDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    chooseFile(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file").click(); }
  });
}

async function loadGallery() {
  const response = await fetch("/api/images?limit=24");
  if (!response.ok) return;
  const data = await response.json();
  const gallery = $("gallery");
  $("picker-note").textContent = data.total ? `${data.total} images from the run's validation split` : data.note;
  $("picker").hidden = false;
  for (const image of data.images) {
    const button = element("button", "thumb");
    button.type = "button";
    button.title = `run image ${image.id}`;
    const picture = element("img");
    picture.loading = "lazy";
    picture.alt = `run image ${image.id}`;
    picture.src = `/api/images/${encodeURIComponent(image.id)}`;
    button.append(picture);
    button.addEventListener("click", () => chooseRunImage(image));
    gallery.append(button);
  }
}

async function loadRun() {
  try {
    const response = await fetch("/api/health");
    const data = await response.json();
    state.attention = Boolean(data.attention);
    state.regions = Boolean(data.regions);
    $("regions-box").hidden = !state.regions;
    if (state.regions) {
      $("heatmap-caption").textContent = "Where the model looked: one panel per attention map, each detector box " +
        "brighter and more opaque the higher its weight, the top 3 labelled with their weight.";
    }
    const parts = [`run ${data.run}`, `model ${data.model}`, `${data.answers} answers`];
    if (data.attention) parts.push("attention maps");
    if (data.regions) parts.push("detector regions");
    $("run").textContent = parts.join(" · ");
  } catch (error) {
    $("run").textContent = "The server cannot be reached; is `vqa serve` still running?";
  }
}

// --- asking ------------------------------------------------------------------------------------------

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (state.busy) return;
  if (!state.image) { showError("Choose an image first: drop one, upload one, or pick one of the run's."); return; }
  if (!question) { showError("Type a question about the image first."); return; }
  const regions = $("regions").files[0];
  if (state.regions && !regions) {
    showError("This run reads detector regions: attach the photo's regions file (a TSV, .npz or .h5 file) first.");
    return;
  }
  const form = new FormData();
  if (state.image.kind === "file") form.append("image", state.image.file, state.image.file.name);
  else form.append("image_id", state.image.id);
  if (state.regions) form.append("regions", regions, regions.name);
  form.append("question", question);
  form.append("top_k", "5");
  if (state.attention) form.append("heatmap", "true");
  const image = state.image;
  state.busy = true;
  $("ask-button").disabled = true;
  showError("");
  setStatus("Thinking…");
  try {
    const response = await fetch("/api/answer", { method: "POST", body: form });
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (!response.ok) {
      showError(data && typeof data.detail === "string" ? data.detail : `The server answered ${response.status}.`);
      setStatus("");
      return;
    }
    if (image !== state.image) return; // another image was chosen meanwhile
    const result = data.results[0];
    const heatmap = data.heatmaps ? data.heatmaps[0] : null;
    showResult(result, heatmap);
    const history = state.histories.get(image.key) || [];
    const top = result.answers[0];
    history.unshift({ question: result.question, answer: top ? top.answer : "", score: top ? top.score : 0 });
    state.histories.set(image.key, history);
    showHistory();
    setStatus(data.image && data.image.cached ? "Answered (the image's features were cached)." : "Answered.");
  } catch (error) {
    showError("The server cannot be reached; is `vqa serve` still running?");
    setStatus("");
  } finally {
    state.busy = false;
    $("ask-button").disabled = false;
  }
}

function showResult(result, heatmap) {
  $("result-question").textContent = result.question;
  const list = $("answers");
  list.replaceChildren();
  for (const item of result.answers) {
    const row = element("li", "answer-row");
    const bar = element("div", "bar");
    const fill = element("div", "fill");
    fill.style.width = `${Math.max(0, Math.min(1, item.score)) * 100}%`;
    bar.append(fill);
    row.append(element("span", "answer", item.answer), bar, element("span", "score", item.score.toFixed(4)));
    list.append(row);
  }
  const notes = $("notes");
  notes.replaceChildren(...(result.notes || []).map((note) => element("li", "note", note)));
  $("heatmap-box").hidden = !heatmap;
  if (heatmap) $("heatmap").src = heatmap;
  else $("heatmap").removeAttribute("src");
  state.asked += 1;
  $("result").dataset.asked = String(state.asked);
  $("result").hidden = false;
}

function showHistory() {
  const history = state.image ? state.histories.get(state.image.key) || [] : [];
  const list = $("history");
  list.replaceChildren();
  for (const entry of history) {
    const row = element("li");
    row.append(element("span", "asked", entry.question), element("span", "muted", " → "),
               element("b", "said", entry.answer), element("span", "muted", ` (${entry.score.toFixed(2)})`));
    list.append(row);
  }
  $("history-box").hidden = history.length === 0;
}

setUpDrop();
$("ask").addEventListener("submit", ask);
loadRun();
loadGallery();
