//! State → screen: draws an `App` into a ratatui frame. Pure: tests render it with `TestBackend`.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Tabs};
use ratatui::Frame;
use serde_json::Value;

use super::app::{App, Modal, View, FORM_FIELDS, VIEWS};
use crate::output::{Cells, Column};
use crate::resources as res;

pub fn draw(f: &mut Frame, app: &App) {
    let [header, body, status, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let live = if app.live {
        Span::styled(" ● live ", Style::new().fg(Color::Green))
    } else {
        Span::styled(" ○ offline ", Style::new().fg(Color::Red))
    };
    let titles: Vec<Line> = VIEWS
        .iter()
        .enumerate()
        .map(|(i, v)| Line::from(format!("{} {}", i + 1, v.title())))
        .collect();
    let idx = VIEWS.iter().position(|v| *v == app.view).unwrap_or(0);
    let tabs = Tabs::new(titles)
        .select(idx)
        .highlight_style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED))
        .block(Block::bordered().title(Line::from(vec![
            Span::raw(" mvirt "),
            Span::raw(format!("{} · project {} ", app.api_url, app.project)),
            live,
        ])));
    f.render_widget(tabs, header);

    match app.view {
        View::Vms => {
            let [list, charts] =
                Layout::vertical([Constraint::Min(3), Constraint::Length(USAGE_HEIGHT)])
                    .areas(body);
            table(f, list, "VMs", &app.vms, VM_COLUMNS, Some(app.selected()));
            usage(f, charts, app, "of one CPU");
        }
        View::Nodes => {
            let [list, charts] =
                Layout::vertical([Constraint::Min(3), Constraint::Length(USAGE_HEIGHT)])
                    .areas(body);
            table(
                f,
                list,
                "Nodes",
                &app.nodes,
                NODE_COLUMNS,
                Some(app.selected()),
            );
            usage(f, charts, app, "of all CPUs");
        }
        View::Networks => table(
            f,
            body,
            "Networks",
            &app.networks,
            NETWORK_COLUMNS,
            Some(app.selected()),
        ),
        View::Storage => {
            let [top, bottom] =
                Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)])
                    .areas(body);
            table(
                f,
                top,
                "Volumes",
                &app.volumes,
                VOLUME_COLUMNS,
                Some(app.selected()),
            );
            table(
                f,
                bottom,
                "Templates & imports",
                &app.templates,
                TEMPLATE_COLUMNS,
                None,
            );
        }
        View::Logs => logs(f, body, app),
        View::Pods => pods(f, body, app),
    }

    f.render_widget(Paragraph::new(app.status.clone()).fg(Color::Yellow), status);
    f.render_widget(
        Paragraph::new(footer_text(app)).style(Style::new().reversed()),
        footer,
    );

    match &app.modal {
        Some(Modal::Confirm(c)) => {
            let area = centered(f.area(), 50, 5);
            f.render_widget(Clear, area);
            let p = Paragraph::new(vec![
                Line::from(c.question()).bold(),
                Line::from(""),
                Line::from("[y] yes   [n] no"),
            ])
            .centered()
            .block(Block::bordered().title(" Confirm "));
            f.render_widget(p, area);
        }
        Some(Modal::CreateVm(form)) => {
            let area = centered(f.area(), 60, FORM_FIELDS.len() as u16 + 4);
            f.render_widget(Clear, area);
            let lines: Vec<Line> = FORM_FIELDS
                .iter()
                .enumerate()
                .map(|(i, label)| {
                    let focused = i == form.focus;
                    let value = if focused {
                        format!("{}_", form.values[i])
                    } else {
                        form.values[i].clone()
                    };
                    let style = if focused {
                        Style::new().add_modifier(Modifier::REVERSED)
                    } else {
                        Style::new()
                    };
                    Line::from(vec![
                        Span::raw(format!("{label:>10}: ")),
                        Span::styled(value, style),
                    ])
                })
                .chain([
                    Line::from(""),
                    Line::from("Template, network: name or id; sizes like 512M, 20G").dim(),
                ])
                .collect();
            f.render_widget(
                Paragraph::new(lines).block(Block::bordered().title(" Create VM ")),
                area,
            );
        }
        Some(Modal::Resize(p)) => {
            let area = centered(f.area(), 50, 6);
            f.render_widget(Clear, area);
            let text = vec![
                Line::from(vec![
                    Span::raw("vCPUs memory: "),
                    Span::styled(format!("{}_", p.input), Style::new().reversed()),
                ]),
                Line::from(""),
                Line::from("e.g. 4 8G; a running VM may need a restart").dim(),
            ];
            f.render_widget(
                Paragraph::new(text)
                    .block(Block::bordered().title(format!(" Resize vm {} ", p.name))),
                area,
            );
        }
        Some(Modal::Console(c)) => {
            let area = body;
            f.render_widget(Clear, area);
            let screen = c.screen.screen();
            let (_, cols) = screen.size();
            let lines: Vec<Line> = screen.rows(0, cols).map(Line::from).collect();
            let state = if c.connected {
                "connected"
            } else {
                "connecting…"
            };
            let what = if c.exec { "exec" } else { "console" };
            let block = Block::bordered().title(format!(
                " {what} {} ({state}) — Ctrl+a t to detach ",
                c.vm_name
            ));
            f.render_widget(Paragraph::new(lines).block(block), area);
        }
        Some(Modal::PodLogs(v)) => {
            let area = body;
            f.render_widget(Clear, area);
            let height = area.height.saturating_sub(2) as usize;
            let start = v.lines.len().saturating_sub(height);
            let lines: Vec<Line> = v.lines[start..]
                .iter()
                .map(|l| Line::from(l.clone()))
                .collect();
            let state = match &v.ended {
                Some(why) => format!("ended: {why}"),
                None => "following".into(),
            };
            let block = Block::bordered().title(format!(
                " logs {}/{} ({state}) — Esc to close ",
                v.pod_name, v.container
            ));
            f.render_widget(Paragraph::new(lines).block(block), area);
        }
        Some(Modal::Help) => {
            let area = centered(f.area(), 64, 20);
            f.render_widget(Clear, area);
            let text = vec![
                Line::from("Tab/←/→ or 1-6   switch view"),
                Line::from("↑/↓ or j/k       select"),
                Line::from("r                reload the view"),
                Line::from("n                create a VM (VMs view)"),
                Line::from("s / o / x / R    start / stop / kill / restart (confirmed)"),
                Line::from("e                resize the VM: vCPUs and memory (confirmed)"),
                Line::from("d                delete the selected object (confirmed)"),
                Line::from("S / B / P        volume: snapshot / roll back / promote newest"),
                Line::from("Enter            open the VM's console; Ctrl+a t detaches"),
                Line::from("Pods: s/o/R      start / stop / restart the pod (confirmed)"),
                Line::from("Pods: c / l      next container / follow its logs (Esc closes)"),
                Line::from("Pods: Enter      a shell in the container; Ctrl+a t detaches"),
                Line::from("q                quit"),
                Line::from(""),
                Line::from("Lists update live from the API's event stream."),
                Line::from("Any key closes this help."),
            ];
            f.render_widget(
                Paragraph::new(text).block(Block::bordered().title(" Help ")),
                area,
            );
        }
        None => {}
    }
}

pub fn footer_text(app: &App) -> String {
    match &app.modal {
        Some(Modal::Confirm(_)) => " y confirm  n cancel".into(),
        Some(Modal::CreateVm(_)) => " Tab/↑↓ field  Enter create  Esc cancel".into(),
        Some(Modal::Resize(_)) => " Enter resize  Esc cancel".into(),
        Some(Modal::Console(c)) if c.exec => " typing goes to the shell  Ctrl+a t detach".into(),
        Some(Modal::Console(_)) => " typing goes to the VM  Ctrl+a t detach".into(),
        Some(Modal::PodLogs(_)) => " Esc close (new lines follow)".into(),
        Some(Modal::Help) => " any key: close".into(),
        None => match app.view {
            View::Vms => " q quit  Tab view  ↑↓ select  n new  s start  o stop  x kill  R restart  e resize  d delete  Enter console  r reload  ? help".into(),
            View::Logs => " q quit  Tab view  ↑↓ select  r reload  ? help".into(),
            View::Nodes => " q quit  Tab view  ↑↓ select  r reload  ? help".into(),
            View::Pods => " q quit  Tab view  ↑↓ select  c container  l logs  Enter shell  s start  o stop  R restart  d delete  r reload  ? help".into(),
            View::Storage => " q quit  Tab view  ↑↓ select  S snapshot  B rollback  P promote  d delete  r reload  ? help".into(),
            _ => " q quit  Tab view  ↑↓ select  d delete  r reload  ? help".into(),
        },
    }
}

const VM_COLUMNS: &[Column] = &[
    res::VMS.columns[1],
    res::VMS.columns[2],
    res::VMS.columns[3],
    res::VMS.columns[4],
    res::VMS.columns[5],
    res::VMS.columns[6],
    res::VMS.columns[7],
    res::VMS.columns[8],
    res::VMS.columns[10],
    res::VMS.columns[0],
];
const NODE_COLUMNS: &[Column] = &[
    res::NODES.columns[1],
    res::NODES.columns[2],
    res::NODES.columns[3],
    res::NODES.columns[5],
    res::NODES.columns[6],
    res::NODES.columns[7],
    res::NODES.columns[8],
    res::NODES.columns[0],
];
const NETWORK_COLUMNS: &[Column] = &[
    res::NETWORKS.columns[1],
    res::NETWORKS.columns[3],
    res::NETWORKS.columns[4],
    res::NETWORKS.columns[5],
    res::NETWORKS.columns[6],
    res::NETWORKS.columns[0],
];
const VOLUME_COLUMNS: &[Column] = &[
    res::VOLUMES.columns[1],
    res::VOLUMES.columns[2],
    res::VOLUMES.columns[4],
    res::VOLUMES.columns[5],
    res::VOLUMES.columns[7],
    res::VOLUMES.columns[0],
];
const TEMPLATE_COLUMNS: &[Column] = &[
    res::TEMPLATES.columns[1],
    res::TEMPLATES.columns[2],
    res::TEMPLATES.columns[3],
    res::TEMPLATES.columns[4],
    res::TEMPLATES.columns[5],
];

const POD_COLUMNS: &[Column] = &[
    res::PODS.columns[1],
    res::PODS.columns[2],
    res::PODS.columns[3],
    res::PODS.columns[4],
    res::PODS.columns[5],
    res::PODS.columns[6],
    res::PODS.columns[7],
    res::PODS.columns[8],
    res::PODS.columns[0],
];

/// The pods view: the pod list above, the selected pod's containers below (the selected
/// container marked: `l` follows its logs, Enter opens a shell in it).
fn pods(f: &mut Frame, area: Rect, app: &App) {
    let [top, bottom, charts] = Layout::vertical([
        Constraint::Percentage(40),
        Constraint::Min(4),
        Constraint::Length(USAGE_HEIGHT),
    ])
    .areas(area);
    table(f, top, "Pods", &app.pods, POD_COLUMNS, Some(app.selected()));
    // A pod's usage is its microVM's (hypervisor process and NICs), as for a VM.
    usage(f, charts, app, "of one CPU");
    let Some(pod) = app.selected_item() else {
        f.render_widget(Block::bordered().title(" Containers "), bottom);
        return;
    };
    let statuses = crate::output::lookup(pod, "status.containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // One row per container of the spec, with its status when the node reported one.
    let rows: Vec<Value> = super::app::pod_containers(pod)
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut row = statuses
                .iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(name.as_str()))
                .cloned()
                .unwrap_or_else(|| {
                    let image = pod
                        .pointer(&format!("/spec/containers/{i}/image"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    serde_json::json!({"name": name, "image": image})
                });
            row["name"] = Value::String(name.clone());
            row
        })
        .collect();
    let name = pod.get("name").and_then(Value::as_str).unwrap_or_default();
    let message = crate::output::text_at(pod, "status.message");
    let title = if message.is_empty() {
        format!("Containers of {name}")
    } else {
        format!("Containers of {name} — {message}")
    };
    table(
        f,
        bottom,
        &title,
        &rows,
        res::POD_CONTAINERS,
        Some(app.selected_pod_container_index()),
    );
}

fn table(
    f: &mut Frame,
    area: Rect,
    title: &str,
    items: &[Value],
    columns: &[Column],
    selected: Option<usize>,
) {
    let cells = Cells::for_items(items, columns);
    let header = Row::new(columns.iter().map(|c| Cell::from(c.header.to_uppercase()))).bold();
    let rows: Vec<Row> = items
        .iter()
        .map(|it| {
            let cells: Vec<Cell> = columns
                .iter()
                .map(|c| {
                    let text = cells.cell(it, c);
                    let style = phase_style(c.header, &text);
                    Cell::from(text).style(style)
                })
                .collect();
            Row::new(cells)
        })
        .collect();
    let widths: Vec<Constraint> = columns
        .iter()
        .map(|c| match c.fmt {
            // Container states (`web:running log:exited(1),restarts=2`) need room.
            crate::output::Fmt::Containers => Constraint::Min(40),
            _ => Constraint::Min(c.header.len() as u16 + 2),
        })
        .collect();
    let block = Block::bordered().title(format!(" {title} ({}) ", items.len()));
    let t = Table::new(rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::default();
    if selected.is_some() && !items.is_empty() {
        state.select(selected);
    }
    f.render_stateful_widget(t, area, &mut state);
    if items.is_empty() {
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width.saturating_sub(4),
            height: 1.min(area.height.saturating_sub(3)),
        };
        f.render_widget(Paragraph::new("nothing here yet").dim(), inner);
    }
}

/// Height of the usage charts under the VM, node and pod lists.
const USAGE_HEIGHT: u16 = 7;

/// Sparklines of the selected VM's, pod's or node's CPU % and network rate (both directions), one
/// point per stats reading (every 2 s), newest on the right.
fn usage(f: &mut Frame, area: Rect, app: &App, cpu_of: &str) {
    let selected = app.selected_item();
    let name = selected
        .map(|v| crate::output::text_at(v, "name"))
        .unwrap_or_default();
    let block = Block::bordered().title(format!(" Usage · {name} "));
    let series = selected
        .map(|v| crate::output::text_at(v, "id"))
        .and_then(|id| app.usage.series.get(&id))
        .filter(|s| !s.cpu_percent.is_empty());
    let Some(series) = series else {
        let why = if selected.is_none() {
            "nothing selected"
        } else {
            "no usage yet: read from its node every 2 s while it runs"
        };
        f.render_widget(Paragraph::new(why).block(block), area);
        return;
    };
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [cpu_area, net_area] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    let last = |s: &std::collections::VecDeque<u64>| s.back().copied().unwrap_or(0);
    let width = |a: Rect| a.width.saturating_sub(2) as usize;
    let tail = |s: &std::collections::VecDeque<u64>, n: usize| -> Vec<u64> {
        s.iter().skip(s.len().saturating_sub(n)).copied().collect()
    };
    let cpu = Sparkline::default()
        .block(Block::bordered().title(format!(" CPU {}% {cpu_of} ", last(&series.cpu_percent))))
        .max(100)
        .style(Style::new().fg(Color::Green))
        .data(tail(&series.cpu_percent, width(cpu_area)));
    f.render_widget(cpu, cpu_area);
    let net = Sparkline::default()
        .block(Block::bordered().title(format!(
            " Net {}/s ",
            crate::output::human_bytes(last(&series.net_bytes_per_sec))
        )))
        .style(Style::new().fg(Color::Cyan))
        .data(tail(&series.net_bytes_per_sec, width(net_area)));
    f.render_widget(net, net_area);
}

fn phase_style(header: &str, text: &str) -> Style {
    if header != "phase" && header != "state" {
        return Style::new();
    }
    match text {
        "running" | "ready" | "online" => Style::new().fg(Color::Green),
        "failed" | "error" | "offline" => Style::new().fg(Color::Red),
        "pending" | "importing" | "starting" | "stopping" => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    }
}

fn logs(f: &mut Frame, area: Rect, app: &App) {
    let lines: Vec<Line> = app
        .logs
        .iter()
        .map(|l| Line::from(crate::commands::logs::log_line(l)))
        .collect();
    let n = lines.len();
    let height = area.height.saturating_sub(2) as usize;
    let sel = app.selected();
    let scroll = sel.saturating_sub(height.saturating_sub(1));
    let p = Paragraph::new(lines)
        .scroll((scroll as u16, 0))
        .block(Block::bordered().title(format!(" Audit log ({n}) ")));
    f.render_widget(p, area);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}
