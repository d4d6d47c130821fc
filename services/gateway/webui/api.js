// The page's only link to the server: the public OpenAI-compatible API (/v1/models and streamed
// /v1/chat/completions), with the user's API key as a bearer token on every call.

export class ApiError extends Error {
  // status: the HTTP status (0 when the request never got an answer); code, type, param: the
  // fields of the OpenAI error body {"error": {"message", "type", "param", "code"}}.
  constructor(status, message, { code = null, type = null, param = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.type = type;
    this.param = param;
  }
}

function headers(key, json) {
  const h = {};
  if (key) h.Authorization = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function failure(resp) {
  // An error answer as an ApiError, whatever its body is (OpenAI JSON, text or nothing).
  const text = await resp.text().catch(() => "");
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  const e = body && typeof body === "object" && body.error;
  if (e && typeof e === "object") {
    const err = new ApiError(resp.status, String(e.message || resp.statusText), e);
    const retry = resp.headers.get("Retry-After");
    if (retry) err.retryAfter = Number(retry);
    return err;
  }
  return new ApiError(resp.status, text.trim().slice(0, 300) || resp.statusText || "request failed");
}

async function send(path, init) {
  try {
    return await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "The server could not be reached (" + (e.message || e) + ").");
  }
}

export async function listModels(key) {
  const resp = await send("/v1/models", { headers: headers(key), cache: "no-store" });
  if (!resp.ok) throw await failure(resp);
  const body = await resp.json();
  return Array.isArray(body.data) ? body.data : [];
}

// Yields the parsed chunks of a streamed chat completion. An error event in the stream (the
// gateway sends `data: {"error": ...}` when a request fails after its answer started) is thrown
// as an ApiError; `signal` aborts the request (the server then stops generating).
export async function* streamChat(body, key, signal) {
  const resp = await send("/v1/chat/completions", {
    method: "POST", headers: headers(key, true), body: JSON.stringify(body), signal,
  });
  if (!resp.ok) throw await failure(resp);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = done ? "" : lines.pop();
      for (const line of lines) {
        if (line === "") {            // the end of one event
          if (!data.length) continue;
          const payload = data.join("\n");
          data = [];
          if (payload === "[DONE]") return;
          let chunk;
          try { chunk = JSON.parse(payload); } catch { continue; }
          if (chunk && chunk.error) {   // after a 200: the status says nothing, the code does
            const e = chunk.error;
            throw new ApiError(0, String(e.message || "error"), e);
          }
          yield chunk;
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line[5] === " " ? 6 : 5));
        }                             // comments (":") and other fields are not used
      }
      if (done) {
        if (data.length && data.join("\n") !== "[DONE]") {
          throw new ApiError(0, "The answer ended before it was complete (connection closed).");
        }
        return;
      }
    }
  } finally {
    reader.releaseLock();
  }
}
