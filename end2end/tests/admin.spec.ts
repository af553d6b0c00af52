// The admin page: live registrations and sockets, role changes and forced
// logout, each reaching the affected user's open page at once.
import { expect, test, type BrowserContext, type Page } from '@playwright/test';
import {
  ADMIN_EMAIL,
  badge,
  ensureAdmin,
  logEntries,
  newAccount,
  registerViaApi,
  socketIdOf,
  userName,
  waitOnline,
  waitOnlineAs,
  waitOnlineAsGuest,
} from './helpers';

const rows = (page: Page) => page.getByTestId('socket-row');

test.describe('admin', () => {
  const contexts: BrowserContext[] = [];

  test.afterEach(async () => {
    for (const context of contexts.splice(0)) {
      await context.close();
    }
  });

  async function openAdmin(browser: import('@playwright/test').Browser, baseURL: string | undefined): Promise<Page> {
    const context = await browser.newContext({ baseURL });
    contexts.push(context);
    await ensureAdmin(context.request);
    const admin = await context.newPage();
    await admin.goto('/admin');
    await waitOnline(admin);
    await expect(admin.getByTestId('admin-link')).toBeVisible();
    await expect(admin.getByTestId('sockets-table')).toBeVisible();
    // The admin's own socket is listed.
    const own = (await socketIdOf(admin).textContent())!.trim();
    await expect(rows(admin).filter({ hasText: own })).toHaveCount(1);
    await expect(rows(admin).filter({ hasText: own })).toContainText(ADMIN_EMAIL);
    return admin;
  }

  test('non-admins see "Admins only."', async ({ page }) => {
    await registerViaApi(page.request, newAccount('Plain'));
    await page.goto('/admin');
    await waitOnline(page);
    await expect(page.getByText('Admins only.')).toBeVisible();
    await expect(page.getByTestId('sockets-table')).toHaveCount(0);
    await expect(page.getByTestId('admin-link')).toHaveCount(0);
    expect((await page.request.get('/api/admin/sockets')).status()).toBe(403);
  });

  test('registrations and sockets appear live; role change and revocation reach the user at once', async ({
    browser,
    baseURL,
  }) => {
    test.setTimeout(90_000);
    const admin = await openAdmin(browser, baseURL);
    const account = newAccount('Newbie');

    // --- a new user registers elsewhere: the admin hears it without reload ---------------
    const userCtx = await browser.newContext({ baseURL });
    contexts.push(userCtx);
    await registerViaApi(userCtx.request, account);
    await expect(admin.getByTestId('registrations').locator('li', { hasText: account.email })).toHaveText(
      `${account.name} <${account.email}>`,
    );

    // --- the user opens a page: the sockets table gains their row ------------------------
    const user = await userCtx.newPage();
    await user.goto('/');
    const userSocket = await waitOnlineAs(user, account.name);
    const userRow = rows(admin).filter({ hasText: userSocket });
    await expect(userRow).toHaveCount(1);
    await expect(userRow).toContainText(`${account.name} <${account.email}>`);
    await expect(user.getByTestId('admin-link')).toHaveCount(0);

    // --- the admin makes them an admin: their page shows the admin link, no reload ----------
    const roleSelect = admin.getByLabel(`Role of ${account.email}`);
    await expect(roleSelect).toHaveValue('user');
    await roleSelect.selectOption('admin');
    await expect(user.getByTestId('admin-link')).toBeVisible();
    await expect(logEntries(user, 'bound').first()).toContainText('admin');
    await expect(socketIdOf(user)).toHaveText(userSocket);
    await expect(badge(user)).toHaveText(`online as ${account.name}`);
    await expect(admin.getByLabel(`Role of ${account.email}`)).toHaveValue('admin');
    // The stored role counts: the user may now use the admin API.
    expect((await user.request.get('/api/admin/sockets')).status()).toBe(200);

    // --- the admin revokes their sessions: the page turns guest at once --------------------
    await admin.getByRole('button', { name: `Revoke sessions of ${account.email}` }).click();
    await expect(userName(user)).toHaveText('Guest');
    await expect(logEntries(user, 'unbound').first()).toContainText('revoked');
    await expect(badge(user)).toHaveText(/^online as guest guest-\d+$/);
    await expect(socketIdOf(user)).toHaveText(userSocket);
    await expect(user.getByTestId('admin-link')).toHaveCount(0);
    // The admin's table no longer offers controls for them (their socket is a guest now).
    await expect(admin.getByLabel(`Role of ${account.email}`)).toHaveCount(0);

    // The cookie no longer works: a reload stays guest.
    await user.reload();
    await expect(userName(user)).toHaveText('Guest');
    await waitOnlineAsGuest(user);
    expect((await user.request.get('/api/auth/me')).status()).toBe(401);
  });

  test('revocation reaches every open tab of the user', async ({ browser, baseURL }) => {
    const admin = await openAdmin(browser, baseURL);
    const account = newAccount('Twotabs');
    const userCtx = await browser.newContext({ baseURL });
    contexts.push(userCtx);
    await registerViaApi(userCtx.request, account);
    const tab1 = await userCtx.newPage();
    await tab1.goto('/');
    const socket1 = await waitOnlineAs(tab1, account.name);
    const tab2 = await userCtx.newPage();
    await tab2.goto('/rooms');
    const socket2 = await waitOnlineAs(tab2, account.name);
    await expect(rows(admin).filter({ hasText: socket1 })).toHaveCount(1);
    await expect(rows(admin).filter({ hasText: socket2 })).toHaveCount(1);

    // One button per bound row: either revokes all the user's sessions.
    await admin.getByRole('button', { name: `Revoke sessions of ${account.email}` }).first().click();
    for (const tab of [tab1, tab2]) {
      await expect(userName(tab)).toHaveText('Guest');
      await expect(logEntries(tab, 'unbound').first()).toContainText('revoked');
      await expect(badge(tab)).toHaveText(/^online as guest guest-\d+$/);
    }
  });

  test('a socket that logs in in place is listed as its user', async ({ browser, baseURL }) => {
    const admin = await openAdmin(browser, baseURL);
    const account = newAccount('Inplace');
    const userCtx = await browser.newContext({ baseURL });
    contexts.push(userCtx);
    const user = await userCtx.newPage();
    await user.goto('/register');
    const socket = await waitOnlineAsGuest(user);
    const row = rows(admin).filter({ hasText: socket });
    await expect(row).toHaveCount(1);
    await expect(row).toContainText('guest guest-');

    await user.getByLabel('Email').fill(account.email);
    await user.getByLabel('Name').fill(account.name);
    await user.getByLabel('Password (at least 8 characters)').fill(account.password);
    await user.getByRole('button', { name: 'Create account' }).click();
    await expect(badge(user)).toHaveText(`online as ${account.name}`);
    await expect(admin.getByTestId('registrations').locator('li', { hasText: account.email })).toBeVisible();

    // The same socket, now bound: the admin can manage the user from it.
    // REGRESSION GUARD (app bug found by this suite; fixed in the app's working tree during
    // the same session): the admin page reloads its table on `sockets.changed`, which the
    // server published only when a socket connected or disconnected, not when an open socket
    // was rebound (login/logout frames, role change, revocation). So this row kept saying
    // "guest guest-NNNN", with no role select or revoke button, until some other socket came
    // or went. Expected: the row shows "NAME <EMAIL>" with its controls.
    await expect(row).toContainText(`${account.name} <${account.email}>`);
    await expect(admin.getByLabel(`Role of ${account.email}`)).toBeVisible();

    // Logging out in place turns the row back into a guest row.
    await user.getByRole('button', { name: 'Log out' }).click();
    await expect(badge(user)).toHaveText(/^online as guest guest-\d+$/);
    await expect(row).toContainText('guest guest-');
    await expect(row).not.toContainText(account.email);
    await expect(admin.getByLabel(`Role of ${account.email}`)).toHaveCount(0);
  });
});
