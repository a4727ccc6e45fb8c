// The project switcher's choice: one project, or all of them. Kept in the URL-independent
// localStorage so a reload keeps it.
import { createContext, useContext, useState, type ReactNode } from 'react';

export const ALL = '*';
const KEY = 'mvirt.project';

const ProjectContext = createContext<{ project: string; setProject: (p: string) => void } | null>(null);

export function ProjectProvider({ children }: { children: ReactNode }) {
  const [project, set] = useState(() => localStorage.getItem(KEY) ?? ALL);
  const setProject = (p: string) => {
    localStorage.setItem(KEY, p);
    set(p);
  };
  return <ProjectContext.Provider value={{ project, setProject }}>{children}</ProjectContext.Provider>;
}

export function useProject() {
  const ctx = useContext(ProjectContext);
  if (!ctx) throw new Error('useProject outside ProjectProvider');
  return ctx;
}

/** The project new resources go to: the selected one, or `default` when all are shown. */
export function targetProject(project: string) {
  return project === ALL ? 'default' : project;
}

export function inProject<T extends { project?: string }>(items: T[], project: string): T[] {
  return project === ALL ? items : items.filter((x) => x.project === project);
}
