// Runs a second, private Tether server from a test (for restart tests), on
// its own port and data directory, from the already built release binary.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
// The binary cargo-leptos built; TETHER_E2E_SERVER_EXE may point at a copy for local runs.
export const SERVER_EXE = process.env.TETHER_E2E_SERVER_EXE || path.join(REPO_ROOT, 'target', 'release', 'server');

export class ServerProcess {
  readonly origin: string;
  readonly dataDir: string;
  private child: ChildProcess | null = null;
  private output: string[] = [];

  constructor(
    readonly addr: string,
    dataDir?: string,
    private readonly extraEnv: Record<string, string> = {},
  ) {
    this.origin = `http://${addr}`;
    this.dataDir = dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'tether-e2e-restart-'));
  }

  /** Starts the server and waits until /healthz answers 200. */
  async start(timeoutMs = 30_000): Promise<void> {
    if (this.child) throw new Error('server already running');
    if (await this.answers()) {
      throw new Error(`something already listens on ${this.addr}; cannot start a private server there`);
    }
    const child = spawn(SERVER_EXE, [], {
      cwd: REPO_ROOT,
      env: {
        // The run's own settings (TETHER_*, LEPTOS_*) belong to the main server.
        ...Object.fromEntries(
          Object.entries(process.env).filter(([key]) => !key.startsWith('TETHER_') && !key.startsWith('LEPTOS_')),
        ),
        LEPTOS_SITE_ADDR: this.addr,
        LEPTOS_SITE_ROOT: 'target/site',
        LEPTOS_OUTPUT_NAME: 'tether',
        TETHER_DATA_DIR: this.dataDir,
        RUST_LOG: 'warn',
        ...this.extraEnv,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    const keep = (chunk: Buffer) => {
      this.output.push(chunk.toString());
      if (this.output.length > 200) this.output.shift();
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    let exited: string | null = null;
    child.once('exit', (code, signal) => {
      exited = `exited early (code ${code}, signal ${signal})`;
    });

    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (exited) break;
      if (await this.answers()) return this.checkAssets();
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const why = exited ?? `did not answer within ${timeoutMs / 1000}s`;
    await this.stop();
    throw new Error(`private server on ${this.addr} ${why}; output:\n${this.log()}`);
  }

  /** SIGTERM, then waits for the exit (SIGKILL after `graceMs`). Safe to call twice. */
  async stop(graceMs = 10_000): Promise<void> {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }

  /** Stops the server and removes its data directory. */
  async dispose(): Promise<void> {
    await this.stop();
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  /**
   * The page's hydration script must point at files that exist. A server
   * binary built by plain `cargo build`/`cargo test` (not cargo-leptos) asks
   * for /pkg/tether_bg.wasm, which cargo-leptos does not produce, and its
   * pages never hydrate; say so instead of timing out on "connecting…".
   */
  private async checkAssets(): Promise<void> {
    const html = await (await fetch(`${this.origin}/`)).text();
    const wasm = html.match(/href="([^"]+\.wasm)"/)?.[1];
    if (!wasm) return;
    const res = await fetch(`${this.origin}${wasm}`, { method: 'HEAD' });
    if (!res.ok || !(res.headers.get('content-type') ?? '').includes('wasm')) {
      await this.stop();
      throw new Error(
        `${SERVER_EXE} serves pages that load ${wasm}, which answers ${res.status}: ` +
          'the binary was not built by cargo-leptos (rebuild with `cargo leptos build --release`)',
      );
    }
  }

  log(): string {
    return this.output.join('');
  }

  private async answers(): Promise<boolean> {
    try {
      const res = await fetch(`${this.origin}/healthz`, { signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      return res.ok;
    } catch {
      return false;
    }
  }
}
