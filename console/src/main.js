// shardgate's console: a page over the admin API. Everything it shows or changes
// goes through the management API with the admin token as a bearer header; the
// token lives in session storage only.
import { call, token, setToken, ApiError } from './api.js';
import { h, clear, say, fmt } from './dom.js';
import { apisPage } from './pages/apis.js';
import { keysPage } from './pages/keys.js';
import { plansPage } from './pages/plans.js';
import { trafficPage } from './pages/traffic.js';
import { upstreamsPage, clusterPage } from './pages/infra.js';

const pages = {
  apis: ['APIs, stages and routes', apisPage],
  keys: ['API keys', keysPage],
  plans: ['Usage plans', plansPage],
  traffic: ['Live traffic', trafficPage],
  upstreams: ['Upstream groups', upstreamsPage],
  cluster: ['Cluster nodes', clusterPage],
};

// What the page now showing must stop (timers) when another replaces it.
let leave = null;

function loginView(reason) {
  document.getElementById('nav').hidden = true;
  document.getElementById('actions').hidden = true;
  const main = clear(document.getElementById('main'));
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'current-password', required: true });
  const err = h('p', { id: 'login-error', class: 'error-text', role: 'alert' }, reason || '');
  const form = h('form', { 'aria-labelledby': 'login-title' },
    h('label', { for: 'token' }, 'Admin token (admin.token in the config)'), input,
    h('button', { type: 'submit', class: 'primary', id: 'login' }, 'Sign in'), err);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    setToken(input.value.trim());
    try {
      await call('GET', '/apis');
      if (!location.hash || location.hash === '#/login') location.hash = '#/apis';
      else route();
    } catch (e) {
      setToken(null);
      err.textContent = e instanceof ApiError && e.status === 401
        ? 'Wrong token: the admin API refused it (401).'
        : `Cannot reach the admin API: ${e.message}`;
      input.focus();
    }
  });
  main.append(h('section', { class: 'login' }, h('h1', { id: 'login-title' }, 'Sign in to shardgate'),
    h('p', { class: 'muted' }, 'The token is kept in this tab\'s session storage only and sent as a bearer header to the admin API.'),
    form));
  input.focus();
}

async function route() {
  if (leave) { leave(); leave = null; }
  if (!token()) { loginView(); return; }
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1] || 'apis';
  const [title, render] = pages[name] || pages.apis;
  document.getElementById('nav').hidden = false;
  document.getElementById('actions').hidden = false;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#/${name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${title} · shardgate`;
  const main = clear(document.getElementById('main'));
  main.append(h('h1', {}, title));
  const body = h('div', {});
  main.append(body);
  main.focus();
  try {
    leave = await render(body, () => route()) || null;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    body.append(h('p', { class: 'error-text', role: 'alert' }, `Could not load: ${e.message}`));
  }
}

document.addEventListener('shardgate:unauthorized', () => {
  if (leave) { leave(); leave = null; }
  setToken(null);
  loginView('Wrong token: the admin API refused it (401). Sign in again.');
});

document.getElementById('logout').addEventListener('click', () => {
  setToken(null);
  if (leave) { leave(); leave = null; }
  loginView('Signed out.');
});

document.getElementById('reload').addEventListener('click', async () => {
  try {
    const r = await call('POST', '/reload');
    say(`Config reloaded: generation ${r.generation}, ${fmt.int(r.stages)} stages, ${fmt.int(r.routes)} routes` +
      (r.warnings && r.warnings.length ? `; warnings: ${r.warnings.join('; ')}` : '') +
      (r.switched ? '' : '; not every worker switched within the wait'));
    route();
  } catch (e) {
    const errors = e.body && Array.isArray(e.body.errors) ? `: ${e.body.errors.join('; ')}` : '';
    say(`Reload refused (${e.status || 'error'}): ${e.message}${errors}`, true);
  }
});

window.addEventListener('hashchange', route);
route();
