// Live traffic from /metrics, read every 2 s: requests per second, 4xx and 5xx,
// p50/p99 latency, cache hit ratio and throttled requests, per API/stage/route.
import uPlot from 'uplot';
import { metrics } from '../api.js';
import { parse, quantile } from '../prom.js';
import { h, clear, table, fmt } from '../dom.js';

const EVERY_MS = 2000;
const POINTS = 90;

// Per route series: the counters the console shows, and latency buckets.
function snapshot(text) {
  const routes = new Map();
  const get = (l) => {
    const key = `${l.api}\u0000${l.stage}\u0000${l.route}`;
    let r = routes.get(key);
    if (!r) {
      r = { api: l.api, stage: l.stage, route: l.route, requests: 0, e4: 0, e5: 0, throttled: 0, quota: 0, hits: 0, misses: 0, buckets: [] };
      routes.set(key, r);
    }
    return r;
  };
  const field = {
    shardgate_requests_total: 'requests', shardgate_4xx_total: 'e4', shardgate_5xx_total: 'e5',
    shardgate_throttled_total: 'throttled', shardgate_quota_exceeded_total: 'quota',
    shardgate_cache_hits_total: 'hits', shardgate_cache_misses_total: 'misses',
  };
  for (const s of parse(text)) {
    if (s.labels.route === undefined) continue;
    if (field[s.name]) get(s.labels)[field[s.name]] += s.value;
    else if (s.name === 'shardgate_latency_seconds_bucket') {
      get(s.labels).buckets.push([s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), s.value]);
    }
  }
  return { at: performance.now(), routes };
}

function delta(now, before) {
  const dt = before ? (now.at - before.at) / 1000 : 0;
  const rows = [];
  for (const [key, r] of now.routes) {
    const b = before && before.routes.get(key);
    const d = (f) => (b ? Math.max(0, r[f] - b[f]) : 0);
    const buckets = r.buckets.map(([le, c], i) => [le, b && b.buckets[i] ? Math.max(0, c - b.buckets[i][1]) : c]);
    const lookups = d('hits') + d('misses');
    rows.push({
      ...r,
      rps: dt > 0 ? d('requests') / dt : NaN,
      e4s: dt > 0 ? d('e4') / dt : NaN,
      e5s: dt > 0 ? d('e5') / dt : NaN,
      thr: dt > 0 ? (d('throttled') + d('quota')) / dt : NaN,
      hitRatio: lookups > 0 ? d('hits') / lookups : (r.hits + r.misses > 0 ? r.hits / (r.hits + r.misses) : NaN),
      p50: quantile(0.5, buckets),
      p99: quantile(0.99, buckets),
    });
  }
  rows.sort((a, b) => (b.requests - a.requests) || a.route.localeCompare(b.route));
  return rows;
}

export async function trafficPage(root) {
  const stats = h('div', { class: 'stats', id: 'traffic-stats' });
  const chartBox = h('figure', { class: 'chart', id: 'traffic-chart', 'aria-label': 'Requests per second, 4xx and 5xx per second, over the last 3 minutes' },
    h('figcaption', {}, 'Requests per second (all routes), updated every 2 s'));
  const tableBox = h('div', { id: 'traffic-routes' });
  const note = h('p', { class: 'muted' }, 'Rates over the last 2 s; latency percentiles of the requests answered in that window (all time until the second reading).');
  root.append(stats, chartBox, note, tableBox);
  const xs = []; const total = []; const e4 = []; const e5 = [];
  const width = Math.min(900, (document.getElementById('main').clientWidth || 900) - 40);
  const plot = new uPlot({
    width, height: 220,
    series: [{}, { label: 'req/s', stroke: '#0b5cad', width: 2 }, { label: '4xx/s', stroke: '#c2410c', width: 2 }, { label: '5xx/s', stroke: '#b42318', width: 2 }],
    axes: [{}, { label: 'per second' }],
    // The last POINTS readings' span, even before there are that many.
    scales: { x: { time: true, range: (u, min, max) => [Math.min(min, max - (POINTS * EVERY_MS) / 1000), max] } },
  }, [xs, total, e4, e5], chartBox);
  let before = null;
  let stopped = false;
  const tick = async () => {
    let text;
    try { text = await metrics(); } catch (e) {
      clear(stats).append(h('p', { class: 'error-text', role: 'alert' }, `Cannot read /metrics: ${e.message}`));
      return;
    }
    if (stopped) return;
    const now = snapshot(text);
    const rows = delta(now, before);
    const sum = (f) => rows.reduce((a, r) => a + (Number.isNaN(r[f]) ? 0 : r[f]), 0);
    if (before) {
      xs.push(Date.now() / 1000); total.push(sum('rps')); e4.push(sum('e4s')); e5.push(sum('e5s'));
      if (xs.length > POINTS) { xs.shift(); total.shift(); e4.shift(); e5.shift(); }
      plot.setData([xs, total, e4, e5]);
    }
    before = now;
    const stat = (k, v, id) => h('div', { class: 'stat' }, h('div', { class: 'v', id }, v), h('div', { class: 'k' }, k));
    clear(stats).append(
      stat('requests/s', fmt.rate(before && xs.length ? total[total.length - 1] : NaN), 'stat-rps'),
      stat('4xx/s', fmt.rate(xs.length ? e4[e4.length - 1] : NaN)),
      stat('5xx/s', fmt.rate(xs.length ? e5[e5.length - 1] : NaN)),
      stat('throttled/s', fmt.rate(sum('thr'))),
      stat('requests since start', fmt.int(rows.reduce((a, r) => a + r.requests, 0)), 'stat-total'));
    clear(tableBox).append(table('Per route', [
      ['API', (r) => r.api], ['Stage', (r) => r.stage], ['Route', (r) => h('code', {}, r.route)],
      ['req/s', (r) => fmt.rate(r.rps), true], ['4xx/s', (r) => fmt.rate(r.e4s), true], ['5xx/s', (r) => fmt.rate(r.e5s), true],
      ['p50', (r) => fmt.ms(r.p50), true], ['p99', (r) => fmt.ms(r.p99), true],
      ['cache hits', (r) => fmt.pct(r.hitRatio), true], ['throttled/s', (r) => fmt.rate(r.thr), true],
      ['total', (r) => fmt.int(r.requests), true],
    ], rows, { id: 'traffic-table' }));
  };
  await tick();
  const timer = setInterval(tick, EVERY_MS);
  return () => { stopped = true; clearInterval(timer); plot.destroy(); };
}
