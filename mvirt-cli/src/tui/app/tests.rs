//! Unit tests of the TUI's state transitions (`App::update`), no terminal involved.

use super::*;
use serde_json::json;

fn key(c: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn app_with_vm() -> App {
    let mut a = App::new("http://x", "default");
    a.update(Msg::Loaded(
        Kind::Vm,
        vec![json!({"id":"v1","name":"web","project":"default","revision":3})],
    ));
    a
}

#[test]
fn tab_and_digits_switch_views() {
    let mut a = App::new("http://x", "default");
    a.update(key(KeyCode::Tab));
    assert_eq!(a.view, View::Nodes);
    assert_eq!(
        a.update(key(KeyCode::Char('5'))),
        vec![Cmd::LoadLogs],
        "entering the log view refreshes it"
    );
    assert_eq!(a.view, View::Logs);
    a.update(key(KeyCode::BackTab));
    assert_eq!(a.view, View::Storage);
}

#[test]
fn stop_asks_for_confirmation_and_only_yes_acts() {
    let mut a = app_with_vm();
    assert!(a.update(key(KeyCode::Char('o'))).is_empty());
    assert!(matches!(a.modal, Some(Modal::Confirm(_))));
    assert!(a.update(key(KeyCode::Char('n'))).is_empty());
    assert!(a.modal.is_none());
    a.update(key(KeyCode::Char('o')));
    let cmds = a.update(key(KeyCode::Char('y')));
    assert_eq!(
        cmds,
        vec![Cmd::VmAction {
            id: "v1".into(),
            name: "web".into(),
            action: "stop"
        }]
    );
}

#[test]
fn events_upsert_and_delete_ignoring_stale_and_foreign_objects() {
    let mut a = app_with_vm();
    a.apply_event(&json!({"kind":"vm","id":"v1","object":{"id":"v1","name":"web","project":"default","revision":2,"x":1}}));
    assert!(
        a.vms[0].get("x").is_none(),
        "an older revision must not overwrite"
    );
    a.apply_event(&json!({"kind":"vm","id":"v2","object":{"id":"v2","name":"api","project":"default","revision":5}}));
    assert_eq!(
        a.vms
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["api", "web"]
    );
    a.apply_event(&json!({"kind":"vm","id":"v9","object":{"id":"v9","name":"other","project":"p2","revision":6}}));
    assert_eq!(a.vms.len(), 2);
    a.apply_event(&json!({"kind":"vm","id":"v1","object":null}));
    assert_eq!(a.vms.len(), 1);
}

#[test]
fn form_collects_input_and_submits() {
    let mut a = App::new("http://x", "default");
    a.update(key(KeyCode::Char('n')));
    for c in "db".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    a.update(key(KeyCode::Tab));
    a.update(key(KeyCode::Backspace));
    a.update(key(KeyCode::Char('4')));
    let cmds = a.update(key(KeyCode::Enter));
    let Some(Cmd::CreateVm(f)) = cmds.first() else {
        panic!("no create command: {cmds:?}")
    };
    assert_eq!(f.values[0], "db");
    assert_eq!(f.values[1], "4");
    assert!(a.modal.is_none());
}

#[test]
fn console_forwards_keys_and_ctrl_a_t_detaches() {
    let mut a = app_with_vm();
    assert_eq!(
        a.update(key(KeyCode::Enter)),
        vec![Cmd::OpenConsole { id: "v1".into() }]
    );
    assert_eq!(
        a.update(key(KeyCode::Char('l'))),
        vec![Cmd::ConsoleInput(b"l".to_vec())]
    );
    a.update(Msg::ConsoleOutput(b"login: ".to_vec()));
    let ctrl_a = Msg::Key(KeyEvent::new(KeyCode::Char('a'), KeyModifiers::CONTROL));
    assert!(a.update(ctrl_a).is_empty());
    assert_eq!(a.update(key(KeyCode::Char('t'))), vec![Cmd::CloseConsole]);
    assert!(a.modal.is_none());
}

#[test]
fn resize_prompts_with_the_current_size_and_confirms_the_typed_one() {
    let mut a = App::new("http://x", "default");
    a.update(Msg::Loaded(
        Kind::Vm,
        vec![
            json!({"id":"v1","name":"web","project":"default","revision":3,
            "spec":{"vcpus":2,"memory_bytes":1u64<<30}}),
        ],
    ));
    a.update(key(KeyCode::Char('e')));
    let Some(Modal::Resize(p)) = &a.modal else {
        panic!("no resize prompt")
    };
    assert_eq!(p.input, "2 1GiB");
    for _ in 0.."1GiB".len() {
        a.update(key(KeyCode::Backspace));
    }
    assert!(a.update(key(KeyCode::Char('x'))).is_empty());
    a.update(key(KeyCode::Enter));
    assert!(
        matches!(a.modal, Some(Modal::Resize(_))),
        "an unparsable size stays in the prompt"
    );
    assert!(a.status.contains("invalid size"), "{}", a.status);
    a.update(key(KeyCode::Backspace));
    for c in "4G".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    assert!(a.update(key(KeyCode::Enter)).is_empty());
    let Some(Modal::Confirm(c)) = &a.modal else {
        panic!("no confirmation")
    };
    assert_eq!(c.question(), "resize vm web to 2 vCPUs, 4GiB?");
    assert_eq!(
        a.update(key(KeyCode::Char('y'))),
        vec![Cmd::ResizeVm {
            id: "v1".into(),
            name: "web".into(),
            vcpus: 2,
            memory_bytes: 4 << 30
        }]
    );
    a.update(key(KeyCode::Char('e')));
    a.update(key(KeyCode::Esc));
    assert!(a.modal.is_none(), "Esc cancels");
}

#[test]
fn storage_keys_confirm_snapshot_rollback_and_promote_of_the_newest_snapshot() {
    let mut a = App::new("http://x", "default");
    a.update(key(KeyCode::Char('4')));
    a.update(Msg::Loaded(
        Kind::Volume,
        vec![
            serde_json::json!({"id": "v1", "name": "data", "project": "default",
            "snapshots": [{"id": "s1", "name": "old"}, {"id": "s2", "name": "new"}]}),
        ],
    ));
    a.update(key(KeyCode::Char('B')));
    let cmds = a.update(key(KeyCode::Char('y')));
    assert_eq!(
        cmds,
        vec![Cmd::VolumeSnapshot {
            volume_id: "v1".into(),
            volume: "data".into(),
            action: SnapshotAction::Rollback {
                id: "s2".into(),
                name: "new".into()
            },
        }]
    );
    a.update(key(KeyCode::Char('P')));
    let cmds = a.update(key(KeyCode::Char('y')));
    assert!(
        matches!(&cmds[0], Cmd::VolumeSnapshot { action: SnapshotAction::Promote { template, .. }, .. } if template == "data-new")
    );
    a.update(key(KeyCode::Char('S')));
    let cmds = a.update(key(KeyCode::Char('y')));
    assert!(
        matches!(&cmds[0], Cmd::VolumeSnapshot { action: SnapshotAction::Take { name }, .. } if name.starts_with("snap-"))
    );
}

fn app_with_pods() -> App {
    let mut a = App::new("http://x", "default");
    a.update(Msg::Resize(100, 30));
    a.update(Msg::Loaded(
        Kind::Pod,
        vec![
            json!({"id":"p1","name":"app","project":"default","revision":4,
                   "spec":{"containers":[{"name":"web","image":"i:1"},{"name":"writer","image":"j:1"}]}}),
            json!({"id":"p2","name":"solo","project":"default","revision":5,
                   "spec":{"containers":[{"name":"solo","image":"k:1"}]}}),
        ],
    ));
    a.update(key(KeyCode::Char('6')));
    assert_eq!(a.view, View::Pods);
    a
}

#[test]
fn pod_actions_are_confirmed_and_events_of_pods_apply() {
    let mut a = app_with_pods();
    a.update(key(KeyCode::Char('R')));
    assert_eq!(
        a.update(key(KeyCode::Char('y'))),
        vec![Cmd::PodAction {
            id: "p1".into(),
            name: "app".into(),
            action: "restart"
        }]
    );
    a.update(key(KeyCode::Char('d')));
    assert_eq!(
        a.update(key(KeyCode::Char('y'))),
        vec![Cmd::Delete {
            kind: Kind::Pod,
            id: "p1".into(),
            name: "app".into()
        }]
    );
    a.apply_event(&json!({"kind":"pod","id":"p3","object":{"id":"p3","name":"b","project":"default","revision":9}}));
    assert_eq!(a.pods.len(), 3);
    a.apply_event(&json!({"kind":"pod","id":"p3","object":null}));
    assert_eq!(a.pods.len(), 2);
    assert_eq!(
        a.update(key(KeyCode::Char('r'))),
        vec![Cmd::Load(Kind::Pod)]
    );
}

#[test]
fn c_picks_the_container_and_l_follows_its_logs_until_esc() {
    let mut a = app_with_pods();
    assert_eq!(a.selected_pod_container().as_deref(), Some("web"));
    a.update(key(KeyCode::Char('c')));
    assert_eq!(a.selected_pod_container().as_deref(), Some("writer"));
    a.update(key(KeyCode::Char('c')));
    assert_eq!(a.selected_pod_container().as_deref(), Some("web"));
    a.update(key(KeyCode::Char('c')));
    assert_eq!(
        a.update(key(KeyCode::Char('l'))),
        vec![Cmd::OpenPodLogs {
            id: "p1".into(),
            container: "writer".into()
        }]
    );
    a.update(Msg::PodLogs {
        pod_id: "p1".into(),
        lines: vec!["[writer] a".into(), "[writer] b".into()],
    });
    a.update(Msg::PodLogs {
        pod_id: "other".into(),
        lines: vec!["[x] stale".into()],
    });
    let Some(Modal::PodLogs(v)) = &a.modal else {
        panic!("logs view open")
    };
    assert_eq!(v.lines, ["[writer] a", "[writer] b"]);
    a.update(Msg::PodLogsEnded {
        pod_id: "p1".into(),
        why: "gone".into(),
    });
    let Some(Modal::PodLogs(v)) = &a.modal else {
        panic!("logs view open")
    };
    assert_eq!(v.ended.as_deref(), Some("gone"));
    assert_eq!(a.update(key(KeyCode::Esc)), vec![Cmd::ClosePodLogs]);
    assert!(a.modal.is_none());
    // Moving to another pod selects its first container.
    a.update(key(KeyCode::Down));
    assert_eq!(a.selected_pod_container().as_deref(), Some("solo"));
}

#[test]
fn enter_opens_a_shell_in_the_container_that_resizes_and_detaches() {
    let mut a = app_with_pods();
    a.update(key(KeyCode::Char('c')));
    let (rows, cols) = console_size(100, 30);
    assert_eq!(
        a.update(key(KeyCode::Enter)),
        vec![Cmd::OpenExec {
            id: "p1".into(),
            container: "writer".into(),
            cols,
            rows
        }]
    );
    assert_eq!(
        a.update(key(KeyCode::Char('x'))),
        vec![Cmd::ConsoleInput(b"x".to_vec())]
    );
    let (rows, cols) = console_size(120, 40);
    assert_eq!(
        a.update(Msg::Resize(120, 40)),
        vec![Cmd::ExecResize { cols, rows }]
    );
    a.update(Msg::ConsoleClosed("the shell exited with 0".into()));
    assert_eq!(
        a.status,
        "exec in app/writer closed: the shell exited with 0"
    );
    let ctrl_a = Msg::Key(KeyEvent::new(KeyCode::Char('a'), KeyModifiers::CONTROL));
    a.update(ctrl_a);
    assert_eq!(a.update(key(KeyCode::Char('t'))), vec![Cmd::CloseConsole]);
    assert!(a.modal.is_none());
}
