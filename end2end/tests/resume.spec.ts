// No lost messages (contract version 2, `seq` and `join.since`): a tab whose
// socket drops rejoins its room with the last seq it holds and shows every
// message sent while it was away, in order, with nothing twice.
import { expect, test, type BrowserContext, type Page, type WebSocketRoute } from '@playwright/test';
import { newAccount, registerViaApi, waitOnline } from './helpers';

const messages = (page: Page) => page.getByTestId('message');

/** Sends `texts` to a room from a plain WebSocket in `page` (its cookie binds it), paced under the frame rate. */
async function sendOverOwnSocket(page: Page, code: string, texts: string[]): Promise<void> {
  await page.evaluate(
    async ({ code, texts }) => {
      const ws = new WebSocket(`ws://${location.host}/ws`);
      await new Promise((opened, failed) => {
        ws.onopen = opened;
        ws.onerror = failed;
      });
      let next = 0;
      const waiting = new Map<number, (frame: any) => void>();
      ws.onmessage = (event) => {
        const frame = JSON.parse(event.data);
        if (frame.type === 'ack') waiting.get(frame.ref)?.(frame);
      };
      const request = (frame: object) =>
        new Promise<any>((answered) => {
          const ref = ++next;
          waiting.set(ref, answered);
          ws.send(JSON.stringify({ ...frame, ref }));
        });
      const joined = await request({ type: 'join', room: code });
      if (!joined.ok) throw new Error(`join: ${JSON.stringify(joined)}`);
      for (const text of texts) {
        const ack = await request({ type: 'send', room: code, text });
        if (!ack.ok) throw new Error(`send: ${JSON.stringify(ack)}`);
        await new Promise((paced) => setTimeout(paced, 60));
      }
      ws.close(1000);
    },
    { code, texts },
  );
}

/** A fresh user in `context` with a room of their own and an online page. */
async function authorWithRoom(context: BrowserContext, prefix: string) {
  const author = newAccount(prefix);
  await registerViaApi(context.request, author);
  const created = await context.request.post('/api/rooms', { data: { name: `${prefix} ${Date.now().toString(36)}` } });
  expect(created.status()).toBe(201);
  const { room } = await created.json();
  const authorPage = await context.newPage();
  await authorPage.goto('/');
  await waitOnline(authorPage);
  return { room, authorPage };
}

test('a tab that loses its socket resumes its room with every message it missed, in order', async ({
  browser,
  baseURL,
}) => {
  const authorContext = await browser.newContext({ baseURL });
  const readerContext = await browser.newContext({ baseURL });
  try {
    const { room, authorPage } = await authorWithRoom(authorContext, 'Resume');

    // The reader's socket goes through a route the test can cut, like a network drop.
    const reader = await readerContext.newPage();
    let networkDown = false;
    const live: WebSocketRoute[] = [];
    await reader.routeWebSocket('**/ws', (ws) => {
      if (networkDown) {
        ws.close({ code: 1011, reason: 'network down (test)' });
        return;
      }
      ws.connectToServer();
      live.push(ws);
    });
    await reader.goto(`/rooms/${room.code}`);
    await waitOnline(reader);
    await sendOverOwnSocket(authorPage, room.code, ['before the drop']);
    await expect(messages(reader)).toHaveCount(1);

    // The drop: more than a join's default history (50) is sent while the reader is away.
    networkDown = true;
    for (const ws of live.splice(0)) {
      await ws.close({ code: 1011, reason: 'network down (test)' });
    }
    await expect(reader.getByTestId('connection-badge')).not.toHaveText(/^online/);
    const missed = Array.from({ length: 60 }, (_, i) => `missed ${i + 1}`);
    await sendOverOwnSocket(authorPage, room.code, missed);

    networkDown = false;
    // The client retries with backoff; once back, it rejoins with `since` and fills the gap.
    await expect(messages(reader)).toHaveCount(61, { timeout: 30_000 });
    await expect(messages(reader).locator('.text')).toHaveText(['before the drop', ...missed]);
  } finally {
    await authorContext.close();
    await readerContext.close();
  }
});

test('a room with more than a page of history loads older messages on demand', async ({ browser, baseURL }) => {
  const authorContext = await browser.newContext({ baseURL });
  const readerContext = await browser.newContext({ baseURL });
  try {
    const { room, authorPage } = await authorWithRoom(authorContext, 'Pages');
    const texts = Array.from({ length: 61 }, (_, i) => `page ${i + 1}`);
    await sendOverOwnSocket(authorPage, room.code, texts);

    const reader = await readerContext.newPage();
    await reader.goto(`/rooms/${room.code}`);
    await waitOnline(reader);
    // A join brings the newest 50.
    await expect(messages(reader)).toHaveCount(50);
    await expect(messages(reader).first().locator('.text')).toHaveText('page 12');
    await reader.getByTestId('load-older').click();
    await expect(messages(reader).locator('.text')).toHaveText(texts);
    // Nothing older is left to load.
    await expect(reader.getByTestId('load-older')).toHaveCount(0);
  } finally {
    await authorContext.close();
    await readerContext.close();
  }
});
