import { afterEach, describe, expect, it, vi } from 'vitest';
import { render, screen, waitFor, within } from '@testing-library/react';
import { App } from './App';
import { json, stubApi } from './test/render';

afterEach(() => vi.unstubAllGlobals());

async function navFor(role: string) {
  const calls = stubApi((url) => (url.startsWith('/v1/whoami') ? json({ id: 't', name: 't', role, projects: [] }) : undefined));
  sessionStorage.setItem('mvirt.token', 'test-token');
  window.history.pushState({}, '', '/projects');
  const view = render(<App />);
  const nav = await screen.findByRole('navigation', { name: 'Main' });
  await screen.findByText(`role: ${role}`);
  return { nav, calls, view };
}

describe('the navigation', () => {
  it('offers an admin the tokens page', async () => {
    const { nav } = await navFor('admin');
    expect(within(nav).getByRole('link', { name: 'Tokens' })).toBeTruthy();
  });

  it('offers viewers and operators no page whose reads the API refuses them (tokens)', async () => {
    for (const role of ['viewer', 'operator']) {
      const { nav, calls, view } = await navFor(role);
      expect(within(nav).queryByRole('link', { name: 'Tokens' })).toBeNull();
      expect(within(nav).getByRole('link', { name: 'Audit log' })).toBeTruthy();
      await waitFor(() => expect(calls.some((c) => c.url.startsWith('/v1/projects'))).toBe(true));
      expect(calls.some((c) => c.url.startsWith('/v1/tokens'))).toBe(false);
      view.unmount();
      sessionStorage.clear();
    }
  });
});
