// Issue "Rooms": create and join rooms, chat with server-stamped senders,
// presence, guests reading along and logging in without leaving the room.
import { expect, test, type Browser, type BrowserContext } from '@playwright/test';
import {
  expectMembers,
  expectMessage,
  logEntries,
  messages,
  newAccount,
  presence,
  registerViaApi,
  send,
  socketIdOf,
  submitLogin,
  waitOnlineAs,
  waitOnlineAsGuest,
} from './helpers';


test.describe('rooms', () => {
  const contexts: BrowserContext[] = [];

  test.afterEach(async () => {
    for (const context of contexts.splice(0)) {
      await context.close();
    }
  });

  async function open(browser: Browser, baseURL: string | undefined): Promise<BrowserContext> {
    const context = await browser.newContext({ baseURL });
    contexts.push(context);
    return context;
  }

  /** A room made by a fresh user through the API, with two messages in it. */
  async function roomWithHistory(browser: Browser, baseURL: string | undefined) {
    const author = newAccount('Author');
    const ctx = await open(browser, baseURL);
    await registerViaApi(ctx.request, author);
    const res = await ctx.request.post('/api/rooms', { data: { name: `History ${Date.now().toString(36)}` } });
    expect(res.status()).toBe(201);
    const { room } = await res.json();
    const page = await ctx.newPage();
    // Reached by client-side navigation (after hydration) so the join is not at issue here.
    await page.goto('/rooms');
    await waitOnlineAs(page, author.name);
    await page.getByLabel('Room code').fill(room.code);
    await page.getByRole('button', { name: 'Join', exact: true }).click();
    await expect(presence(page)).toHaveText([author.name]);
    await send(page, 'first message');
    await send(page, 'second message');
    await expect(messages(page)).toHaveCount(2);
    return { author, code: room.code as string, name: room.name as string, page };
  }

  test('two users create, join and chat; senders are stamped; presence lists both', async ({ browser, baseURL }) => {
    const aliceAccount = newAccount('Alice');
    const bobAccount = newAccount('Bob');
    const aliceCtx = await open(browser, baseURL);
    const bobCtx = await open(browser, baseURL);
    await registerViaApi(aliceCtx.request, aliceAccount);
    await registerViaApi(bobCtx.request, bobAccount);

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

    for (const page of [alice, bob]) {
      await expectMembers(page, [aliceAccount.name, bobAccount.name]);
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
    await expect(alice.getByTestId('chat-error')).toHaveCount(0);
    await expect(bob.getByTestId('chat-error')).toHaveCount(0);

    // Bob leaves (navigates away): presence shrinks for Alice.
    await bob.getByRole('link', { name: 'Rooms', exact: true }).click();
    await expect(presence(alice)).toHaveText([aliceAccount.name]);
  });

  test('a guest reading along logs in from the prompt, returns to the room and sends at once', async ({
    browser,
    baseURL,
  }) => {
    test.setTimeout(90_000);
    const { author, code, name, page: authorPage } = await roomWithHistory(browser, baseURL);
    const carol = newAccount('Carol');
    // Carol's account exists, but the browser she reads with starts as a guest.
    const setup = await open(browser, baseURL);
    await registerViaApi(setup.request, carol);

    const guestCtx = await open(browser, baseURL);
    const guest = await guestCtx.newPage();
    await guest.goto('/rooms');
    const guestSocket = await waitOnlineAsGuest(guest);
    const guestName = (await guest.getByTestId('connection-badge').textContent())!.replace('online as guest ', '').trim();
    await guest.getByTestId('room-list').getByRole('link', { name }).click();
    await expect(guest).toHaveURL(new RegExp(`/rooms/${code}$`));

    // Reads along: history, presence, a login prompt, no message input.
    await expect(messages(guest)).toHaveCount(2);
    await expectMessage(guest, author.name, 'first message');
    await expectMessage(guest, author.name, 'second message');
    const prompt = guest.getByTestId('login-prompt');
    await expect(prompt).toBeVisible();
    await expect(guest.getByTestId('message-input')).toHaveCount(0);
    await expect(guest.getByRole('button', { name: 'Send' })).toHaveCount(0);
    for (const page of [authorPage, guest]) {
      await expect(presence(page)).toHaveCount(2);
      await expect(presence(page).filter({ hasText: guestName })).toHaveCount(1);
    }

    // Follows the prompt's "Log in" link and logs in.
    const loginLink = prompt.getByRole('link', { name: 'Log in' });
    await expect(loginLink).toHaveAttribute('href', `/login?next=/rooms/${code}`);
    await loginLink.click();
    await expect(guest).toHaveURL(new RegExp(`/login\\?next=(/|%2F)rooms(/|%2F)${code}$`));
    await submitLogin(guest, carol.email, carol.password);

    // Back in the room without reload or reconnect.
    await expect(guest).toHaveURL(new RegExp(`/rooms/${code}$`));
    await expect(guest.getByTestId('connection-badge')).toHaveText(`online as ${carol.name}`);
    await expect(socketIdOf(guest)).toHaveText(guestSocket);
    await expect(logEntries(guest, 'connect')).toHaveCount(1);
    await expect(guest.getByTestId('login-prompt')).toHaveCount(0);
    await expect(messages(guest)).toHaveCount(2);
    for (const page of [authorPage, guest]) {
      await expect(presence(page).filter({ hasText: carol.name })).toHaveCount(1);
      await expect(presence(page).filter({ hasText: guestName })).toHaveCount(0);
      await expect(presence(page)).toHaveCount(2);
    }

    // Sends at once; the others see it, stamped with her name.
    await send(guest, 'carol was reading along');
    for (const page of [authorPage, guest]) {
      await expectMessage(page, carol.name, 'carol was reading along');
      await expect(messages(page)).toHaveCount(3);
    }
    await expect(guest.getByTestId('chat-error')).toHaveCount(0);
  });

  test('a guest opening a room link directly sees the history, presence and login prompt', async ({
    browser,
    baseURL,
  }) => {
    const { author, code, page: authorPage } = await roomWithHistory(browser, baseURL);
    const guestCtx = await open(browser, baseURL);
    const guest = await guestCtx.newPage();
    await guest.goto(`/rooms/${code}`);
    await waitOnlineAsGuest(guest);
    await expect(guest.getByTestId('room-code')).toHaveText(code);
    await expect(guest.getByTestId('login-prompt')).toBeVisible();
    await expect(guest.getByTestId('message-input')).toHaveCount(0);
    // REGRESSION GUARD (app bug found by this suite; fixed in the app's working tree during
    // the same session): on a full page load of /rooms/CODE the page sent its `join` before
    // the socket was open; it failed with "not connected; try again in a moment" (shown in
    // chat-error) and was never retried after `welcome`, so the page showed no history, no
    // presence and received no messages. Expected: the join happens once the socket is online.
    await expect(guest.getByTestId('chat-error')).toHaveCount(0);
    await expect(messages(guest)).toHaveCount(2);
    await expectMessage(guest, author.name, 'first message');
    await expect(presence(guest)).toHaveCount(2);
    await expect(presence(authorPage)).toHaveCount(2);
    // Live messages reach the guest.
    await send(authorPage, 'live for the guest');
    await expectMessage(guest, author.name, 'live for the guest');
  });

  test('reloading a room page rejoins the room', async ({ browser, baseURL }) => {
    const { author, page } = await roomWithHistory(browser, baseURL);
    await page.reload();
    await waitOnlineAs(page, author.name);
    // REGRESSION GUARD (same bug as above): after a reload the room page never joined
    // (chat-error "not connected; try again in a moment", heading showing the code, not the
    // name), history and presence stayed empty and Send failed with
    // "join the room before sending to it" (not_in_room).
    await expect(page.getByTestId('chat-error')).toHaveCount(0);
    await expect(messages(page)).toHaveCount(2);
    await expect(presence(page)).toHaveText([author.name]);
    await send(page, 'after reload');
    await expectMessage(page, author.name, 'after reload');
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
