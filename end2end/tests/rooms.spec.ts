// Issue "Rooms": create and join rooms, chat with server-stamped senders,
// presence, guests reading along and logging in without leaving the room.
import { expect, test, type BrowserContext, type Page } from '@playwright/test';
import {
  logEntries,
  newAccount,
  registerViaApi,
  socketIdOf,
  submitLogin,
  waitOnlineAs,
  waitOnlineAsGuest,
} from './helpers';

const messages = (page: Page) => page.getByTestId('message');
const presence = (page: Page) => page.getByTestId('presence').locator('li');

/** The message with this text, which must come from `from`. */
async function expectMessage(page: Page, from: string, text: string): Promise<void> {
  const item = messages(page).filter({ has: page.locator('.text', { hasText: text }) });
  await expect(item).toHaveCount(1);
  await expect(item.locator('.from')).toHaveText(from);
  await expect(item.locator('.text')).toHaveText(text);
}

async function send(page: Page, text: string): Promise<void> {
  const input = page.getByTestId('message-input');
  await input.fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  // The draft clears once the server acknowledged the message.
  await expect(input).toHaveValue('');
}

test.describe('rooms', () => {
  const contexts: BrowserContext[] = [];

  test.afterEach(async () => {
    for (const context of contexts.splice(0)) {
      await context.close();
    }
  });

  test('two users chat, a guest reads along and logs in without leaving the room', async ({ browser, baseURL }) => {
    test.setTimeout(90_000);
    const open = async () => {
      const context = await browser.newContext({ baseURL });
      contexts.push(context);
      return context;
    };
    const aliceAccount = newAccount('Alice');
    const bobAccount = newAccount('Bob');
    const carolAccount = newAccount('Carol');

    const aliceCtx = await open();
    const bobCtx = await open();
    await registerViaApi(aliceCtx.request, aliceAccount);
    await registerViaApi(bobCtx.request, bobAccount);
    // Carol's account exists, but the browser she reads with starts as a guest.
    const setupCtx = await open();
    await registerViaApi(setupCtx.request, carolAccount);
    await setupCtx.close();

    // --- Alice creates a room through the UI --------------------------------------------
    const alice = await aliceCtx.newPage();
    await alice.goto('/rooms');
    await waitOnlineAs(alice, aliceAccount.name);
    const roomName = `Lounge ${Date.now().toString(36)}`;
    await alice.getByLabel('New room name').fill(roomName);
    await alice.getByRole('button', { name: 'Create room' }).click();
    await expect(alice).toHaveURL(/\/rooms\/[^/]+$/);
    const code = (await alice.getByTestId('room-code').textContent())!.trim();
    expect(code).not.toBe('');
    expect(alice.url()).toMatch(new RegExp(`/rooms/${code}$`));
    await expect(alice.getByRole('heading', { level: 1 })).toContainText(roomName);
    await expect(presence(alice)).toHaveText([aliceAccount.name]);
    await expect(alice.getByTestId('message-input')).toBeVisible();

    // --- Bob finds it in the list and joins by its code ------------------------------------
    const bob = await bobCtx.newPage();
    await bob.goto('/rooms');
    await waitOnlineAs(bob, bobAccount.name);
    const listed = bob.getByTestId('room-list').locator('li', { hasText: roomName });
    await expect(listed.getByRole('link', { name: roomName })).toBeVisible();
    await expect(listed.locator('code')).toHaveText(code);
    await bob.getByLabel('Room code').fill(code);
    await bob.getByRole('button', { name: 'Join', exact: true }).click();
    await expect(bob).toHaveURL(new RegExp(`/rooms/${code}$`));
    await expect(bob.getByRole('heading', { level: 1 })).toContainText(roomName);

    // Both see both in presence.
    for (const page of [alice, bob]) {
      await expect(presence(page)).toHaveCount(2);
      await expect(presence(page).filter({ hasText: aliceAccount.name })).toHaveCount(1);
      await expect(presence(page).filter({ hasText: bobAccount.name })).toHaveCount(1);
    }

    // --- they chat; the server stamps the sender ----------------------------------------
    await send(alice, 'hello from alice');
    await expectMessage(alice, aliceAccount.name, 'hello from alice');
    await expectMessage(bob, aliceAccount.name, 'hello from alice');
    await send(bob, 'hi alice, bob here');
    await expectMessage(bob, bobAccount.name, 'hi alice, bob here');
    await expectMessage(alice, bobAccount.name, 'hi alice, bob here');
    await expect(messages(alice)).toHaveCount(2);
    await expect(messages(bob)).toHaveCount(2);

    // --- a guest opens the room: reads the history, sees the prompt, cannot send ----------
    const guestCtx = await open();
    const guest = await guestCtx.newPage();
    await guest.goto(`/rooms/${code}`);
    const guestSocket = await waitOnlineAsGuest(guest);
    await expect(guest.getByTestId('room-code')).toHaveText(code);
    await expect(messages(guest)).toHaveCount(2);
    await expectMessage(guest, aliceAccount.name, 'hello from alice');
    await expectMessage(guest, bobAccount.name, 'hi alice, bob here');
    const prompt = guest.getByTestId('login-prompt');
    await expect(prompt).toBeVisible();
    await expect(guest.getByTestId('message-input')).toHaveCount(0);
    await expect(guest.getByRole('button', { name: 'Send' })).toHaveCount(0);
    // The guest is present too, by guest name.
    const guestName = (await guest.getByTestId('connection-badge').textContent())!.replace('online as guest ', '').trim();
    for (const page of [alice, bob, guest]) {
      await expect(presence(page)).toHaveCount(3);
      await expect(presence(page).filter({ hasText: guestName })).toHaveCount(1);
    }

    // --- the guest follows the prompt's "Log in" link and comes back logged in -------------
    const loginLink = prompt.getByRole('link', { name: 'Log in' });
    await expect(loginLink).toHaveAttribute('href', `/login?next=/rooms/${code}`);
    await loginLink.click();
    await expect(guest).toHaveURL(new RegExp(`/login\\?next=(/|%2F)rooms(/|%2F)${code}$`));
    await submitLogin(guest, carolAccount.email, carolAccount.password);
    await expect(guest).toHaveURL(new RegExp(`/rooms/${code}$`));
    await expect(guest.getByTestId('connection-badge')).toHaveText(`online as ${carolAccount.name}`);
    // No reload, no reconnect: the socket is the one the guest had.
    await expect(socketIdOf(guest)).toHaveText(guestSocket);
    await expect(logEntries(guest, 'connect')).toHaveCount(1);
    await expect(guest.getByTestId('login-prompt')).toHaveCount(0);
    await expect(messages(guest)).toHaveCount(2);

    // Presence follows: Carol replaces the guest.
    for (const page of [alice, bob, guest]) {
      await expect(presence(page).filter({ hasText: carolAccount.name })).toHaveCount(1);
      await expect(presence(page).filter({ hasText: guestName })).toHaveCount(0);
      await expect(presence(page)).toHaveCount(3);
    }

    // She can send at once, and the others see it.
    await send(guest, 'carol was reading along');
    for (const page of [alice, bob, guest]) {
      await expectMessage(page, carolAccount.name, 'carol was reading along');
      await expect(messages(page)).toHaveCount(3);
    }
    await expect(guest.getByTestId('chat-error')).toHaveCount(0);
  });

  test('a room created through the API shows up live in an open rooms list', async ({ page, playwright, baseURL }) => {
    await page.goto('/rooms');
    await waitOnlineAsGuest(page);
    // Guests may not create rooms.
    await expect(page.getByLabel('New room name')).toHaveCount(0);

    const api = await playwright.request.newContext({ baseURL });
    try {
      await registerViaApi(api, newAccount('Maker'));
      const name = `Live ${Date.now().toString(36)}`;
      const res = await api.post('/api/rooms', { data: { name } });
      expect(res.status()).toBe(201);
      const { room } = await res.json();
      const item = page.getByTestId('room-list').locator('li', { hasText: name });
      await expect(item.locator('code')).toHaveText(room.code);
      await item.getByRole('link', { name }).click();
      await expect(page).toHaveURL(new RegExp(`/rooms/${room.code}$`));
      await expect(page.getByTestId('login-prompt')).toBeVisible();
    } finally {
      await api.dispose();
    }
  });

  test('an unknown room code shows an error', async ({ page }) => {
    await page.goto('/rooms');
    await waitOnlineAsGuest(page);
    await page.getByLabel('Room code').fill('nosuchroom');
    await page.getByRole('button', { name: 'Join', exact: true }).click();
    await expect(page).toHaveURL(/\/rooms\/nosuchroom$/);
    await expect(page.getByTestId('chat-error')).toBeVisible();
  });
});
