// The site is rendered on the server and then hydrated by the Wasm app.
import { expect, test } from '@playwright/test';
import { badge, logEntries, socketIdOf, userName } from './helpers';

test.describe('foundation', () => {
  test('healthz answers 200', async ({ request }) => {
    const res = await request.get('/healthz');
    expect(res.status()).toBe(200);
  });

  test('the home page is rendered on the server', async ({ request }) => {
    const res = await request.get('/');
    expect(res.status()).toBe(200);
    expect(res.headers()['content-type']).toContain('text/html');
    const html = await res.text();
    expect(html).toContain('<title>Tether</title>');
    expect(html).toMatch(/<header[^>]*class="site-header"/);
    expect(html).toContain('data-testid="connection-badge"');
    expect(html).toContain('data-testid="greeting"');
    // Without a cookie the server renders the guest menu.
    expect(html).toMatch(/data-testid="user-name"[^>]*>Guest</);
  });

  test('the page shows the server-rendered header even without JavaScript', async ({ browser }) => {
    const context = await browser.newContext({ javaScriptEnabled: false });
    try {
      const page = await context.newPage();
      await page.goto('/');
      await expect(page).toHaveTitle('Tether');
      await expect(page.getByRole('link', { name: 'Tether', exact: true })).toBeVisible();
      await expect(page.getByRole('link', { name: 'Rooms', exact: true })).toBeVisible();
      await expect(userName(page)).toHaveText('Guest');
      // No Wasm runs here: the badge stays as the server rendered it.
      await expect(badge(page)).toHaveText('connecting…');
    } finally {
      await context.close();
    }
  });

  test('the app hydrates: the socket comes online as a guest and the log toggles', async ({ page }) => {
    await page.goto('/');
    await expect(page).toHaveTitle('Tether');
    await expect(page.locator('header.site-header')).toBeVisible();
    await expect(page.getByTestId('greeting')).toContainText('You are a guest');

    // Only the browser code changes the badge, so this proves hydration.
    await expect(badge(page)).toHaveText(/^online as guest guest-\d+$/);
    await expect(socketIdOf(page)).toHaveText(/\S/);
    await expect(userName(page)).toHaveText('Guest');
    await expect(page.getByTestId('admin-link')).toHaveCount(0);

    const log = page.getByTestId('event-log');
    await expect(log).toBeVisible();
    const connect = logEntries(page, 'connect');
    await expect(connect).toHaveCount(1);
    const socketId = (await socketIdOf(page).textContent())!.trim();
    await expect(connect.first()).toContainText(socketId);
    // Newest first: nothing happened after the connect.
    await expect(log.locator('li').first()).toHaveAttribute('data-kind', 'connect');

    // The toggle is an event handler: it only works once hydrated.
    const toggle = page.getByTestId('toggle-log');
    await expect(toggle).toHaveText('hide');
    await toggle.click();
    await expect(toggle).toHaveText('show');
    await expect(log).toHaveCount(0);
    await toggle.click();
    await expect(toggle).toHaveText('hide');
    await expect(log).toBeVisible();
    await expect(logEntries(page, 'connect')).toHaveCount(1);
  });

  test('client-side navigation keeps the same socket', async ({ page }) => {
    await page.goto('/');
    await expect(badge(page)).toHaveText(/^online as guest /);
    const socketId = (await socketIdOf(page).textContent())!.trim();
    await page.getByRole('link', { name: 'Rooms', exact: true }).click();
    await expect(page).toHaveURL(/\/rooms$/);
    await expect(page.getByRole('heading', { name: 'Rooms' })).toBeVisible();
    await page.getByRole('link', { name: 'Tether', exact: true }).click();
    await expect(page).toHaveURL(/\/$/);
    await expect(socketIdOf(page)).toHaveText(socketId);
    await expect(logEntries(page, 'connect')).toHaveCount(1);
  });
});
