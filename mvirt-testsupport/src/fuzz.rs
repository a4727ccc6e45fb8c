//! Stable-Rust fuzzing for the `tests/fuzz_*.rs` targets: a seeded RNG generates each case's
//! input, and every case must finish without a panic, within a deadline and under an
//! allocation cap (a counting global allocator). A fuzz test binary installs the allocator
//! itself: `#[global_allocator] static ALLOC: CountingAlloc = CountingAlloc;`.
//!
//! Environment:
//! - `MVIRT_FUZZ_CASES=<n>`: cases per target (default: the target's short CI count);
//! - `MVIRT_FUZZ_SEED=<u64>`: the run's seed (default fixed, so CI runs are reproducible);
//! - `MVIRT_FUZZ_CASE=<i>`: run only case `i` (what a failure prints to reproduce it);
//! - `MVIRT_FUZZ_DEADLINE_MS=<ms>`: per-case deadline (default 5000; a debug build on a busy
//!   machine is slow, a hang is caught either way).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Counts the bytes each thread holds and its peak while a case runs.
pub struct CountingAlloc;

/// A single case is never allowed more than this at once: the allocation fails (and the
/// process aborts with "memory allocation of N bytes failed") instead of eating the machine.
const HARD_CAP: usize = 2 << 30;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static CASE_BASE: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note_alloc(size: usize) -> bool {
    LIVE.try_with(|live| {
        let now = live.get().saturating_add(size);
        if let Ok(Some(base)) = CASE_BASE.try_with(Cell::get) {
            if now.saturating_sub(base) > HARD_CAP {
                return false;
            }
        }
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        true
    })
    .unwrap_or(true)
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(size)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping only
// touches const-initialised thread-locals (no allocation, no re-entry).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            note_free(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            note_free(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !note_alloc(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > layout.size() {
                note_free(new_size - layout.size());
            }
        } else if new_size < layout.size() {
            note_free(layout.size() - new_size);
        }
        p
    }
}

/// Runs `f` and returns its result with the most bytes this thread held above its starting
/// point meanwhile.
pub fn peak_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    CASE_BASE.with(|b| b.set(Some(base)));
    let result = f();
    CASE_BASE.with(|b| b.set(None));
    let peak = PEAK.with(Cell::get);
    (result, peak.saturating_sub(base))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// One fuzz target: how many cases a CI run takes and what a case may cost.
pub struct Target {
    name: &'static str,
    ci_cases: u64,
    alloc_limit: usize,
}

impl Target {
    /// `ci_cases` is the short run's count (`cargo test`); `MVIRT_FUZZ_CASES` overrides it.
    pub fn new(name: &'static str, ci_cases: u64) -> Self {
        Self {
            name,
            ci_cases,
            alloc_limit: 16 << 20,
        }
    }

    /// Peak bytes one case may hold (default 16 MiB).
    pub fn alloc_limit(mut self, bytes: usize) -> Self {
        self.alloc_limit = bytes;
        self
    }

    /// Generates each case with `generate` (from a per-case RNG, so any case can be rerun
    /// alone) and runs `check` on it under the deadline and the allocation cap.
    pub fn run<I: Debug>(
        self,
        mut generate: impl FnMut(&mut StdRng) -> I,
        mut check: impl FnMut(&I),
    ) {
        let seed = env_u64("MVIRT_FUZZ_SEED").unwrap_or(0x6d76_6972_7466_757a);
        let cases = env_u64("MVIRT_FUZZ_CASES").unwrap_or(self.ci_cases);
        let only = env_u64("MVIRT_FUZZ_CASE");
        let deadline = Duration::from_millis(env_u64("MVIRT_FUZZ_DEADLINE_MS").unwrap_or(5000));
        let range = match only {
            Some(i) => i..i + 1,
            None => 0..cases,
        };
        let watchdog = Watchdog::start(self.name, seed, deadline * 4);
        let started = Instant::now();
        for index in range {
            let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let input = generate(&mut rng);
            let reproduce = format!(
                "fuzz target {} case {index} (rerun with MVIRT_FUZZ_SEED={seed} MVIRT_FUZZ_CASE={index})",
                self.name
            );
            watchdog.enter(index);
            let begin = Instant::now();
            let (outcome, peak) =
                peak_allocation(|| catch_unwind(AssertUnwindSafe(|| check(&input))));
            let took = begin.elapsed();
            watchdog.leave();
            if let Err(panic) = outcome {
                eprintln!("{reproduce} panicked; input: {}", shown(&input));
                resume_unwind(panic);
            }
            assert!(
                took <= deadline,
                "{reproduce} took {took:?} (deadline {deadline:?}); input: {}",
                shown(&input)
            );
            assert!(
                peak <= self.alloc_limit,
                "{reproduce} held {peak} bytes at once (cap {}); input: {}",
                self.alloc_limit,
                shown(&input)
            );
        }
        eprintln!(
            "fuzz target {}: {} cases in {:?} (seed {seed})",
            self.name,
            if only.is_some() { 1 } else { cases },
            started.elapsed()
        );
    }
}

/// An input's `Debug` form, cut to a readable length (the rerun line reproduces it exactly).
fn shown(input: &impl Debug) -> String {
    let full = format!("{input:?}");
    let count = full.chars().count();
    if count <= 1500 {
        return full;
    }
    let head: String = full.chars().take(1500).collect();
    format!("{head}… ({count} characters)")
}

/// Aborts the process when a case runs far past its deadline (a hang never returns, so the
/// per-case assertion alone would not catch it), saying which case it was.
struct Watchdog {
    origin: Instant,
    case: Arc<AtomicU64>,
    since_ms: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

const IDLE: u64 = u64::MAX;

impl Watchdog {
    fn start(name: &'static str, seed: u64, limit: Duration) -> Self {
        let watchdog = Self {
            origin: Instant::now(),
            case: Arc::new(AtomicU64::new(IDLE)),
            since_ms: Arc::new(AtomicU64::new(0)),
            done: Arc::new(AtomicBool::new(false)),
        };
        let (origin, case, since_ms, done) = (
            watchdog.origin,
            watchdog.case.clone(),
            watchdog.since_ms.clone(),
            watchdog.done.clone(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let index = case.load(Ordering::Acquire);
                if index == IDLE {
                    continue;
                }
                let now = origin.elapsed().as_millis() as u64;
                let running = now.saturating_sub(since_ms.load(Ordering::Acquire));
                if running > limit.as_millis() as u64 && case.load(Ordering::Acquire) == index {
                    eprintln!(
                        "fuzz target {name} case {index} hangs (> {limit:?}; rerun with \
                         MVIRT_FUZZ_SEED={seed} MVIRT_FUZZ_CASE={index})"
                    );
                    std::process::abort();
                }
            }
        });
        watchdog
    }

    fn enter(&self, index: u64) {
        self.since_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Release);
        self.case.store(index, Ordering::Release);
    }

    fn leave(&self) {
        self.case.store(IDLE, Ordering::Release);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Random bytes of a length in `len`.
pub fn bytes(rng: &mut StdRng, len: std::ops::Range<usize>) -> Vec<u8> {
    let n = rng.gen_range(len);
    (0..n).map(|_| rng.gen()).collect()
}

/// A few random edits of a valid input: bit flips, byte overwrites, truncation, insertion,
/// duplication of a slice, and "interesting" values (0, 0xff, 0x7f, 0x80) at random places.
pub fn mutate(rng: &mut StdRng, mut data: Vec<u8>) -> Vec<u8> {
    let edits = rng.gen_range(1..=8);
    for _ in 0..edits {
        let len = data.len();
        match rng.gen_range(0..7) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] = rng.gen();
            }
            2 if len > 0 => {
                let at = rng.gen_range(0..len);
                data.truncate(at);
            }
            3 => {
                let at = rng.gen_range(0..=len);
                let extra = bytes(rng, 1..32);
                data.splice(at..at, extra);
            }
            4 if len > 1 => {
                let a = rng.gen_range(0..len);
                let b = rng.gen_range(a..len.min(a + 64));
                let chunk = data[a..=b].to_vec();
                let at = rng.gen_range(0..=len);
                data.splice(at..at, chunk);
            }
            5 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] = [0, 0xff, 0x7f, 0x80, 1][rng.gen_range(0..5)];
            }
            _ if len > 1 => {
                let i = rng.gen_range(0..len - 1);
                let v: u16 = [0, 0xffff, 0x7fff, 0x8000, 1][rng.gen_range(0..5)];
                data[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => data.push(rng.gen()),
        }
    }
    data
}
