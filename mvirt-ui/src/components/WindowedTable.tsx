// A table whose rows are windowed against the page's scroll: only the items near the viewport
// are in the DOM (plus spacers for the rest), so a list of thousands renders and updates like a
// list of thirty. Each item is its own <tbody> (measured, so an item may be several rows — a row
// and its open details panel — and rows of any height work).
import { useLayoutEffect, useRef, useState, type ReactNode } from 'react';
import { useWindowVirtualizer } from '@tanstack/react-virtual';

export function WindowedTable<T>({
  label,
  head,
  items,
  itemKey,
  renderItem,
  estimate = 41,
  fixed,
  widths,
}: {
  label: string;
  head: ReactNode[];
  items: T[];
  itemKey: (x: T) => string;
  /** One or more <tr> for the item. */
  renderItem: (x: T, index: number) => ReactNode;
  /** The usual height of an item in px (the first guess before it is measured). */
  estimate?: number;
  fixed?: boolean;
  /** Column widths (CSS lengths) for a `fixed` table; the others share what is left. */
  widths?: (string | undefined)[];
}) {
  const top = useRef<HTMLTableSectionElement>(null);
  const [margin, setMargin] = useState(0);
  // Where the rows start on the page (the virtualizer counts from the document's top). Read
  // after each render, set only when it moved (an error box above the table, a filter row).
  useLayoutEffect(() => {
    const m = (top.current?.getBoundingClientRect().top ?? 0) + window.scrollY;
    if (Math.abs(m - margin) > 1) setMargin(m);
  });
  const rows = useWindowVirtualizer({
    count: items.length,
    estimateSize: () => estimate,
    overscan: 8,
    scrollMargin: margin,
    getItemKey: (i) => itemKey(items[i]),
  });
  const virtual = rows.getVirtualItems();
  const before = virtual.length ? virtual[0].start - margin : 0;
  const after = virtual.length ? rows.getTotalSize() - (virtual[virtual.length - 1].end - margin) : 0;
  return (
    <div className="overflow-x-auto rounded-lg border border-line">
      <table className={`w-full text-left text-sm ${fixed ? 'table-fixed' : ''}`} aria-label={label}>
        {widths && (
          <colgroup>
            {head.map((_, i) => (
              <col key={i} style={widths[i] ? { width: widths[i] } : undefined} />
            ))}
          </colgroup>
        )}
        <thead className="bg-panel text-muted">
          <tr>
            {head.map((h, i) => (
              <th key={i} scope="col" className="px-3 py-2 font-medium">
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody ref={top}>{before > 0 && <tr aria-hidden="true" style={{ height: before }} />}</tbody>
        {virtual.map((v) => (
          <tbody key={v.key as string} data-index={v.index} ref={rows.measureElement} className="border-t border-line">
            {renderItem(items[v.index], v.index)}
          </tbody>
        ))}
        <tbody>{after > 0 && <tr aria-hidden="true" style={{ height: after }} />}</tbody>
      </table>
    </div>
  );
}
