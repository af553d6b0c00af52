import { defineConfig, devices } from '@playwright/test';

// Run by `cargo leptos end-to-end --release` (see scripts/test), which builds the
// site, starts the server on 127.0.0.1:3000 and then runs `npx playwright test`
// here. Browsers are never downloaded: the tests drive Debian's /usr/bin/chromium.
// Nothing in this file depends on the CI variable, so local and CI runs behave alike.
const baseURL = 'http://127.0.0.1:3000';

export default defineConfig({
  testDir: './tests',
  // cargo-leptos spawns the server without waiting for it to listen;
  // global-setup.ts waits until baseURL answers before any test starts.
  globalSetup: './global-setup.ts',
  timeout: 60_000,
  expect: { timeout: 10_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: 'list',
  use: {
    baseURL,
    headless: true,
    trace: 'retain-on-failure',
  },
  projects: [
    {
      name: 'chromium',
      use: {
        ...devices['Desktop Chrome'],
        launchOptions: {
          executablePath: '/usr/bin/chromium',
          args: [
            '--no-sandbox',
            '--disable-gpu',
            '--no-first-run',
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
            '--disable-quic',
          ],
        },
      },
    },
  ],
});
