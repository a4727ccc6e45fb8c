// A small form helper: fields as strings, a validator run before sending, the API's error
// shown under the form.
import { useState, type FormEvent, type ReactNode } from 'react';
import { useMutation } from '@tanstack/react-query';
import { Button, ErrorBox, Field, inputCls } from './ui';

export interface FieldDef {
  key: string;
  label: string;
  hint?: string;
  type?: 'text' | 'textarea' | 'select' | 'checkbox';
  options?: { value: string; label: string }[];
  initial?: string;
}

export function SimpleForm({
  fields,
  validate,
  submit,
  onDone,
  submitLabel = 'Create',
  label,
  footer,
}: {
  fields: FieldDef[];
  validate: (v: Record<string, string>) => Record<string, string | undefined>;
  submit: (v: Record<string, string>) => Promise<unknown>;
  onDone?: (result: unknown) => void;
  submitLabel?: string;
  label: string;
  footer?: ReactNode;
}) {
  const [values, setValues] = useState<Record<string, string>>(() => Object.fromEntries(fields.map((f) => [f.key, f.initial ?? ''])));
  const [errors, setErrors] = useState<Record<string, string | undefined>>({});
  const m = useMutation({ mutationFn: submit, onSuccess: (r) => onDone?.(r) });
  const onSubmit = (e: FormEvent) => {
    e.preventDefault();
    const errs = validate(values);
    setErrors(errs);
    if (Object.values(errs).every((x) => !x)) m.mutate(values);
  };
  const set = (k: string, v: string) => setValues((old) => ({ ...old, [k]: v }));
  return (
    <form onSubmit={onSubmit} noValidate aria-label={label} className="flex flex-col gap-3">
      {fields.map((f) => (
        <Field key={f.key} label={f.label} error={errors[f.key]} hint={f.hint}>
          {(id, d) =>
            f.type === 'textarea' ? (
              <textarea
                id={id}
                name={f.key}
                aria-describedby={d}
                aria-invalid={!!errors[f.key]}
                rows={3}
                className={`${inputCls} font-mono`}
                value={values[f.key]}
                onChange={(e) => set(f.key, e.target.value)}
              />
            ) : f.type === 'select' ? (
              <select
                id={id}
                name={f.key}
                aria-describedby={d}
                aria-invalid={!!errors[f.key]}
                className={inputCls}
                value={values[f.key]}
                onChange={(e) => set(f.key, e.target.value)}
              >
                {f.options?.map((o) => (
                  <option key={o.value} value={o.value}>
                    {o.label}
                  </option>
                ))}
              </select>
            ) : f.type === 'checkbox' ? (
              <input
                id={id}
                name={f.key}
                type="checkbox"
                className="h-4 w-4 self-start"
                checked={values[f.key] === 'true'}
                onChange={(e) => set(f.key, String(e.target.checked))}
              />
            ) : (
              <input
                id={id}
                name={f.key}
                aria-describedby={d}
                aria-invalid={!!errors[f.key]}
                className={inputCls}
                value={values[f.key]}
                onChange={(e) => set(f.key, e.target.value)}
              />
            )
          }
        </Field>
      ))}
      <ErrorBox error={m.error} />
      {footer}
      <div className="flex justify-end">
        <Button variant="primary" type="submit" disabled={m.isPending}>
          {m.isPending ? 'Sending…' : submitLabel}
        </Button>
      </div>
    </form>
  );
}
