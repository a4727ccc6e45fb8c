// Dark and light theme: follows the system until the user picks one (kept in localStorage).
export type Theme = 'light' | 'dark';
const KEY = 'mvirt.theme';

export function initialTheme(): Theme {
  const saved = localStorage.getItem(KEY);
  if (saved === 'light' || saved === 'dark') return saved;
  return window.matchMedia?.('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

export function applyTheme(t: Theme) {
  document.documentElement.classList.toggle('dark', t === 'dark');
  document.documentElement.style.colorScheme = t;
  localStorage.setItem(KEY, t);
}
