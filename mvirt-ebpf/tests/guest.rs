//! End to end: a real Linux guest (QEMU TCG, the shared standard test guest) on a NIC's TAP
//! gets its address with udhcpc from the daemon's DHCP server, pings the gateway, and pings a
//! second NIC of its network through the eBPF redirect (the second "VM" is the test, answering
//! echo requests on its TAP).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use etherparse::PacketBuilder;
use mvirt_testsupport::netns::TestTap;

/// Kills QEMU when the test ends, also on failure.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_guest_gets_its_address_by_dhcp_and_pings_the_gateway_and_a_second_nic() {
    let mut h = Harness::start().await;
    let net = h.network("10.90.0.0/24", false).await;
    let guest_mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let vm = h.nic(&net, guest_mac, "10.90.0.10", &[]).await;
    let peer = h.nic(&net, mac(0x92), "10.90.0.20", &[]).await;
    let mut peer_tap = TestTap::open(&peer.tap_name);

    let guest = tokio::task::spawn_blocking(mvirt_testsupport::guest::standard_guest)
        .await
        .expect("guest fixture");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm",
        "-accel",
        "tcg,tb-size=256",
        "-cpu",
        "max",
        "-m",
        "256",
        "-smp",
        "1",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&guest.kernel)
    .arg("-initrd")
    .arg(&guest.initramfs)
    .args(["-append", &format!("{} mvirt.ignore_acpi", guest.cmdline)])
    .args([
        "-netdev",
        &format!(
            "tap,id=n0,ifname={},script=no,downscript=no,vhost=off",
            vm.tap_name
        ),
        "-device",
        &format!("virtio-net-device,netdev=n0,mac={}", mac_str(&guest_mac)),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .expect("start qemu-system-x86_64 (scripts/setup.sh installs it)");
    let mut stdin = child.stdin.take().expect("qemu stdin");
    let stdout = child.stdout.take().expect("qemu stdout");
    let _qemu = KillOnDrop(child);
    let console = Arc::new(Mutex::new(String::new()));
    {
        let console = console.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut c = console.lock().unwrap();
                c.push_str(&line);
                c.push('\n');
            }
        });
    }
    let seen = |marker: &str| console.lock().unwrap().contains(marker);
    let dump = || console.lock().unwrap().clone();

    let wait_for = |marker: &str, secs: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !seen(marker) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {marker:?} on the console within {secs}s; console:\n{}",
                dump()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    tokio::task::block_in_place(|| wait_for("MVIRT-GUEST-BOOTED", 120));
    // The standard guest runs udhcpc in the background; ask the shell until eth0 has the
    // address (the quotes keep the echoed command line from matching the marker).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !seen("LEASE-OK") {
        if std::time::Instant::now() > deadline {
            let stats = h.stats(&vm).await;
            panic!(
                "no DHCP lease; datapath stats of the guest's NIC: {stats:?}; console:\n{}",
                dump()
            );
        }
        writeln!(
            stdin,
            "ip -4 addr show dev eth0 | grep -q 'inet 10.90.0.10/32' && echo LEASE-\"\"OK"
        )
        .unwrap();
        stdin.flush().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    writeln!(stdin, "ip route; echo ROUTES-\"\"DONE").unwrap();
    tokio::task::block_in_place(|| wait_for("ROUTES-DONE", 30));
    assert!(
        seen("default via 169.254.0.1"),
        "default route via the gateway; console:\n{}",
        dump()
    );
    writeln!(stdin, "ping -c 2 -W 5 169.254.0.1 && echo GW-PING-OK").unwrap();
    writeln!(stdin, "ping -c 1 -W 20 10.90.0.20 && echo PEER-PING-OK").unwrap();
    stdin.flush().unwrap();
    tokio::task::block_in_place(|| wait_for("GW-PING-OK", 60));

    // Answer the guest's echo request on the peer's TAP.
    let request = tokio::task::block_in_place(|| {
        peer_tap.read_matching(Duration::from_secs(60), |f| {
            let s = seen4(f)?;
            (s.proto == 1 && s.sport == 8 && s.src == v4("10.90.0.10")).then_some(f.to_vec())
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "the guest's ping did not reach the peer NIC; console:\n{}",
            dump()
        )
    });
    let p = etherparse::SlicedPacket::from_ethernet(&request).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    let etherparse::Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
        panic!("not an echo request")
    };
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(mac(0x92), GATEWAY_MAC)
        .ipv4(v4("10.90.0.20").octets(), v4("10.90.0.10").octets(), 64)
        .icmpv4_echo_reply(echo.id, echo.seq)
        .write(&mut reply, icmp.payload())
        .unwrap();
    peer_tap.write_frame(&reply);
    tokio::task::block_in_place(|| wait_for("PEER-PING-OK", 60));
}
