// Building elements without innerHTML: every value lands as text.
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// A message in the live region at the top of the page.
export function say(text, error = false) {
  const status = document.getElementById('status');
  clear(status).append(h('p', { class: error ? 'msg error' : 'msg', role: error ? 'alert' : null }, text));
}

// A table: `cols` are [heading, (row) => cell, numeric?].
export function table(caption, cols, rows, attrs = {}) {
  return h('table', attrs,
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, cols.map(([name, , num]) => h('th', { scope: 'col', class: num ? 'num' : null }, name)))),
    h('tbody', {}, rows.length
      ? rows.map((r) => h('tr', {}, cols.map(([, cell, num]) => h('td', { class: num ? 'num' : null }, cell(r)))))
      : h('tr', {}, h('td', { colspan: cols.length, class: 'muted' }, 'None'))));
}

// A labelled input: [label element, input].
let ids = 0;
export function field(label, attrs = {}) {
  const id = attrs.id || `f${++ids}`;
  const input = attrs.options
    ? h('select', { id, name: attrs.name }, attrs.options.map(([v, t]) => h('option', { value: v }, t)))
    : h('input', { id, ...attrs });
  return [h('label', { for: id }, label, input), input];
}

export const fmt = {
  int: (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US')),
  rate: (n) => (n === null || n === undefined || Number.isNaN(n) ? '–' : n >= 100 ? n.toFixed(0) : n.toFixed(1)),
  ms: (s) => (s === null || s === undefined || Number.isNaN(s) ? '–' : `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`),
  pct: (x) => (x === null || x === undefined || Number.isNaN(x) ? '–' : `${(x * 100).toFixed(1)}%`),
  limit: (t) => (t ? `${t.rate}/s, burst ${t.burst}` : '–'),
  date: (s) => (s ? new Date(s * 1000).toISOString().replace('T', ' ').slice(0, 16) : '–'),
};
