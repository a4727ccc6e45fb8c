import { useState, type FormEvent } from 'react';
import { useAuth } from '../auth';
import { Button, ErrorBox, Field, inputCls } from '../components/ui';

export function Login() {
  const { login } = useAuth();
  const [token, setToken] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [invalid, setInvalid] = useState<string>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!token.trim()) {
      setInvalid('paste an API token');
      return;
    }
    setInvalid(undefined);
    setBusy(true);
    setError(null);
    try {
      await login(token.trim());
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="flex min-h-full items-center justify-center p-4">
      <form onSubmit={submit} className="flex w-full max-w-md flex-col gap-4 rounded-lg border border-line bg-panel p-6" aria-label="Log in">
        <h1 className="flex items-center gap-2 text-xl font-semibold">
          <img src="/favicon.svg" alt="" className="h-7 w-7" /> mvirt
        </h1>
        <p className="text-sm text-muted">
          Log in with an API token. The bootstrap admin token is in <code>&lt;data-dir&gt;/admin.token</code> on the first control-plane member; more are made
          under Tokens.
        </p>
        <Field label="API token" error={invalid}>
          {(id, d) => (
            <input
              id={id}
              aria-describedby={d}
              aria-invalid={!!invalid}
              type="password"
              autoComplete="current-password"
              className={inputCls}
              value={token}
              onChange={(e) => setToken(e.target.value)}
            />
          )}
        </Field>
        <ErrorBox error={error} />
        <Button variant="primary" type="submit" disabled={busy}>
          {busy ? 'Checking…' : 'Log in'}
        </Button>
      </form>
    </main>
  );
}
