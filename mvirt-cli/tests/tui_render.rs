//! State → screen: the TUI's `App` rendered into ratatui's `TestBackend`, checked as text.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use mvirt_cli::tui::app::{App, Kind, Msg};
use mvirt_cli::tui::ui;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde_json::json;

fn screen(app: &App) -> String {
    let mut t = Terminal::new(TestBackend::new(140, 30)).expect("terminal");
    t.draw(|f| ui::draw(f, app)).expect("draw");
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn key(c: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn app() -> App {
    let mut a = App::new("http://api:8080", "default");
    a.update(Msg::Resize(140, 30));
    a.update(Msg::Loaded(
        Kind::Vm,
        vec![
            json!({"id":"11111111-aaaa","name":"web","project":"default","revision":5,"spec":{"vcpus":2,"memory_bytes":2147483648u64,"desired_state":"running"},
                   "status":{"phase":"running","ipv4_addresses":["10.0.0.5"]},"node_id":"99999999-node","scheduling":{"state":"scheduled"}}),
            json!({"id":"22222222-bbbb","name":"db","project":"default","revision":6,"spec":{"vcpus":4,"memory_bytes":4294967296u64,"desired_state":"running"},
                   "status":{"phase":""},"scheduling":{"state":"pending","reason":"no capacity"}}),
        ],
    ));
    a.update(Msg::Loaded(
        Kind::Node,
        vec![json!({"id":"99999999-node","name":"hv1","spec":{"schedulable":true},"status":{"state":"online","capacity":{"vcpus":16,"memory_bytes":68719476736u64}},"allocated":{"vcpus":2,"memory_bytes":2147483648u64}})],
    ));
    a.update(Msg::Loaded(Kind::Network, vec![json!({"id":"33333333","name":"lan","project":"default","spec":{"ipv4_prefix":"10.0.0.0/24","is_public":false},"status":{"phase":"ready"}})]));
    a.update(Msg::Loaded(Kind::Volume, vec![json!({"id":"44444444","name":"web-root","project":"default","spec":{"size_bytes":10737418240u64},"status":{"phase":"ready"},"node_id":"99999999-node","owner_vm_id":"11111111-aaaa"})]));
    a.update(Msg::Loaded(
        Kind::Template,
        vec![json!({"id":"55555555","name":"debian-12","project":"default","spec":{"format":"qcow2","source_url":"https://x/deb.qcow2"},"status":{"phase":"importing","import_bytes_done":25,"import_bytes_total":100}})],
    ));
    a.update(Msg::Stream(true, String::new()));
    a
}

#[test]
fn vms_view_lists_vms_with_phase_resources_and_keybinding_footer() {
    let s = screen(&app());
    assert!(s.contains("1 VMs") && s.contains("5 Logs"), "tabs:\n{s}");
    assert!(s.contains("● live"), "live indicator:\n{s}");
    assert!(s.contains("VMs (2)"), "{s}");
    let web = s.lines().find(|l| l.contains("web")).expect("web row");
    assert!(
        web.contains("running")
            && web.contains("2GiB")
            && web.contains("10.0.0.5")
            && web.contains("99999999"),
        "{web}"
    );
    let db = s.lines().find(|l| l.contains(" db ")).expect("db row");
    assert!(db.contains("pending") && db.contains("4GiB"), "{db}");
    assert!(
        s.contains("n new")
            && s.contains("s start")
            && s.contains("o stop")
            && s.contains("d delete")
            && s.contains("Enter console"),
        "footer:\n{s}"
    );
    // Rows are sorted by name and the first one is selected.
    assert!(db.contains("> ") && !web.contains("> "), "{s}");
}

#[test]
fn other_views_show_nodes_networks_storage_with_import_progress_and_logs() {
    let mut a = app();
    a.update(key(KeyCode::Char('2')));
    let s = screen(&a);
    let hv = s.lines().find(|l| l.contains("hv1")).expect("node row");
    assert!(
        hv.contains("online") && hv.contains("16") && hv.contains("64GiB"),
        "{hv}"
    );

    a.update(key(KeyCode::Tab));
    let s = screen(&a);
    assert!(
        s.lines()
            .any(|l| l.contains("lan") && l.contains("10.0.0.0/24") && l.contains("ready")),
        "{s}"
    );

    a.update(key(KeyCode::Tab));
    let s = screen(&a);
    assert!(
        s.lines()
            .any(|l| l.contains("web-root") && l.contains("10GiB")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.contains("debian-12") && l.contains("importing") && l.contains("25%")),
        "{s}"
    );

    a.update(key(KeyCode::Tab));
    a.update(Msg::Logs(vec![json!({"timestamp_ns":1_700_000_000_000_000_000i64,"level":"audit","component":"mvirt-api","message":"vm web created","object_ids":["11111111-aaaa"]})]));
    let s = screen(&a);
    assert!(
        s.contains("Audit log (1)") && s.contains("AUDIT") && s.contains("vm web created"),
        "{s}"
    );
}

#[test]
fn live_event_updates_the_visible_list() {
    let mut a = app();
    a.update(Msg::Event(json!({"kind":"vm","id":"22222222-bbbb","object":{"id":"22222222-bbbb","name":"db","project":"default","revision":9,
        "spec":{"vcpus":4,"memory_bytes":4294967296u64},"status":{"phase":"running"},"scheduling":{"state":"scheduled"}}})));
    let s = screen(&a);
    let db = s.lines().find(|l| l.contains(" db ")).expect("db row");
    assert!(db.contains("running"), "{db}");
    a.update(Msg::Event(
        json!({"kind":"vm","id":"11111111-aaaa","object":null}),
    ));
    let s = screen(&a);
    assert!(!s.contains("web") && s.contains("VMs (1)"), "{s}");
    a.update(Msg::Stream(false, "connection reset".into()));
    let s = screen(&a);
    assert!(
        s.contains("○ offline") && s.contains("live updates interrupted: connection reset"),
        "{s}"
    );
}

#[test]
fn stop_shows_a_confirmation_dialog() {
    let mut a = app();
    a.update(key(KeyCode::Down));
    a.update(key(KeyCode::Char('o')));
    let s = screen(&a);
    assert!(
        s.contains("Confirm") && s.contains("stop vm web?") && s.contains("[y] yes"),
        "{s}"
    );
    assert!(s.contains("y confirm  n cancel"), "{s}");
    a.update(key(KeyCode::Down));
    let s = screen(&a);
    assert!(
        s.contains("stop vm web?"),
        "other keys keep the dialog:\n{s}"
    );
}

#[test]
fn create_form_shows_fields_and_typed_values() {
    let mut a = app();
    a.update(key(KeyCode::Char('n')));
    for c in "api".chars() {
        a.update(key(KeyCode::Char(c)));
    }
    let s = screen(&a);
    assert!(s.contains("Create VM"), "{s}");
    assert!(s.contains("Name: api_"), "{s}");
    assert!(
        s.contains("vCPUs: 1") && s.contains("Memory: 512M") && s.contains("Disk size: 10G"),
        "{s}"
    );
    assert!(s.contains("Enter create  Esc cancel"), "{s}");
}

#[test]
fn console_view_renders_terminal_output() {
    let mut a = app();
    a.update(key(KeyCode::Char('j')));
    a.update(key(KeyCode::Enter));
    a.update(Msg::ConsoleOutput(
        b"Debian GNU/Linux 12 web ttyS0\r\n\r\nweb login: \x1b[1mroot\x1b[0m".to_vec(),
    ));
    let s = screen(&a);
    assert!(
        s.contains("console web (connected)") && s.contains("Ctrl+a t"),
        "{s}"
    );
    assert!(s.contains("Debian GNU/Linux 12 web ttyS0"), "{s}");
    assert!(s.contains("web login: root"), "{s}");
    a.update(Msg::ConsoleClosed("closed by the API".into()));
    let s = screen(&a);
    assert!(
        s.contains("console of web closed: closed by the API"),
        "{s}"
    );
}

#[test]
fn help_overlay_lists_the_keys_and_any_key_closes_it() {
    let mut a = app();
    a.update(key(KeyCode::Char('?')));
    let s = screen(&a);
    assert!(
        s.contains(" Help ") && s.contains("switch view") && s.contains("Ctrl+a t detaches"),
        "{s}"
    );
    assert!(s.contains("any key: close"), "{s}");
    a.update(key(KeyCode::Char('x')));
    let s = screen(&a);
    assert!(!s.contains(" Help "), "{s}");
}

#[test]
fn resize_prompt_shows_the_current_size_and_then_a_confirmation() {
    let mut a = app();
    a.update(key(KeyCode::Char('e')));
    let s = screen(&a);
    assert!(
        s.contains(" Resize vm db ") && s.contains("vCPUs memory: 4 4GiB_"),
        "{s}"
    );
    assert!(s.contains("Enter resize  Esc cancel"), "{s}");
    a.update(key(KeyCode::Enter));
    let s = screen(&a);
    assert!(s.contains("resize vm db to 4 vCPUs, 4GiB?"), "{s}");
}

#[test]
fn pods_view_shows_container_states_the_detail_pane_logs_and_the_exec_title() {
    let mut a = app();
    a.update(Msg::Loaded(
        Kind::Pod,
        vec![json!({"id":"66666666-pod","name":"app","project":"default","revision":7,
            "spec":{"vcpus":1,"memory_bytes":536870912u64,"desired_state":"running",
                    "containers":[{"name":"web","image":"reg/httpd:1"},{"name":"writer","image":"reg/busybox:1"}]},
            "status":{"phase":"running","ipv4_addresses":["10.0.0.9"],"containers":[
                {"name":"web","image":"reg/httpd:1","state":"running","restart_count":0},
                {"name":"writer","image":"reg/busybox:1","state":"exited","exit_code":2,"restart_count":3,"message":"back-off"}]},
            "node_id":"99999999-node"})],
    ));
    a.update(key(KeyCode::Char('6')));
    let s = screen(&a);
    assert!(s.contains("6 Pods") && s.contains("Pods (1)"), "{s}");
    let row = s.lines().find(|l| l.contains("app ")).expect("pod row");
    assert!(
        row.contains("running") && row.contains("web:running writer:exited(2),restarts=3"),
        "{row}"
    );
    assert!(s.contains("Containers of app (2)"), "{s}");
    let writer = s
        .lines()
        .find(|l| l.contains("writer") && l.contains("reg/busybox:1"))
        .expect("writer row");
    assert!(
        writer.contains("exited") && writer.contains("back-off"),
        "{writer}"
    );
    assert!(s.contains("l logs") && s.contains("Enter shell"), "{s}");

    a.update(key(KeyCode::Char('l')));
    a.update(Msg::PodLogs {
        pod_id: "66666666-pod".into(),
        lines: vec!["[web] GET / 200".into()],
    });
    let s = screen(&a);
    assert!(
        s.contains("logs app/web (following)") && s.contains("[web] GET / 200"),
        "{s}"
    );
    a.update(key(KeyCode::Esc));
    a.update(key(KeyCode::Enter));
    a.update(Msg::ConsoleOutput(b"/ # ".to_vec()));
    let s = screen(&a);
    assert!(
        s.contains("exec app/web (connected)") && s.contains("/ #"),
        "{s}"
    );
}

/// One reading of node `99999999-node` in which VM `db` has used `cpu` CPU seconds and
/// received `rx` bytes, at `at_ms`.
fn stats(at_ms: i64, busy: f64, idle: f64, cpu: f64, rx: u64) -> Msg {
    let mut sample = mvirt_cli::top::Sample::default();
    sample.nodes.insert(
        "99999999-node".into(),
        json!({"node_id": "99999999-node", "sampled_at_ms": at_ms,
               "host": {"cpus": 2, "cpu_busy_seconds": busy, "cpu_idle_seconds": idle,
                        "memory_total_bytes": 1u64 << 32, "memory_available_bytes": 1u64 << 31},
               "vms": [{"id": "22222222-bbbb", "running": true, "pid": 42, "cpu_seconds": cpu,
                        "memory_rss_bytes": 1u64 << 28,
                        "nics": [{"nic_id": "n", "rx_bytes": rx, "tx_bytes": 0}]}],
               "pods": []}),
    );
    Msg::Stats(Box::new(sample))
}

#[test]
fn vm_and_node_views_chart_cpu_and_network_of_the_selection() {
    let mut a = app();
    // Before two readings there is nothing to chart.
    let s = screen(&a);
    assert!(
        s.contains("Usage · db") && s.contains("no usage yet"),
        "{s}"
    );
    a.update(stats(0, 100.0, 100.0, 10.0, 0));
    a.update(stats(2000, 101.0, 102.0, 11.0, 4096));
    a.update(stats(4000, 103.0, 102.0, 12.5, 8192));
    // db: 1 s of CPU in 2 s, then 1.5 s; 2 KiB/s received both times.
    assert_eq!(
        a.usage.series["22222222-bbbb"].cpu_percent,
        [50, 75]
            .into_iter()
            .collect::<std::collections::VecDeque<u64>>()
    );
    let s = screen(&a);
    assert!(s.contains("CPU 75% of one CPU"), "{s}");
    assert!(s.contains("Net 2KiB/s"), "{s}");
    assert!(
        s.chars().any(|c| ('▁'..='█').contains(&c)),
        "sparkline bars:\n{s}"
    );
    // The node: 1 busy of 3 CPU seconds, then 2 of 2 (100 %); its guests' network summed.
    a.update(key(KeyCode::Char('2')));
    let s = screen(&a);
    assert!(s.contains("Usage · hv1"), "{s}");
    assert!(s.contains("CPU 100% of all CPUs"), "{s}");
    assert!(s.contains("Net 2KiB/s"), "{s}");
}

/// One reading of node `99999999-node` in which pod `app` has used `cpu` CPU seconds and
/// sent `tx` bytes, at `at_ms`.
fn pod_stats(at_ms: i64, cpu: f64, tx: u64) -> Msg {
    let mut sample = mvirt_cli::top::Sample::default();
    sample.nodes.insert(
        "99999999-node".into(),
        json!({"node_id": "99999999-node", "sampled_at_ms": at_ms,
               "host": {"cpus": 2, "cpu_busy_seconds": 10.0 + cpu, "cpu_idle_seconds": 10.0,
                        "memory_total_bytes": 1u64 << 32, "memory_available_bytes": 1u64 << 31},
               "vms": [],
               "pods": [{"id": "66666666-pod", "running": true, "pid": 43, "cpu_seconds": cpu,
                         "memory_rss_bytes": 1u64 << 28,
                         "nics": [{"nic_id": "p", "rx_bytes": 0, "tx_bytes": tx}]}]}),
    );
    Msg::Stats(Box::new(sample))
}

#[test]
fn pods_view_charts_cpu_and_network_of_the_selected_pod() {
    let mut a = app();
    a.update(Msg::Loaded(
        Kind::Pod,
        vec![
            json!({"id":"66666666-pod","name":"app","project":"default","revision":7,
            "spec":{"vcpus":1,"memory_bytes":536870912u64,"desired_state":"running",
                    "containers":[{"name":"web","image":"reg/httpd:1"}]},
            "status":{"phase":"running","containers":[
                {"name":"web","image":"reg/httpd:1","state":"running","restart_count":0}]},
            "node_id":"99999999-node"}),
        ],
    ));
    a.update(key(KeyCode::Char('6')));
    // Before two readings there is nothing to chart; the containers pane stays.
    let s = screen(&a);
    assert!(
        s.contains("Usage · app") && s.contains("no usage yet"),
        "{s}"
    );
    assert!(s.contains("Containers of app (1)"), "{s}");
    a.update(pod_stats(0, 5.0, 0));
    a.update(pod_stats(2000, 5.5, 8192));
    a.update(pod_stats(4000, 7.5, 16384));
    // app: 0.5 s of CPU in 2 s, then 2 s in 2 s; 4 KiB/s sent both times.
    assert_eq!(
        a.usage.series["66666666-pod"].cpu_percent,
        [25, 100]
            .into_iter()
            .collect::<std::collections::VecDeque<u64>>()
    );
    let s = screen(&a);
    assert!(s.contains("CPU 100% of one CPU"), "{s}");
    assert!(s.contains("Net 4KiB/s"), "{s}");
    assert!(
        s.chars().any(|c| ('▁'..='█').contains(&c)),
        "sparkline bars:\n{s}"
    );
    // The list, the containers pane and the charts all fit.
    assert!(
        s.lines()
            .any(|l| l.contains("app ") && l.contains("running")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.contains("web") && l.contains("reg/httpd:1")),
        "{s}"
    );
}
