// cm-unet annotate: correct a vessel mask with a brush and an eraser.
//
// The mask is one Uint8Array (0/1) at the angiogram's native resolution:
// the single source of truth, painted here and saved as it is. The two
// canvases hold the angiogram and the coloured mask at native resolution;
// zoom and pan only transform them on screen.

const MASK_RGB = [255, 64, 32];      // vessel colour of the overlay
const IDLE_MS = 60000;               // no input for a minute: the timer pauses
const UNDO_LIMIT = 300;              // strokes kept per frame
const $ = (id) => document.getElementById(id);

const view = {
  viewport: $("viewport"), stage: $("stage"), image: $("image-layer"), layer: $("mask-layer"), cursor: $("cursor"),
};
const state = {
  frames: [], index: -1, name: null, width: 0, height: 0,
  mask: null, pixels: null,          // Uint8Array 0/1; the overlay's ImageData
  items: [],                         // the list's <li>, one per frame
  tool: "brush", size: 6, opacity: 0.5, overlayOn: true, contrast: 1, brightness: 1,
  scale: 1, tx: 0, ty: 0,
  undo: [], redo: [], version: 0, savedVersion: 0, stroke: null, pan: null, spaceDown: false,
  seconds: 0, lastInput: Date.now(), saving: false, opening: 0, source: "",
};

// --- the API -------------------------------------------------------------------------
const frameUrl = (name, what) => `/api/frames/${encodeURIComponent(name)}/${what}`;

async function failure(response) {
  try { return (await response.json()).error; } catch { return `${response.status} ${response.statusText}`; }
}

function decodePng(blob) {
  return new Promise((resolve, reject) => {
    const picture = new Image();
    const address = URL.createObjectURL(blob);
    picture.onload = () => { URL.revokeObjectURL(address); resolve(picture); };
    picture.onerror = () => { URL.revokeObjectURL(address); reject(new Error("the server sent an unreadable PNG")); };
    picture.src = address;
  });
}

async function fetchPng(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(await failure(response));
  return { picture: await decodePng(await response.blob()), source: response.headers.get("X-Mask-Source") };
}

// --- opening a frame -----------------------------------------------------------------
async function openFrame(index) {
  if (index < 0 || index >= state.frames.length) return;
  if (isDirty() && index !== state.index
      && !window.confirm(`${state.name} has unsaved edits. Leave it without saving?`)) return;
  const token = ++state.opening;
  const name = state.frames[index].name;
  busy(`Opening ${name}…`, 300);
  try {
    const [image, mask] = await Promise.all([fetchPng(frameUrl(name, "image")), fetchPng(frameUrl(name, "mask"))]);
    if (token !== state.opening) return;   // another frame was asked for meanwhile
    show(index, image.picture, mask.picture, mask.source);
    busy(null);
    prefetch(index + 1);
  } catch (error) {
    if (token === state.opening) { busy(null); toast(`Cannot open ${name}: ${error.message}`, true); }
  }
}

function show(index, picture, maskPicture, source) {
  const width = picture.naturalWidth, height = picture.naturalHeight, previous = state.index;
  Object.assign(state, { index, name: state.frames[index].name, width, height, source,
    undo: [], redo: [], version: 0, savedVersion: 0, stroke: null, seconds: 0 });
  for (const canvas of [view.image, view.layer]) { canvas.width = width; canvas.height = height; }
  for (const element of [view.image, view.layer, view.stage]) {
    element.style.width = `${width}px`; element.style.height = `${height}px`;
  }
  view.image.getContext("2d").drawImage(picture, 0, 0);
  state.mask = readMask(maskPicture, width, height);
  state.pixels = view.layer.getContext("2d").createImageData(width, height);
  drawMask(0, 0, width - 1, height - 1);
  history.replaceState(null, "", `#${encodeURIComponent(state.name)}`);
  fit();
  renderFrames(previous);
  state.items[index].scrollIntoView({ block: "nearest" });
  renderStatus();
}

function readMask(picture, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(picture, 0, 0);
  const rgba = context.getImageData(0, 0, width, height).data;
  const mask = new Uint8Array(width * height);
  for (let i = 0; i < mask.length; i++) mask[i] = rgba[4 * i] > 127 ? 1 : 0;
  return mask;
}

function prefetch(index) {
  // The server computes and caches the model's mask of the next frame while this one is corrected.
  if (index < state.frames.length && !state.frames[index].saved) {
    fetch(frameUrl(state.frames[index].name, "mask"), { cache: "no-store" }).catch(() => {});
  }
}

// --- painting ------------------------------------------------------------------------
// A stroke from (x0, y0) to (x1, y1), in angiogram pixels, sets every pixel whose centre
// lies within size / 2 of the segment: a capsule, the same at any zoom.
function paintSegment(x0, y0, x1, y1, value) {
  const { width, height, mask } = state;
  const radius = state.size / 2, r2 = radius * radius;
  const left = Math.max(0, Math.floor(Math.min(x0, x1) - radius));
  const right = Math.min(width - 1, Math.ceil(Math.max(x0, x1) + radius));
  const top = Math.max(0, Math.floor(Math.min(y0, y1) - radius));
  const bottom = Math.min(height - 1, Math.ceil(Math.max(y0, y1) + radius));
  if (left > right || top > bottom) return;
  const dx = x1 - x0, dy = y1 - y0, length2 = dx * dx + dy * dy;
  for (let y = top; y <= bottom; y++) {
    for (let x = left; x <= right; x++) {
      const px = x + 0.5, py = y + 0.5;
      let t = length2 > 0 ? ((px - x0) * dx + (py - y0) * dy) / length2 : 0;
      t = t < 0 ? 0 : t > 1 ? 1 : t;
      const ex = px - (x0 + t * dx), ey = py - (y0 + t * dy);
      if (ex * ex + ey * ey <= r2) mask[y * width + x] = value;
    }
  }
  const box = state.stroke.box;
  box[0] = Math.min(box[0], left); box[1] = Math.min(box[1], top);
  box[2] = Math.max(box[2], right); box[3] = Math.max(box[3], bottom);
  drawMask(left, top, right, bottom);
}

function drawMask(left, top, right, bottom) {
  const { width, mask, pixels } = state;
  const data = pixels.data;
  for (let y = top; y <= bottom; y++) {
    for (let x = left; x <= right; x++) {
      const i = y * width + x, o = 4 * i;
      data[o] = MASK_RGB[0]; data[o + 1] = MASK_RGB[1]; data[o + 2] = MASK_RGB[2];
      data[o + 3] = mask[i] ? 255 : 0;
    }
  }
  view.layer.getContext("2d").putImageData(pixels, 0, 0, left, top, right - left + 1, bottom - top + 1);
}

function startStroke(point, value) {
  state.stroke = { value, before: state.mask.slice(), box: [Infinity, Infinity, -1, -1], last: point };
  paintSegment(point.x, point.y, point.x, point.y, value);
}

function endStroke() {
  const stroke = state.stroke;
  state.stroke = null;
  if (!stroke || stroke.box[2] < 0) return;
  const [left, top, right, bottom] = stroke.box;
  const edit = { left, top, right, bottom, before: crop(stroke.before, stroke.box), after: crop(state.mask, stroke.box) };
  state.undo.push(edit);
  if (state.undo.length > UNDO_LIMIT) state.undo.shift();
  state.redo = [];
  changed();
}

function crop(mask, [left, top, right, bottom]) {
  const width = right - left + 1, out = new Uint8Array(width * (bottom - top + 1));
  for (let y = top; y <= bottom; y++) out.set(mask.subarray(y * state.width + left, y * state.width + right + 1), (y - top) * width);
  return out;
}

function paste(edit, pixels) {
  const width = edit.right - edit.left + 1;
  for (let y = edit.top; y <= edit.bottom; y++) {
    state.mask.set(pixels.subarray((y - edit.top) * width, (y - edit.top + 1) * width), y * state.width + edit.left);
  }
  drawMask(edit.left, edit.top, edit.right, edit.bottom);
}

// Undo pastes an edit's pixels from before it and moves it to the redo stack; redo the reverse.
function replay(from, to, side) {
  if (state.stroke || !from.length) return;
  const edit = from.pop();
  paste(edit, edit[side]);
  to.push(edit);
  changed();
}
const undo = () => replay(state.undo, state.redo, "before");
const redo = () => replay(state.redo, state.undo, "after");

function changed() {
  state.version++;
  renderStatus();
  renderFrames();
}

const isDirty = () => state.name !== null && state.version !== state.savedVersion;

// --- saving --------------------------------------------------------------------------
function maskBlob() {
  const canvas = document.createElement("canvas");
  canvas.width = state.width; canvas.height = state.height;
  const context = canvas.getContext("2d");
  const grey = context.createImageData(state.width, state.height);
  for (let i = 0; i < state.mask.length; i++) {
    const value = state.mask[i] ? 255 : 0, o = 4 * i;
    grey.data[o] = grey.data[o + 1] = grey.data[o + 2] = value;
    grey.data[o + 3] = 255;
  }
  context.putImageData(grey, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function save() {
  if (state.name === null || state.saving || state.stroke) return;
  state.saving = true;
  const { name, index, version } = state;
  renderStatus("Saving…");
  try {
    const response = await fetch(frameUrl(name, "mask"), {
      method: "PUT", body: await maskBlob(),
      headers: { "Content-Type": "image/png", "X-Annotation-Seconds": state.seconds.toFixed(1) },
    });
    if (!response.ok) throw new Error(await failure(response));
    const row = await response.json();
    state.frames[index].saved = true;
    markFrame(index);
    if (state.name === name) {
      state.savedVersion = version;
      state.seconds = 0;
      state.source = "saved";
    }
    toast(`Saved ${name}_gt.png · ${row.pixels_changed} pixels changed`);
  } catch (error) {
    toast(`Not saved: ${error.message}`, true);
  } finally {
    state.saving = false;
    renderStatus();
    renderFrames();
  }
}

// --- the view ------------------------------------------------------------------------
function applyView() {
  view.stage.style.transform = `translate(${state.tx}px, ${state.ty}px) scale(${state.scale})`;
  view.stage.classList.toggle("pixelated", state.scale >= 2);
  $("zoom-value").textContent = `${Math.round(state.scale * 100)}%`;
  placeCursor();
}

function fit() {
  if (!state.width) return;
  const box = view.viewport.getBoundingClientRect();
  const scale = Math.min((box.width - 24) / state.width, (box.height - 24) / state.height);
  setZoom(scale > 0 ? scale : 1);
}

function setZoom(scale, focus) {
  const box = view.viewport.getBoundingClientRect();
  scale = Math.min(32, Math.max(0.05, scale));
  if (focus) {   // keep the angiogram pixel under the cursor where it is
    const x = (focus.x - state.tx) / state.scale, y = (focus.y - state.ty) / state.scale;
    state.tx = Math.round(focus.x - x * scale); state.ty = Math.round(focus.y - y * scale);
  } else {       // centred, on whole screen pixels
    state.tx = Math.round((box.width - state.width * scale) / 2);
    state.ty = Math.round((box.height - state.height * scale) / 2);
  }
  state.scale = scale;
  applyView();
}

function zoomBy(factor, focus) {
  const box = view.viewport.getBoundingClientRect();
  setZoom(state.scale * factor, focus || { x: box.width / 2, y: box.height / 2 });
}

function toImage(event) {
  const box = view.viewport.getBoundingClientRect();
  const x = event.clientX - box.left, y = event.clientY - box.top;
  return { x: (x - state.tx) / state.scale, y: (y - state.ty) / state.scale, screenX: x, screenY: y };
}

function placeCursor(event) {
  if (event) state.pointer = { x: event.clientX, y: event.clientY };
  const diameter = state.size * state.scale, style = view.cursor.style;
  if (!state.pointer || state.pan || state.spaceDown) { style.display = "none"; return; }
  const box = view.viewport.getBoundingClientRect();
  style.display = "block";
  style.width = style.height = `${diameter}px`;
  style.left = `${state.pointer.x - box.left - diameter / 2}px`;
  style.top = `${state.pointer.y - box.top - diameter / 2}px`;
  view.cursor.classList.toggle("erasing", state.tool === "eraser");
}

// --- controls ------------------------------------------------------------------------
function setTool(tool) {
  state.tool = tool;
  for (const button of document.querySelectorAll(".tool")) button.classList.toggle("active", button.dataset.tool === tool);
  placeCursor();
}

function setSize(size) {
  state.size = Math.min(256, Math.max(1, Math.round(size) || 1));
  $("size").value = Math.min(64, state.size);
  $("size-value").value = state.size;
  placeCursor();
}

function setOpacity(opacity) {
  state.opacity = Math.min(1, Math.max(0, opacity));
  view.layer.style.opacity = state.opacity;
  $("opacity").value = Math.round(state.opacity * 100);
  $("opacity-value").textContent = `${Math.round(state.opacity * 100)}%`;
}

// Display only: faint distal vessels show better with more contrast; the angiogram is not changed.
function setLook(contrast, brightness) {
  state.contrast = Math.min(3, Math.max(0.5, Math.round(contrast * 10) / 10));
  state.brightness = Math.min(2, Math.max(0.5, Math.round(brightness * 10) / 10));
  view.image.style.filter = `contrast(${state.contrast}) brightness(${state.brightness})`;
  $("contrast").value = Math.round(state.contrast * 100);
  $("contrast-value").textContent = `${Math.round(state.contrast * 100)}%`;
  $("brightness").value = Math.round(state.brightness * 100);
  $("brightness-value").textContent = `${Math.round(state.brightness * 100)}%`;
}

function setOverlay(on) {
  state.overlayOn = on;
  view.layer.style.visibility = on ? "visible" : "hidden";
  $("overlay-on").checked = on;
}

function nextUnsaved() {
  const count = state.frames.length;
  for (let step = 1; step <= count; step++) {
    const index = (state.index + step) % count;
    if (!state.frames[index].saved) return openFrame(index);
  }
  toast("Every frame is saved");
}

const SHORTCUTS = {
  b: () => setTool("brush"), e: () => setTool("eraser"),
  "[": () => setSize(state.size - Math.max(1, Math.round(state.size * 0.15))),
  "]": () => setSize(state.size + Math.max(1, Math.round(state.size * 0.15))),
  v: () => setOverlay(!state.overlayOn),
  q: () => setLook(state.contrast - 0.1, state.brightness), w: () => setLook(state.contrast + 0.1, state.brightness),
  a: () => setLook(state.contrast, state.brightness - 0.1), d: () => setLook(state.contrast, state.brightness + 0.1),
  r: () => setLook(1, 1),
  ",": () => setOpacity(state.opacity - 0.1), ".": () => setOpacity(state.opacity + 0.1),
  "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(0.8),
  0: fit, 1: () => setZoom(1),
  z: undo, y: redo, s: save, n: nextUnsaved,
  ArrowLeft: () => openFrame(state.index - 1), ArrowRight: () => openFrame(state.index + 1),
  PageUp: () => openFrame(state.index - 1), PageDown: () => openFrame(state.index + 1),
};

function onKey(event) {
  state.lastInput = Date.now();
  if (event.target instanceof HTMLInputElement && event.target.type === "number") {
    if (event.key === "Enter" || event.key === "Escape") event.target.blur();   // back to the shortcuts
    return;
  }
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (key === " ") { state.spaceDown = true; placeCursor(); event.preventDefault(); return; }
  if (event.ctrlKey || event.metaKey) {
    const action = { z: event.shiftKey ? redo : undo, y: redo, s: save }[key];
    if (action) { event.preventDefault(); action(); }
    return;
  }
  if (event.altKey || !(key in SHORTCUTS)) return;
  event.preventDefault();
  SHORTCUTS[key]();
}

function onPointerDown(event) {
  if (state.name === null) return;
  state.lastInput = Date.now();
  document.activeElement?.blur();   // a field left focused would take the shortcut keys
  const point = toImage(event);
  view.viewport.setPointerCapture(event.pointerId);
  if (event.button === 1 || (event.button === 0 && state.spaceDown)) {
    state.pan = { x: event.clientX, y: event.clientY };
  } else if (event.button === 0 || event.button === 2) {
    startStroke(point, event.button === 2 || state.tool === "eraser" ? 0 : 1);
  }
  event.preventDefault();
  placeCursor(event);
}

function onPointerMove(event) {
  placeCursor(event);
  if (state.pan) {
    state.tx += event.clientX - state.pan.x; state.ty += event.clientY - state.pan.y;
    state.pan = { x: event.clientX, y: event.clientY };
    applyView();
  } else if (state.stroke) {
    state.lastInput = Date.now();
    const point = toImage(event), last = state.stroke.last;
    paintSegment(last.x, last.y, point.x, point.y, state.stroke.value);
    state.stroke.last = point;
  }
}

function onPointerUp() {
  state.pan = null;
  endStroke();
  placeCursor();
}

// --- status --------------------------------------------------------------------------
const SOURCES = { saved: "saved mask", model: "pre-filled by the model", empty: "empty: no model" };

function renderStatus(saving) {
  $("frame-title").textContent = state.name === null ? "—"
    : `${state.name}  ·  ${state.index + 1} / ${state.frames.length}  ·  ${state.width}×${state.height}`;
  const source = $("mask-source");
  source.textContent = SOURCES[state.source] || "";
  source.className = `pill source-${state.source}`;
  const stateLabel = $("save-state");
  const saved = state.frames[state.index]?.saved;
  stateLabel.textContent = saving || (isDirty() ? "unsaved edits" : saved ? "saved" : "not saved yet");
  stateLabel.className = `pill ${saving ? "saving" : isDirty() ? "dirty" : saved ? "clean" : ""}`;
  $("undo").disabled = !state.undo.length;
  $("redo").disabled = !state.redo.length;
}

// The list is built once; a change marks only the items it concerns (a folder may hold thousands).
function buildFrames() {
  state.items = state.frames.map((frame, index) => {
    const item = document.createElement("li");
    item.dataset.name = frame.name;
    const mark = document.createElement("span");
    mark.className = "mark";
    const label = document.createElement("span");
    label.textContent = frame.name;
    item.append(mark, label);
    item.addEventListener("click", () => openFrame(index));
    return item;
  });
  const fragment = document.createDocumentFragment();   // no spread: tens of thousands of items
  for (const item of state.items) fragment.appendChild(item);
  $("frames").replaceChildren(fragment);
  state.items.forEach((_, index) => markFrame(index));
}

function markFrame(index) {
  const item = state.items[index], frame = state.frames[index];
  if (!item) return;
  const current = index === state.index;
  item.className = [frame.saved ? "saved" : "", current ? "current" : "", current && isDirty() ? "dirty" : ""]
    .join(" ").trim();
  item.title = frame.saved ? `${frame.name}: saved` : `${frame.name}: not saved yet`;
  item.firstChild.textContent = frame.saved ? "✓" : "○";
}

function renderFrames(previous) {
  if (previous !== undefined && previous !== state.index) markFrame(previous);
  markFrame(state.index);
  const saved = state.frames.filter((frame) => frame.saved).length;
  $("progress").textContent = `${saved} of ${state.frames.length} saved`;
  $("progress-bar").style.width = `${state.frames.length ? (100 * saved) / state.frames.length : 0}%`;
}

function tick() {
  if (state.name !== null && !document.hidden && Date.now() - state.lastInput < IDLE_MS) state.seconds += 1;
  const seconds = Math.floor(state.seconds);
  $("timer").textContent = state.name === null ? "" : `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")} on this frame`;
}

async function watchModel() {
  const response = await fetch("/api/status", { cache: "no-store" });
  const status = await response.json();
  const label = $("model-status");
  const text = { loading: `model ${status.model}: loading…`, ready: `model ${status.model}`,
    none: "no model: unsaved frames open empty", failed: `model ${status.model} unavailable: frames open empty` };
  label.textContent = text[status.state];
  label.title = status.problem || status.folder;
  label.classList.toggle("warning", status.state === "failed");
  if (status.state === "loading") setTimeout(watchModel, 1500);
}

let busyTimer = null;
function busy(message, delay = 0) {
  clearTimeout(busyTimer);
  const panel = $("busy");
  if (!message) { panel.hidden = true; return; }
  busyTimer = setTimeout(() => { panel.textContent = message; panel.hidden = false; }, delay);
}

let toastTimer = null;
function toast(message, error = false) {
  const panel = $("toast");
  panel.textContent = message;
  panel.classList.toggle("error", error);
  panel.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { panel.hidden = true; }, error ? 8000 : 2500);
}

// --- start ---------------------------------------------------------------------------
function bind() {
  window.addEventListener("keydown", onKey);
  window.addEventListener("keyup", (event) => { if (event.key === " ") { state.spaceDown = false; placeCursor(); } });
  window.addEventListener("beforeunload", (event) => { if (isDirty()) { event.preventDefault(); event.returnValue = ""; } });
  window.addEventListener("resize", () => fit());
  view.viewport.addEventListener("pointerdown", onPointerDown);
  view.viewport.addEventListener("pointermove", onPointerMove);
  view.viewport.addEventListener("pointerup", onPointerUp);
  view.viewport.addEventListener("pointercancel", onPointerUp);
  view.viewport.addEventListener("pointerleave", () => { if (!state.stroke) view.cursor.style.display = "none"; });
  view.viewport.addEventListener("contextmenu", (event) => event.preventDefault());
  view.viewport.addEventListener("wheel", (event) => {
    event.preventDefault();
    const point = toImage(event);
    zoomBy(Math.pow(1.0015, -event.deltaY), { x: point.screenX, y: point.screenY });
  }, { passive: false });
  for (const button of document.querySelectorAll(".tool")) button.addEventListener("click", () => setTool(button.dataset.tool));
  $("size").addEventListener("input", (event) => setSize(Number(event.target.value)));
  $("size-value").addEventListener("change", (event) => { setSize(Number(event.target.value)); event.target.blur(); });
  $("opacity").addEventListener("input", (event) => setOpacity(Number(event.target.value) / 100));
  $("overlay-on").addEventListener("change", (event) => setOverlay(event.target.checked));
  $("contrast").addEventListener("input", (event) => setLook(Number(event.target.value) / 100, state.brightness));
  $("brightness").addEventListener("input", (event) => setLook(state.contrast, Number(event.target.value) / 100));
  for (const input of document.querySelectorAll("input[type=range], input[type=checkbox]")) {
    input.addEventListener("change", () => input.blur());   // the keys go back to the shortcuts
  }
  const clicks = { "zoom-in": () => zoomBy(1.25), "zoom-out": () => zoomBy(0.8), "zoom-fit": fit, "zoom-one": () => setZoom(1),
    undo, redo, save, prev: () => openFrame(state.index - 1), next: () => openFrame(state.index + 1), "next-unsaved": nextUnsaved };
  for (const [id, action] of Object.entries(clicks)) $(id).addEventListener("click", action);
}

async function main() {
  bind();
  setTool("brush"); setSize(state.size); setOpacity(state.opacity); setOverlay(true); setLook(1, 1);
  setInterval(tick, 1000);
  watchModel().catch(() => {});
  const response = await fetch("/api/frames", { cache: "no-store" });
  if (!response.ok) { toast(`Cannot list the frames: ${await failure(response)}`, true); return; }
  state.frames = await response.json();
  buildFrames();
  renderFrames();
  const wanted = decodeURIComponent(location.hash.slice(1));
  const named = state.frames.findIndex((frame) => frame.name === wanted);
  const unsaved = state.frames.findIndex((frame) => !frame.saved);
  await openFrame(named >= 0 ? named : unsaved >= 0 ? unsaved : 0);
}

main();
