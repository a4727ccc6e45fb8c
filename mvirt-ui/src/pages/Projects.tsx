import { post } from '../api/client';
import type { Project } from '../api/types';
import { SimpleForm } from '../components/Form';
import { ResourcePage } from '../components/ResourcePage';
import { ago, validateName } from '../format';

export default function Projects() {
  return (
    <ResourcePage<Project>
      kind="project"
      title="Projects"
      noun="project"
      projectScoped={false}
      writeAction="admin"
      columns={[
        { head: 'Name', cell: (p) => p.name },
        { head: 'Description', cell: (p) => p.description || '—' },
        { head: 'Created', cell: (p) => ago(p.created_at) },
      ]}
      create={(close) => (
        <SimpleForm
          label="Create project"
          fields={[
            { key: 'name', label: 'Name' },
            { key: 'description', label: 'Description' },
          ]}
          validate={(v) => ({ name: validateName(v.name), description: v.description.length > 1024 ? 'at most 1024 characters' : undefined })}
          submit={(v) => post('/v1/projects', { name: v.name, ...(v.description ? { description: v.description } : {}) })}
          onDone={close}
        />
      )}
    />
  );
}
