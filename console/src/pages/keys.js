// API keys: create (the value is shown once), enable or disable, delete, attach
// to a usage plan.
import { call } from '../api.js';
import { h, say, table, field } from '../dom.js';

export async function keysPage(root, reload) {
  const [{ items: keys }, { items: plans }] = await Promise.all([call('GET', '/apikeys'), call('GET', '/usageplans')]);
  const planOptions = [['', '(none)'], ...plans.map((p) => [p.id, p.name])];

  const [nameLabel, name] = field('Name', { name: 'name', required: true, id: 'key-name' });
  const [descLabel, desc] = field('Description', { name: 'description', id: 'key-description' });
  const [planLabel, plan] = field('Usage plan', { name: 'plan', options: planOptions, id: 'key-plan' });
  const shown = h('div', { id: 'new-key' });
  const create = h('form', { class: 'inline', 'aria-label': 'Create an API key' }, nameLabel, descLabel, planLabel,
    h('button', { type: 'submit', class: 'primary', id: 'create-key' }, 'Create key'));
  create.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const k = await call('POST', '/apikeys', { name: name.value, description: desc.value, plans: plan.value ? [plan.value] : [] });
      await reload();
      const box = document.getElementById('new-key');
      box.replaceChildren(h('div', { class: 'secret', role: 'alert' },
        h('p', {}, `Key ${k.name} created (id `, h('code', {}, k.id), '). Copy its value now: it is not shown again.'),
        h('p', {}, h('code', { id: 'new-key-value' }, k.value))));
    } catch (e) { say(`Key not created (${e.status}): ${e.message}`, true); }
  });

  const act = (label, fn, cls) => h('button', { type: 'button', class: cls, onclick: fn }, label);
  const patch = async (k, enabled) => {
    try {
      await call('PATCH', `/apikeys/${encodeURIComponent(k.id)}`, { enabled });
      say(`Key ${k.name} ${enabled ? 'enabled' : 'disabled'}.`);
      reload();
    } catch (e) { say(`Key not changed (${e.status}): ${e.message}`, true); }
  };
  const remove = async (k) => {
    if (!window.confirm(`Delete key ${k.name}? Requests with it are refused from now on.`)) return;
    try {
      await call('DELETE', `/apikeys/${encodeURIComponent(k.id)}`);
      say(`Key ${k.name} deleted.`);
      reload();
    } catch (e) { say(`Key not deleted (${e.status}): ${e.message}`, true); }
  };
  const attach = (k) => {
    const free = plans.filter((p) => !(k.plans || []).includes(p.id));
    if (!free.length) return '';
    const [l, sel] = field(`Plan for ${k.name}`, { options: free.map((p) => [p.id, p.name]) });
    const f = h('form', { class: 'attach' }, l, h('button', { type: 'submit' }, 'Attach'));
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await call('POST', `/usageplans/${encodeURIComponent(sel.value)}/keys`, { keyId: k.id, keyType: 'API_KEY' });
        say(`Key ${k.name} attached to ${sel.value}.`);
        reload();
      } catch (e) { say(`Key not attached (${e.status}): ${e.message}`, true); }
    });
    return f;
  };

  root.append(create, shown, table('API keys', [
    ['Name', (k) => k.name],
    ['Id', (k) => h('code', {}, k.id)],
    ['State', (k) => h('span', { class: k.enabled ? 'pill ok' : 'pill bad' }, k.enabled ? 'enabled' : 'disabled')],
    ['Usage plans', (k) => (k.plans && k.plans.length ? k.plans.join(', ') : '–')],
    ['Actions', (k) => [
      k.enabled ? act(`Disable ${k.name}`, () => patch(k, false)) : act(`Enable ${k.name}`, () => patch(k, true)), ' ',
      act(`Delete ${k.name}`, () => remove(k), 'danger'), ' ', attach(k)]],
  ], keys, { id: 'keys' }));
}
