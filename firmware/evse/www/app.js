// EV PLUS web app: the pages of manual §8.1.2 and §12 on top of the JSON API.
//
// index.html holds every page as a <section>; the hash (#/state, #/config, ...) picks the
// visible one. No framework and no inline script or style, so a strict CSP holds. Text
// from outside (SSIDs, card UIDs, fault values, server messages) only ever goes into
// textContent, never into markup. Strings come from /lang/<code>.json, English filling
// any key a language file lacks, so a language pack may be partial.
'use strict';
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.prototype.slice.call((root || document).querySelectorAll(sel));
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const POLL_MS = 2000;
  const LANG_KEY = 'evse.lang';

  // ---- strings ---------------------------------------------------------------------------
  let EN = {};
  let enReady = null; // the English file, loaded once: it fills what a language lacks
  let S = {};
  let lang = 'en';
  let langs = [];

  function has(key) { return key in S || key in EN; }

  function t(key, vars) {
    let s = key in S ? S[key] : key in EN ? EN[key] : key;
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
    return s;
  }

  // A value the charger reports (a state, a stop mode): translated when we know it.
  function tv(prefix, v) { return v == null ? '—' : has(prefix + v) ? t(prefix + v) : String(v); }

  async function getJSON(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
    return r.json();
  }

  function storedLang() {
    try { return localStorage.getItem(LANG_KEY); } catch (e) { return null; }
  }

  function storeLang(code) {
    try { localStorage.setItem(LANG_KEY, code); } catch (e) { /* private mode: this visit only */ }
  }

  function known(code) { return langs.some(l => l.code === code); }

  let wanted = null; // the last language asked for: a slower, older load must not win

  async function setLang(code) {
    if (!known(code)) code = 'en';
    wanted = code;
    if (!enReady) enReady = getJSON('/lang/en.json').catch(() => ({}));
    EN = await enReady;
    const strings = code === 'en' ? EN : await getJSON('/lang/' + code + '.json').catch(() => EN);
    if (wanted !== code) return;
    S = strings;
    lang = code;
    document.documentElement.lang = code;
    $('#uilang').value = code;
    $$('[data-t]').forEach(e => { e.textContent = t(e.dataset.t); });
    $$('#rfid-write [data-slot]').forEach(b => { b.textContent = t('rfid.write', {n: b.dataset.slot}); });
    document.title = t('app.title');
    if (current) enter(current); // redraw what the page built from data
  }

  // Before anyone chose a language in this browser, follow the charger's setting.
  function adoptChargerLang(code) {
    if (code && !storedLang() && code !== lang && known(code)) setLang(code);
  }

  // ---- formatting ------------------------------------------------------------------------
  function num(v, digits) {
    if (typeof v !== 'number' || !isFinite(v)) return '—';
    const o = {minimumFractionDigits: digits, maximumFractionDigits: digits};
    try { return v.toLocaleString(lang, o); } catch (e) { return v.toFixed(digits); }
  }

  const pad = n => (n < 10 ? '0' : '') + n;

  // The manual's style, 2021-07-25 09:38:35, in the phone's time zone.
  function when(d, timeOnly) {
    if (!d || isNaN(d)) return '—';
    const time = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    if (timeOnly) return time;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + time;
  }

  const epoch = s => (typeof s === 'number' ? new Date(s * 1000) : null);
  const iso = s => (s ? new Date(s) : null);
  const list = a => (a && a.length ? a.join(', ') : t('none'));

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(cells) {
    const tr = el('tr');
    cells.forEach(c => tr.appendChild(c instanceof Node ? c : el('td', c)));
    return tr;
  }

  // ---- API -------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || 'HTTP ' + status);
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(method, path, body) {
    const opt = {method: method, headers: {}};
    if (body !== undefined) {
      // The API refuses state changes that are not JSON (cross-site forms cannot send it).
      opt.headers['Content-Type'] = 'application/json';
      opt.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, opt);
    } catch (e) {
      throw new ApiError(0, null);
    }
    let data = null;
    if ((r.headers.get('Content-Type') || '').indexOf('json') >= 0) data = await r.json().catch(() => null);
    if (!r.ok) {
      if (r.status === 401 && path !== '/api/login') toLogin();
      if (r.status === 403 && data && data.error === 'change the default password') toPassword();
      throw new ApiError(r.status, data);
    }
    return data;
  }

  // The last GET /api/config: what the forms show and what "changed" compares against.
  let cfg = {};

  async function loadConfig() {
    cfg = await api('GET', '/api/config');
    adoptChargerLang(cfg.language);
    return cfg;
  }

  // ---- messages and field errors ---------------------------------------------------------
  const sec = () => $('#p-' + current);

  function say(text, kind, root) {
    const m = $('.msg', root || sec());
    m.textContent = text || '';
    m.className = 'msg' + (kind ? ' ' + kind : '');
  }

  function clearErrors(root) {
    $$('.err', root).forEach(p => { p.textContent = ''; });
    $$('[aria-invalid]', root).forEach(i => i.removeAttribute('aria-invalid'));
  }

  // Shows text under the field `key`; false when the page has no such field.
  function fieldError(root, key, text, detail) {
    const p = /^\w+$/.test(key) && $('[data-err="' + key + '"]', root);
    if (!p) return false;
    p.textContent = text;
    if (detail && detail !== text) {
      const d = el('small', detail);
      d.lang = 'en'; // the server's own words
      p.appendChild(d);
    }
    $$('[name="' + key + '"]', root).forEach(i => i.setAttribute('aria-invalid', 'true'));
    return true;
  }

  // A failed request: field errors next to their fields, anything else in the message line.
  function fail(e, root) {
    if (e.status === 401) return; // already on the way to the login page
    root = root || sec();
    const b = e.body || {};
    if (b.fields) {
      const rest = [];
      Object.keys(b.fields).forEach(k => {
        const hint = has('e.' + k) ? t('e.' + k) : b.fields[k];
        if (!fieldError(root, k, hint, b.fields[k])) rest.push(k + ': ' + b.fields[k]);
      });
      say(t('msg.invalid') + (rest.length ? ' ' + rest.join('; ') : ''), 'bad', root);
      const first = $('[aria-invalid="true"]', root);
      if (first) first.focus(); // a long form: bring the first wrong field into view
    } else {
      say(e.status ? t('err.http', {msg: b.error || 'HTTP ' + e.status}) : t('err.network'), 'bad', root);
    }
  }

  // ---- forms ------------------------------------------------------------------------------
  function fill(form, data) {
    $$('[name]', form).forEach(i => {
      if (!(i.name in data)) return;
      const v = data[i.name];
      if (i.type === 'radio') i.checked = i.value === v;
      else if (i.type === 'checkbox') i.checked = !!v;
      // data-empty: the value shown as an empty field (0 = not set)
      else i.value = v == null || String(v) === i.dataset.empty ? '' : String(v);
    });
  }

  function read(form) {
    const out = {};
    $$('[name]', form).forEach(i => {
      if (i.type === 'radio') {
        if (i.checked) out[i.name] = i.value;
      } else if (i.type === 'checkbox') {
        out[i.name] = i.checked;
      } else if (i.type === 'number') {
        // Anything but a plain integer goes as typed: the server says what is wrong with it.
        const s = i.value.trim();
        out[i.name] = /^-?\d+$/.test(s) ? parseInt(s, 10) : !s && i.dataset.empty ? +i.dataset.empty : s;
      } else {
        out[i.name] = i.value.trim();
      }
    });
    return out;
  }

  // PUT /api/config with only the keys that differ from what the charger holds.
  async function saveSettings(form) {
    const now = read(form);
    const changes = {};
    Object.keys(now).forEach(k => { if (now[k] !== cfg[k]) changes[k] = now[k]; });
    if (!Object.keys(changes).length) {
      say(t('msg.nochange'));
      return false;
    }
    try {
      cfg = await api('PUT', '/api/config', changes);
      fill(form, cfg);
      say(t('msg.saved'), 'ok');
      return true;
    } catch (e) {
      fail(e, form.closest('section'));
      return false;
    }
  }

  function onSubmit(sel, fn) {
    const f = $(sel);
    f.addEventListener('submit', async ev => {
      ev.preventDefault();
      const b = $('button:not([type=button])', f);
      if (b.disabled) return; // one request at a time
      clearErrors(f);
      say('');
      b.disabled = true;
      try { await fn(f); } finally { b.disabled = false; }
    });
  }

  function onClick(sel, fn) { $(sel).addEventListener('click', fn); }

  // ---- router -----------------------------------------------------------------------------
  const pages = {};
  let current = null;
  let gen = 0; // bumped on every page entry: loops and late answers of the old page stop
  let next = 'config'; // where the login page goes afterwards
  let flash = null; // [text, kind] for the next page's message line

  function toLogin() {
    if (current !== 'login') {
      next = current;
      location.hash = '#/login';
    }
  }

  // The factory password changes nothing: the technician chooses one first.
  function toPassword() {
    flash = [t('pwd.first'), 'bad'];
    location.hash = '#/password';
  }

  function route() {
    let name = location.hash.replace(/^#\/?/, '') || 'home';
    if (!pages[name]) name = 'home';
    current = name;
    $$('main > section').forEach(s => { s.hidden = s.id !== 'p-' + name; });
    const s = sec();
    $$('.msg', s).forEach(m => { m.textContent = ''; m.className = 'msg'; });
    clearErrors(s);
    if (flash) {
      say(flash[0], flash[1]);
      flash = null;
    }
    window.scrollTo(0, 0);
    enter(name, true);
  }

  // Until its data is in, a page is inert: whatever the user typed meanwhile would be
  // overwritten by the values arriving a moment later.
  function busy(s, on) {
    s.inert = on;
    if (on) s.setAttribute('aria-busy', 'true');
    else s.removeAttribute('aria-busy');
  }

  async function enter(name, fresh) {
    const my = ++gen;
    const p = pages[name];
    const s = $('#p-' + name);
    $$('main > section[aria-busy]').forEach(x => busy(x, false));
    busy(s, true);
    try {
      if (p.auth) await loadConfig(); // also tells us whether the session is still valid
      if (my === gen && p.enter) await p.enter(my);
    } catch (e) {
      if (my === gen) fail(e);
    } finally {
      if (my === gen) {
        busy(s, false);
        // A new page: move the focus there (screen readers announce it), not on a redraw.
        if (fresh) $(p.focus || 'h1', s).focus();
      }
    }
  }

  const alive = my => my === gen;

  // Runs fn now and then every ms while the page stays open (no overlapping requests).
  function every(ms, fn) {
    const my = gen;
    (async () => {
      while (alive(my)) {
        await fn(my);
        await sleep(ms);
      }
    })();
  }

  // ---- Home and Charger State -------------------------------------------------------------
  // Preparing with nothing plugged: an authorization waits for the vehicle (display PLUG IN).
  const stateName = st =>
    st.state === 'Preparing' && st.cp_state === 'A' ? t('s.PlugIn') : tv('s.', st.state);

  function stateText(st) {
    const errs = st.errors || [];
    if (st.state === 'Faulted') return t('s.Faulted') + ': ' + errs.join(', ');
    const s = st.state === 'Available' ? t('home.card') : stateName(st);
    // CFG (a setting not as configured) is not a fault: the charger runs on, and says so
    return errs.length ? s + ' · ' + errs.join(', ') : s;
  }

  pages.home = {
    enter() {
      every(POLL_MS, async my => {
        let st;
        try {
          st = await api('GET', '/api/status');
        } catch (e) {
          if (alive(my)) $('#home-detail').textContent = t('err.network');
          return;
        }
        if (!alive(my)) return;
        const b = $('#home-status');
        const faulted = st.state === 'Faulted' || !!(st.errors && st.errors.length);
        b.textContent = stateText(st);
        b.classList.toggle('charging', st.state === 'Charging');
        b.classList.toggle('fault', faulted);
        const s = st.session || {};
        $('#home-detail').textContent = s.active
          ? t('home.session', {kw: num(st.active_power_kw, 2), kwh: num(s.energy_kwh, 3), min: st.charging_min})
          : '';
        adoptChargerLang(st.language);
      });
    },
  };

  const phases = (v, d) => (Array.isArray(v) ? v.map(x => num(x, d)).join(' / ') : num(v, d));
  const degrees = v => (typeof v === 'number' ? num(v, 0) + ' °C' : '—');

  // One formatter per row of the Charger State page (manual §8.1.2 point 3).
  const STATE_ROWS = {
    state: stateName,
    errors: st => list(st.errors),
    serial: st => st.serial,
    software_version: st => st.software_version,
    grid_v: st => phases(st.grid_v, 1) + ' V',
    grid_hz: st => num(st.grid_hz, 2) + ' Hz',
    output_a: st => phases(st.output_a, 2) + ' A',
    active_power_kw: st => num(st.active_power_kw, 3) + ' kW',
    charging_min: st => (st.charging_min || 0) + ' ' + t('u.min'),
    system_time: st => when(epoch(st.system_time)),
    relay_c: st => degrees(st.relay_c),
    env_c: st => degrees(st.env_c),
    cp_v: st => num(st.cp_v, 2) + ' V',
    fan: st => tv('fan.', st.fan),
    charge_mode: modeText,
  };

  // The charge mode, the grid's import or export and why a solar charge waits.
  function modeText(st) {
    const s = st.solar;
    const m = st.meter;
    const out = [tv('cm.', s ? s.mode : 'normal')];
    const w = s && s.grid_w != null ? s.grid_w : m ? m.power_w : null;
    if (w != null) out.push(t(w < 0 ? 'cm.export' : 'cm.import', {kw: num(Math.abs(w) / 1000, 2)}));
    if (s && s.waiting === 'export' && s.need_w != null) out.push(t('cm.need', {kw: num(s.need_w / 1000, 1)}));
    else if (s && s.waiting === 'start_delay') out.push(t('cm.start', {s: s.start_in_s}));
    else if (s && s.waiting) out.push(tv('cm.w.', s.waiting));
    else if (s && s.stop_in_s != null) out.push(t('cm.stop', {s: s.stop_in_s}));
    if (s && s.session_solar_kwh != null) out.push(t('cm.solar_kwh', {kwh: num(s.session_solar_kwh, 2)}));
    const c = st.tariff;
    if (c && c.follower) out.push(t('cm.tariff_pool', {n: c.pool_master == null ? '?' : c.pool_master}));
    else if (c) {
      out.push(t('cm.tariff', {avg: num(c.avg_w / 1000, 2), lim: num(c.limit_w / 1000, 2), min: Math.ceil(c.left_s / 60)}));
      if (c.waiting) out.push(tv('cm.w.', c.waiting));
    }
    return out.join(' · ');
  }

  let offline = false; // the message line shows state.offline: cleared once back

  async function stateTick(my) {
    try {
      const st = await api('GET', '/api/status');
      if (!alive(my)) return;
      $$('#p-state [data-k]').forEach(td => { td.textContent = STATE_ROWS[td.dataset.k](st); });
      appControl(st);
      if (offline) say('');
      offline = false;
    } catch (e) {
      if (alive(my)) {
        say(t('state.offline'), 'bad');
        offline = true;
      }
    }
  }

  pages.state = {
    enter() {
      offline = false;
      every(POLL_MS, stateTick);
    },
  };

  // APP Control (manual chapter 5): start and stop, for a logged-in user only. Stop also
  // withdraws a start still waiting for the vehicle.
  function appControl(st) {
    const s = st.session || {};
    const on = !!s.active || (st.state === 'Preparing' && st.cp_state === 'A');
    $('#app-ctl').hidden = !st.logged_in;
    $('#app-start').hidden = on;
    $('#app-stop').hidden = !on;
    const sel = $('#charge-mode');
    // In a load balancing pool the mode is set on the master (docs/load-balancing.md).
    $('#mode-ctl').hidden = !st.logged_in || !!(st.balance && !st.balance.is_master);
    if (document.activeElement !== sel) sel.value = st.solar ? st.solar.mode : 'normal';
  }

  // The charge mode, for a logged-in user: the setting itself (PUT /api/config).
  $('#charge-mode').addEventListener('change', async ev => {
    const my = gen;
    try {
      cfg = await api('PUT', '/api/config', {charge_mode: ev.target.value});
      if (alive(my)) say(t('msg.saved'), 'ok');
    } catch (e) {
      if (alive(my)) fail(e);
    }
  });

  async function appCommand(b, what) {
    if (b.disabled) return;
    const my = gen;
    b.disabled = true;
    say('');
    try {
      const r = (await api('POST', '/api/session/' + what, {})) || {};
      if (!alive(my)) return;
      const res = r.result;
      say(res === 'plug in' ? t('app.plugin') : res === 'cancelled' ? t('app.cancelled')
        : what === 'start' ? t('app.started') : t('app.stopped'), 'ok');
      offline = false;
      await stateTick(my);
    } catch (e) {
      if (alive(my)) fail(e);
    } finally {
      b.disabled = false;
    }
  }

  onClick('#app-start', ev => appCommand(ev.currentTarget, 'start'));
  onClick('#app-stop', ev => appCommand(ev.currentTarget, 'stop'));

  // ---- Login ------------------------------------------------------------------------------
  pages.login = {
    focus: '#pw',
    enter() { $('#pw').value = ''; },
  };

  onSubmit('#f-login', async form => {
    let r;
    try {
      r = await api('POST', '/api/login', {password: $('#pw').value});
    } catch (e) {
      if (e.status === 401) {
        fieldError(form, 'password', t('login.wrong'));
      } else if (e.status === 429) {
        const m = /(\d+)\s*s\b/.exec(e.body.error || '');
        fieldError(form, 'password', t('login.locked', {s: m ? m[1] : '30'}));
      } else {
        fail(e);
      }
      $('#pw').select();
      return;
    }
    const to = next === 'login' || next === 'home' ? 'config' : next;
    next = 'config';
    if (r && r.must_change_password) return toPassword();
    location.hash = '#/' + to;
  });

  // ---- Configuration (system parameters) --------------------------------------------------
  pages.config = {auth: true, enter() { fill($('#f-sys'), cfg); }};
  onSubmit('#f-sys', saveSettings);

  onClick('#logout', async () => {
    try { await api('POST', '/api/logout', {}); } catch (e) { /* leaving anyway */ }
    location.hash = '#/';
  });

  // ---- WIFI -------------------------------------------------------------------------------
  // MicroPython's scan() reports the security as a number; the simulator may give text.
  const AUTH = ['OPEN', 'WEP', 'WPA-PSK', 'WPA2-PSK', 'WPA/WPA2-PSK', 'WPA2-EAP', 'WPA3', 'WPA2/WPA3'];

  pages.wifi = {
    auth: true,
    enter(my) {
      $('#wifi-ssid').value = cfg.wifi_ssid || '';
      $('#wifi-pw').value = '';
      $('#wifi-current').textContent = cfg.wifi_ssid ? t('wifi.current', {ssid: cfg.wifi_ssid}) : '';
      scan(my);
    },
  };

  async function scan(my) {
    const tb = $('#wifi-list tbody');
    tb.textContent = '';
    say(t('wifi.scanning'));
    let r;
    try {
      r = await api('GET', '/api/wifi/scan');
    } catch (e) {
      if (alive(my)) fail(e);
      return;
    }
    if (!alive(my)) return;
    r.networks.forEach(n => {
      // A radio per network keeps the choice keyboard- and screen-reader-friendly.
      const radio = el('input');
      radio.type = 'radio';
      radio.name = 'net';
      radio.checked = n.ssid === $('#wifi-ssid').value;
      const label = el('label');
      label.append(radio, ' ' + n.ssid);
      const ssidCell = el('td');
      ssidCell.appendChild(label);
      const type = typeof n.auth === 'number' ? AUTH[n.auth] || String(n.auth) : n.auth;
      const tr = row([type, ssidCell, n.rssi + ' dBm']);
      radio.addEventListener('change', () => { $('#wifi-ssid').value = n.ssid; $('#wifi-pw').focus(); });
      tr.addEventListener('click', ev => { if (ev.target === tr || ev.target.tagName === 'TD') radio.click(); });
      tb.appendChild(tr);
    });
    say(r.networks.length ? '' : t('wifi.none'));
  }

  onClick('#wifi-scan', () => scan(gen));

  onSubmit('#f-wifi', async form => {
    const body = {ssid: $('#wifi-ssid').value.trim(), password: $('#wifi-pw').value};
    if (!body.ssid) return fieldError(form, 'ssid', t('e.ssid'));
    try {
      const r = await api('POST', '/api/wifi/connect', body);
      $('#wifi-pw').value = '';
      $('#wifi-current').textContent = t('wifi.current', {ssid: r.ssid});
      say(t('wifi.saved', {ssid: r.ssid}), 'ok');
    } catch (e) {
      fail(e);
    }
  });

  // ---- Setting menu and its pages ---------------------------------------------------------
  pages.settings = {auth: true};

  pages.net = {auth: true, enter() { fill($('#f-net'), cfg); }};
  onSubmit('#f-net', saveSettings);

  // Load Balance: the form, and a live line on the meter in use or the search for one.
  pages.lb = {
    auth: true,
    enter() {
      fill($('#f-lb'), cfg);
      $('#lb-house').textContent = t('lb.house', {a: cfg.max_current_a});
      found = null;
      $('#lb-use').hidden = true;
      every(POLL_MS, lbTick);
    },
  };
  onSubmit('#f-lb', saveSettings);

  let found = null; // where the search found a meter (the configured one is lost)
  const meterFields = () => fill($('#f-lb'), {meter_model: cfg.meter_model, meter_addr: cfg.meter_addr});

  async function lbTick(my) {
    let st;
    try {
      st = await api('GET', '/api/status');
      // meter_model auto: the charger stored the meter it found
      if (st.meter && st.meter.model !== cfg.meter_model && alive(my)) {
        await loadConfig();
        meterFields();
      }
    } catch (e) {
      return;
    }
    if (!alive(my)) return;
    const m = st.meter;
    const q = st.meter_search;
    const f = (q && q.found) || {};
    const out = [];
    if (m) out.push(t('lb.meter', {m: m.model, a: cfg.meter_addr}) + (m.lost ? ': ' + t('lb.lost') : m.ok ? ': ' + t('lb.ok') : ''));
    if (q && has('ms.' + q.state)) out.push(t('ms.' + q.state, {n: q.tried, of: q.of, m: f.model, a: f.addr}));
    found = q && q.state === 'found' ? q.found : null;
    const p = $('#lb-live');
    p.textContent = out.join(' · ');
    if (q && q.error) p.appendChild(el('small', q.error)).lang = 'en'; // the charger's words
    p.classList.toggle('bad', !!((m && m.lost) || (q && q.error)));
    $('#lb-use').hidden = !found;
  }

  // The meter found becomes the setting, as if chosen in the form.
  onClick('#lb-use', async () => {
    const w = found;
    if (!w) return;
    clearErrors(sec());
    try {
      cfg = await api('PUT', '/api/config', {meter_model: w.model, meter_addr: w.addr});
      meterFields();
      say(t('msg.saved'), 'ok');
    } catch (e) {
      fail(e);
    }
  });

  // RFID: read a card on the charger's reader, then store it in slot 1, 2 or 3.
  pages.rfid = {
    auth: true,
    async enter(my) {
      $('#rfid-uid').value = '';
      try {
        const r = await api('GET', '/api/cards');
        if (alive(my)) showCards(r);
      } catch (e) {
        if (alive(my)) fail(e);
      }
    },
  };

  function showCards(r) {
    const tb = $('#cards tbody');
    tb.textContent = '';
    r.cards.forEach(c => {
      const act = el('td');
      if (c.uid) {
        const b = el('button', t('rfid.del'), 'btn small');
        b.type = 'button';
        b.setAttribute('aria-label', t('rfid.del') + ' ' + t('rfid.card', {n: c.slot}));
        b.addEventListener('click', () => cardChange('DELETE', c.slot));
        act.appendChild(b);
      }
      tb.appendChild(row([el('th', t('rfid.card', {n: c.slot})), c.uid || '—', act]));
    });
    if (r.rfid_type) $('#rfid-type').textContent = t('rfid.type', {type: r.rfid_type});
  }

  // 409: the charger is not in stand-by (or a read is already waiting).
  function cardFail(e) {
    const msg = e.body.error || '';
    if (e.status === 409 && /stand-by/.test(msg)) return say(t('rfid.standby'), 'bad');
    const dup = /already learned in slot (\d)/.exec((e.body.fields && e.body.fields.uid) || '');
    if (dup) {
      fieldError(sec(), 'uid', t('rfid.dup', {n: dup[1]}));
      return say(t('msg.invalid'), 'bad');
    }
    fail(e);
  }

  onClick('#rfid-read', async () => {
    const b = $('#rfid-read');
    const my = gen;
    clearErrors(sec());
    say(t('rfid.wait'));
    b.disabled = true;
    try {
      const r = await api('POST', '/api/cards/read', {}); // answers when a card comes, ≤ 20 s
      if (!alive(my)) return;
      $('#rfid-uid').value = r.uid;
      say(t('rfid.got', {uid: r.uid, kind: r.kind}), 'ok');
    } catch (e) {
      if (!alive(my)) return;
      if (e.status === 408) say(t('rfid.nocard'), 'bad');
      else cardFail(e);
    } finally {
      b.disabled = false;
    }
  });

  async function cardChange(method, slot) {
    const uid = $('#rfid-uid').value.trim().toUpperCase();
    clearErrors(sec());
    say('');
    if (method === 'PUT' && !uid) return fieldError(sec(), 'uid', t('rfid.needuid'));
    try {
      const r = await api(method, '/api/cards/' + slot, method === 'PUT' ? {uid: uid} : {});
      showCards(r);
      say(method === 'PUT' ? t('rfid.written', {uid: uid, n: slot}) : t('rfid.deleted', {n: slot}), 'ok');
    } catch (e) {
      cardFail(e);
    }
  }

  $$('#rfid-write [data-slot]').forEach(b => b.addEventListener('click', () => cardChange('PUT', b.dataset.slot)));

  // System time: the phone's clock is the reference (manual §8.1.2 point 13).
  pages.time = {
    auth: true,
    enter() {
      every(1000, () => { $('#time-now').textContent = when(new Date()); });
      every(POLL_MS, async my => {
        try {
          const st = await api('GET', '/api/status');
          if (alive(my)) $('#time-charger').textContent = when(epoch(st.system_time));
        } catch (e) { /* the page still works; the charger time just stays stale */ }
      });
    },
  };

  onClick('#time-set', async () => {
    clearErrors(sec());
    try {
      const r = await api('PUT', '/api/time', {epoch_s: Math.floor(Date.now() / 1000)});
      $('#time-charger').textContent = when(epoch(r.system_time));
      say(t('time.set', {time: when(epoch(r.system_time))}), 'ok');
    } catch (e) {
      fail(e);
    }
  });

  // Power system: two buttons, the chosen one coloured (manual §8.1.2, IT / other).
  function showPowerSystem() {
    $$('[data-ps]').forEach(b => b.setAttribute('aria-pressed', String(b.dataset.ps === cfg.power_system)));
  }

  pages.power = {auth: true, enter: showPowerSystem};

  $$('[data-ps]').forEach(b => b.addEventListener('click', async () => {
    clearErrors(sec());
    if (b.dataset.ps === cfg.power_system) return say(t('msg.nochange'));
    try {
      cfg = await api('PUT', '/api/config', {power_system: b.dataset.ps});
      showPowerSystem();
      say(t('msg.saved'), 'ok');
    } catch (e) {
      fail(e);
    }
  }));

  // Language: the charger's setting; this browser follows it from now on.
  pages.lang = {auth: true, enter() { $('#language').value = cfg.language; }};

  onSubmit('#f-lang', async form => {
    if (await saveSettings(form)) {
      storeLang(cfg.language);
      await setLang(cfg.language);
      say(t('msg.saved'), 'ok');
    }
  });

  pages.password = {auth: true, enter() { $('#f-pw').reset(); }};

  onSubmit('#f-pw', async form => {
    const old = $('#pw-old').value;
    const pw = $('#pw-new').value;
    if (pw.length < 6 || pw.length > 64) return fieldError(form, 'new', t('pwd.len'));
    if (pw !== $('#pw-rep').value) return fieldError(form, 'rep', t('pwd.mismatch'));
    try {
      await api('POST', '/api/password', {old: old, new: pw});
    } catch (e) {
      if (e.status !== 400) return fail(e);
      if (/current/.test(e.body.error || '')) return fieldError(form, 'old', t('pwd.wrongold'));
      return fieldError(form, 'new', t('pwd.len'), e.body.error);
    }
    // The charger ends every session when the password changes.
    form.reset();
    flash = [t('pwd.done'), 'ok'];
    next = 'config';
    location.hash = '#/login';
  });

  // ---- History ----------------------------------------------------------------------------
  pages.history = {
    async enter(my) {
      let r;
      try {
        r = await api('GET', '/api/history');
      } catch (e) {
        if (alive(my)) fail(e);
        return;
      }
      if (!alive(my)) return;
      const tb = $('#hist tbody');
      const heads = $$('#hist th').map(th => th.textContent);
      tb.textContent = '';
      r.sessions.forEach(s => {
        const a = iso(s.start);
        const b = iso(s.end);
        const sameDay = a && b && a.toDateString() === b.toDateString();
        const power = el('td');
        spark(s, a, b, power);
        const tr = row([s.no, when(a), when(b, sameDay), tv('mode.', s.start_mode),
          tv('mode.', s.stop_mode), num(s.energy_kwh, 3) + ' kWh' + (s.solar_kwh == null ? ''
            : ' · ' + t('cm.solar_kwh', {kwh: num(s.solar_kwh, 3)})), s.id == null ? '' : s.id, power]);
        $$('td', tr).forEach((td, i) => { td.dataset.label = heads[i]; }); // the phone layout's labels
        tb.appendChild(tr);
      });
      say(r.sessions.length ? '' : t('hist.empty'));
      chart(r.sessions);
    },
  };

  const SVG = 'http://www.w3.org/2000/svg';

  function svg(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(k => e.setAttribute(k, attrs[k]));
    parent.appendChild(e);
    return e;
  }

  // One session's power over time (0.1 kW every sample_s seconds): a line from 0 kW at
  // the bottom to the peak at the top, the peak marked and labelled.
  function spark(s, a, b, td) {
    const p = (Array.isArray(s.power_dkw) ? s.power_dkw : []).filter(v => typeof v === 'number' && isFinite(v));
    if (!p.length) { td.textContent = '—'; return; }
    const W = 120;
    const H = 36;
    const T = 11;
    const B = H - 2;
    const peak = Math.max.apply(null, p);
    const kw = num(peak / 10, 1);
    const ms = a && b && b - a >= 0 ? b - a : p.length * (s.sample_s || 60) * 1000;
    const min = Math.max(1, Math.ceil(ms / 60000));
    const text = t('hist.spark', {no: s.no, kw: kw, min: min});
    const g = svg('svg', {viewBox: '0 0 ' + W + ' ' + H, class: 'spark', role: 'img', 'aria-label': text}, td);
    svg('title', {}, g).textContent = text;
    svg('line', {x1: 0, y1: B, x2: W, y2: B, class: 'axis'}, g);
    const pts = p.length > 1 ? p : [p[0], p[0]]; // one sample: a flat line
    const x = i => (2 + i * (W - 4) / (pts.length - 1)).toFixed(1);
    const y = v => (B - (peak > 0 ? (B - T) * v / peak : 0)).toFixed(1);
    svg('polyline', {points: pts.map((v, i) => x(i) + ',' + y(v)).join(' ')}, g);
    const i = pts.indexOf(peak);
    svg('circle', {cx: x(i), cy: y(peak), r: 2}, g);
    const right = i > (pts.length - 1) / 2;
    svg('text', {x: right ? W - 1 : 1, y: 8, 'text-anchor': right ? 'end' : 'start'}, g).textContent = kw + ' kW';
  }

  // The overview: one bar per session for its energy, oldest on the left.
  function chart(sessions) {
    const box = $('#hist-chart');
    box.textContent = '';
    const data = sessions.slice(0, 30).sort((a, b) => a.no - b.no);
    $('#hist-fig').hidden = !data.length;
    if (!data.length) return;
    const W = 320;
    const H = 150;
    const L = 36;
    const R = 8;
    const T = 10;
    const B = 20;
    const maxE = Math.max.apply(null, data.map(s => s.energy_kwh || 0)) || 1;
    const g = svg('svg', {viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img', 'aria-label': t('hist.chart')}, box);
    svg('line', {x1: L, y1: T, x2: L, y2: H - B, class: 'axis'}, g);
    svg('line', {x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis'}, g);
    const label = (x, y, text, anchor) => {
      svg('text', {x: x, y: y, 'text-anchor': anchor}, g).textContent = text;
    };
    label(L - 3, T + 8, num(maxE, maxE < 10 ? 3 : 1), 'end');
    label(L - 3, T + 20, 'kWh', 'end');
    label(L - 3, H - B, '0', 'end');
    const step = (W - L - R) / data.length;
    const bw = Math.min(28, Math.max(2, step * 0.6));
    const plotH = H - B - T;
    data.forEach((s, i) => {
      const x = L + i * step + (step - bw) / 2;
      const h = Math.max(0.5, plotH * (s.energy_kwh || 0) / maxE);
      const bar = svg('rect', {x: x.toFixed(1), y: (H - B - h).toFixed(1), width: bw.toFixed(1), height: h.toFixed(1)}, g);
      svg('title', {}, bar).textContent = t('hist.bar', {no: s.no, kwh: num(s.energy_kwh, 3)});
      if (data.length <= 12) label(x + bw / 2, H - B + 13, String(s.no), 'middle');
    });
  }

  // ---- Report -----------------------------------------------------------------------------
  pages.report = {
    async enter(my) {
      let r;
      try {
        r = await api('GET', '/api/faults');
      } catch (e) {
        if (alive(my)) fail(e);
        return;
      }
      if (!alive(my)) return;
      $('#rep-active').textContent = list(r.active);
      $('#rep-latched').textContent = list(r.latched);
      $('#rep-clear').hidden = !(r.latched && r.latched.length);
      const ol = $('#rep-list');
      ol.textContent = '';
      r.faults.forEach(f => {
        const li = el('li');
        li.appendChild(el('b', t('hist.no') + ' ' + f.no + ' · ' + when(iso(f.t)) + ' · ' + f.code));
        li.appendChild(el('span', has('fd.' + f.code) ? t('fd.' + f.code) : f.description || f.code));
        const clears = has('fc.' + f.code) ? t('fc.' + f.code) : f.clears;
        if (clears) li.appendChild(el('small', t('rep.clears') + ': ' + clears));
        const v = f.values;
        if (v && typeof v === 'object') {
          const parts = Object.keys(v).map(k => k + ' = ' + (typeof v[k] === 'object' ? JSON.stringify(v[k]) : v[k]));
          if (parts.length) li.appendChild(el('small', parts.join(', ')));
        } else if (v != null) {
          li.appendChild(el('small', v));
        }
        ol.appendChild(li);
      });
      if (!r.faults.length) ol.appendChild(el('li', t('rep.empty'), 'none'));
    },
  };

  onClick('#rep-clear', async () => {
    try {
      const r = await api('POST', '/api/faults/clear', {});
      flash = [t('rep.cleared', {codes: list(r.cleared)}), 'ok'];
      route(); // reload the page with the flash message
    } catch (e) {
      fail(e);
    }
  });

  // ---- Upgrade (manual §12) ---------------------------------------------------------------
  // The page follows the charger's own account, GET /api/upgrade: the bytes it received
  // and wrote (not merely what the browser sent), the install, and the result even when
  // the answer cannot arrive (E03: the charger gave up on a silent upload). An upgrade
  // started elsewhere (another browser, the central system) shows here too.
  const UP_POLL_MS = 400;
  const MD5_CHUNK = 64 * 1024; // hashed between two yields: ~2 ms in desktop Chromium
  const UP_BACK_S = 90; // a restart plus the boot of the new version, at most

  pages.upgrade = {
    auth: true,
    async enter(my) {
      $('#f-up').reset();
      sum = null;
      $('#up-sum').textContent = '';
      $('#up-bar').hidden = true;
      $('#up-code').textContent = '';
      $('#up-progress').textContent = '';
      const v = await api('GET', '/api/upgrade');
      if (!alive(my)) return;
      showRunning(v);
      if (v.busy) followElsewhere(my);
    },
  };

  function showRunning(v) {
    const r = v.running || {};
    let s = t('up.version', {v: v.version});
    if (r.trial) s += ' ' + t('up.trial');
    if (r.rolled_back) s += ' ' + t('up.rolledback', {v: r.rolled_back});
    const k = v.key || {};
    if (k.installed) s += ' ' + (k.fingerprint ? t('up.key', {f: k.fingerprint}) : t('up.keybad'));
    $('#up-running').textContent = s;
  }

  function showProgress(v) {
    const bar = $('#up-bar');
    const line = $('#up-progress');
    if (v.busy === 'install' || v.busy === 'reset') {
      bar.hidden = false;
      bar.value = 100;
      line.textContent = t('up.installing');
    } else if (v.busy === 'waiting') {
      line.textContent = t('up.waiting');
    } else if (v.busy && v.total) {
      const pct = Math.floor(100 * v.received / v.total);
      bar.hidden = false;
      bar.value = pct;
      line.textContent = t('up.received', {pct: pct, kb: Math.round(v.received / 1024),
                                           total: Math.round(v.total / 1024)});
    }
  }

  function showResult(d, root) {
    const key = String(d.code).split(' ')[0]; // "100", "E01", ...
    $('#up-code').textContent = d.code;
    say(has('up.' + key) ? t('up.' + key) : t('err.http', {msg: d.error || d.code}), key === '100' ? 'ok' : 'bad', root);
  }

  async function upgradeState() {
    try {
      const r = await fetch('/api/upgrade');
      return r.ok ? await r.json() : null;
    } catch (e) {
      return null;
    }
  }

  // An upgrade this page did not start: its progress, then its result (quiet: the
  // progress only, the page's own message stays).
  async function followElsewhere(my, quiet) {
    let v = await upgradeState();
    while (alive(my) && v && v.busy) {
      showProgress(v);
      await sleep(UP_POLL_MS);
      v = await upgradeState();
    }
    if (!alive(my) || !v) return;
    $('#up-progress').textContent = '';
    $('#up-bar').hidden = true;
    if (!quiet && v.last && v.last.code) showResult(v.last);
    showRunning(v);
  }

  // 409: why the charger takes no upgrade now ({"refused": ...} of POST /api/upgrade).
  function refusal(d) {
    if (d.refused === 'busy') return t('up.busy');
    if (d.refused === 'charging') return t('up.charging');
    if (d.refused === 'checking') return t('up.checking');
    return t('err.http', {msg: d.error || 'HTTP 409'});
  }

  // ---- MD5 (RFC 1321), for the upload's checksum: WebCrypto has none ----------------------
  const MD5_K = [];
  for (let i = 0; i < 64; i++) MD5_K.push(Math.floor(Math.abs(Math.sin(i + 1)) * 4294967296) | 0);
  const MD5_S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];

  class Md5 {
    constructor() {
      this.h = [0x67452301, 0xefcdab89 | 0, 0x98badcfe | 0, 0x10325476];
      this.buf = new Uint8Array(64);
      this.n = 0; // bytes waiting in buf
      this.len = 0; // bytes in all
      this.w = new Int32Array(16);
    }

    // One 64-byte block of `b` from offset o (RFC 1321 §3.4).
    block(b, o) {
      const w = this.w;
      for (let j = 0; j < 16; j++, o += 4) w[j] = b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24;
      const h = this.h;
      let [a, bb, c, d] = h;
      for (let i = 0; i < 64; i++) {
        let f;
        let g;
        if (i < 16) { f = (bb & c) | (~bb & d); g = i; }
        else if (i < 32) { f = (d & bb) | (~d & c); g = (5 * i + 1) & 15; }
        else if (i < 48) { f = bb ^ c ^ d; g = (3 * i + 5) & 15; }
        else { f = c ^ (bb | ~d); g = (7 * i) & 15; }
        const x = (a + f + MD5_K[i] + w[g]) | 0;
        const r = MD5_S[(i >> 4) * 4 + (i & 3)];
        a = d;
        d = c;
        c = bb;
        bb = (bb + (x << r | x >>> (32 - r))) | 0;
      }
      h[0] = (h[0] + a) | 0;
      h[1] = (h[1] + bb) | 0;
      h[2] = (h[2] + c) | 0;
      h[3] = (h[3] + d) | 0;
    }

    update(b) {
      let i = 0;
      this.len += b.length;
      if (this.n) {
        while (this.n < 64 && i < b.length) this.buf[this.n++] = b[i++];
        if (this.n < 64) return;
        this.block(this.buf, 0);
        this.n = 0;
      }
      for (; i + 64 <= b.length; i += 64) this.block(b, i);
      while (i < b.length) this.buf[this.n++] = b[i++];
    }

    hex() {
      const bits = this.len * 8;
      const tail = new Uint8Array((this.n < 56 ? 64 : 128) - this.n);
      tail[0] = 0x80;
      for (let j = 0; j < 8; j++) tail[tail.length - 8 + j] = Math.floor(bits / Math.pow(2, 8 * j)) & 255;
      this.update(tail);
      return this.h.map(v => [0, 8, 16, 24].map(k => ((v >>> k) & 255).toString(16).padStart(2, '0')).join('')).join('');
    }
  }

  // The chosen file's MD5, read in chunks so the page stays responsive (files up to 4 MB).
  let sum = null; // {file, done: Promise of the hex digest}

  async function md5File(file, show) {
    const m = new Md5();
    for (let off = 0; off < file.size; off += MD5_CHUNK) {
      m.update(new Uint8Array(await file.slice(off, off + MD5_CHUNK).arrayBuffer()));
      show(Math.floor(100 * Math.min(file.size, off + MD5_CHUNK) / file.size));
    }
    return m.hex();
  }

  $('#up-file').addEventListener('change', () => {
    const file = $('#up-file').files[0];
    const out = $('#up-sum');
    const md5 = $('#up-md5');
    out.textContent = '';
    if (!file) { sum = null; return; }
    const mine = {file: file};
    const show = pct => { if (sum === mine) out.textContent = t('up.summing', {pct: pct}); };
    show(0);
    mine.done = md5File(file, show).then(hex => {
      if (sum === mine) {
        out.textContent = 'MD5 ' + hex;
        // Filled in unless a checksum of someone else's (the manufacturer's) is there
        if (!md5.value || md5.value === md5.dataset.auto) md5.value = hex;
        md5.dataset.auto = hex;
      }
      return hex;
    }, () => {
      if (sum === mine) out.textContent = t('up.unreadable');
      return null;
    });
    sum = mine;
  });

  onSubmit('#f-up', async form => {
    const file = $('#up-file').files[0];
    const mine = sum && sum.file === file ? sum : null;
    const hex = mine ? await mine.done : null;
    const typed = $('#up-md5').value.trim().toLowerCase();
    const md5 = typed || hex || '';
    if (!file) fieldError(form, 'file', t('up.nofile'));
    if (!/^[0-9a-f]{32}$/.test(md5)) fieldError(form, 'md5', t('up.badmd5'));
    // A checksum typed over it (the manufacturer's) goes as typed: the charger checks it
    if (!file || !/^[0-9a-f]{32}$/.test(md5)) return;
    $('#up-code').textContent = '';
    // Ask first whether this firmware takes uploads at all: OPTIONS has no side effect
    // and answers 404 for an unknown path, 405 for a known one.
    try {
      const probe = await fetch('/api/upgrade', {method: 'OPTIONS'});
      if (probe.status === 404) return say(t('up.none'), 'bad');
    } catch (e) {
      return say(t('err.network'), 'bad');
    }
    const my = gen;
    const root = sec();
    let sending = true;
    const poll = (async () => { // the charger's count while the body goes out
      await sleep(UP_POLL_MS);
      while (sending && alive(my)) {
        const v = await upgradeState();
        if (sending && v) showProgress(v);
        await sleep(UP_POLL_MS);
      }
    })();
    const d = await upload(file, md5, root);
    sending = false;
    await poll;
    if (!alive(my)) return;
    $('#up-progress').textContent = '';
    if (d === null) return afterLost(my, root);
    if (d.refused === 'busy') return followElsewhere(my, true); // the other one's progress
    if (d.code === '100 UP' && d.kind === 'firmware') await awaitRestart(d.version, my, root);
  });

  // XMLHttpRequest rather than fetch: it reports upload progress. Resolves to the
  // charger's JSON answer ({} when it is not JSON), or null when the connection broke.
  function upload(file, md5, root) {
    const bar = $('#up-bar');
    bar.hidden = false;
    bar.value = 0;
    say(t('up.sending'), '', root);
    return new Promise(done => {
      const x = new XMLHttpRequest();
      x.open('POST', '/api/upgrade?md5=' + md5);
      x.setRequestHeader('Content-Type', 'application/octet-stream');
      x.onload = () => {
        let d = {};
        try { d = JSON.parse(x.responseText) || {}; } catch (e) { /* not JSON */ }
        if (d.code) {
          bar.value = 100;
          showResult(d, root);
        } else if (x.status === 409) {
          bar.hidden = true;
          say(refusal(d), 'bad', root);
        } else if (x.status === 401) {
          toLogin();
        } else if (x.status === 404) {
          say(t('up.none'), 'bad', root);
        } else {
          say(t('err.http', {msg: d.error || 'HTTP ' + x.status}), 'bad', root);
        }
        done(d);
      };
      x.onerror = x.ontimeout = () => done(null);
      x.send(file);
    });
  }

  // The answer did not arrive: the charger still knows how the upload ended.
  async function afterLost(my, root) {
    const until = Date.now() + 20000; // E03 comes 15 s after the last byte
    let v = await upgradeState();
    while (alive(my) && v && v.busy && Date.now() < until) {
      await sleep(UP_POLL_MS);
      v = await upgradeState();
    }
    if (!alive(my)) return;
    if (v && !v.busy && v.last && v.last.code) showResult(v.last, root);
    else say(t('up.lost'), 'bad', root);
  }

  // "100 UP" for a firmware: the charger restarts by itself; tell when it is back and
  // with which version (another one means the new version was rolled back).
  async function awaitRestart(version, my, root) {
    const line = $('#up-progress');
    const until = Date.now() + UP_BACK_S * 1000;
    let away = false;
    while (alive(my) && Date.now() < until) {
      await sleep(1000);
      let st = null;
      try {
        const r = await fetch('/api/status', {cache: 'no-store'});
        if (r.ok) st = await r.json();
      } catch (e) { /* restarting */ }
      if (!alive(my)) return;
      if (!st) {
        away = true;
        line.textContent = t('up.restarting');
      } else if (st.software_version === version) {
        line.textContent = '';
        return say(t('up.restarted', {v: version}), 'ok', root);
      } else if (away) {
        line.textContent = '';
        return say(t('up.notnew', {v: st.software_version, want: version}), 'bad', root);
      }
    }
    if (alive(my)) {
      line.textContent = '';
      say(t('up.noreturn', {s: UP_BACK_S}), 'bad', root);
    }
  }

  // ---- start ------------------------------------------------------------------------------
  function options(select) {
    select.textContent = '';
    langs.forEach(l => {
      const o = el('option', l.name);
      o.value = l.code;
      select.appendChild(o);
    });
  }

  // Links every error line to its field for screen readers.
  function describeErrors() {
    $$('main > section').forEach(s => {
      $$('[data-err]', s).forEach(p => {
        const key = p.dataset.err;
        p.id = s.id + '-err-' + key;
        p.setAttribute('aria-live', 'polite');
        $$('[name="' + key + '"]', s).forEach(i => {
          const d = i.getAttribute('aria-describedby');
          i.setAttribute('aria-describedby', (d ? d + ' ' : '') + p.id);
        });
      });
    });
  }

  async function start() {
    describeErrors();
    try {
      langs = await getJSON('/lang/index.json');
    } catch (e) {
      langs = [{code: 'en', name: 'English'}];
    }
    options($('#uilang'));
    options($('#language'));
    $('#uilang').addEventListener('change', ev => {
      storeLang(ev.target.value);
      setLang(ev.target.value);
    });
    const nav = (navigator.language || '').slice(0, 2).toLowerCase();
    await setLang(storedLang() || (known(nav) ? nav : 'en'));
    window.addEventListener('hashchange', route);
    route();
  }

  start();
})();
