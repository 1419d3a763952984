// What the customer chat (webchat) and the clerk web IM (workbench) share: requests, segment
// rendering, the message list, sending with retries, history catch-up and the live socket.
// Auth and sessions differ per page and stay there. Loaded before each page's inline script.
(function () {
  'use strict';

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text); // user text only ever goes through textContent
    return e;
  }
  function hex(n) { return Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, '0')).join(''); }
  // randomUUID needs a secure context; plain-http webviews on a LAN address are not one.
  function uuid() { return crypto.randomUUID ? crypto.randomUUID() : hex(16).replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-'); }
  function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
  function backoff(n) { return Math.min(30000, 1000 * 2 ** n) * (0.75 + Math.random() / 2); }

  // ---- HTTP: the page decides what a 401 means (re-login or sign-out), then calls result() --------
  async function request(method, url, body, token) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token != null) headers.Authorization = 'Bearer ' + token;
    const res = await fetch(url, { method, headers, cache: 'no-store', body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty or non-JSON body */ }
    return { status: res.status, ok: res.ok, data };
  }
  function result(r) {
    if (!r.ok) {
      const err = (r.data && r.data.error) || {};
      throw Object.assign(new Error(err.message || 'HTTP ' + r.status), { status: r.status, code: err.code, data: r.data });
    }
    return r.data || {};
  }

  // ---- rendering --------------------------------------------------------------------------------
  function safeUrl(u, allowDataImage) {
    if (!u) return null;
    try {
      const x = new URL(String(u), location.href);
      if (x.protocol === 'http:' || x.protocol === 'https:') return x.href;
      if (allowDataImage && /^data:image\//i.test(String(u))) return String(u);
    } catch (_) { /* invalid URL */ }
    return null;
  }
  function link(url, text, cls) {
    const a = el('a', cls, text);
    a.href = url; a.target = '_blank'; a.rel = 'noopener noreferrer';
    return a;
  }
  // onImageLoad: images get their height late, so the list may need to scroll again.
  function segment(s, onImageLoad) {
    const t = s.type, u = safeUrl(s.url, t === 'image');
    if (t === 'image' && u) {
      const img = el('img', 'seg-img'); img.src = u; img.alt = s.alt || '图片'; img.loading = 'lazy';
      img.onload = onImageLoad;
      return img;
    }
    if ((t === 'link' || t === 'file') && u) return link(u, s.title || s.name || u, 'seg-text');
    if (t === 'voice' && u) return link(u, s.text || '[语音 voice]', 'seg-text');
    if (t === 'product') {
      const card = u ? link(u, null, 'card') : el('div', 'card'), img = safeUrl(s.image_url, true);
      if (img) { const i = el('img'); i.src = img; i.alt = ''; i.loading = 'lazy'; card.appendChild(i); }
      const info = el('div');
      info.append(el('div', null, s.name || '商品'), el('div', 'price', s.price != null ? '¥' + s.price : ''));
      if (u) info.appendChild(el('div', 'hint', '查看商品 View ›'));
      card.appendChild(info);
      return card;
    }
    if (t === 'coupon') {
      const box = el('div', 'coupon', (s.name || '优惠券') + ' ');
      box.appendChild(el('code', null, s.code || ''));
      return box;
    }
    return el('div', 'seg-text', t === 'text' ? s.text || '' : s.text || s.title || s.name || s.label || s.alt || '[' + t + ']');
  }
  // opt.custom(s, i) may return its own node for a segment; opt.onImageLoad as for segment().
  function renderSegments(container, segments, opt = {}) {
    segments.forEach((s, i) => {
      container.appendChild((opt.custom && opt.custom(s, i)) || segment(s, opt.onImageLoad)).classList.add('seg');
    });
  }
  function fmtTime(iso) {
    const d = new Date(iso);
    if (!iso || isNaN(d)) return '';
    const hm = d.toLocaleTimeString('zh-CN', { hour: '2-digit', minute: '2-digit' });
    return d.toDateString() === new Date().toDateString() ? hm : (d.getMonth() + 1) + '/' + d.getDate() + ' ' + hm;
  }
  // opt.custom(s, i, row, mine, m): a page's own rendering of some segments, see renderSegments.
  // The sender (an advisor's name; on the workbench a customer's label) is its own element, from
  // the message's `sender` field, never read out of the text.
  function bubble(m, mine, opt = {}) {
    const row = el('div', 'msg ' + (mine ? 'me' : 'them'));
    if (!mine && m.sender && m.sender.name) row.appendChild(el('div', 'who', m.sender.name));
    const b = el('div', 'bubble');
    const segs = Array.isArray(m.segments) && m.segments.length ? m.segments : [{ type: 'text', text: m.text || '' }];
    const custom = opt.custom && ((s, i) => opt.custom(s, i, row, mine, m));
    renderSegments(b, segs, { custom, onImageLoad: opt.onImageLoad });
    row.append(b, el('div', 'meta', fmtTime(m.created_at)));
    return row;
  }

  // ---- one conversation: list, sending, catch-up, live socket -----------------------------------
  // o: list, dot (live indicator), api(method, path, body), messagesPath, wsPath (absolute path),
  //    wsToken(), isReady(), imageStick (px from the bottom that still counts as pinned),
  //    and optional customSegment (see bubble), onItem(m) after a message is shown, onTick(n) every 5 s.
  function createChat(o) {
    const list = o.list;
    const seen = new Set();
    const pending = new Map(); // client_msg_id -> {id, text, state, tries, timer, el, acceptedAt}
    let cursor = 0, fetching = null, again = false, gen = 0;
    let ws = null, wsUp = false, wsTries = 0, wsTimer = null, lastSeen = 0, tick = 0;

    function nearBottom(px) { return list.scrollHeight - list.scrollTop - list.clientHeight < px; }
    function scrollBottom() { list.scrollTop = list.scrollHeight; }
    const onImageLoad = () => { if (nearBottom(o.imageStick)) scrollBottom(); }; // keep pinned once the image has a size
    const render = (m, mine) => bubble(m, mine, { custom: o.customSegment, onImageLoad });

    // Dedupe by id, keep id order, pending bubbles at the end. "in" is what this page's user wrote.
    function addItem(m) {
      if (m.id == null) { catchUp().catch(() => {}); return; } // cannot dedupe without an id: fetch it via history
      if (seen.has(m.id)) return;
      seen.add(m.id);
      const stick = nearBottom(80), p = m.client_msg_id && pending.get(m.client_msg_id);
      if (p) { clearTimeout(p.timer); p.el.remove(); pending.delete(m.client_msg_id); }
      const node = render(m, m.direction === 'in');
      node.dataset.id = m.id;
      let after = list.lastElementChild; // walk back over pending and newer messages
      while (after && (after.dataset.pending || Number(after.dataset.id) > m.id)) after = after.previousElementSibling;
      list.insertBefore(node, after ? after.nextSibling : list.firstChild);
      if (stick || p) scrollBottom();
      if (o.onItem) o.onItem(m);
    }
    function catchUp() {
      // Coalesce: if a fetch is running, run one more pass after it instead of a parallel one.
      if (fetching) { again = true; return fetching; }
      const g = gen;
      const run = (async () => {
        do {
          again = false;
          for (let i = 0; i < 200; i++) { // loop while pages come back; `next` not moving also ends it
            const r = await o.api('GET', o.messagesPath + '?after=' + cursor + '&limit=50');
            if (g !== gen) return; // reset() meanwhile: this belongs to the old session
            (r.items || []).forEach(addItem); // `next` may repeat items: addItem dedupes
            const next = Number(r.next);
            if (!(r.items || []).length || !(next > cursor)) break;
            cursor = next;
          }
        } while (again);
      })();
      fetching = run.finally(() => { if (g === gen) fetching = null; });
      return fetching;
    }

    // Sending: optimistic bubble, idempotent retries keyed by client_msg_id. False if not sent.
    function send(text) {
      if (!o.isReady() || !text.trim()) return false;
      const p = { id: uuid(), text, tries: 0, el: render({ text, created_at: null }, true) };
      p.el.classList.add('pending'); p.el.dataset.pending = '1';
      pending.set(p.id, p); list.appendChild(p.el); scrollBottom();
      trySend(p);
      return true;
    }
    function setState(p, state, err) {
      const meta = p.el.querySelector('.meta');
      p.state = state; meta.textContent = '';
      if (state === 'sending') meta.textContent = '发送中… sending';
      else if (state === 'accepted') meta.textContent = '已发送 sent';
      else {
        const b = el('button', 'retry', state === 'retry' ? '⟳ 网络异常，正在重试 · 点此立即重试'
          : '! 发送失败（' + err.message + '）· 点此重试');
        b.type = 'button'; b.onclick = () => { p.tries = 0; trySend(p); };
        meta.appendChild(b);
      }
    }
    async function trySend(p) {
      clearTimeout(p.timer); setState(p, 'sending');
      try {
        await o.api('POST', o.messagesPath, { text: p.text, client_msg_id: p.id });
        if (!pending.has(p.id)) return; // already confirmed by history
        setState(p, 'accepted'); p.acceptedAt = Date.now();
        setTimeout(() => catchUp().catch(() => {}), 700); // own messages are not pushed: fetch the stored copy
      } catch (e) {
        if (!pending.has(p.id)) return;
        if (!e.status || e.status >= 500 || e.status === 429 || e.status === 408) { // transient: same id, back off
          setState(p, 'retry', e); p.timer = setTimeout(() => trySend(p), backoff(p.tries++));
        } else setState(p, 'failed', e);
      }
    }
    function awaitingEcho() { for (const p of pending.values()) if (p.state === 'accepted' && Date.now() - p.acceptedAt < 60000) return true; return false; }

    // Live updates: WebSocket with backoff, catch-up after each connect, polling while down.
    function setLive(up) { wsUp = up; o.dot.className = 'dot' + (up ? ' on' : ''); o.dot.title = up ? '已连接 live' : '重连中 reconnecting'; }
    function connect() {
      clearTimeout(wsTimer);
      if (ws || !o.isReady()) return;
      const token = o.wsToken();
      if (!token) return;
      const s = ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + o.wsPath + '?token=' + encodeURIComponent(token));
      s.onopen = () => { if (ws !== s) return; wsTries = 0; lastSeen = Date.now(); setLive(true); catchUp().catch(() => {}); };
      s.onmessage = (ev) => {
        if (ws !== s) return;
        lastSeen = Date.now();
        let d; try { d = JSON.parse(ev.data); } catch (_) { return; } // e.g. "pong"
        if (d && d.type === 'message') addItem(d);
      };
      s.onclose = () => drop(s);
    }
    function drop(s) {
      if (ws !== s) return;
      ws = null; setLive(false);
      try { s.close(); } catch (_) { /* already closed */ }
      // A stale token in the URL is renewed or caught meanwhile by the polling fallback's 401 handling.
      if (o.isReady()) wsTimer = setTimeout(connect, backoff(wsTries++));
    }
    setInterval(() => {
      if (!o.isReady()) return;
      tick++;
      if (!wsUp || awaitingEcho()) catchUp().catch(() => {});
      // Half-open sockets (phone changed network) stay "open" silently: ping, and drop if nothing comes back.
      if (wsUp && Date.now() - lastSeen > 45000) drop(ws);
      else if (wsUp && tick % 4 === 0) ws.send('ping');
      if (o.onTick) o.onTick(tick);
    }, 5000);
    document.addEventListener('visibilitychange', () => { // webviews freeze timers in the background
      if (document.hidden || !o.isReady()) return;
      catchUp().catch(() => {});
      if (!ws) { wsTries = 0; connect(); }
    });

    // Forget everything of the current session (sign-out); its in-flight results become no-ops.
    function reset() {
      gen++;
      clearTimeout(wsTimer); if (ws) { const s = ws; ws = null; s.close(); } setLive(false);
      for (const p of pending.values()) clearTimeout(p.timer);
      pending.clear(); seen.clear(); list.textContent = ''; cursor = 0; fetching = null; again = false;
    }

    return { addItem, catchUp, send, connect, setLive, reset, scrollBottom, nearBottom };
  }

  // ---- composer: Enter sends, Shift+Enter breaks the line, the textarea grows up to maxHeight ------
  // send(text) returns true when it took the text; only then is the box cleared. Returns autosize.
  function composer(form, input, maxHeight, send) {
    function autosize() { input.style.height = 'auto'; input.style.height = Math.min(input.scrollHeight + 2, maxHeight) + 'px'; }
    function submit() { if (send(input.value)) { input.value = ''; autosize(); input.focus(); } }
    input.addEventListener('input', autosize);
    input.addEventListener('keydown', (e) => {
      // isComposing: Enter that confirms a Chinese IME candidate must not send.
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); submit(); }
    });
    form.onsubmit = (e) => { e.preventDefault(); submit(); };
    return autosize;
  }

  window.WebIM = { el, hex, uuid, sleep, backoff, request, result, safeUrl, segment, renderSegments, fmtTime, bubble, createChat, composer };
})();
