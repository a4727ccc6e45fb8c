// Small building blocks shared by every page: buttons, cards, tables, badges, form fields,
// dialogs and the API error box.
import { useEffect, useId, useRef, useState, type ButtonHTMLAttributes, type ReactNode } from 'react';
import { Link } from 'react-router';
import { ApiError } from '../api/client';

type Variant = 'primary' | 'secondary' | 'danger' | 'ghost';
const VARIANT: Record<Variant, string> = {
  primary: 'bg-accent text-accent-fg hover:bg-accent-hover',
  secondary: 'border border-line bg-panel text-fg hover:bg-line',
  danger: 'bg-red-700 text-white hover:bg-red-800 dark:bg-red-500 dark:text-slate-950 dark:hover:bg-red-400',
  ghost: 'text-fg hover:bg-line',
};

export function Button({ variant = 'secondary', className = '', ...rest }: ButtonHTMLAttributes<HTMLButtonElement> & { variant?: Variant }) {
  return (
    <button
      type="button"
      className={`inline-flex items-center gap-1 rounded-md px-3 py-1.5 text-sm font-medium disabled:cursor-not-allowed disabled:opacity-50 ${VARIANT[variant]} ${className}`}
      {...rest}
    />
  );
}

export function Card({ title, actions, children, className = '' }: { title?: ReactNode; actions?: ReactNode; children: ReactNode; className?: string }) {
  return (
    <section className={`rounded-lg border border-line bg-panel p-4 ${className}`}>
      {(title || actions) && (
        <div className="mb-3 flex items-center justify-between gap-2">
          {title && <h2 className="text-base font-semibold">{title}</h2>}
          {actions && <div className="flex flex-wrap gap-2">{actions}</div>}
        </div>
      )}
      {children}
    </section>
  );
}

export function PageHeader({ title, actions, children }: { title: string; actions?: ReactNode; children?: ReactNode }) {
  return (
    <div className="mb-4 flex flex-wrap items-center justify-between gap-3">
      <div>
        <h1 className="text-xl font-semibold">{title}</h1>
        {children && <div className="text-sm text-muted">{children}</div>}
      </div>
      {actions && <div className="flex flex-wrap gap-2">{actions}</div>}
    </div>
  );
}

const PHASE_COLOR: Record<string, string> = {
  running: 'bg-green-100 text-green-900 dark:bg-green-900 dark:text-green-100',
  ready: 'bg-green-100 text-green-900 dark:bg-green-900 dark:text-green-100',
  online: 'bg-green-100 text-green-900 dark:bg-green-900 dark:text-green-100',
  leader: 'bg-blue-100 text-blue-900 dark:bg-blue-900 dark:text-blue-100',
  stopped: 'bg-slate-200 text-slate-900 dark:bg-slate-700 dark:text-slate-100',
  pending: 'bg-amber-100 text-amber-900 dark:bg-amber-900 dark:text-amber-100',
  importing: 'bg-amber-100 text-amber-900 dark:bg-amber-900 dark:text-amber-100',
  creating: 'bg-amber-100 text-amber-900 dark:bg-amber-900 dark:text-amber-100',
  starting: 'bg-amber-100 text-amber-900 dark:bg-amber-900 dark:text-amber-100',
  stopping: 'bg-amber-100 text-amber-900 dark:bg-amber-900 dark:text-amber-100',
  failed: 'bg-red-100 text-red-900 dark:bg-red-900 dark:text-red-100',
  offline: 'bg-red-100 text-red-900 dark:bg-red-900 dark:text-red-100',
};

export function Badge({ value }: { value: string }) {
  const cls = PHASE_COLOR[value] ?? 'bg-slate-200 text-slate-900 dark:bg-slate-700 dark:text-slate-100';
  return <span className={`inline-block rounded px-2 py-0.5 text-xs font-medium ${cls}`}>{value || '—'}</span>;
}

export function Table({ head, children, label, fixed }: { head: ReactNode[]; children: ReactNode; label: string; fixed?: boolean }) {
  // `fixed`: column widths from the header alone — a long table (1,000 VMs) is laid out without
  // measuring every cell, which is most of its first render.
  return (
    <div className="overflow-x-auto rounded-lg border border-line">
      <table className={`w-full text-left text-sm ${fixed ? 'table-fixed' : ''}`} aria-label={label}>
        <thead className="bg-panel text-muted">
          <tr>
            {head.map((h, i) => (
              <th key={i} scope="col" className="px-3 py-2 font-medium">
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody className="divide-y divide-line">{children}</tbody>
      </table>
    </div>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="rounded-lg border border-dashed border-line p-6 text-center text-sm text-muted">{children}</p>;
}

/** Shows an error with the API's own message (and code, details, and the request's id with a
 *  link to the audit entries of the work it caused). */
export function ErrorBox({ error, onClose }: { error: unknown; onClose?: () => void }) {
  if (!error) return null;
  const e = error as Error;
  const code = error instanceof ApiError ? error.code : undefined;
  const details = error instanceof ApiError && error.details && Object.keys(error.details as object).length ? JSON.stringify(error.details) : undefined;
  const requestId = error instanceof ApiError ? error.requestId : undefined;
  return (
    <div
      role="alert"
      className="my-2 flex items-start justify-between gap-3 rounded-md border border-red-300 bg-red-50 p-3 text-sm text-red-900 dark:border-red-800 dark:bg-red-950 dark:text-red-100"
    >
      <div>
        <span className="font-medium">{e.message}</span>
        {code && <span className="ml-2 font-mono text-xs">({code})</span>}
        {details && <div className="mt-1 font-mono text-xs break-all">{details}</div>}
        {requestId && (
          <div className="mt-1 text-xs">
            request{' '}
            <Link className="font-mono underline" to={`/audit?trace_id=${encodeURIComponent(requestId)}`} title="the audit entries of this request">
              {requestId}
            </Link>
          </div>
        )}
      </div>
      {onClose && (
        <button type="button" className="text-xs underline" onClick={onClose}>
          dismiss
        </button>
      )}
    </div>
  );
}

export function Field({
  label,
  error,
  hint,
  children,
}: {
  label: string;
  error?: string;
  hint?: string;
  children: (id: string, describedBy?: string) => ReactNode;
}) {
  const id = useId();
  const errId = error ? `${id}-err` : undefined;
  return (
    <div className="flex flex-col gap-1">
      <label htmlFor={id} className="text-sm font-medium">
        {label}
      </label>
      {children(id, errId)}
      {hint && !error && <span className="text-xs text-muted">{hint}</span>}
      {error && (
        <span id={errId} className="text-xs text-danger">
          {error}
        </span>
      )}
    </div>
  );
}

export const inputCls = 'rounded-md border border-line bg-surface px-2 py-1.5 text-sm text-fg aria-[invalid=true]:border-red-600';

/** A modal dialog (native <dialog>: focus trap, Escape to close). */
export function Dialog({ title, open, onClose, children }: { title: string; open: boolean; onClose: () => void; children: ReactNode }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    // jsdom (unit tests) has no showModal: open it as a plain dialog there.
    if (open && !d.open) {
      if (typeof d.showModal === 'function') d.showModal();
      else d.setAttribute('open', '');
    }
  }, [open]);
  if (!open) return null;
  return (
    <dialog
      ref={ref}
      aria-label={title}
      onClose={onClose}
      className="m-auto w-full max-w-2xl rounded-lg border border-line bg-surface p-0 text-fg backdrop:bg-black/50"
    >
      <div className="flex items-center justify-between border-b border-line px-4 py-3">
        <h2 className="text-lg font-semibold">{title}</h2>
        <Button variant="ghost" aria-label="Close" onClick={onClose}>
          ✕
        </Button>
      </div>
      <div className="max-h-[75vh] overflow-y-auto p-4">{children}</div>
    </dialog>
  );
}

/** A button that asks once more before a destructive action. */
export function ConfirmButton({ label, confirm, onConfirm, disabled }: { label: string; confirm: string; onConfirm: () => void; disabled?: boolean }) {
  const [asking, setAsking] = useState(false);
  if (!asking)
    return (
      <Button variant="danger" disabled={disabled} onClick={() => setAsking(true)}>
        {label}
      </Button>
    );
  return (
    <span className="inline-flex items-center gap-1">
      <span className="text-sm">{confirm}</span>
      <Button
        variant="danger"
        onClick={() => {
          setAsking(false);
          onConfirm();
        }}
      >
        Yes, {label.toLowerCase()}
      </Button>
      <Button onClick={() => setAsking(false)}>Cancel</Button>
    </span>
  );
}

export function Meter({ label, used, total, format }: { label: string; used: number; total: number; format: (n: number) => string }) {
  const pct = total > 0 ? Math.min(100, Math.round((used / total) * 100)) : 0;
  return (
    <div className="text-xs">
      <div className="flex justify-between">
        <span>{label}</span>
        <span className="text-muted">
          {format(used)} / {format(total)}
        </span>
      </div>
      <div className="mt-1 h-2 rounded bg-line" role="meter" aria-label={label} aria-valuenow={pct} aria-valuemin={0} aria-valuemax={100}>
        <div className={`h-2 rounded ${pct > 85 ? 'bg-red-600' : 'bg-accent'}`} style={{ width: `${pct}%` }} />
      </div>
    </div>
  );
}
