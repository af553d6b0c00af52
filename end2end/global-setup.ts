// cargo-leptos 0.3 starts the server binary and immediately runs Playwright,
// so the first test could race the server's start-up (database migrations etc.).
// Wait here until the site answers, or fail with a clear message.
import type { FullConfig } from '@playwright/test';

const WAIT_MS = 60_000;

export default async function globalSetup(config: FullConfig): Promise<void> {
  const baseURL = config.projects[0]?.use?.baseURL ?? 'http://127.0.0.1:3000';
  const deadline = Date.now() + WAIT_MS;
  let lastError = 'no attempt made';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(baseURL, { signal: AbortSignal.timeout(5_000) });
      await res.arrayBuffer();
      // Any HTTP answer means the server is listening.
      return;
    } catch (err) {
      lastError = err instanceof Error ? `${err.message} ${String((err as { cause?: unknown }).cause ?? '')}` : String(err);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`server at ${baseURL} did not answer within ${WAIT_MS / 1000}s: ${lastError}`);
}
