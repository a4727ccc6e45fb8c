//! Random sequences of joins, removals, `kill -9` + restarts and writes against a real
//! multi-process control plane that starts with three members. After every step some member
//! leads again within 5 s; at the end every acknowledged write is readable on every member.
//!
//! Seeded: the seed is printed, `MVIRT_CHAOS_SEED=<n>` replays it, `MVIRT_CHAOS_STEPS=<n>` runs
//! longer than the CI default.

use std::time::{Duration, Instant};

use mvirt_testsupport::net::free_port;
use mvirt_testsupport::process::wait_until_async;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

mod common;

use common::processes::*;

/// Steps in CI (well under a minute on two shared cores).
const DEFAULT_STEPS: usize = 80;
/// At most this many members at once (joins are skipped beyond).
const MAX_MEMBERS: usize = 5;
/// The promise under test: a leader again within this long after any step.
const LEADER_WITHIN: Duration = Duration::from_secs(5);

/// Prints every member's log tail when the test fails.
struct DumpAllLogs(std::path::PathBuf);

impl Drop for DumpAllLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(dirs) = std::fs::read_dir(&self.0) else {
            return;
        };
        for dir in dirs.flatten() {
            let path = dir.path().join("member.log");
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("===== {} (last 30 lines)", path.display());
                for l in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

struct Live {
    id: u64,
    proc: Proc,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Waits until a live member says it leads; returns its index in `members`.
async fn leader_within(c: &Client, members: &[Live], within: Duration, what: &str) -> usize {
    let started = Instant::now();
    loop {
        for (i, m) in members.iter().enumerate() {
            let url = format!("{}/v1/controlplane", m.proc.url);
            let answer = c
                .http
                .get(&url)
                .bearer_auth(&c.token)
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if let Ok(resp) = answer {
                if let Ok(v) = resp.json::<Value>().await {
                    if v["state"] == "leader" {
                        return i;
                    }
                }
            }
        }
        assert!(
            started.elapsed() < within,
            "no leader within {within:?} after {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn project_names(c: &Client, p: &Proc) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let url = match &token {
            None => format!("{}/v1/projects?limit=1000", p.url),
            Some(t) => format!("{}/v1/projects?limit=1000&page_token={t}", p.url),
        };
        let page = c.get(&url).await?;
        names.extend(
            page["items"]
                .as_array()?
                .iter()
                .filter_map(|n| n["name"].as_str().map(String::from)),
        );
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return Some(names),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_joins_removals_kills_and_writes_keep_a_leader_and_every_acknowledged_write() {
    let seed = env_u64("MVIRT_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let steps = env_u64("MVIRT_CHAOS_STEPS").map_or(DEFAULT_STEPS, |s| s as usize);
    eprintln!("membership chaos: MVIRT_CHAOS_SEED={seed} MVIRT_CHAOS_STEPS={steps}");
    let mut rng = StdRng::seed_from_u64(seed);

    let root = tempfile::tempdir().unwrap();
    let _dump = DumpAllLogs(root.path().to_path_buf());
    let suffix = std::process::id() % 200 + 20;
    let mut next_host = 51u8;
    let mut next_ip = || {
        let ip = format!("127.0.{suffix}.{next_host}");
        next_host += 1;
        ip
    };

    // --- three members.
    let a = start(&next_ip(), root.path(), "m1", None);
    let c = admin_client(&a).await;
    wait_until_async(
        "the first member serves",
        Duration::from_secs(30),
        || async { c.get(&format!("{}/v1/projects", a.url)).await },
    )
    .await;
    let mut members = vec![Live { id: 1, proc: a }];
    let mut name_seq = 1;
    for _ in 0..2 {
        name_seq += 1;
        join(&c, &mut members, &next_ip(), root.path(), name_seq).await;
    }
    wait_until_async("three voters", Duration::from_secs(60), || async {
        (voters(&c, &members[0].proc).await == 3).then_some(())
    })
    .await;

    let mut acknowledged: Vec<String> = Vec::new();
    let mut leader = leader_within(&c, &members, LEADER_WITHIN, "the start").await;
    for step in 0..steps {
        // Removals and kills hit the leader half of the time (its removal is the hand-over).
        let victim = |rng: &mut StdRng, len: usize| {
            if rng.gen_bool(0.5) {
                leader.min(len - 1)
            } else {
                rng.gen_range(0..len)
            }
        };
        // Back towards three members when fewer are left.
        let pick = match rng.gen_range(0..100u32) {
            p if members.len() < 3 && p < 60 => 0,
            p => p,
        };
        let what = match pick {
            0..=14 if members.len() < MAX_MEMBERS => {
                name_seq += 1;
                let ip = next_ip();
                join(&c, &mut members, &ip, root.path(), name_seq).await;
                format!("join of m{name_seq}")
            }
            0..=34 => {
                let victim = victim(&mut rng, members.len());
                let via = rng.gen_range(0..members.len());
                let id = members[victim].id;
                let role = if victim == leader { "leader" } else { "member" };
                let answer = c
                    .req(
                        reqwest::Method::DELETE,
                        &format!("{}/v1/controlplane/members/{id}", members[via].proc.url),
                        None,
                        None,
                    )
                    .await;
                match answer {
                    Ok((204, _)) => {
                        // Gone from the membership: the process is of no further use.
                        let removed = members.remove(victim);
                        drop(removed);
                        format!("removal of {role} {id} (204)")
                    }
                    Ok((409, v)) => {
                        format!("removal of {role} {id} (409: {})", v["error"]["message"])
                    }
                    other => panic!("step {step}: removing member {id} answered {other:?}"),
                }
            }
            35..=54 => {
                let victim = victim(&mut rng, members.len());
                let pause = Duration::from_millis(rng.gen_range(0..1500));
                let m = &mut members[victim];
                m.proc.guard.kill();
                tokio::time::sleep(pause).await;
                m.proc.guard = spawn(&m.proc.ip, &m.proc.dir, m.proc.ports, None);
                // Back on its ports before the next step sends it anything.
                let health = format!("{}/v1/health", m.proc.url);
                wait_until_async(
                    "the restarted member serves",
                    Duration::from_secs(30),
                    || {
                        let req = c.http.get(&health).send();
                        async move { req.await.ok().filter(|r| r.status().is_success()) }
                    },
                )
                .await;
                let role = if victim == leader { "leader" } else { "member" };
                format!("kill -9 of {role} {} and restart after {pause:?}", m.id)
            }
            _ => {
                let name = format!("chaos-{seed}-{step}");
                let via = rng.gen_range(0..members.len());
                let answer = c
                    .req(
                        reqwest::Method::POST,
                        &format!("{}/v1/projects", members[via].proc.url),
                        Some(json!({"name": name})),
                        Some(&name),
                    )
                    .await;
                let outcome = match answer {
                    Ok((201, _)) => {
                        acknowledged.push(name.clone());
                        "201".to_string()
                    }
                    Ok((status, v)) => format!("{status}: {}", v["error"]["message"]),
                    Err(e) => e,
                };
                format!("write of {name} ({outcome})")
            }
        };
        let started = Instant::now();
        leader = leader_within(&c, &members, LEADER_WITHIN, &what).await;
        eprintln!(
            "step {step}: {what}; member {} leads after {:?}",
            members[leader].id,
            started.elapsed()
        );
    }

    // --- one more write must succeed, then every acknowledged write is everywhere.
    let name = format!("chaos-{seed}-final");
    let (s, v) = wait_until_async("a final write", Duration::from_secs(30), || async {
        c.req(
            reqwest::Method::POST,
            &format!("{}/v1/projects", members[0].proc.url),
            Some(json!({"name": name})),
            Some(&name),
        )
        .await
        .ok()
        .filter(|(s, _)| *s == 201)
    })
    .await;
    assert_eq!(s, 201, "{v}");
    acknowledged.push(name);
    for m in &members {
        let names = wait_until_async(
            &format!("projects on member {}", m.id),
            Duration::from_secs(30),
            || async { project_names(&c, &m.proc).await },
        )
        .await;
        let missing: Vec<&String> = acknowledged.iter().filter(|n| !names.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "member {} lacks acknowledged writes {missing:?} (seed {seed})",
            m.id
        );
    }
    eprintln!(
        "membership chaos: {} acknowledged writes on all {} members (seed {seed})",
        acknowledged.len(),
        members.len()
    );
}

/// Starts a member that joins through a random live member with a fresh join token, and waits
/// until it knows its member id.
async fn join(c: &Client, members: &mut Vec<Live>, ip: &str, root: &std::path::Path, n: usize) {
    let via = &members[n % members.len()].proc;
    let token = wait_until_async("a join token", Duration::from_secs(30), || async {
        let (s, v) = c
            .req(
                reqwest::Method::POST,
                &format!("{}/v1/controlplane/join-tokens", via.url),
                Some(json!({"ttl_seconds": 600})),
                None,
            )
            .await
            .ok()?;
        (s == 201).then(|| v["token"].as_str().map(String::from))?
    })
    .await;
    let ports = (free_port(), free_port(), free_port());
    let dir = root.join(format!("m{n}"));
    let guard = spawn(ip, &dir, ports, Some((&via.url, &token)));
    let proc = Proc {
        guard,
        url: format!("https://{ip}:{}", ports.0),
        ip: ip.to_string(),
        ports,
        dir,
    };
    let id = wait_until_async(
        "the joiner's member id",
        Duration::from_secs(60),
        || async { c.controlplane(&proc).await?["member_id"].as_u64() },
    )
    .await;
    members.push(Live { id, proc });
    // Promoted once caught up (by the leader that admitted it or the next one).
    wait_until_async(
        &format!("member {id} a voter"),
        Duration::from_secs(60),
        || async {
            for m in members.iter() {
                let view = c.controlplane(&m.proc).await?;
                if view["state"] != "leader" {
                    continue;
                }
                let voter = view["members"]
                    .as_array()?
                    .iter()
                    .any(|x| x["id"].as_u64() == Some(id) && x["role"] != "learner");
                return voter.then_some(());
            }
            None
        },
    )
    .await;
}
