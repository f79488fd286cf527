// Usage plans: create or edit throttle and quota, the keys in each, and a daily
// usage chart per key (AWS's GetUsage data).
import uPlot from 'uplot';
import { call } from '../api.js';
import { h, say, table, field, fmt } from '../dom.js';

const DAYS = 14;
const COLORS = ['#0b5cad', '#c2410c', '#1a7f37', '#8250df', '#b42318', '#0e7490', '#a16207'];

function day(offset) {
  const d = new Date(Date.now() + offset * 86400000);
  return d.toISOString().slice(0, 10);
}

function planForm(plan, reload) {
  const p = plan || {};
  const [nl, name] = field('Name', { name: 'name', required: true, value: p.name || '', readonly: plan ? true : null });
  const [sl, stages] = field('Stages (api/stage, comma separated)', { name: 'stages', required: true, value: (p.stages || []).join(', ') });
  const [rl, rate] = field('Throttle rate (req/s)', { name: 'rate', type: 'number', min: 0, step: 'any', value: p.throttle ? p.throttle.rate : '' });
  const [bl, burst] = field('Burst', { name: 'burst', type: 'number', min: 0, value: p.throttle ? p.throttle.burst : '' });
  const [ql, limit] = field('Quota (requests)', { name: 'limit', type: 'number', min: 0, value: p.quota ? p.quota.limit : '' });
  const [pl, period] = field('Quota period', { name: 'period', options: [['day', 'day'], ['week', 'week'], ['month', 'month']] });
  if (p.quota) period.value = p.quota.period;
  const f = h('form', { class: 'inline', 'aria-label': plan ? `Edit usage plan ${p.name}` : 'Create a usage plan' },
    nl, sl, rl, bl, ql, pl, h('button', { type: 'submit', class: 'primary' }, plan ? `Save ${p.name}` : 'Create plan'));
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const def = { name: name.value.trim(), stages: stages.value.split(',').map((s) => s.trim()).filter(Boolean) };
    if (p.description) def.description = p.description;
    if (p.routes) def.routes = p.routes;
    if (rate.value !== '') def.throttle = { rate: Number(rate.value), burst: Number(burst.value || 0) };
    if (limit.value !== '') def.quota = { limit: Number(limit.value), period: period.value };
    try {
      if (plan) await call('PUT', `/usageplans/${encodeURIComponent(p.id)}`, def);
      else await call('POST', '/usageplans', def);
      say(`Usage plan ${def.name} ${plan ? 'saved' : 'created'}.`);
      reload();
    } catch (e) { say(`Usage plan not saved (${e.status}): ${e.message}`, true); }
  });
  return f;
}

// The chart and, for screen readers and exact figures, the same data as a table.
function usageChart(plan, keys, usage) {
  const dates = [];
  for (let i = DAYS - 1; i >= 0; i--) dates.push(day(-i));
  const xs = dates.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000);
  const named = Object.fromEntries(keys.map((k) => [k.id, k.name]));
  const ids = Object.keys(usage.values || {});
  const series = ids.map((id) => (usage.values[id] || []).map((pair) => pair[0]));
  const wrap = h('figure', { class: 'chart', id: `usage-${plan.id}`, 'aria-label': `Requests per day and key in ${plan.name}` });
  if (!ids.length) {
    wrap.append(h('figcaption', { class: 'muted' }, 'No keys in this plan yet.'));
    return wrap;
  }
  wrap.append(h('figcaption', {}, `Requests per day by key, ${dates[0]} to ${dates[dates.length - 1]} (UTC)`));
  const width = Math.min(900, (document.getElementById('main').clientWidth || 900) - 40);
  const opts = {
    width, height: 220,
    series: [{}, ...ids.map((id, i) => ({ label: named[id] || id, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true } }))],
    axes: [{}, { label: 'requests' }],
    scales: { x: { time: true } },
  };
  // uPlot needs the element in the document to measure; draw on the next frame.
  const plotBox = h('div', {});
  wrap.append(plotBox);
  requestAnimationFrame(() => new uPlot(opts, [xs, ...series], plotBox));
  const rows = dates.map((d, i) => ({ d, i }));
  wrap.append(table(`Daily usage in ${plan.name}`, [
    ['Date', (r) => r.d],
    ...ids.map((id, j) => [named[id] || id, (r) => fmt.int(series[j][r.i]), true]),
  ], rows.filter((r) => series.some((s) => s[r.i] > 0)), { class: 'usage' }));
  return wrap;
}

export async function plansPage(root, reload) {
  const { items: plans } = await call('GET', '/usageplans');
  root.append(planForm(null, reload));
  for (const p of plans) {
    const [{ items: keys }, usage] = await Promise.all([
      call('GET', `/usageplans/${encodeURIComponent(p.id)}/keys`),
      call('GET', `/usageplans/${encodeURIComponent(p.id)}/usage?startDate=${day(-(DAYS - 1))}&endDate=${day(0)}&limit=500`),
    ]);
    const detach = (k) => h('button', { type: 'button', class: 'danger', onclick: async () => {
      try {
        await call('DELETE', `/usageplans/${encodeURIComponent(p.id)}/keys/${encodeURIComponent(k.id)}`);
        say(`Key ${k.name} removed from ${p.name}.`);
        reload();
      } catch (e) { say(`Key not removed (${e.status}): ${e.message}`, true); }
    } }, `Remove ${k.name}`);
    const remaining = (id) => {
      const days = (usage.values || {})[id];
      return days && days.length ? days[days.length - 1][1] : null;
    };
    root.append(h('section', { class: 'card', 'aria-label': `Usage plan ${p.name}` },
      h('h2', {}, p.name),
      h('p', {}, 'Stages ', (p.stages || []).join(', ') || '–', ' · throttle ', fmt.limit(p.throttle),
        ' · quota ', p.quota ? `${fmt.int(p.quota.limit)} per ${p.quota.period}` : '–'),
      table(`Keys in ${p.name}`, [
        ['Key', (k) => k.name],
        ['Id', (k) => h('code', {}, k.id)],
        ['Quota left', (k) => fmt.int(remaining(k.id)), true],
        ['', detach],
      ], keys),
      usageChart(p, keys, usage),
      h('details', {}, h('summary', {}, `Edit ${p.name}`), planForm(p, reload))));
  }
}
