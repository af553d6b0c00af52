#!/usr/bin/env node
// Usage: node scripts/cross-node-logout.js HOST:PORT_A HOST:PORT_B [N=50]
// Two nodes on one Postgres (e.g. scripts/cluster 2 --base-port 3200 -- ...).
// Cross-node logout latency: HTTP logout answered by node A -> `unbound` frame on node B.
const net = require('net');
const crypto = require('crypto');
const [A, B, N] = [process.argv[2], process.argv[3], Number(process.argv[4] || 50)];

function socket(hostport, cookie) {
  const [host, port] = hostport.split(':');
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(port), host);
    const key = crypto.randomBytes(16).toString('base64');
    let buf = Buffer.alloc(0), upgraded = false;
    const waiters = [], frames = [];
    const next = (want) => new Promise((done) => {
      const i = frames.findIndex((f) => f.text.includes(want));
      if (i >= 0) return done(frames.splice(i, 1)[0].t);
      waiters.push({ want, done });
    });
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        if (!buf.slice(0, 12).toString().includes('101')) return reject(new Error(buf.toString()));
        upgraded = true; buf = buf.slice(end + 4);
        resolve({ s, next });
      }
      while (buf.length >= 2) {
        let len = buf[1] & 127, off = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
        else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
        if (buf.length < off + len) return;
        const text = buf.slice(off, off + len).toString(); const op = buf[0] & 15;
        buf = buf.slice(off + len);
        if (op === 1) { const t = process.hrtime.bigint(); const w = waiters.findIndex((x) => text.includes(x.want)); if (w >= 0) waiters.splice(w, 1)[0].done(t); else frames.push({ text, t }); }
      }
    });
    s.write(`GET /ws HTTP/1.1\r\nHost: ${hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://${hostport}\r\nCookie: ${cookie}\r\n\r\n`);
  });
}

async function post(hostport, path, body, cookie) {
  const r = await fetch(`http://${hostport}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', origin: `http://${hostport}`, ...(cookie ? { cookie } : {}) }, body: JSON.stringify(body) });
  return { status: r.status, cookie: (r.headers.get('set-cookie') || '').split(';')[0] };
}

(async () => {
  const email = `m${Date.now()}@x.io`;
  const reg = await post(A, '/api/auth/register', { email, name: 'M', password: 'correct horse' });
  if (reg.status !== 201) throw new Error('register ' + reg.status);
  const lat = [];
  for (let i = 0; i < N; i++) {
    const login = await post(A, '/api/auth/login', { email, password: 'correct horse' });
    if (login.status !== 200) throw new Error('login ' + login.status);
    const ws = await socket(B, login.cookie);
    await ws.next('"welcome"');
    const unbound = ws.next('"unbound"');
    const out = await post(A, '/api/auth/logout', {}, login.cookie);
    const answered = process.hrtime.bigint();
    if (out.status !== 204) throw new Error('logout ' + out.status);
    const at = await unbound;
    lat.push(Number(at - answered) / 1e6);
    ws.s.destroy();
  }
  lat.sort((a, b) => a - b);
  const p = (q) => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))];
  console.log(`logouts ${lat.length}: HTTP answer on A -> unbound on B: p50 ${p(0.5).toFixed(2)} ms, p99 ${p(0.99).toFixed(2)} ms, max ${lat[lat.length - 1].toFixed(2)} ms, min ${lat[0].toFixed(2)} ms`);
})().then(() => process.exit(0)).catch((e) => { console.error(e); process.exit(1); });
