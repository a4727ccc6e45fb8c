// The app shell: providers, the login gate, the navigation and the routes. Pages are loaded
// on demand so the first load stays small (xterm.js only arrives with the console).
import { lazy, Suspense, useState, type ReactNode } from 'react';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { BrowserRouter, NavLink, Route, Routes } from 'react-router';
import { allowed, AuthProvider, useAuth, type Action } from './auth';
import { LiveProvider, useList, useLive } from './live';
import { ALL, ProjectProvider, useProject } from './project';
import { applyTheme, initialTheme, type Theme } from './theme';
import { Login } from './pages/Login';
import { Dashboard } from './pages/Dashboard';
import { VmList } from './pages/Vms';

const VmDetail = lazy(() => import('./pages/VmDetail'));
const Pods = lazy(() => import('./pages/Pods'));
const PodDetail = lazy(() => import('./pages/PodDetail'));
const Networks = lazy(() => import('./pages/Networks'));
const Nics = lazy(() => import('./pages/Nics'));
const SecurityGroups = lazy(() => import('./pages/SecurityGroups'));
const Volumes = lazy(() => import('./pages/Volumes'));
const Templates = lazy(() => import('./pages/Templates'));
const Nodes = lazy(() => import('./pages/Nodes'));
const NodeDetail = lazy(() => import('./pages/NodeDetail'));
const Projects = lazy(() => import('./pages/Projects'));
const Tokens = lazy(() => import('./pages/Tokens'));
const ControlPlane = lazy(() => import('./pages/ControlPlane'));
const AuditLog = lazy(() => import('./pages/AuditLog'));

export function makeQueryClient() {
  return new QueryClient({
    defaultOptions: { queries: { retry: 1, refetchOnWindowFocus: false, staleTime: 30_000 } },
  });
}

export function App() {
  const [qc] = useState(makeQueryClient);
  return (
    <QueryClientProvider client={qc}>
      <AuthProvider>
        <ProjectProvider>
          <BrowserRouter>
            <Gate />
          </BrowserRouter>
        </ProjectProvider>
      </AuthProvider>
    </QueryClientProvider>
  );
}

function Gate() {
  const { token } = useAuth();
  if (!token) return <Login />;
  return (
    <LiveProvider>
      <Shell>
        <Suspense fallback={<p className="text-sm text-muted">Loading…</p>}>
          <Routes>
            <Route path="/" element={<Dashboard />} />
            <Route path="/vms" element={<VmList />} />
            <Route path="/vms/:id" element={<VmDetail />} />
            <Route path="/pods" element={<Pods />} />
            <Route path="/pods/:id" element={<PodDetail />} />
            <Route path="/networks" element={<Networks />} />
            <Route path="/nics" element={<Nics />} />
            <Route path="/security-groups" element={<SecurityGroups />} />
            <Route path="/security-groups/:id" element={<SecurityGroups />} />
            <Route path="/volumes" element={<Volumes />} />
            <Route path="/templates" element={<Templates />} />
            <Route path="/nodes" element={<Nodes />} />
            <Route path="/nodes/:id" element={<NodeDetail />} />
            <Route path="/projects" element={<Projects />} />
            <Route path="/tokens" element={<Tokens />} />
            <Route path="/controlplane" element={<ControlPlane />} />
            <Route path="/audit" element={<AuditLog />} />
            <Route path="*" element={<p>No such page.</p>} />
          </Routes>
        </Suspense>
      </Shell>
    </LiveProvider>
  );
}

/** `needs`: pages whose reads the API refuses to other roles are not offered to them. */
const NAV: { to: string; label: string; needs?: Action }[] = [
  { to: '/', label: 'Dashboard' },
  { to: '/vms', label: 'VMs' },
  { to: '/pods', label: 'Pods' },
  { to: '/networks', label: 'Networks' },
  { to: '/nics', label: 'NICs' },
  { to: '/security-groups', label: 'Security groups' },
  { to: '/volumes', label: 'Volumes' },
  { to: '/templates', label: 'Templates' },
  { to: '/nodes', label: 'Nodes' },
  { to: '/projects', label: 'Projects' },
  { to: '/tokens', label: 'Tokens', needs: 'admin' },
  { to: '/controlplane', label: 'Control plane' },
  { to: '/audit', label: 'Audit log' },
];

function Shell({ children }: { children: ReactNode }) {
  const { logout, role } = useAuth();
  const { state } = useLive();
  const [theme, setTheme] = useState<Theme>(initialTheme);
  const toggle = () => {
    const t = theme === 'dark' ? 'light' : 'dark';
    applyTheme(t);
    setTheme(t);
  };
  return (
    <div className="flex min-h-full">
      <nav aria-label="Main" className="w-52 shrink-0 border-r border-line bg-panel p-3">
        <div className="mb-4 flex items-center gap-2 px-2 text-lg font-bold">
          <img src="/favicon.svg" alt="" className="h-6 w-6" /> mvirt
        </div>
        <ul className="flex flex-col gap-0.5">
          {NAV.filter((n) => !n.needs || allowed(role, n.needs)).map((n) => (
            <li key={n.to}>
              <NavLink
                to={n.to}
                end={n.to === '/'}
                className={({ isActive }) => `block rounded-md px-2 py-1.5 text-sm ${isActive ? 'bg-accent text-accent-fg' : 'hover:bg-line'}`}
              >
                {n.label}
              </NavLink>
            </li>
          ))}
        </ul>
      </nav>
      <div className="flex min-w-0 flex-1 flex-col">
        <header className="flex flex-wrap items-center justify-end gap-3 border-b border-line px-4 py-2">
          <ProjectSwitcher />
          <span className="text-xs text-muted" data-testid="stream-state" aria-live="polite">
            <span aria-hidden="true" className={`mr-1 inline-block h-2 w-2 rounded-full ${state === 'live' ? 'bg-green-600' : 'bg-amber-500'}`} />
            {state === 'live' ? 'live' : state}
          </span>
          <span className="text-xs text-muted">role: {role}</span>
          <button
            type="button"
            className="rounded-md px-2 py-1 text-sm hover:bg-line"
            onClick={toggle}
            aria-label={`Switch to ${theme === 'dark' ? 'light' : 'dark'} theme`}
          >
            {theme === 'dark' ? '☀' : '☾'}
          </button>
          <button type="button" className="rounded-md px-2 py-1 text-sm hover:bg-line" onClick={logout}>
            Log out
          </button>
        </header>
        <main className="min-w-0 flex-1 p-4">{children}</main>
      </div>
    </div>
  );
}

function ProjectSwitcher() {
  const { project, setProject } = useProject();
  const { items } = useList('project');
  return (
    <label className="flex items-center gap-2 text-sm">
      <span>Project</span>
      <select className="rounded-md border border-line bg-surface px-2 py-1 text-sm" value={project} onChange={(e) => setProject(e.target.value)}>
        <option value={ALL}>All projects</option>
        {items.map((p) => (
          <option key={p.id} value={p.name}>
            {p.name}
          </option>
        ))}
        {project !== ALL && !items.some((p) => p.name === project) && <option value={project}>{project}</option>}
      </select>
    </label>
  );
}
