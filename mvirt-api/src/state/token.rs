//! The bookkeeping kinds: API tokens (the last admin token is never revoked), join tokens for
//! new control-plane members (used once, until they expire), and idempotency records; the
//! leader's `Prune` forgets the spent ones.

use serde_json::json;

use super::{name_exists, ApiError, Applied, State};
use crate::model::*;

impl State {
    pub(super) fn create_token(&mut self, index: u64, token: &ApiToken) -> Applied {
        if self.tokens.values().any(|t| t.name == token.name) {
            return Err(name_exists(Kind::Token, &token.name));
        }
        let mut token = token.clone();
        token.revision = index;
        let id = token.id.clone();
        self.tokens.insert(id.clone(), token.clone());
        Ok((
            Json::of(&token),
            vec![self.change(Kind::Token, &id, "created")],
        ))
    }

    pub(super) fn delete_token(&mut self, id: &str) -> Applied {
        let token = self.get::<ApiToken>(id)?;
        if token.role == Role::Admin
            && self
                .tokens
                .values()
                .filter(|t| t.role == Role::Admin)
                .count()
                == 1
        {
            return Err(ApiError::conflict("cannot revoke the last admin token"));
        }
        self.tokens.remove(id);
        Ok((Json::null(), vec![State::removed(Kind::Token, id, "")]))
    }

    pub(super) fn create_join_token(&mut self, token: &JoinToken) -> Applied {
        let id = token.id.clone();
        self.join_tokens.insert(id.clone(), token.clone());
        Ok((
            Json::null(),
            vec![self.change(Kind::JoinToken, &id, "created")],
        ))
    }

    /// A joining member presents a join token: it is marked used and the member gets its id.
    pub(super) fn consume_join_token(&mut self, hash: &str, now_ms: i64) -> Applied {
        let token = self
            .join_tokens
            .values_mut()
            .find(|t| t.hash == hash)
            .ok_or_else(|| ApiError::forbidden("unknown join token"))?;
        if token.used {
            return Err(ApiError::forbidden("join token already used"));
        }
        if token.expires_at_ms < now_ms {
            return Err(ApiError::forbidden("join token expired"));
        }
        token.used = true;
        let id = token.id.clone();
        let member_id = self.counters.next_member_id;
        self.counters.next_member_id += 1;
        Ok((
            Json::of(&json!({"member_id": member_id})),
            vec![self.change(Kind::JoinToken, &id, "updated")],
        ))
    }

    pub(super) fn prune(&mut self, idempotency_before_ms: i64, now_ms: i64) -> Applied {
        let (keys, tokens) = self.prunable(idempotency_before_ms, now_ms);
        let mut changes = Vec::new();
        for key in keys {
            self.idempotency.remove(&key);
            changes.push(State::removed(Kind::Idempotency, &key, ""));
        }
        for id in tokens {
            self.join_tokens.remove(&id);
            changes.push(State::removed(Kind::JoinToken, &id, ""));
        }
        Ok((Json::of(&json!({"pruned": changes.len()})), changes))
    }

    /// What a `Prune` with these bounds would remove: idempotency keys and join-token ids.
    pub fn prunable(&self, idempotency_before_ms: i64, now_ms: i64) -> (Vec<String>, Vec<String>) {
        let keys = self
            .idempotency
            .values()
            .filter(|r| r.created_at_ms < idempotency_before_ms)
            .map(|r| r.key.clone())
            .collect();
        let tokens = self
            .join_tokens
            .values()
            .filter(|t| t.used || t.expires_at_ms < now_ms)
            .map(|t| t.id.clone())
            .collect();
        (keys, tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn token(id: &str, role: Role) -> Command {
        Command::CreateToken {
            token: ApiToken {
                id: id.into(),
                name: id.into(),
                role,
                hash: format!("hash-{id}"),
                created_at: "t0".into(),
                revision: 0,
            },
        }
    }

    #[test]
    fn the_last_admin_token_stays_and_a_join_token_is_used_once() {
        let mut s = State::initial();
        s.apply(1, &p(token("admin", Role::Admin)))
            .0
            .result
            .unwrap();
        s.apply(2, &p(token("agent", Role::Node))).0.result.unwrap();
        let revoke = |id: &str| p(Command::DeleteToken { id: id.into() });
        assert_eq!(
            s.apply(3, &revoke("admin")).0.result.unwrap_err().code,
            ErrorCode::Conflict
        );
        s.apply(4, &revoke("agent")).0.result.unwrap();
        let join = JoinToken {
            id: "j".into(),
            hash: "h".into(),
            expires_at_ms: 10,
            used: false,
        };
        s.apply(5, &p(Command::CreateJoinToken { token: join }))
            .0
            .result
            .unwrap();
        let consume = || {
            p(Command::ConsumeJoinToken {
                hash: "h".into(),
                now_ms: 5,
            })
        };
        let member = s.apply(6, &consume()).0.result.unwrap().to_value();
        assert_eq!(member["member_id"], 2);
        assert_eq!(
            s.apply(7, &consume()).0.result.unwrap_err().code,
            ErrorCode::PermissionDenied
        );
    }
}
