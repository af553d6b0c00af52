// Issue 12 in the browser: two Tether nodes on one Postgres behave as one
// server. scripts/test gives this suite a database of its own on its
// throw-away Postgres (TETHER_E2E_POSTGRES); the nodes are private server
// processes on their own ports, like a load balancer's backends.
import { expect, test, type Browser, type BrowserContext } from '@playwright/test';
import { ServerProcess } from './server-process';
import {
  type Account,
  expectMembers,
  expectMessage,
  logEntries,
  newAccount,
  presence,
  send,
  waitOnlineAs,
  waitOnlineAsGuest,
} from './helpers';

const POSTGRES = process.env.TETHER_E2E_POSTGRES;

test.describe('two nodes on one Postgres', () => {
  const nodes: ServerProcess[] = [];
  const contexts: BrowserContext[] = [];

  test.beforeAll(async () => {
    if (!POSTGRES) {
      throw new Error('TETHER_E2E_POSTGRES is not set: run the suite through scripts/test, which starts a Postgres');
    }
    for (const addr of ['127.0.0.1:3111', '127.0.0.1:3112']) {
      const node = new ServerProcess(addr, undefined, {
        DATABASE_URL: POSTGRES,
        TETHER_REGISTRATIONS_PER_MINUTE: '1000',
        TETHER_ROOMS_PER_MINUTE_PER_ADDRESS: '1000',
      });
      nodes.push(node);
      // One after the other: the first applies the migrations.
      await node.start();
    }
  });

  test.afterEach(async () => {
    for (const context of contexts.splice(0)) await context.close();
  });

  test.afterAll(async () => {
    for (const node of nodes.splice(0)) await node.dispose();
  });

  async function open(browser: Browser): Promise<BrowserContext> {
    const context = await browser.newContext();
    contexts.push(context);
    return context;
  }

  /** Registers `account` through `node`; the cookie lands in `context` (cookies ignore ports). */
  async function register(context: BrowserContext, node: ServerProcess, account: Account) {
    const res = await context.request.post(`${node.origin}/api/auth/register`, {
      data: { email: account.email, name: account.name, password: account.password },
    });
    expect(res.status(), await res.text()).toBe(201);
  }

  /** The node part of a socket id (`<node>-<n>`). */
  const nodeOf = (socketId: string) => socketId.split('-')[0];

  test('two tabs of one user on two nodes: logging out in one unbinds the other', async ({ browser }) => {
    const [a, b] = nodes;
    const ann = newAccount('Ann');
    const context = await open(browser);
    await register(context, a, ann);
    const onA = await context.newPage();
    await onA.goto(`${a.origin}/`);
    const socketOnA = await waitOnlineAs(onA, ann.name);
    const onB = await context.newPage();
    await onB.goto(`${b.origin}/`);
    const socketOnB = await waitOnlineAs(onB, ann.name);
    expect(nodeOf(socketOnA)).not.toBe(nodeOf(socketOnB));

    // The tabs are different origins (ports), so no browser channel links them:
    // only node A telling node B can turn the tab on B into a guest.
    await onA.getByRole('button', { name: 'Log out' }).click();
    await waitOnlineAsGuest(onA);
    await waitOnlineAsGuest(onB);
    await expect(logEntries(onB, 'unbound').first()).toContainText('logout');
    expect((await onB.getByTestId('socket-id').textContent())!.trim()).toBe(socketOnB);
  });

  test('two users on two nodes chat and see each other in presence', async ({ browser }) => {
    const [a, b] = nodes;
    const annAccount = newAccount('Ann');
    const bobAccount = newAccount('Bob');
    const annContext = await open(browser);
    const bobContext = await open(browser);
    await register(annContext, a, annAccount);
    await register(bobContext, b, bobAccount);
    const created = await annContext.request.post(`${a.origin}/api/rooms`, { data: { name: `Across ${Date.now().toString(36)}` } });
    expect(created.status()).toBe(201);
    const { room } = await created.json();

    const ann = await annContext.newPage();
    await ann.goto(`${a.origin}/rooms/${room.code}`);
    await waitOnlineAs(ann, annAccount.name);
    const bob = await bobContext.newPage();
    await bob.goto(`${b.origin}/rooms/${room.code}`);
    await waitOnlineAs(bob, bobAccount.name);

    for (const page of [ann, bob]) {
      await expectMembers(page, [annAccount.name, bobAccount.name]);
    }
    await send(ann, 'hello from node A');
    await expectMessage(bob, annAccount.name, 'hello from node A');
    await send(bob, 'and back from node B');
    await expectMessage(ann, bobAccount.name, 'and back from node B');
    await expectMessage(ann, annAccount.name, 'hello from node A');

    // Bob leaves the room on B: Ann, on A, sees him go.
    await bob.getByRole('link', { name: 'Rooms', exact: true }).click();
    await expect(presence(ann)).toHaveText([annAccount.name]);
  });
});
