// Upstream groups with their targets' health, and the cluster's nodes.
import { call } from '../api.js';
import { h, table, fmt } from '../dom.js';

export async function upstreamsPage(root) {
  const { items } = await call('GET', '/upstreams');
  if (!items.length) root.append(h('p', { class: 'muted' }, 'No upstream groups (routes proxy to fixed URIs).'));
  for (const g of items) {
    root.append(h('section', { class: 'card', 'aria-label': `Upstream group ${g.name}` },
      h('h2', {}, g.name, g.implicit ? h('span', { class: 'muted' }, ' (from a route\'s URI)') : ''),
      h('p', {}, `Balance ${g.balance} · retries ${g.retries.attempts} (budget ${g.retries.budget_percent}%)`,
        g.health_check ? ` · health check ${g.health_check.path} every ${g.health_check.interval_ms} ms` : ' · no active health check'),
      table(`Targets of ${g.name}`, [
        ['Target', (t) => h('code', {}, t.url)], ['Address', (t) => t.address],
        ['State', (t) => h('span', { class: t.state === 'up' ? 'pill ok' : 'pill bad' }, t.state)],
        ['Weight', (t) => t.weight, true], ['Requests', (t) => fmt.int(t.requests), true],
        ['Failures', (t) => fmt.int(t.failures), true], ['Retries', (t) => fmt.int(t.retries), true],
        ['Ejections', (t) => fmt.int(t.ejections), true],
        ['Open / idle conns', (t) => `${t.connections_open} / ${t.connections_idle}`, true],
      ], g.targets)));
  }
}

export async function clusterPage(root) {
  let c;
  try {
    c = await call('GET', '/cluster');
  } catch (e) {
    if (e.status && e.status !== 401) {
      root.append(h('p', {}, `Not in cluster mode: ${e.message}`));
      return;
    }
    throw e;
  }
  root.append(h('p', {}, 'This node ', h('code', {}, c.node), ' · Redis ',
    h('span', { class: c.redis === 'up' ? 'pill ok' : 'pill bad' }, c.redis)),
  table('Nodes', [
    ['Node', (n) => [h('code', {}, n.id), n.this_node ? ' (this one)' : '']],
    ['State', (n) => h('span', { class: n.alive ? 'pill ok' : 'pill bad' }, n.alive ? 'alive' : 'silent')],
    ['Started', (n) => (n.started_ms ? new Date(n.started_ms).toISOString().replace('T', ' ').slice(0, 19) : '–')],
    ['Last seen', (n) => (n.last_seen_ms ? new Date(n.last_seen_ms).toISOString().replace('T', ' ').slice(0, 19) : '–')],
    ['Version', (n) => n.version ?? '–'], ['Admin', (n) => n.admin ?? '–'],
  ], c.items || []));
}
