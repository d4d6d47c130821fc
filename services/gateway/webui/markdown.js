// A small Markdown renderer that builds DOM nodes: model output only ever becomes text nodes
// (textContent / createTextNode), never HTML. It covers what chat models write: paragraphs,
// headings, fenced code, lists, block quotes, tables, rules, and inline code, bold, italic,
// strike-through and links (http, https and mailto only). An unclosed code fence (a stream
// still being written) runs to the end of the text.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function isBlank(line) {
  return line.trim() === "";
}

function startsBlock(line, next) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line)
    || (line.includes("|") && next !== undefined && TABLE_SEP.test(next) && next.includes("-"));
}

export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  renderBlocks(text.replace(/\r\n?/g, "\n").split("\n"), frag);
  return frag;
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) { i++; continue; }
    let m;
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i++;
      const closes = (l) => {
        const t = l.trim();
        return t.length >= fence.length && t === fence[0].repeat(t.length);
      };
      while (i < lines.length && !closes(lines[i])) {
        body.push(lines[i]);
        i++;
      }
      i++;  // the closing fence
      parent.append(codeBlock(body.join("\n"), m[2]));
      continue;
    }
    if ((m = HEADING.exec(line))) {
      const h = el("h" + Math.min(m[1].length + 2, 6));
      renderInline(m[2], h);
      parent.append(h);
      i++;
      continue;
    }
    if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].replace(QUOTE, ""));
      const q = el("blockquote");
      renderBlocks(inner, q);
      parent.append(q);
      continue;
    }
    if ((m = ITEM.exec(line))) {
      i = renderList(lines, i, parent);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      i = renderTable(lines, i, parent);
      continue;
    }
    const para = [line];
    i++;
    while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i], lines[i + 1])) para.push(lines[i++]);
    const p = el("p");
    renderInline(para.join("\n"), p);
    parent.append(p);
  }
}

function renderList(lines, i, parent) {
  const first = ITEM.exec(lines[i]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let loose = false;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const content = [m[3]];
    const width = m[1].length + m[2].length + 1;
    i++;
    while (i < lines.length) {
      const line = lines[i];
      if (isBlank(line)) {
        const next = lines[i + 1];
        if (next !== undefined && (next.length - next.trimStart().length) > indent && !isBlank(next)) {
          content.push("");
          loose = true;
          i++;
          continue;
        }
        break;
      }
      const lead = line.length - line.trimStart().length;
      const sub = ITEM.exec(line);
      if (sub && sub[1].length <= indent) break;
      if (lead === 0 && startsBlock(line, lines[i + 1])) break;
      content.push(lead > indent ? line.slice(Math.min(lead, width)) : line.trimStart());
      i++;
    }
    const li = el("li");
    if (loose) {
      renderBlocks(content, li);
    } else {   // a tight item: its text inline, then any nested list or code as blocks
      let cut = content.findIndex((l, k) => k > 0 && startsBlock(l, content[k + 1]));
      if (cut === -1) cut = content.length;
      renderInline(content.slice(0, cut).join("\n"), li);
      if (cut < content.length) renderBlocks(content.slice(cut), li);
    }
    list.append(li);
    if (i < lines.length && isBlank(lines[i])) {
      const next = lines[i + 1];
      const nm = next !== undefined && ITEM.exec(next);
      if (nm && nm[1].length === indent) { i++; continue; }
    }
  }
  parent.append(list);
  return i;
}

function cells(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function renderTable(lines, i, parent) {
  const head = cells(lines[i]);
  const align = cells(lines[i + 1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : "left"));
  const wrap = el("div", "table-wrap");
  const table = el("table");
  const thead = el("thead");
  const tr = el("tr");
  head.forEach((c, k) => {
    const th = el("th", "align-" + (align[k] || "left"));
    renderInline(c, th);
    tr.append(th);
  });
  thead.append(tr);
  table.append(thead);
  const tbody = el("tbody");
  i += 2;
  while (i < lines.length && lines[i].includes("|") && !isBlank(lines[i])) {
    const row = el("tr");
    cells(lines[i]).slice(0, Math.max(head.length, 1)).forEach((c, k) => {
      const td = el("td", "align-" + (align[k] || "left"));
      renderInline(c, td);
      row.append(td);
    });
    tbody.append(row);
    i++;
  }
  table.append(tbody);
  wrap.append(table);
  parent.append(wrap);
  return i;
}

function codeBlock(code, lang) {
  const box = el("div", "code-block");
  const bar = el("div", "code-bar");
  bar.append(el("span", "code-lang", lang || "text"));
  const copy = el("button", "copy", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy code");
  bar.append(copy);
  const pre = el("pre");
  const codeEl = el("code", null, code);
  pre.append(codeEl);
  box.append(bar, pre);
  return box;
}

// Inline spans, scanned left to right; nested emphasis and link text are rendered recursively.
const LINK = /\[((?:[^\[\]\\]|\\.)*)\]\(\s*<?([^\s()<>]*(?:\([^\s()<>]*\)[^\s()<>]*)*)>?(?:\s+"[^"]*")?\s*\)/y;
const AUTOLINK = /https?:\/\/[^\s<>"'`]*[^\s<>"'`.,;:!?)\]}*_~]/y;

function safeUrl(raw) {
  try {
    const url = new URL(raw, window.location.href);
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

function link(parent, href, label) {
  const url = safeUrl(href);
  if (!url) {
    if (typeof label === "string") parent.append(document.createTextNode(label));
    else parent.append(label);
    return;
  }
  const a = el("a");
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  if (typeof label === "string") a.textContent = label;
  else a.append(label);
  parent.append(a);
}

function findClose(text, marker, from) {
  let k = from;
  while ((k = text.indexOf(marker, k)) !== -1) {
    if (text[k - 1] !== "\\" && k > from && !/\s/.test(text[k - 1])) return k;
    k += 1;
  }
  return -1;
}

export function renderInline(text, parent) {
  let buf = "";
  const flush = () => {
    if (buf) parent.append(document.createTextNode(buf));
    buf = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && /[!-\/:-@\[-`{-~]/.test(text[i + 1])) {
      buf += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "\n") {
      flush();
      parent.append(el("br"));
      i++;
      continue;
    }
    if (c === "`") {
      let run = 1;
      while (text[i + run] === "`") run++;
      const ticks = "`".repeat(run);
      const end = text.indexOf(ticks, i + run);
      if (end !== -1) {
        flush();
        let code = text.slice(i + run, end);
        if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ")) code = code.slice(1, -1);
        parent.append(el("code", null, code));
        i = end + run;
        continue;
      }
      buf += ticks;
      i += run;
      continue;
    }
    if ((c === "*" || c === "_" || c === "~") && text[i + 1] === c) {
      const marker = c + c;
      const end = findClose(text, marker, i + 2);
      if (end !== -1 && !/\s/.test(text[i + 2])) {
        flush();
        const node = el(c === "~" ? "del" : "strong");
        renderInline(text.slice(i + 2, end), node);
        parent.append(node);
        i = end + 2;
        continue;
      }
    } else if ((c === "*" || c === "_") && i + 1 < text.length && !/\s/.test(text[i + 1])
               && (c === "*" || i === 0 || !/[\p{L}\p{N}]/u.test(text[i - 1]))) {
      const end = findClose(text, c, i + 1);
      if (end !== -1 && (c === "*" || !/[\p{L}\p{N}]/u.test(text[end + 1] || " "))) {
        flush();
        const em = el("em");
        renderInline(text.slice(i + 1, end), em);
        parent.append(em);
        i = end + 1;
        continue;
      }
    } else if (c === "[" || (c === "!" && text[i + 1] === "[")) {
      LINK.lastIndex = c === "!" ? i + 1 : i;
      const m = LINK.exec(text);
      if (m) {
        flush();
        if (c === "!") {
          // no remote images: the alt text, linked
          link(parent, m[2], m[1] || m[2]);
        } else {
          const label = document.createDocumentFragment();
          renderInline(m[1], label);
          link(parent, m[2], label);
        }
        i = LINK.lastIndex;
        continue;
      }
    } else if (c === "h" && (i === 0 || !/[\p{L}\p{N}]/u.test(text[i - 1]))) {
      AUTOLINK.lastIndex = i;
      const m = AUTOLINK.exec(text);
      if (m) {
        flush();
        link(parent, m[0], m[0]);
        i = AUTOLINK.lastIndex;
        continue;
      }
    }
    buf += c;
    i++;
  }
  flush();
}
