// Issue "bound socket": one socket per tab that is rebound in place on login
// and logout, follows the other tabs of the browser, and survives a restart.
import { expect, test, type Page } from '@playwright/test';
import {
  badge,
  headerLink,
  logEntries,
  newAccount,
  registerViaApi,
  socketIdOf,
  submitLogin,
  userName,
  waitOnlineAs,
  waitOnlineAsGuest,
} from './helpers';
import { ServerProcess } from './server-process';

/** Logs in through the header's "Log in" link and the form; the page must be hydrated. */
async function logInThroughForm(page: Page, email: string, password: string): Promise<void> {
  await headerLink(page, 'Log in').click();
  await expect(page).toHaveURL(/\/login$/);
  await submitLogin(page, email, password);
}

test.describe('bound socket', () => {
  test('a first visit is a guest; logging in binds the same socket', async ({ page, playwright, baseURL }) => {
    const account = newAccount('Sam');
    // Registered from a separate cookie jar, so this browser stays a guest.
    const api = await playwright.request.newContext({ baseURL });
    await registerViaApi(api, account);
    await api.dispose();

    await page.goto('/');
    const guestSocket = await waitOnlineAsGuest(page);
    await expect(userName(page)).toHaveText('Guest');

    await logInThroughForm(page, account.email, account.password);
    await expect(page).toHaveURL(/\/$/);
    await expect(badge(page)).toHaveText(`online as ${account.name}`);
    await expect(userName(page)).toHaveText(account.name);
    // Same socket, no reconnect: one connect entry, then a bound entry.
    await expect(socketIdOf(page)).toHaveText(guestSocket);
    await expect(logEntries(page, 'connect')).toHaveCount(1);
    await expect(logEntries(page, 'disconnect')).toHaveCount(0);
    await expect(logEntries(page, 'bound')).toHaveCount(1);
    await expect(logEntries(page, 'bound').first()).toContainText(account.name);
  });

  test('a second tab opens already bound from the cookie', async ({ page, context }) => {
    const account = newAccount('Tab');
    await registerViaApi(page.request, account);
    await page.goto('/');
    const first = await waitOnlineAs(page, account.name);

    const second = await context.newPage();
    await second.goto('/rooms');
    // Rendered logged in by the server, and the socket starts bound: no login step.
    await expect(userName(second)).toHaveText(account.name);
    const secondSocket = await waitOnlineAs(second, account.name);
    expect(secondSocket).not.toBe(first);
    await expect(logEntries(second, 'connect')).toHaveCount(1);
    await expect(logEntries(second, 'bound')).toHaveCount(0);
  });

  test('logging out in one tab unbinds the other tabs of the session', async ({ page, context }) => {
    const account = newAccount('Out');
    await registerViaApi(page.request, account);
    await page.goto('/');
    const firstSocket = await waitOnlineAs(page, account.name);
    const second = await context.newPage();
    await second.goto('/');
    const secondSocket = await waitOnlineAs(second, account.name);

    await page.getByRole('button', { name: 'Log out' }).click();
    await expect(userName(page)).toHaveText('Guest');
    await expect(badge(page)).toHaveText(/^online as guest guest-\d+$/);
    await expect(socketIdOf(page)).toHaveText(firstSocket);
    await expect(logEntries(page, 'unbound').first()).toContainText('logout (this tab)');

    // The other tab hears it from the server, without reload or reconnect.
    await expect(logEntries(second, 'unbound')).toHaveCount(1);
    await expect(logEntries(second, 'unbound').first()).toContainText('logout');
    await expect(badge(second)).toHaveText(/^online as guest guest-\d+$/);
    await expect(userName(second)).toHaveText('Guest');
    await expect(socketIdOf(second)).toHaveText(secondSocket);
    await expect(logEntries(second, 'connect')).toHaveCount(1);
  });

  test('logging in in one tab binds the guest tabs of the same browser', async ({ page, context, playwright, baseURL }) => {
    const account = newAccount('Bc');
    const api = await playwright.request.newContext({ baseURL });
    await registerViaApi(api, account);
    await api.dispose();

    await page.goto('/');
    await waitOnlineAsGuest(page);
    const second = await context.newPage();
    await second.goto('/rooms');
    const secondSocket = await waitOnlineAsGuest(second);
    await expect(userName(second)).toHaveText('Guest');

    await logInThroughForm(page, account.email, account.password);
    await expect(badge(page)).toHaveText(`online as ${account.name}`);

    // The other tab binds its own open socket (BroadcastChannel + ticket).
    await expect(badge(second)).toHaveText(`online as ${account.name}`);
    await expect(userName(second)).toHaveText(account.name);
    await expect(socketIdOf(second)).toHaveText(secondSocket);
    await expect(logEntries(second, 'bound')).toHaveCount(1);
    await expect(logEntries(second, 'connect')).toHaveCount(1);
    // The rooms page offers logged-in actions now.
    await expect(second.getByLabel('New room name')).toBeVisible();
  });

  test.describe('server restart', () => {
    let server: ServerProcess | null = null;

    test.afterEach(async () => {
      if (server) {
        await server.dispose();
        server = null;
      }
    });

    test('the socket goes offline, retries, and comes back bound from the cookie, back in its room', async ({
      page,
    }) => {
      test.setTimeout(120_000);
      server = new ServerProcess('127.0.0.1:3107');
      await server.start();
      const origin = server.origin;
      const account = newAccount('Phoenix');

      // Register in the browser, on the private server.
      await page.goto(`${origin}/register`);
      const guestSocket = await waitOnlineAsGuest(page);
      await page.getByLabel('Email').fill(account.email);
      await page.getByLabel('Name').fill(account.name);
      await page.getByLabel('Password (at least 8 characters)').fill(account.password);
      await page.getByRole('button', { name: 'Create account' }).click();
      await expect(page).toHaveURL(`${origin}/`);
      await expect(badge(page)).toHaveText(`online as ${account.name}`);
      await expect(socketIdOf(page)).toHaveText(guestSocket);

      // Sit in a room (reached by client-side navigation) with one message in it.
      const created = await page.request.post(`${origin}/api/rooms`, { data: { name: 'Restart room' } });
      expect(created.status()).toBe(201);
      const { room } = await created.json();
      await page.getByRole('link', { name: 'Rooms', exact: true }).click();
      await page.getByTestId('room-list').getByRole('link', { name: 'Restart room' }).click();
      await expect(page).toHaveURL(`${origin}/rooms/${room.code}`);
      await expect(page.getByTestId('presence').locator('li')).toHaveText([account.name]);
      await page.getByTestId('message-input').fill('before the restart');
      await page.getByRole('button', { name: 'Send' }).click();
      await expect(page.getByTestId('message')).toHaveCount(1);

      // Stop it: every socket is closed with 1001 and the client retries.
      await server.stop();
      await expect(badge(page)).toHaveText(/^offline \(retrying in \d+ s\)$/);
      await expect(logEntries(page, 'disconnect').first()).toContainText('code 1001');
      await expect(socketIdOf(page)).toHaveText('');
      await expect(logEntries(page, 'reconnect_attempt').first()).toBeAttached({ timeout: 15_000 });
      // Still the user's page while offline.
      await expect(userName(page)).toHaveText(account.name);

      // Start it again on the same data: the cookie alone binds the new socket.
      await server.start();
      await expect(badge(page)).toHaveText(`online as ${account.name}`, { timeout: 45_000 });
      await expect(socketIdOf(page)).toHaveText(/\S/);
      const newSocket = (await socketIdOf(page).textContent())!.trim();
      expect(newSocket).not.toBe(guestSocket);
      await expect(logEntries(page, 'connect')).toHaveCount(2);
      await expect(logEntries(page, 'connect').first()).toContainText(newSocket);
      // No login step happened on the new socket: still just the one bound entry from registering.
      await expect(logEntries(page, 'bound')).toHaveCount(1);
      await expect(userName(page)).toHaveText(account.name);
      // And the session still works for HTTP.
      expect((await page.request.get(`${origin}/api/auth/me`)).status()).toBe(200);

      // The new connection joined the room again: presence, history, and sending work.
      await expect(page.getByTestId('presence').locator('li')).toHaveText([account.name]);
      await expect(page.getByTestId('message')).toHaveCount(1);
      await expect(page.getByTestId('message').locator('.text')).toHaveText('before the restart');
      await page.getByTestId('message-input').fill('after the restart');
      await page.getByRole('button', { name: 'Send' }).click();
      await expect(page.getByTestId('message')).toHaveCount(2);
      await expect(page.getByTestId('message').last().locator('.from')).toHaveText(account.name);
      await expect(page.getByTestId('chat-error')).toHaveCount(0);
    });
  });

  test.describe('on a private server with other settings', () => {
    let server: ServerProcess | null = null;

    async function startServer(addr: string, env: Record<string, string>): Promise<string> {
      server = new ServerProcess(addr, undefined, env);
      await server.start();
      return server.origin;
    }

    /** Registers an account from outside the browser, so the page stays a guest until it logs in. */
    async function registerElsewhere(origin: string, account: ReturnType<typeof newAccount>): Promise<void> {
      const res = await fetch(`${origin}/api/auth/register`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ email: account.email, name: account.name, password: account.password }),
      });
      expect(res.status).toBe(201);
    }

    test.afterEach(async () => {
      if (server) {
        await server.dispose();
        server = null;
      }
    });

    test('guests off: a guest socket is closed with 4401 and not retried; logging in connects it', async ({ page }) => {
      test.setTimeout(90_000);
      const origin = await startServer('127.0.0.1:3108', { TETHER_ALLOW_GUESTS: 'false' });
      const account = newAccount('Member');

      await page.goto(`${origin}/login`);
      await expect(badge(page)).toHaveText('disconnected (4401): log in to connect');
      await expect(logEntries(page, 'disconnect').first()).toContainText('code 4401');
      await expect(logEntries(page, 'reconnect_failed')).toHaveCount(1);
      await expect(socketIdOf(page)).toHaveText('');

      await registerElsewhere(origin, account);
      // No retry happened meanwhile (a final close waits for a user action).
      await expect(logEntries(page, 'reconnect_attempt')).toHaveCount(0);

      await submitLogin(page, account.email, account.password);
      await expect(page).toHaveURL(`${origin}/`);
      await expect(badge(page)).toHaveText(`online as ${account.name}`);
      await expect(socketIdOf(page)).toHaveText(/\S/);
      await expect(userName(page)).toHaveText(account.name);

      // Logging out closes the socket again with 4401.
      await page.getByRole('button', { name: 'Log out' }).click();
      await expect(userName(page)).toHaveText('Guest');
      await expect(badge(page)).toHaveText('disconnected (4401): log in to connect');
    });

    test('a session that expires under an open page unbinds its socket in place', async ({ page }) => {
      test.setTimeout(90_000);
      const origin = await startServer('127.0.0.1:3109', { TETHER_TOKEN_TTL_SECS: '4' });
      const account = newAccount('Brief');
      await registerElsewhere(origin, account);

      await page.goto(`${origin}/login`);
      const socketId = await waitOnlineAsGuest(page);
      await submitLogin(page, account.email, account.password);
      await expect(badge(page)).toHaveText(`online as ${account.name}`);
      await expect(userName(page)).toHaveText(account.name);

      // Four seconds later the server takes the user away: same socket, now a guest.
      await expect(logEntries(page, 'unbound').first()).toContainText('expired', { timeout: 15_000 });
      await expect(userName(page)).toHaveText('Guest');
      await expect(badge(page)).toHaveText(/^online as guest guest-\d+$/);
      await expect(socketIdOf(page)).toHaveText(socketId);

      // The expired cookie binds nothing after a reload either.
      await page.reload();
      await waitOnlineAsGuest(page);
      await expect(userName(page)).toHaveText('Guest');
    });
  });
});
