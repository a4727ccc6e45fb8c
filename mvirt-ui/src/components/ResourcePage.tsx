// The shape most resource pages share: a live list of one kind in the selected project, a
// create dialog, a delete button per row, and an optional panel per row for its details. The
// table is windowed (only the rows near the viewport are in the DOM).
import { useState, type ReactNode } from 'react';
import { useMutation } from '@tanstack/react-query';
import { del } from '../api/client';
import type { Kind, Resource } from '../api/live';
import { KIND_PATH } from '../api/live';
import { useCan, type Action } from '../auth';
import { useList } from '../live';
import { inProject, useProject } from '../project';
import { Button, ConfirmButton, Dialog, Empty, ErrorBox, PageHeader } from './ui';
import { WindowedTable } from './WindowedTable';

export interface Column<T> {
  head: string;
  cell: (x: T) => ReactNode;
}

export function ResourcePage<T extends Resource>({
  kind,
  title,
  noun,
  columns,
  create,
  expand,
  projectScoped = true,
  deleteQuery,
  writeAction = 'write',
  extraActions,
}: {
  kind: Kind;
  title: string;
  noun: string;
  columns: Column<T>[];
  create?: (close: () => void) => ReactNode;
  expand?: (x: T) => ReactNode;
  projectScoped?: boolean;
  deleteQuery?: Record<string, string>;
  writeAction?: Action;
  extraActions?: (x: T) => ReactNode;
}) {
  const { project } = useProject();
  const list = useList<T>(kind);
  const can = useCan(writeAction);
  const [creating, setCreating] = useState(false);
  const [open, setOpen] = useState<string | null>(null);
  const remove = useMutation({ mutationFn: (id: string) => del(`${KIND_PATH[kind]}/${id}`, deleteQuery) });
  const items = projectScoped ? inProject(list.items, project) : list.items;
  return (
    <div>
      <PageHeader
        title={title}
        actions={
          can &&
          create && (
            <Button variant="primary" onClick={() => setCreating(true)}>
              Create {noun}
            </Button>
          )
        }
      >
        {list.isLoading ? 'loading…' : `${items.length} shown`}
      </PageHeader>
      <ErrorBox error={list.error} />
      <ErrorBox error={remove.error} onClose={() => remove.reset()} />
      {items.length === 0 && !list.isLoading ? (
        <Empty>No {noun}s yet.</Empty>
      ) : (
        <WindowedTable
          label={title}
          head={[...columns.map((c) => c.head), '']}
          items={items}
          itemKey={(x) => x.id}
          renderItem={(x) => (
            <>
              <tr data-testid={`${kind}-row`} data-name={x.name}>
                {columns.map((c, i) => (
                  <td key={i} className="px-3 py-2 align-top">
                    {c.cell(x)}
                  </td>
                ))}
                <td className="px-3 py-2 text-right whitespace-nowrap">
                  <span className="inline-flex flex-wrap justify-end gap-2">
                    {expand && (
                      <Button aria-expanded={open === x.id} onClick={() => setOpen(open === x.id ? null : x.id)}>
                        {open === x.id ? 'Hide' : 'Details'}
                      </Button>
                    )}
                    {extraActions?.(x)}
                    {can && <ConfirmButton label="Delete" confirm={`Delete ${x.name}?`} onConfirm={() => remove.mutate(x.id)} />}
                  </span>
                </td>
              </tr>
              {expand && open === x.id && (
                <tr>
                  <td colSpan={columns.length + 1} className="bg-panel px-3 py-3">
                    {expand(x)}
                  </td>
                </tr>
              )}
            </>
          )}
        />
      )}
      {creating && create && (
        <Dialog title={`Create ${noun}`} open onClose={() => setCreating(false)}>
          {create(() => setCreating(false))}
        </Dialog>
      )}
    </div>
  );
}
