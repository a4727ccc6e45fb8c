// Links from a resource's page to the audit log: every entry about the object, and the trace of
// the request that last changed it (its `trace_id`: the entries every process wrote for it).
import { Link } from 'react-router';

export function LogLinks({ object }: { object: { id: string; trace_id?: string | null } }) {
  return (
    <span className="inline-flex flex-wrap gap-x-3">
      <Link className="underline" to={`/audit?object_id=${encodeURIComponent(object.id)}`}>
        Log entries
      </Link>
      {object.trace_id && (
        <Link className="underline" to={`/audit?trace_id=${encodeURIComponent(object.trace_id)}`} title={`request ${object.trace_id}`}>
          Trace of the last change
        </Link>
      )}
    </span>
  );
}
