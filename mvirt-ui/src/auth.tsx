// Login state: the API token (kept in sessionStorage: it lives as long as the tab) and the
// caller's role from `GET /v1/whoami` (admin, operator or viewer; node tokens get 403 on the
// other REST routes and cannot log in), which decides the buttons shown (`useCan`).
import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';
import { useQueryClient } from '@tanstack/react-query';
import { api, ApiError, getSession, onSessionChange, setSession } from './api/client';

export type Role = 'admin' | 'operator' | 'viewer';

const STORAGE = 'mvirt.token';

interface AuthState {
  token: string | null;
  role: Role;
  login: (token: string) => Promise<void>;
  logout: () => void;
}

const AuthContext = createContext<AuthState | null>(null);

async function roleOf(token: string): Promise<Role> {
  try {
    const me = await api<{ role?: string }>('/v1/whoami', { token });
    if (me.role === 'viewer' || me.role === 'operator') return me.role;
    return 'admin';
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return 'admin';
    throw e;
  }
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const [token, setToken] = useState<string | null>(() => {
    const t = sessionStorage.getItem(STORAGE);
    if (t) setSession({ token: t });
    return t;
  });
  // Until whoami answers (a reload with a kept token), the least a role may: buttons appear
  // when the role is known rather than flash up for a viewer.
  const [role, setRole] = useState<Role>('viewer');
  const qc = useQueryClient();

  useEffect(
    () =>
      onSessionChange(() => {
        const s = getSession();
        setToken(s?.token ?? null);
        if (!s) {
          setRole('viewer');
          sessionStorage.removeItem(STORAGE);
          // The next token may see less (a viewer, other projects): nothing read with this one
          // may show after it (the live lists are never re-read otherwise).
          qc.clear();
        }
      }),
    [qc],
  );
  useEffect(() => {
    if (token) roleOf(token).then(setRole, () => undefined);
  }, [token]);

  const login = useCallback(async (t: string) => {
    // A call every token that may use REST can make: checks the token before we keep it.
    await api('/v1/projects', { token: t, query: { limit: 1 } });
    setRole(await roleOf(t));
    sessionStorage.setItem(STORAGE, t);
    setSession({ token: t });
  }, []);
  // Stable: the event stream's effect depends on it (a new function on every render closed and
  // reopened the stream when the role arrived).
  const logout = useCallback(() => {
    sessionStorage.removeItem(STORAGE);
    setSession(null);
  }, []);
  const value = useMemo(() => ({ token, role, login, logout }), [token, role, login, logout]);
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth() {
  const ctx = useContext(AuthContext);
  if (!ctx) throw new Error('useAuth outside AuthProvider');
  return ctx;
}

/** What a role may do. Buttons that the API would refuse are not shown. */
export type Action = 'write' | 'vm-action' | 'admin';
export function allowed(role: Role, action: Action): boolean {
  if (role === 'admin') return true;
  if (role === 'operator') return action !== 'admin';
  return false;
}
export function useCan(action: Action) {
  return allowed(useAuth().role, action);
}
