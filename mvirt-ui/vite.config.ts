/// <reference types="vitest/config" />
// Vite builds the dashboard into dist/ (served by mvirt-api --ui-dir). `npm run dev` proxies
// /v1 (REST, SSE and the console WebSocket) to MVIRT_API_URL, default http://127.0.0.1:8080.
import { defineConfig, type Plugin } from 'vite';
import react from '@vitejs/plugin-react';
import tailwindcss from '@tailwindcss/vite';

const api = process.env.MVIRT_API_URL ?? 'http://127.0.0.1:8080';

/** src/early.ts is its own entry (its own small file, nothing shared with the app) and is
 *  loaded `async` ahead of the app's script, so the first reads start while the app's bundle
 *  still downloads and compiles. Vite would merge every module script of index.html into one
 *  entry: this injects the tag after the bundle is written (in dev: the source file). */
function earlyEntry(): Plugin {
  return {
    name: 'mvirt-early-entry',
    transformIndexHtml: {
      order: 'post',
      handler(_html, ctx) {
        let src = '/src/early.ts';
        if (ctx.bundle) {
          const chunk = Object.values(ctx.bundle).find((c) => c.type === 'chunk' && c.isEntry && c.name === 'early');
          if (!chunk) throw new Error('the early entry chunk is missing from the bundle');
          src = `/${chunk.fileName}`;
        }
        return [{ tag: 'script', attrs: { type: 'module', async: true, crossorigin: true, src }, injectTo: 'head' }];
      },
    },
  };
}

export default defineConfig({
  plugins: [react(), tailwindcss(), earlyEntry()],
  server: { proxy: { '/v1': { target: api, ws: true, changeOrigin: true } } },
  build: {
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 600,
    rollupOptions: { input: { index: 'index.html', early: 'src/early.ts' } },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{ts,tsx}'],
    setupFiles: ['src/test/setup.ts'],
    // The form tests type a few hundred keys through user-event: ~2.5 s alone, over 5 s (the
    // default) on a 2-core machine that builds Rust at the same time.
    testTimeout: 20_000,
  },
});
