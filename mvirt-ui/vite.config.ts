/// <reference types="vitest/config" />
// Vite builds the dashboard into dist/ (served by mvirt-api --ui-dir). `npm run dev` proxies
// /v1 (REST, SSE and the console WebSocket) to MVIRT_API_URL, default http://127.0.0.1:8080.
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';
import tailwindcss from '@tailwindcss/vite';

const api = process.env.MVIRT_API_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  plugins: [react(), tailwindcss()],
  server: { proxy: { '/v1': { target: api, ws: true, changeOrigin: true } } },
  build: {
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{ts,tsx}'],
    setupFiles: ['src/test/setup.ts'],
  },
});
