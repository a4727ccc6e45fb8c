//! Membership of the control plane: joins (the join token checked in memory, refused tokens
//! rate-limited per address), voters added only once caught up, the strict reconfiguration check
//! (a majority of the new voter set must answer), and the leader handing over before its own
//! removal.

use super::*;

impl App {
    /// Adds a member as learner (it catches up, by snapshot if far behind), then as voter.
    /// Membership changes are serialized (one joint consensus at a time) and retried while
    /// another change is still in progress.
    pub async fn add_member(&self, id: MemberId, member: Member) -> Result<(), ApiError> {
        let _guard = self.membership_lock.lock().await;
        self.raft
            .add_learner(id, member, true)
            .await
            .map_err(|e| ApiError::internal(format!("adding learner {id} failed: {e}")))?;
        let mut voters: BTreeSet<MemberId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        voters.insert(id);
        self.check_quorum_after(&voters, &format!("adding member {id} as a voter"))
            .await?;
        self.change_voters(100, |voters| {
            voters.insert(id);
        })
        .await?;
        tracing::info!(member_id = id, "member joined as voter");
        self.audit
            .audit(format!("control-plane member {id} joined"), &[]);
        Ok(())
    }

    /// etcd's strict reconfiguration check: a membership change is refused (409, with the
    /// reason) when afterwards the voters that are reachable and caught up would not form a
    /// majority of the new voter set. Reachable and caught up means: acknowledged a no-op this
    /// leader committed just now, within `QUORUM_PROBE`.
    pub(super) async fn check_quorum_after(
        &self,
        new_voters: &BTreeSet<MemberId>,
        what: &str,
    ) -> Result<(), ApiError> {
        const QUORUM_PROBE: Duration = Duration::from_secs(2);
        let (probe, _) = self.submit(Command::Noop, None).await?;
        let deadline = tokio::time::Instant::now() + QUORUM_PROBE;
        let need = new_voters.len() / 2 + 1;
        loop {
            let metrics = self.raft.metrics().borrow().clone();
            let replication = metrics.replication.clone().unwrap_or_default();
            let (ok, behind): (Vec<MemberId>, Vec<MemberId>) = new_voters.iter().partition(|v| {
                **v == metrics.id
                    || replication
                        .get(v)
                        .and_then(|m| *m)
                        .is_some_and(|matched| matched.index >= probe)
            });
            if ok.len() >= need {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::conflict(format!(
                    "{what} would leave {} of {} voters reachable and caught up, and {need} are needed for a majority (behind or unreachable: {behind:?})",
                    ok.len(),
                    new_voters.len()
                ))
                .with_details(serde_json::json!({"reachable": ok, "unreachable": behind, "needed": need})));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn change_voters(
        &self,
        max_attempts: u32,
        edit: impl Fn(&mut BTreeSet<MemberId>),
    ) -> Result<(), ApiError> {
        let mut attempts = 0;
        loop {
            let mut voters: BTreeSet<MemberId> = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            edit(&mut voters);
            match self.raft.change_membership(voters, false).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))
                    if attempts < max_attempts =>
                {
                    tracing::debug!(error = %e, "membership change busy; retrying");
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    return Err(ApiError::no_leader("not the leader"))
                }
                Err(e) => return Err(ApiError::internal(format!("membership change failed: {e}"))),
            }
        }
    }

    /// Removes a member from the voters (and the membership). The leader never removes itself
    /// while it leads: it first hands leadership to the most caught-up other voter
    /// ([`Self::hand_over`]) and answers [`Removal::HandedOver`]; the caller then sends the
    /// removal to the new leader.
    pub async fn remove_member(&self, id: MemberId) -> Result<Removal, ApiError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<MemberId> = membership.membership().voter_ids().collect();
        let known = membership.membership().get_node(&id).is_some();
        if !known {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("member {id} not found"),
            ));
        }
        if voters.len() == 1 && voters.contains(&id) {
            return Err(ApiError::conflict("cannot remove the last voter"));
        }
        let _guard = self.membership_lock.lock().await;
        let mut remaining = voters.clone();
        remaining.remove(&id);
        self.check_quorum_after(&remaining, &format!("removing member {id}"))
            .await?;
        if id == self.member_id {
            let (new_leader, member) = self.hand_over(&remaining).await?;
            tracing::info!(
                new_leader,
                "leadership handed over before removing this member"
            );
            return Ok(Removal::HandedOver(member));
        }
        self.change_voters(100, |voters| {
            voters.remove(&id);
        })
        .await?;
        self.audit
            .audit(format!("control-plane member {id} removed"), &[]);
        Ok(Removal::Removed)
    }

    /// Hands leadership to another voter (openraft 0.9 has no leadership transfer): picks the
    /// voter of `candidates` whose replicated log reaches furthest, stops this leader's
    /// heartbeats (followers refuse to vote while a leader's lease lasts, i.e. while they hear
    /// from it) and its own campaigning, and asks the chosen voter to campaign
    /// (`POST /raft/elect`) until some other member leads, for at most [`HAND_OVER_WITHIN`].
    /// Heartbeats and campaigning are switched back on whatever the outcome. Another follower
    /// may win instead of the chosen one; any leader but this member will do.
    async fn hand_over(
        &self,
        candidates: &BTreeSet<MemberId>,
    ) -> Result<(MemberId, Member), ApiError> {
        let metrics = self.raft.metrics().borrow().clone();
        let replication = metrics.replication.clone().unwrap_or_default();
        let target = candidates
            .iter()
            .filter(|v| **v != self.member_id)
            .max_by_key(|v| replication.get(v).copied().flatten().map(|l| l.index))
            .copied()
            .ok_or_else(|| ApiError::conflict("no other voter to hand leadership to"))?;
        let target_member = metrics
            .membership_config
            .membership()
            .get_node(&target)
            .cloned()
            .ok_or_else(|| ApiError::internal(format!("voter {target} has no address")))?;

        let _paused = PausedLeadership::pause(&self.raft);
        let deadline = Instant::now() + HAND_OVER_WITHIN;
        let mut rx = self.raft.metrics();
        loop {
            match self
                .forward::<_, Result<(), ApiError>>(&target_member, "elect", &())
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(target, error = %e.message, "campaign refused"),
                Err(Forward::NotSent(e)) | Err(Forward::Unknown(e)) => {
                    tracing::debug!(target, error = %e, "campaign request not delivered")
                }
            }
            // Re-ask after a random pause of one to two election timeouts (when the first
            // campaign met a lease that had not run out yet): a fixed period could fall in step
            // with another follower's campaigns and split the vote every time.
            let pause = HAND_OVER_RETRY.mul_f64(1.0 + rand::random::<f64>());
            let round = (Instant::now() + pause).min(deadline);
            loop {
                let (state, leader) = {
                    let m = rx.borrow_and_update();
                    (m.state, m.current_leader)
                };
                if state != ServerState::Leader {
                    if let Some(new_leader) = leader.filter(|l| *l != self.member_id) {
                        let member = self
                            .leader()
                            .filter(|(id, _)| *id == new_leader)
                            .map(|(_, m)| m)
                            .unwrap_or_else(|| target_member.clone());
                        return Ok((new_leader, member));
                    }
                }
                let Some(left) = round.checked_duration_since(Instant::now()) else {
                    break;
                };
                if tokio::time::timeout(left, rx.changed()).await.is_err() {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let now = if self.is_leader() {
                    "this member still leads"
                } else {
                    "this member stepped down, no leader is elected yet"
                };
                return Err(ApiError::unavailable(format!(
                    "leadership was not handed over to member {target} within {}s; {now}; the member was not removed; retry",
                    HAND_OVER_WITHIN.as_secs()
                )));
            }
        }
    }

    /// Checks a join token against the replicated state in memory (no Raft write): an unknown,
    /// used or expired token is refused here, so a bad join costs no log entry. A token this
    /// member has not applied yet (created a moment ago through another member) is looked up
    /// again after a read barrier.
    pub async fn verify_join_token(&self, token: &str) -> Result<(), ApiError> {
        let hash = hash_secret(token);
        let check = || -> Result<(), ApiError> {
            let state = self.shared.read();
            let token = state
                .join_tokens
                .values()
                .find(|t| t.hash == hash)
                .ok_or_else(|| ApiError::forbidden("unknown join token"))?;
            if token.used {
                return Err(ApiError::forbidden("join token already used"));
            }
            if token.expires_at_ms < now_ms() {
                return Err(ApiError::forbidden("join token expired"));
            }
            Ok(())
        };
        if check().is_ok() {
            return Ok(());
        }
        self.read_barrier().await?;
        check()
    }
}

/// How long the leader tries to hand leadership over before its own removal.
pub const HAND_OVER_WITHIN: Duration = Duration::from_secs(5);
/// How often (at least; randomized up to twice this) the chosen voter is asked again to
/// campaign: about the election timeout.
const HAND_OVER_RETRY: Duration = Duration::from_millis(700);

/// What [`App::remove_member`] did.
#[derive(Debug)]
pub enum Removal {
    Removed,
    /// The member to remove was this leader: leadership moved to this member first, which is
    /// to remove it now.
    HandedOver(Member),
}

/// Heartbeats and elections switched off on this member while it hands leadership over; on
/// again when dropped.
struct PausedLeadership<'a> {
    raft: &'a Raft,
}

impl<'a> PausedLeadership<'a> {
    fn pause(raft: &'a Raft) -> Self {
        raft.runtime_config().heartbeat(false);
        raft.runtime_config().elect(false);
        Self { raft }
    }
}

impl Drop for PausedLeadership<'_> {
    fn drop(&mut self) {
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(true);
    }
}

/// Failed joins allowed from one source address at once, and how fast that allowance refills:
/// a token bucket per address. A join is refused with 429 while its address has nothing left;
/// only refused tokens are charged, so joins with a good token never wait behind each other.
pub const JOIN_FAILURE_BURST: u32 = 5;
pub const JOIN_FAILURE_REFILL: Duration = Duration::from_secs(6);
/// Beyond this many tracked addresses, full buckets are forgotten.
const JOIN_LIMITER_TRACKED: usize = 4096;

/// Rate limit of failed joins, per source address, in this member's memory.
#[derive(Default)]
pub struct JoinLimiter {
    buckets: Mutex<HashMap<std::net::IpAddr, JoinBucket>>,
}

#[derive(Clone, Copy)]
struct JoinBucket {
    /// Failures still allowed (fractional while refilling).
    left: f64,
    at: Instant,
}

impl JoinBucket {
    fn refilled(self, now: Instant) -> Self {
        let gained = now.duration_since(self.at).as_secs_f64() / JOIN_FAILURE_REFILL.as_secs_f64();
        Self {
            left: (self.left + gained).min(f64::from(JOIN_FAILURE_BURST)),
            at: now,
        }
    }
}

impl JoinLimiter {
    /// `Err(wait)` while `source` has used up its failed attempts.
    pub fn admit(&self, source: std::net::IpAddr) -> Result<(), Duration> {
        self.admit_at(source, Instant::now())
    }

    /// Counts one refused join against `source`.
    pub fn charge(&self, source: std::net::IpAddr) {
        self.charge_at(source, Instant::now())
    }

    fn admit_at(&self, source: std::net::IpAddr, now: Instant) -> Result<(), Duration> {
        let buckets = locked(&self.buckets);
        let Some(bucket) = buckets.get(&source).map(|b| b.refilled(now)) else {
            return Ok(());
        };
        if bucket.left >= 1.0 {
            return Ok(());
        }
        Err(JOIN_FAILURE_REFILL.mul_f64(1.0 - bucket.left))
    }

    fn charge_at(&self, source: std::net::IpAddr, now: Instant) {
        let mut buckets = locked(&self.buckets);
        if buckets.len() >= JOIN_LIMITER_TRACKED {
            buckets.retain(|_, b| b.refilled(now).left < f64::from(JOIN_FAILURE_BURST));
        }
        let bucket = buckets
            .get(&source)
            .map(|b| b.refilled(now))
            .unwrap_or(JoinBucket {
                left: f64::from(JOIN_FAILURE_BURST),
                at: now,
            });
        buckets.insert(
            source,
            JoinBucket {
                left: (bucket.left - 1.0).max(0.0),
                at: now,
            },
        );
    }
}

#[cfg(test)]
mod join_limiter_tests {
    use super::*;

    #[test]
    fn refused_joins_are_limited_per_address_and_the_allowance_refills() {
        let limiter = JoinLimiter::default();
        let here = std::net::IpAddr::from([192, 0, 2, 1]);
        let there = std::net::IpAddr::from([192, 0, 2, 2]);
        let t0 = Instant::now();
        for _ in 0..JOIN_FAILURE_BURST {
            assert!(limiter.admit_at(here, t0).is_ok());
            limiter.charge_at(here, t0);
        }
        let wait = limiter.admit_at(here, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= JOIN_FAILURE_REFILL,
            "{wait:?}"
        );
        // Another address is not affected.
        assert!(limiter.admit_at(there, t0).is_ok());
        // One refill period later, one more attempt; then limited again.
        let t1 = t0 + JOIN_FAILURE_REFILL;
        assert!(limiter.admit_at(here, t1).is_ok());
        limiter.charge_at(here, t1);
        assert!(limiter.admit_at(here, t1).is_err());
        // Long quiet: the whole burst is back.
        let t2 = t1 + JOIN_FAILURE_REFILL * (JOIN_FAILURE_BURST + 1);
        for _ in 0..JOIN_FAILURE_BURST {
            assert!(limiter.admit_at(here, t2).is_ok());
            limiter.charge_at(here, t2);
        }
        assert!(limiter.admit_at(here, t2).is_err());
    }
}
