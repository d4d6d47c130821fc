// What the page keeps in the browser (localStorage): conversations, settings, the API key and
// the last model picked. Nothing of it is sent anywhere but in the API calls themselves.

const CONVERSATIONS = "npuflow.conversations.v1";
const SETTINGS = "npuflow.settings.v1";
const KEY = "npuflow.apiKey";
const MODEL = "npuflow.model";

function read(name, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(name));
    return v === null || v === undefined ? fallback : v;
  } catch {
    return fallback;
  }
}

export function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
}

export const store = {
  conversations: read(CONVERSATIONS, []),
  settings: { system: "", temperature: "", top_p: "", max_tokens: "", ...read(SETTINGS, {}) },

  get apiKey() { return localStorage.getItem(KEY) || ""; },
  set apiKey(v) { if (v) localStorage.setItem(KEY, v); else localStorage.removeItem(KEY); },
  get model() { return localStorage.getItem(MODEL) || ""; },
  set model(v) { localStorage.setItem(MODEL, v); },

  saveSettings() { localStorage.setItem(SETTINGS, JSON.stringify(this.settings)); },

  // Saves the conversations; when the browser's quota is full, drops the images of the oldest
  // messages first (their text stays) and says so (returns a note, else "").
  save() {
    for (let attempt = 0; ; attempt++) {
      try {
        localStorage.setItem(CONVERSATIONS, JSON.stringify(this.conversations));
        return attempt ? "Browser storage is full: images of older messages were not kept." : "";
      } catch (e) {
        if (!dropOldestImages(this.conversations)) return "Browser storage is full: this conversation is not saved.";
      }
    }
  },

  find(id) { return this.conversations.find((c) => c.id === id) || null; },

  create(model) {
    const c = { id: newId(), title: "", model, created: Date.now(), updated: Date.now(), messages: [] };
    this.conversations.unshift(c);
    return c;
  },

  remove(id) {
    this.conversations = this.conversations.filter((c) => c.id !== id);
    this.save();
  },
};

function dropOldestImages(conversations) {
  const byAge = [...conversations].sort((a, b) => a.updated - b.updated);
  for (const c of byAge) {
    for (const m of c.messages) {
      if (m.images && m.images.length) {
        m.images = [];
        m.imagesDropped = true;
        return true;
      }
    }
  }
  return false;
}
