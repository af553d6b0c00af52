// Issue "Accounts": register, stay logged in across reloads (server-rendered,
// no "Guest" flash), log out, failed and successful login.
import { expect, test } from '@playwright/test';
import { badge, headerLink, logEntries, newAccount, registerViaApi, socketIdOf, submitLogin, userName, waitOnlineAs, waitOnlineAsGuest } from './helpers';

test.describe('accounts', () => {
  test('register, reload, log out, wrong password, right password', async ({ page, context, browser, baseURL }) => {
    const account = newAccount('Ann');

    // --- register through the form -------------------------------------------------
    await page.goto('/');
    const guestSocket = await waitOnlineAsGuest(page);
    await headerLink(page, 'Register').click();
    await expect(page).toHaveURL(/\/register$/);
    await page.getByLabel('Email').fill(account.email);
    await page.getByLabel('Name').fill(account.name);
    await page.getByLabel('Password (at least 8 characters)').fill(account.password);
    await page.getByRole('button', { name: 'Create account' }).click();

    await expect(page).toHaveURL(/\/$/);
    await expect(userName(page)).toHaveText(account.name);
    await expect(page.getByTestId('greeting')).toContainText(`Logged in as ${account.name}`);
    await expect(page.getByRole('button', { name: 'Log out' })).toBeVisible();
    await expect(headerLink(page, 'Log in')).toHaveCount(0);
    // The open socket was bound in place.
    await expect(badge(page)).toHaveText(`online as ${account.name}`);
    await expect(socketIdOf(page)).toHaveText(guestSocket);
    await expect(logEntries(page, 'bound')).toHaveCount(1);
    // An ordinary user is no admin.
    await expect(page.getByTestId('admin-link')).toHaveCount(0);

    // The cookie is HttpOnly: page code never sees the token.
    const cookies = await context.cookies();
    expect(cookies.length).toBeGreaterThan(0);
    for (const cookie of cookies) {
      expect(cookie.httpOnly, `cookie ${cookie.name} must be HttpOnly`).toBe(true);
    }
    expect(await page.evaluate(() => document.cookie)).toBe('');

    // --- reload: still logged in, and rendered so by the server ----------------------
    await page.reload();
    await expect(userName(page)).toHaveText(account.name);
    await waitOnlineAs(page, account.name);

    // The server-rendered HTML already carries the name (no "Guest" flash).
    const html = await (await page.request.get('/')).text();
    expect(html).toMatch(new RegExp(`data-testid="user-name"[^>]*>${account.name}<`));
    expect(html).not.toMatch(/data-testid="user-name"[^>]*>Guest</);

    // The same, as a browser sees it before any Wasm runs.
    const noJs = await browser.newContext({ javaScriptEnabled: false, baseURL });
    try {
      await noJs.addCookies(await context.cookies());
      const staticPage = await noJs.newPage();
      await staticPage.goto('/');
      await expect(userName(staticPage)).toHaveText(account.name);
      await expect(staticPage.getByRole('button', { name: 'Log out' })).toBeVisible();
      await expect(staticPage.getByTestId('greeting')).toContainText(`Logged in as ${account.name}`);
    } finally {
      await noJs.close();
    }

    // --- log out ------------------------------------------------------------------
    const boundSocket = (await socketIdOf(page).textContent())!.trim();
    await page.getByRole('button', { name: 'Log out' }).click();
    await expect(userName(page)).toHaveText('Guest');
    await expect(badge(page)).toHaveText(/^online as guest guest-\d+$/);
    await expect(socketIdOf(page)).toHaveText(boundSocket);
    await expect(logEntries(page, 'unbound').first()).toContainText('logout');
    // The session is gone server-side as well.
    expect((await page.request.get('/api/auth/me')).status()).toBe(401);
    await page.reload();
    await expect(userName(page)).toHaveText('Guest');
    await waitOnlineAsGuest(page);

    // --- wrong password -------------------------------------------------------------
    await headerLink(page, 'Log in').click();
    await expect(page).toHaveURL(/\/login$/);
    const loginSocket = (await socketIdOf(page).textContent())!.trim();
    await submitLogin(page, account.email, 'not-the-password');
    await expect(page.getByTestId('form-error')).toHaveText('wrong email or password');
    await expect(page.getByRole('alert')).toHaveText('wrong email or password');
    await expect(userName(page)).toHaveText('Guest');
    await expect(page).toHaveURL(/\/login$/);
    await expect(badge(page)).toHaveText(/^online as guest guest-\d+$/);
    await expect(socketIdOf(page)).toHaveText(loginSocket);

    // --- right password ---------------------------------------------------------------
    await page.getByLabel('Password').fill(account.password);
    await page.getByRole('button', { name: 'Log in', exact: true }).click();
    await expect(page).toHaveURL(/\/$/);
    await expect(userName(page)).toHaveText(account.name);
    await expect(badge(page)).toHaveText(`online as ${account.name}`);
    await expect(socketIdOf(page)).toHaveText(loginSocket);
    await expect(page.getByTestId('form-error')).toHaveCount(0);
    expect((await page.request.get('/api/auth/me')).status()).toBe(200);
  });

  test('an unknown email gets the same answer as a wrong password', async ({ page }) => {
    await page.goto('/login');
    await waitOnlineAsGuest(page);
    await submitLogin(page, newAccount('Nobody').email, 'whatever-password');
    await expect(page.getByTestId('form-error')).toHaveText('wrong email or password');
    await expect(userName(page)).toHaveText('Guest');
  });

  test('registering a taken email shows the server message and stays a guest', async ({ page, request }) => {
    const account = newAccount('Taken');
    const res = await request.post('/api/auth/register', {
      data: { email: account.email, name: account.name, password: account.password },
    });
    expect(res.status()).toBe(201);

    await page.goto('/register');
    await waitOnlineAsGuest(page);
    await page.getByLabel('Email').fill(account.email.toUpperCase());
    await page.getByLabel('Name').fill('Someone Else');
    await page.getByLabel('Password (at least 8 characters)').fill('another-password');
    await page.getByRole('button', { name: 'Create account' }).click();
    await expect(page.getByTestId('form-error')).toBeVisible();
    await expect(page.getByTestId('form-error')).not.toHaveText('');
    await expect(page).toHaveURL(/\/register$/);
    await expect(userName(page)).toHaveText('Guest');
  });
  test('login follows a local `next` path and ignores any other', async ({ page, playwright, baseURL }) => {
    const account = newAccount('Next');
    const api = await playwright.request.newContext({ baseURL });
    await registerViaApi(api, account);
    await api.dispose();

    await page.goto('/login?next=//example.com/phish');
    await waitOnlineAsGuest(page);
    await submitLogin(page, account.email, account.password);
    await expect(userName(page)).toHaveText(account.name);
    await expect(page).toHaveURL(`${baseURL}/`);

    await page.getByRole('button', { name: 'Log out' }).click();
    await expect(userName(page)).toHaveText('Guest');
    await page.goto('/login?next=/rooms');
    await waitOnlineAsGuest(page);
    await submitLogin(page, account.email, account.password);
    await expect(page).toHaveURL(`${baseURL}/rooms`);
    await expect(userName(page)).toHaveText(account.name);
  });
});
