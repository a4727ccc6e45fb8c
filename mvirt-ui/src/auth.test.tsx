import { afterEach, describe, expect, it, vi } from 'vitest';
import { act, render, screen } from '@testing-library/react';
import { QueryClientProvider } from '@tanstack/react-query';
import { makeQueryClient } from './App';
import { AuthProvider, useAuth } from './auth';
import { stubApi } from './test/render';

afterEach(() => vi.unstubAllGlobals());

function Who() {
  const { token, logout } = useAuth();
  return (
    <button type="button" onClick={logout}>
      {token ?? 'logged out'}
    </button>
  );
}

describe('logout', () => {
  it('drops everything read with the old token (the next one may see less)', async () => {
    stubApi(() => undefined);
    sessionStorage.setItem('mvirt.token', 'admin-token');
    const qc = makeQueryClient();
    qc.setQueryData(['list', 'vm'], { items: [{ id: 'secret-vm' }], revision: 3 });
    render(
      <QueryClientProvider client={qc}>
        <AuthProvider>
          <Who />
        </AuthProvider>
      </QueryClientProvider>,
    );
    const button = await screen.findByRole('button', { name: 'admin-token' });
    await act(async () => button.click());
    expect(await screen.findByRole('button', { name: 'logged out' })).toBeTruthy();
    expect(qc.getQueryData(['list', 'vm'])).toBeUndefined();
    expect(sessionStorage.getItem('mvirt.token')).toBeNull();
  });
});
