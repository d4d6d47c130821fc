// The chat page: model picker, conversations, the composer and the streamed answers.
// Everything goes through the public API (api.js); model text is rendered by markdown.js as
// DOM nodes, never as HTML.

import { ApiError, listModels, streamChat } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { store } from "./store.js";

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), backdrop: $("backdrop"), menu: $("menu"), list: $("conversations"),
  newChat: $("new-chat"), model: $("model"), modelState: $("model-state"), messages: $("messages"),
  notice: $("notice"), composer: $("composer"), input: $("input"), send: $("send"), attach: $("attach"),
  file: $("file"), attachments: $("attachments"), settings: $("settings"), openSettings: $("open-settings"),
  keyDialog: $("key-dialog"), keyInput: $("key-input"), keyError: $("key-error"),
};

const state = {
  models: [],          // /v1/models' data
  current: null,       // the open conversation
  pending: [],         // data: URLs of images attached to the next message
  busy: null,          // {controller, message} while an answer streams
};

const MAX_IMAGE_SIDE = 2048;
const MAX_IMAGE_BYTES = 1.5 * 1024 * 1024;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(className, text, label, onClick) {
  const b = el("button", className, text);
  b.type = "button";
  if (label) b.setAttribute("aria-label", label);
  if (label) b.title = label;
  b.addEventListener("click", onClick);
  return b;
}

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
  clearTimeout(notice.timer);
  if (text) notice.timer = setTimeout(() => { ui.notice.hidden = true; }, 6000);
}

function persist() {
  const note = store.save();
  if (note) notice(note);
}

// ---- models ----

function modelInfo(id) {
  return state.models.find((m) => m.id === id) || null;
}

function takesImages(id) {
  const m = modelInfo(id);
  return !!(m && Array.isArray(m.input_modalities) && m.input_modalities.includes("image"));
}

function stateOf(m) {
  return (m.status && m.status.state) || "loaded";
}

async function refreshModels({ quiet = false, ask = false } = {}) {
  // ask: a 401 opens the key dialog (on start); otherwise it is shown like any error
  try {
    state.models = await listModels(store.apiKey);
  } catch (e) {
    if (ask && e instanceof ApiError && e.status === 401) {
      askForKey(e.message);
    } else if (!quiet) {
      notice("Models: " + describe(e));
    }
    renderModelPicker();
    return;
  }
  renderModelPicker();
}

function renderModelPicker() {
  const chosen = ui.model.value || store.model;
  ui.model.replaceChildren();
  const ids = state.models.map((m) => m.id);
  if (chosen && !ids.includes(chosen)) ids.unshift(chosen);   // not listed (yet): keep it pickable
  for (const id of ids) {
    const m = modelInfo(id);
    const parts = [id];
    if (m) parts.push(stateOf(m));
    if (m && takesImages(id)) parts.push("images");
    const opt = el("option", null, parts.join(" · "));
    opt.value = id;
    ui.model.append(opt);
  }
  if (!ids.length) {
    const opt = el("option", null, "no models");
    opt.value = "";
    ui.model.append(opt);
  }
  ui.model.value = ids.includes(chosen) ? chosen : (ids[0] || "");
  renderModelState();
}

function renderModelState() {
  const m = modelInfo(ui.model.value);
  const st = m ? stateOf(m) : "unknown";
  const images = takesImages(ui.model.value);
  ui.modelState.className = "badge state-" + st;
  ui.modelState.textContent = !m ? "" : (st === "loaded" ? "" : st + " · ") + (images ? "text + images" : "text");
  ui.modelState.title = m && m.status && m.status.reason ? m.status.reason
    : (st === "unloaded" ? "unloaded: loads on its first request" : st);
  ui.attach.disabled = !images;
  ui.attach.title = images ? "Attach an image (or paste one)" : "This model does not take images";
}

// ---- API key ----

function askForKey(message) {
  ui.keyError.textContent = store.apiKey ? message : "";
  ui.keyInput.value = "";
  // the composer must not keep the focus under the modal (Chromium then takes no typing in it
  // after the dialog closes until it is clicked)
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  if (!ui.keyDialog.open) ui.keyDialog.showModal();
  ui.keyInput.focus();
}

ui.keyDialog.addEventListener("cancel", (e) => e.preventDefault());   // the page needs a key
$("key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) { ui.keyError.textContent = "Enter a key."; return; }
  store.apiKey = key;
  try {
    state.models = await listModels(key);
  } catch (err) {
    ui.keyError.textContent = describe(err);
    return;
  }
  ui.keyDialog.close();
  renderModelPicker();
  ui.input.focus();
});

// ---- conversations ----

function openConversation(c) {
  state.current = c;
  if (c && c.model && !state.busy) {
    ui.model.value = c.model;
    if (ui.model.value !== c.model) renderModelPicker();
  }
  renderConversations();
  renderMessages();
  closeSidebar();
}

function newConversation() {
  if (state.busy) stop();
  state.current = null;
  state.pending = [];
  renderAttachments();
  renderConversations();
  renderMessages();
  closeSidebar();
  ui.input.focus();
}

function renderConversations() {
  ui.list.replaceChildren();
  for (const c of store.conversations) {
    const row = el("div", "conv" + (state.current && c.id === state.current.id ? " active" : ""));
    row.dataset.id = c.id;
    const open = button("conv-title", c.title || "New chat", null, () => openConversation(c));
    if (state.current && c.id === state.current.id) open.setAttribute("aria-current", "true");
    const rename = button("icon small", "\u270E", "Rename", () => startRename(row, c));
    const del = button("icon small danger", "\u2715", "Delete", () => {
      if (!del.classList.contains("confirm")) {
        del.classList.add("confirm");
        del.textContent = "Delete?";
        setTimeout(() => { del.classList.remove("confirm"); del.textContent = "\u2715"; }, 4000);
        return;
      }
      if (state.busy && state.busy.conversation === c) stop();
      store.remove(c.id);
      if (state.current && state.current.id === c.id) state.current = null;
      renderConversations();
      renderMessages();
    });
    row.append(open, rename, del);
    ui.list.append(row);
  }
}

function startRename(row, c) {
  const input = el("input", "rename");
  input.value = c.title || "";
  input.setAttribute("aria-label", "Conversation name");
  let finished = false;
  const done = (save) => {
    if (finished) return;
    finished = true;
    if (save && input.value.trim()) {
      c.title = input.value.trim().slice(0, 120);
      persist();
    }
    renderConversations();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); done(true); }
    if (e.key === "Escape") { e.preventDefault(); done(false); }
  });
  input.addEventListener("blur", () => done(true));
  row.replaceChildren(input);
  input.focus();
  input.select();
}

// ---- messages ----

function renderMessages() {
  ui.messages.replaceChildren();
  const c = state.current;
  if (!c || !c.messages.length) {
    const empty = el("div", "empty");
    empty.append(el("h1", null, "npuflow"), el("p", null, "Pick a model and ask anything."),
      el("p", "hint", "Enter sends · Shift+Enter: new line · Esc stops an answer"));
    ui.messages.append(empty);
    return;
  }
  for (const m of c.messages) ui.messages.append(messageNode(m));
  scrollDown(true);
}

function messageNode(m) {
  const node = el("article", "msg " + m.role);
  node.msg = m;
  const who = el("div", "who", m.role === "user" ? "You" : (m.model || "assistant"));
  node.append(who);
  fillMessage(node, m);
  return node;
}

function fillMessage(node, m) {
  // (Re)builds a message's body from its state: cheap enough to run on every streamed frame.
  const keep = node.querySelector("details.reasoning");
  const wasOpen = keep ? keep.open : false;
  while (node.childNodes.length > 1) node.lastChild.remove();
  node.setAttribute("aria-busy", m.streaming ? "true" : "false");
  if (m.images && m.images.length) {
    const row = el("div", "msg-images");
    for (const url of m.images) {
      const img = el("img");
      img.src = url;
      img.alt = "attached image";
      row.append(img);
    }
    node.append(row);
  }
  if (m.imagesDropped) node.append(el("div", "hint", "(images not kept: browser storage was full)"));
  if (m.reasoning) {
    const d = el("details", "reasoning");
    d.open = wasOpen;
    const thinking = m.streaming && !m.content;
    d.append(el("summary", null, thinking ? "Thinking…" : "Reasoning" + (m.stats && m.stats.thought_s
      ? " (" + m.stats.thought_s.toFixed(1) + " s)" : "")));
    const body = el("div", "md");
    body.append(renderMarkdown(m.reasoning));
    d.append(body);
    node.append(d);
  }
  const content = el("div", "md content");
  if (m.role === "user") {
    if (!m.content) return;
    content.append(el("p", "plain", m.content));
  } else {
    content.append(renderMarkdown(m.content));
    if (m.streaming) content.append(el("span", "cursor", "\u258D"));
  }
  node.append(content);
  if (m.error) {
    const box = el("div", "error", "");
    box.setAttribute("role", "alert");
    box.append(el("strong", null, m.error.status ? "Error " + m.error.status : "Error"), document.createTextNode(
      " · " + m.error.message + (m.error.code ? " (" + m.error.code + ")" : "")));
    if (m.error.status === 401) box.append(button("link", "Change API key", null, () => openSettings(true)));
    node.append(box);
  }
  const stats = statsText(m);
  if (stats) node.append(el("div", "stats", stats));
}

function statsText(m) {
  if (m.role !== "assistant" || m.streaming) return "";
  const s = m.stats || {};
  const parts = [];
  if (m.stopped) parts.push("stopped");
  if (s.completion_tokens !== undefined) parts.push(s.completion_tokens + " tokens");
  if (s.tps) parts.push(s.tps.toFixed(1) + " tok/s");
  if (s.ttft !== undefined) parts.push("TTFT " + s.ttft.toFixed(2) + " s");
  if (s.finish === "length") parts.push("cut at max_tokens");
  return parts.join(" · ");
}

function scrollDown(force) {
  const box = ui.messages;
  const near = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
  if (force || near) box.scrollTop = box.scrollHeight;
}

function nodeOf(m) {
  for (const n of ui.messages.children) if (n.msg === m) return n;
  return null;
}

let frame = 0;
function scheduleRender(m) {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const n = nodeOf(m);
    if (n) { fillMessage(n, m); scrollDown(false); }
  });
}

// ---- sending ----

function settingsBody() {
  const s = store.settings;
  const out = {};
  const num = (v) => (v === "" || v === null || v === undefined ? null : Number(v));
  if (num(s.temperature) !== null) out.temperature = num(s.temperature);
  if (num(s.top_p) !== null) out.top_p = num(s.top_p);
  if (num(s.max_tokens) !== null) out.max_tokens = Math.round(num(s.max_tokens));
  return out;
}

function apiMessages(c) {
  // the history the model sees: a failed answer and the question it answered are left out
  const out = [];
  if (store.settings.system.trim()) out.push({ role: "system", content: store.settings.system });
  c.messages.forEach((m, k) => {
    const next = c.messages[k + 1];
    if (m.streaming || m.error || (m.role === "user" && next && next.error)) return;
    if (m.role === "assistant" && !m.content) return;
    if (m.role === "user" && m.images && m.images.length) {
      const parts = m.content ? [{ type: "text", text: m.content }] : [];
      for (const url of m.images) parts.push({ type: "image_url", image_url: { url } });
      out.push({ role: "user", content: parts });
    } else {
      out.push({ role: m.role, content: m.content });
    }
  });
  return out;
}

async function sendMessage() {
  if (state.busy) return;
  const text = ui.input.value.trim();
  const images = state.pending;
  const model = ui.model.value;
  if (!text && !images.length) return;
  if (!model) { notice("No model to send to."); return; }
  let c = state.current;
  if (!c) {
    c = store.create(model);
    state.current = c;
  }
  c.model = model;
  c.updated = Date.now();
  if (!c.title) c.title = (text || "Image").replace(/\s+/g, " ").slice(0, 60);
  const user = { role: "user", content: text, images: images.length ? images : undefined };
  c.messages.push(user);
  const answer = { role: "assistant", model, content: "", reasoning: "", streaming: true };
  c.messages.push(answer);
  ui.input.value = "";
  autosize();
  state.pending = [];
  renderAttachments();
  renderConversations();
  renderMessages();
  persist();

  const controller = new AbortController();
  state.busy = { controller, message: answer, conversation: c };
  setBusy(true);
  const body = {
    model, messages: apiMessages(c), stream: true, stream_options: { include_usage: true }, ...settingsBody(),
  };
  const t0 = performance.now();
  let first = 0;
  let thoughtEnd = 0;
  let usage = null;
  try {
    for await (const chunk of streamChat(body, store.apiKey, controller.signal)) {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const d = choice.delta || {};
      if (d.reasoning_content) answer.reasoning += d.reasoning_content;
      if (d.content) {
        if (!thoughtEnd && answer.reasoning) thoughtEnd = performance.now();
        answer.content += d.content;
      }
      if (!first && (d.content || d.reasoning_content)) first = performance.now();
      if (choice.finish_reason) answer.finish = choice.finish_reason;
      scheduleRender(answer);
    }
  } catch (e) {
    if (e.name === "AbortError") answer.stopped = true;
    else answer.error = { status: e.status || 0, message: e.message || String(e), code: e.code || null };
  }
  const end = performance.now();
  const stats = {};
  if (first) stats.ttft = (first - t0) / 1000;
  if (thoughtEnd) stats.thought_s = (thoughtEnd - first) / 1000;
  if (usage) {
    stats.completion_tokens = usage.completion_tokens;
    stats.prompt_tokens = usage.prompt_tokens;
    if (usage.completion_tokens > 1 && end > first) stats.tps = (usage.completion_tokens - 1) / ((end - first) / 1000);
  }
  if (answer.finish) stats.finish = answer.finish;
  answer.stats = stats;
  answer.streaming = false;
  state.busy = null;
  setBusy(false);
  c.updated = Date.now();
  persist();
  const n = nodeOf(answer);
  if (n) fillMessage(n, answer);
  scrollDown(false);
  refreshModels({ quiet: true });
}

function stop() {
  if (state.busy) state.busy.controller.abort();
}

function setBusy(busy) {
  ui.send.textContent = busy ? "Stop" : "Send";
  ui.send.setAttribute("aria-label", busy ? "Stop the answer" : "Send");
  ui.send.classList.toggle("stop", busy);
  document.body.classList.toggle("busy", busy);
}

function describe(e) {
  if (e instanceof ApiError) return (e.status ? e.status + " · " : "") + e.message;
  return String(e && e.message ? e.message : e);
}

// ---- images ----

async function addImages(files) {
  if (!takesImages(ui.model.value)) { notice("This model does not take images."); return; }
  for (const f of files) {
    if (!f.type.startsWith("image/")) continue;
    try {
      state.pending.push(await imageUrl(f));
    } catch (e) {
      notice("Could not read " + (f.name || "the image") + ": " + (e.message || e));
    }
  }
  renderAttachments();
}

function fileUrl(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}

async function imageUrl(file) {
  // A data: URL of the image, scaled down (JPEG) when it is large, so it fits a request body.
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, MAX_IMAGE_SIDE / Math.max(bitmap.width, bitmap.height));
  if (scale === 1 && file.size <= MAX_IMAGE_BYTES) { bitmap.close(); return fileUrl(file); }
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.88));
  return fileUrl(blob);
}

function renderAttachments() {
  ui.attachments.replaceChildren();
  state.pending.forEach((url, k) => {
    const box = el("div", "thumb");
    const img = el("img");
    img.src = url;
    img.alt = "image " + (k + 1);
    box.append(img, button("icon small", "\u2715", "Remove image " + (k + 1), () => {
      state.pending.splice(k, 1);
      renderAttachments();
    }));
    ui.attachments.append(box);
  });
  ui.attachments.hidden = !state.pending.length;
}

// ---- settings ----

function openSettings(focusKey) {
  const s = store.settings;
  $("system").value = s.system;
  $("temperature").value = s.temperature;
  $("top_p").value = s.top_p;
  $("max_tokens").value = s.max_tokens;
  $("settings-key").value = store.apiKey;
  ui.settings.showModal();
  (focusKey === true ? $("settings-key") : $("system")).focus();
}

$("settings-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const s = store.settings;
  s.system = $("system").value;
  s.temperature = $("temperature").value;
  s.top_p = $("top_p").value;
  s.max_tokens = $("max_tokens").value;
  store.saveSettings();
  const key = $("settings-key").value.trim();
  const changed = key !== store.apiKey;
  store.apiKey = key;
  ui.settings.close();
  if (changed) refreshModels();
  ui.input.focus();
});
$("settings-cancel").addEventListener("click", () => ui.settings.close());

// ---- layout and keys ----

function closeSidebar() {
  document.body.classList.remove("side-open");
  ui.backdrop.hidden = true;
  ui.menu.setAttribute("aria-expanded", "false");
}

ui.menu.addEventListener("click", () => {
  const open = !document.body.classList.contains("side-open");
  document.body.classList.toggle("side-open", open);
  ui.backdrop.hidden = !open;
  ui.menu.setAttribute("aria-expanded", String(open));
});
ui.backdrop.addEventListener("click", closeSidebar);

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = Math.min(ui.input.scrollHeight, 220) + "px";
}

ui.input.addEventListener("input", autosize);
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!state.busy) sendMessage();
  }
});
ui.input.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData ? e.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) {
    e.preventDefault();
    addImages(files);
  }
});
ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  if (state.busy) stop();
  else sendMessage();
});
ui.attach.addEventListener("click", () => ui.file.click());
ui.file.addEventListener("change", () => {
  addImages([...ui.file.files]);
  ui.file.value = "";
});
ui.composer.addEventListener("dragover", (e) => e.preventDefault());
ui.composer.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer && e.dataTransfer.files.length) addImages([...e.dataTransfer.files]);
});
ui.model.addEventListener("change", () => {
  store.model = ui.model.value;
  renderModelState();
});
ui.model.addEventListener("focus", () => refreshModels({ quiet: true }));
ui.newChat.addEventListener("click", newConversation);
$("new-chat-top").addEventListener("click", newConversation);
ui.openSettings.addEventListener("click", () => openSettings(false));
ui.messages.addEventListener("click", (e) => {
  const b = e.target.closest("button.copy");
  if (b) copyCode(b);
});
document.addEventListener("keydown", (e) => {
  if (e.defaultPrevented) return;   // handled where it happened (renaming, a dialog)
  if (e.key === "Escape" && document.body.classList.contains("side-open")) {
    closeSidebar();
    ui.menu.focus();
  } else if (e.key === "Escape" && state.busy && !ui.settings.open && !ui.keyDialog.open) {
    e.preventDefault();
    stop();
  } else if (e.altKey && (e.key === "n" || e.key === "N")) {
    e.preventDefault();
    newConversation();
  }
});

async function copyCode(b) {
  const code = b.closest(".code-block").querySelector("code");
  const text = code.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no clipboard API (plain http on a LAN address is not a secure context): select and copy
    const range = document.createRange();
    range.selectNodeContents(code);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    document.execCommand("copy");
  }
  b.textContent = "Copied";
  setTimeout(() => { b.textContent = "Copy"; }, 1500);
}

// ---- start ----

for (const c of store.conversations) {
  for (const m of c.messages) {           // an answer cut by a reload mid-stream
    if (m.streaming) { m.streaming = false; m.stopped = true; }
  }
}
state.current = store.conversations[0] || null;
renderConversations();
renderMessages();
renderAttachments();
refreshModels({ ask: true });
ui.input.focus();
