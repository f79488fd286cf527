// APIs → stages → routes, as the running plan serves them, with deployments.
import { call } from '../api.js';
import { h, say, table, field, fmt } from '../dom.js';

function integration(i) {
  if (!i) return '–';
  const t = i.type || '?';
  const target = i.uri || i.function || i.function_arn || i.upstream || i.subtype || (t === 'mock' ? `status ${i.status ?? 200}` : '');
  return [h('code', {}, t), target ? ' ' : '', target ? h('code', {}, target) : ''];
}

function authorizer(r) {
  const parts = [];
  if (r.authorizer) parts.push(h('code', {}, r.authorizer));
  if (r.authorizationScopes && r.authorizationScopes.length) parts.push(` scopes: ${r.authorizationScopes.join(', ')}`);
  return parts.length ? parts : '–';
}

async function stageCard(api, s, reload) {
  const serves = s.deploymentId ? ['deployment ', h('code', {}, s.deploymentId)] : 'the config file';
  const card = h('section', { class: 'card', 'aria-label': `Stage ${s.stageName} of ${api.name}` },
    h('h3', {}, `Stage ${s.stageName}`),
    h('p', {}, 'Serves ', serves, ' · stage throttle ', fmt.limit(s.throttle),
      ' · cache ', s.cacheBytes ? `${Math.round(s.cacheBytes / 1048576)} MiB` : 'off',
      s.canarySettings ? [' · canary ', `${s.canarySettings.percentTraffic}%`,
        s.canarySettings.deploymentId ? [' of ', h('code', {}, s.canarySettings.deploymentId)] : ''] : ''),
    table(`Routes of ${api.name}/${s.stageName}`, [
      ['Route', (r) => h('code', {}, r.route)],
      ['Integration', (r) => integration(r.integration)],
      ['Authorizer', authorizer],
      ['API key', (r) => (r.apiKeyRequired ? 'required' : '–')],
      ['Throttle', (r) => fmt.limit(r.throttle)],
      ['Cache', (r) => (r.cacheTtlSeconds ? `${r.cacheTtlSeconds} s` : '–')],
      ['Validated', (r) => (r.validated ? 'yes' : '–')],
    ], s.routes || [], { class: 'routes', 'data-stage': `${api.name}/${s.stageName}` }));
  if (api.type === 'websocket') return card;
  // Deployments: snapshot the running config onto this stage, or point the stage
  // at an earlier one (rollback), or back at the config file.
  let deployments = [];
  try { deployments = (await call('GET', `/apis/${encodeURIComponent(api.name)}/deployments`)).items || []; } catch { /* no store */ }
  const [descLabel, desc] = field('Description', { name: 'description', placeholder: 'what changed' });
  const deploy = h('form', { class: 'inline', 'aria-label': `Deploy ${api.name} to ${s.stageName}` }, descLabel,
    h('button', { type: 'submit', class: 'primary' }, `Deploy the config to ${s.stageName}`));
  deploy.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const d = await call('POST', `/apis/${encodeURIComponent(api.name)}/deployments`, { stageName: s.stageName, description: desc.value });
      say(`Deployed ${api.name} as ${d.id}; stage ${s.stageName} serves it.`);
      reload();
    } catch (e) { say(`Deployment refused (${e.status}): ${e.message}`, true); }
  });
  const options = [['', 'the config file'], ...deployments.map((d) => [d.id, `${d.id} · ${fmt.date(d.createdDate)}${d.description ? ` · ${d.description}` : ''}`])];
  const [pickLabel, pick] = field('Serve', { name: 'deployment', options });
  pick.value = s.deploymentId || '';
  const point = h('form', { class: 'inline', 'aria-label': `Point ${s.stageName} at a deployment` }, pickLabel,
    h('button', { type: 'submit' }, 'Apply (roll back or forward)'));
  point.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await call('PATCH', `/apis/${encodeURIComponent(api.name)}/stages/${encodeURIComponent(s.stageName)}`, { deploymentId: pick.value || null });
      say(`Stage ${api.name}/${s.stageName} now serves ${pick.value || 'the config file'}.`);
      reload();
    } catch (e) { say(`Stage not changed (${e.status}): ${e.message}`, true); }
  });
  card.append(h('h4', { class: 'muted' }, `Deployments (${deployments.length})`), deploy, point);
  return card;
}

export async function apisPage(root, reload) {
  const { items } = await call('GET', '/apis');
  if (!items.length) root.append(h('p', { class: 'muted' }, 'No APIs in the config.'));
  for (const api of items) {
    root.append(h('h2', {}, api.name, ' ', h('span', { class: 'pill' }, api.type)));
    for (const s of api.stages) root.append(await stageCard(api, s, reload));
  }
}
