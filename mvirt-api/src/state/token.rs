//! The bookkeeping kinds: API tokens (the last admin token is never revoked; a node token is
//! bound to the first node it registers, and no second token can take that node), join tokens for
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

    /// Binds node token `id` to `node_id`. Idempotent for the same node; refused when the token
    /// is bound to another node, is no node token, or another token is bound to that node.
    pub(super) fn bind_token(&mut self, index: u64, id: &str, node_id: &str) -> Applied {
        let token = self.get::<ApiToken>(id)?;
        if token.role != Role::Node {
            return Err(ApiError::invalid("only node tokens are bound to a node"));
        }
        match token.node_id.as_deref() {
            Some(bound) if bound == node_id => return Ok((Json::null(), Vec::new())),
            Some(bound) => {
                return Err(ApiError::forbidden(format!(
                    "this token is bound to node {bound}"
                )))
            }
            None => {}
        }
        if self
            .tokens
            .values()
            .any(|t| t.id != id && t.node_id.as_deref() == Some(node_id))
        {
            return Err(ApiError::forbidden(format!(
                "node {node_id} is bound to another token"
            )));
        }
        let token = self.get_mut::<ApiToken>(id)?;
        token.node_id = Some(node_id.to_string());
        token.revision = index;
        Ok((Json::null(), vec![self.change(Kind::Token, id, "updated")]))
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
                projects: Vec::new(),
                node_id: None,
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

    #[test]
    fn token_events_carry_the_token_without_its_hash_and_the_row_keeps_it() {
        let mut s = State::initial();
        let (_, changes) = s.apply(1, &p(token("t1", Role::Viewer)));
        let events: Vec<Event> = changes.iter().filter_map(|c| c.event(1)).collect();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].event_type.as_str(), events[0].id.as_str()),
            ("token.created", "t1")
        );
        let object = events[0].object.as_ref().unwrap().to_value();
        assert_eq!(object["name"], "t1");
        assert_eq!(object["role"], "viewer");
        assert!(object.get("hash").is_none(), "{object}");
        assert!(!events[0].object.as_ref().unwrap().get().contains("hash-t1"));
        // The change itself (the stored row) still has it: members authenticate with it.
        assert!(changes[0]
            .object
            .as_ref()
            .unwrap()
            .get()
            .contains("hash-t1"));

        let join = JoinToken {
            id: "j".into(),
            hash: "secret-hash".into(),
            expires_at_ms: 10,
            used: false,
        };
        let (_, changes) = s.apply(2, &p(Command::CreateJoinToken { token: join }));
        let event = changes[0].event(2).unwrap();
        assert_eq!(event.event_type, "join_token.created");
        let text = event.object.as_ref().unwrap().get().to_string();
        assert!(
            !text.contains("secret-hash") && !text.contains("hash"),
            "{text}"
        );

        let (_, changes) = s.apply(3, &p(Command::DeleteToken { id: "t1".into() }));
        let event = changes[0].event(3).unwrap();
        assert_eq!(event.event_type, "token.deleted");
        assert!(event.object.is_none());
    }

    #[test]
    fn a_node_token_binds_to_its_first_node_only() {
        let mut s = State::initial();
        s.apply(1, &p(token("agent1", Role::Node)))
            .0
            .result
            .unwrap();
        s.apply(2, &p(token("agent2", Role::Node)))
            .0
            .result
            .unwrap();
        s.apply(3, &p(token("admin", Role::Admin)))
            .0
            .result
            .unwrap();
        let bind = |id: &str, node: &str| {
            p(Command::BindToken {
                id: id.into(),
                node_id: node.into(),
            })
        };
        s.apply(4, &bind("agent1", "n1")).0.result.unwrap();
        assert_eq!(s.tokens["agent1"].node_id.as_deref(), Some("n1"));
        // The same node again is fine; another node, or a node taken by another token, is not.
        s.apply(5, &bind("agent1", "n1")).0.result.unwrap();
        let code = |s: &mut State, i, c| s.apply(i, &c).0.result.unwrap_err().code;
        assert_eq!(
            code(&mut s, 6, bind("agent1", "n2")),
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            code(&mut s, 7, bind("agent2", "n1")),
            ErrorCode::PermissionDenied
        );
        assert_eq!(
            code(&mut s, 8, bind("admin", "n3")),
            ErrorCode::InvalidArgument
        );
        s.apply(9, &bind("agent2", "n2")).0.result.unwrap();
    }

    #[test]
    fn a_token_stored_before_roles_and_scopes_reads_as_it_was() {
        let old =
            r#"{"id":"t","name":"t","role":"admin","hash":"h","created_at":"c","revision":3}"#;
        let t: ApiToken = serde_json::from_str(old).unwrap();
        assert_eq!(
            (t.role, t.projects.len(), &t.node_id),
            (Role::Admin, 0, &None)
        );
        assert!(t.sees("anything"));
        let node: ApiToken = serde_json::from_str(&old.replace("admin", "node")).unwrap();
        assert_eq!(node.role, Role::Node);
    }
}
