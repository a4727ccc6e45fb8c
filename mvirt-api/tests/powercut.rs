//! A power cut, not a `kill -9`: three real members keep their data dirs on
//! `mvirt_testsupport::powercut` mounts (a FUSE layer that holds every write in memory until
//! it is fsynced), a majority — the leader and a follower — loses power under write load
//! (everything not fsynced is gone at that instant, then SIGKILL), comes back on the same dirs,
//! and every acknowledged write must be there. The third member is stopped (SIGSTOP) at the
//! same instant and stays stopped until the two restarted members elected a leader and were
//! checked: it may hold the lost writes too, and a log it hands back would hide a missing fsync.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mvirt_testsupport::powercut::PowerCutFs;
use mvirt_testsupport::process::wait_until_async;
use nix::sys::signal::Signal;
use serde_json::Value;

mod common;

use common::processes::*;

async fn post_network(c: &Client, url: &str, name: &str, i: usize) -> Result<(u16, Value), String> {
    let resp = c
        .http
        .post(format!("{url}/v1/networks"))
        .bearer_auth(&c.token)
        .timeout(Duration::from_secs(3))
        .json(&network_body(name, i))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// The member that `p` says leads (its index in `procs`), if any.
async fn leader_of(c: &Client, procs: &[&Proc], ask: &Proc) -> Option<usize> {
    let cp = c.controlplane(ask).await?;
    let id = cp["leader_id"].as_u64()?;
    let url = cp["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_u64() == Some(id))?["api_url"]
        .as_str()?
        .to_string();
    procs.iter().position(|p| p.url == url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_that_loses_power_under_write_load_keeps_every_acknowledged_write() {
    mvirt_testsupport::require_root();
    mvirt_common::telemetry::init_for_tests();
    let root = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    // One mount per member (declared before the members: unmounted after they are gone).
    let mounts: Vec<PowerCutFs> = names
        .iter()
        .map(|n| {
            PowerCutFs::mount(
                &root.path().join(format!("{n}.backing")),
                &root.path().join(n),
            )
            .unwrap()
        })
        .collect();
    // The logs are on the mounts: dumped before they go.
    let _dump = DumpLogsOnFailure(root.path().to_path_buf());
    let suffix = std::process::id() % 200 + 20;
    let ip = |i: usize| format!("127.0.{suffix}.{}", 31 + i);

    let a = start(&ip(0), root.path(), "a", None);
    let c = admin_client(&a).await;
    let t1 = join_token(&c, &a).await;
    let b = start(&ip(1), root.path(), "b", Some((&a.url, &t1)));
    let t2 = join_token(&c, &a).await;
    let cc = start(&ip(2), root.path(), "c", Some((&a.url, &t2)));
    wait_until_async("3 voters", Duration::from_secs(60), || async {
        (voters(&c, &a).await == 3).then_some(())
    })
    .await;
    let mut procs = [a, b, cc];

    // --- write load: 6 writers, each to a member in turn (followers forward to the leader).
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = procs.iter().map(|p| p.url.clone()).collect();
    let client = Arc::new(Client {
        http: c.http.clone(),
        token: c.token.clone(),
    });
    let writers: Vec<_> = (0..6usize)
        .map(|w| {
            let (acked, stop, urls, c) =
                (acked.clone(), stop.clone(), urls.clone(), client.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{i}");
                    let url = &urls[(w + i) % urls.len()];
                    if let Ok((201, _)) = post_network(&c, url, &name, w * 10_000 + i).await {
                        acked.lock().unwrap().insert(name);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 150 {
        assert!(
            Instant::now() < deadline,
            "only {} writes acknowledged in 60 s",
            acked.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // --- the power cut, while the writers keep writing: the leader and one follower.
    let refs: Vec<&Proc> = procs.iter().collect();
    let leader = wait_until_async("a leader", Duration::from_secs(10), || {
        leader_of(&c, &refs, refs[0])
    })
    .await;
    let cut = [leader, (leader + 1) % 3];
    let survivor = (leader + 2) % 3;
    procs[survivor].guard.signal(Signal::SIGSTOP);
    for &i in &cut {
        mounts[i].cut();
    }
    for &i in &cut {
        procs[i].guard.signal(Signal::SIGKILL);
    }
    let acked_before_cut = acked.lock().unwrap().len();
    for &i in &cut {
        procs[i].guard.kill(); // reaps it
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Answers already on their way when the power went count too.
    let acked: BTreeSet<String> = acked.lock().unwrap().clone();
    for &i in &cut {
        let s = mounts[i].stats();
        assert!(
            s.file_syncs > 0 && s.dir_syncs > 0,
            "member {} never synced anything: {s:?}",
            names[i]
        );
        assert!(
            s.dropped_bytes > 0,
            "the cut dropped nothing on {}: {s:?}",
            names[i]
        );
        eprintln!("power cut on {}: {s:?}", names[i]);
    }
    eprintln!(
        "{} writes acknowledged ({acked_before_cut} when the power went); leader {}, cut {:?}, stopped {}",
        acked.len(),
        names[leader],
        cut.map(|i| names[i]),
        names[survivor]
    );

    // --- power back on, the same data dirs, the same addresses.
    for &i in &cut {
        mounts[i].power_on();
        let p = &mut procs[i];
        p.guard = spawn(&p.ip, &p.dir, p.ports, None);
    }
    let refs: Vec<&Proc> = procs.iter().collect();
    let new_leader = wait_until_async(
        "a leader among the restarted members",
        Duration::from_secs(60),
        || async {
            for &i in &cut {
                if let Some(l) = leader_of(&c, &refs, refs[i]).await {
                    if cut.contains(&l) {
                        return Some(l);
                    }
                }
            }
            None
        },
    )
    .await;
    let have: BTreeSet<String> = wait_until_async(
        "a linearizable read on the new leader",
        Duration::from_secs(30),
        || c.network_names(refs[new_leader]),
    )
    .await
    .into_iter()
    .collect();
    let lost: Vec<&String> = acked.difference(&have).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost in the power cut: {lost:?}",
        lost.len(),
        acked.len()
    );

    // The cluster takes new writes, through both restarted members.
    let mut after = Vec::new();
    for (k, &i) in cut.iter().enumerate() {
        let name = format!("after-{k}");
        let (s, v) = post_network(&c, &procs[i].url, &name, 90_000 + k)
            .await
            .unwrap();
        assert_eq!(s, 201, "write after the power cut via {}: {v}", names[i]);
        after.push(name);
    }

    // The stopped member comes back and converges.
    procs[survivor].guard.signal(Signal::SIGCONT);
    let want: BTreeSet<String> = acked.iter().chain(&after).cloned().collect();
    let surv = &procs[survivor];
    wait_until_async(
        "the stopped member converges",
        Duration::from_secs(60),
        || async {
            let names: BTreeSet<String> = c.network_names(surv).await?.into_iter().collect();
            want.is_subset(&names).then_some(())
        },
    )
    .await;
}
