// Shared helpers for Tether's end-to-end tests.
//
// Every test shares one server and one database (see scripts/test), so each
// test makes its own users with unique emails. The admin account
// (admin@tether.test, made admin by TETHER_ADMIN_EMAILS) can only be
// registered once per run: `ensureAdmin` registers it or logs in.
import { expect, type APIRequestContext, type Locator, type Page } from '@playwright/test';

export const PASSWORD = 'correct-horse-1';
export const ADMIN_EMAIL = 'admin@tether.test';
export const ADMIN_PASSWORD = 'admin-password-1';
export const ADMIN_NAME = 'Admin';

export interface Account {
  email: string;
  name: string;
  password: string;
}

export interface User {
  id: string;
  name: string;
  email: string;
  role: 'user' | 'admin';
}

function suffix(): string {
  return `${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
}

/** A fresh account (not yet registered) with a unique email and a readable, unique name. */
export function newAccount(prefix: string): Account {
  const tag = suffix();
  const shortTag = tag.slice(-6);
  return {
    email: `${prefix.toLowerCase()}-${tag}@e2e.test`,
    name: `${prefix} ${shortTag}`,
    password: PASSWORD,
  };
}

/**
 * Registers through the API. With `page.request` (or `context.request`) the
 * session cookie lands in that browser context; load pages afterwards so the
 * server renders them logged in.
 */
export async function registerViaApi(request: APIRequestContext, account: Account): Promise<User> {
  const res = await request.post('/api/auth/register', {
    data: { email: account.email, name: account.name, password: account.password },
  });
  expect(res.status(), `register ${account.email}: ${await res.text()}`).toBe(201);
  const body = await res.json();
  return body.user as User;
}

export async function loginViaApi(request: APIRequestContext, email: string, password: string): Promise<User> {
  const res = await request.post('/api/auth/login', { data: { email, password } });
  expect(res.status(), `login ${email}: ${await res.text()}`).toBe(200);
  return (await res.json()).user as User;
}

/** Registers admin@tether.test, or logs in when it is already taken (409 email_taken). */
export async function ensureAdmin(request: APIRequestContext): Promise<User> {
  const res = await request.post('/api/auth/register', {
    data: { email: ADMIN_EMAIL, name: ADMIN_NAME, password: ADMIN_PASSWORD },
  });
  if (res.status() === 201) {
    return (await res.json()).user as User;
  }
  const body = await res.json().catch(() => ({}));
  expect(res.status(), `admin register: ${JSON.stringify(body)}`).toBe(409);
  expect(body?.error?.code).toBe('email_taken');
  return loginViaApi(request, ADMIN_EMAIL, ADMIN_PASSWORD);
}

export const badge = (page: Page): Locator => page.getByTestId('connection-badge');
export const socketIdOf = (page: Page): Locator => page.getByTestId('socket-id');
export const userName = (page: Page): Locator => page.getByTestId('user-name');
export const logEntries = (page: Page, kind: string): Locator =>
  page.locator(`[data-testid="event-log"] li[data-kind="${kind}"]`);

/**
 * Waits until the Wasm app has hydrated and its socket is online (the badge
 * leaves "connecting…", which only the browser code does), then returns the
 * socket id. Interacting before hydration would hit plain HTML forms/links.
 */
export async function waitOnline(page: Page, as?: string | RegExp): Promise<string> {
  await expect(badge(page)).toHaveText(as ?? /^online as /);
  await expect(socketIdOf(page)).toHaveText(/\S/);
  return (await socketIdOf(page).textContent())!.trim();
}

export async function waitOnlineAsGuest(page: Page): Promise<string> {
  return waitOnline(page, /^online as guest guest-\d+$/);
}

export async function waitOnlineAs(page: Page, name: string): Promise<string> {
  return waitOnline(page, `online as ${name}`);
}

/** Fills and submits the login form (the page must be on /login and hydrated). */
export async function submitLogin(page: Page, email: string, password: string): Promise<void> {
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in', exact: true }).click();
}

/** The site header (banner); its "Log in"/"Register" links, unlike the home page's greeting links. */
export const header = (page: Page): Locator => page.getByRole('banner');
export const headerLink = (page: Page, name: string): Locator =>
  header(page).getByRole('link', { name, exact: true });

/** A room page's messages and member list. */
export const messages = (page: Page): Locator => page.getByTestId('message');
export const presence = (page: Page): Locator => page.getByTestId('presence').locator('li');

/** The room's member list shows exactly these names, each once. */
export async function expectMembers(page: Page, names: string[]): Promise<void> {
  await expect(presence(page)).toHaveCount(names.length);
  for (const name of names) {
    await expect(presence(page).filter({ hasText: name })).toHaveCount(1);
  }
}

/** The message with this text, which must come from `from`. */
export async function expectMessage(page: Page, from: string, text: string): Promise<void> {
  const item = messages(page).filter({ has: page.locator('.text', { hasText: text }) });
  await expect(item).toHaveCount(1);
  await expect(item.locator('.from')).toHaveText(from);
  await expect(item.locator('.text')).toHaveText(text);
}

/** Sends `text` from a room page and waits for the server's ack. */
export async function send(page: Page, text: string): Promise<void> {
  const input = page.getByTestId('message-input');
  await input.fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  // The draft clears once the server acknowledged the message.
  await expect(input).toHaveValue('');
}
