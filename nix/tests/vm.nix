# NixOS test: a control-plane member (`cp`) and a hypervisor host (`host`), both configured
# only through services.mvirt.*, over TLS (the cluster CA cp creates at bootstrap, copied to
# the host as an operator would); the host's agent registers with a node token, and a VM
# created through REST boots under QEMU (TCG: nested KVM is not guaranteed) and survives a
# restart of mvirt-vmm. Runs where Nix and KVM exist: `nix build .#checks.x86_64-linux.vm`.
{ pkgs, module }:
let
  # A tiny guest: the NixOS test kernel and a busybox initramfs that prints a marker.
  guestInit = pkgs.writeScript "init" ''
    #!/bin/busybox sh
    /bin/busybox --install -s /bin
    mount -t proc proc /proc
    echo MVIRT-GUEST-UP
    exec sleep 1000000
  '';
  guestInitrd = pkgs.makeInitrd {
    contents = [
      { object = "${pkgs.pkgsStatic.busybox}/bin/busybox"; symlink = "/bin/busybox"; }
      { object = guestInit; symlink = "/init"; }
    ];
  };
  guestKernel = "${pkgs.linuxPackages.kernel}/bzImage";
in
pkgs.testers.runNixOSTest {
  name = "mvirt-vm";

  nodes.cp = { ... }: {
    imports = [ module ];
    virtualisation.memorySize = 1024;
    environment.systemPackages = [ pkgs.curl pkgs.jq ];
    services.mvirt = {
      openFirewall = true;
      log.enable = true;
      api = {
        enable = true;
        settings.advertiseHost = "cp";
      };
    };
  };

  nodes.host = { config, lib, ... }: {
    imports = [ module ];
    networking.hostId = "8425e349";
    virtualisation = {
      memorySize = 2048;
      cores = 2;
      emptyDiskImages = [ 4096 ];
    };
    services.mvirt = {
      openFirewall = true;
      log.enable = true;
      zfs.enable = true; # pool `tank` (mounted at /tank) on the empty disk, made below
      ebpf.enable = true;
      vmm = {
        enable = true;
        settings.qemuAccel = "tcg";
      };
      node = {
        enable = true;
        settings = {
          api = "https://cp:50056";
          caFile = "/etc/mvirt/ca.pem";
          address = config.networking.primaryIPAddress;
          tokenFile = "/etc/mvirt/node.token";
        };
      };
    };
    # The agent starts once the test has put its node token and the CA in place.
    systemd.services.mvirt-node.wantedBy = lib.mkForce [ ];

    systemd.services.mvirt-test-setup = {
      description = "test pool and template files";
      wantedBy = [ "multi-user.target" ];
      requiredBy = [ "mvirt-zfs.service" ];
      before = [ "mvirt-zfs.service" ];
      path = [ config.boot.zfs.package pkgs.coreutils ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = ''
        zpool list tank || zpool create -f tank /dev/vdb
        mkdir -p /var/lib/mvirt/images
        cp ${guestKernel} /var/lib/mvirt/images/vmlinuz
        cp ${guestInitrd}/initrd /var/lib/mvirt/images/initramfs.img
        truncate -s 64M /var/lib/mvirt/images/disk.raw
      '';
    };
  };

  testScript = ''
    import json, shlex

    start_all()
    cp.wait_for_unit("mvirt-api.service")
    ca_file = "/var/lib/mvirt/api/tls/ca.pem"
    url = "https://localhost:8080"
    cp.wait_until_succeeds(f"curl -sf --cacert {ca_file} {url}/v1/health")
    token = cp.succeed("cat /var/lib/mvirt/api/admin.token").strip()
    ca = cp.succeed(f"cat {ca_file}")

    def api(method, path, body=None):
        cmd = f"curl -sSf --cacert {ca_file} -X {method} -H 'Authorization: Bearer {token}' {url}{path}"
        if body is not None:
            cmd += " -H 'Content-Type: application/json' --data " + shlex.quote(json.dumps(body))
        return json.loads(cp.succeed(cmd))

    node_token = api("POST", "/v1/tokens", {"name": "hosts", "role": "node"})["token"]
    host.wait_for_unit("mvirt-vmm.service")
    host.succeed(f"install -D -m 0600 /dev/null /etc/mvirt/node.token && printf %s {node_token} > /etc/mvirt/node.token")
    host.succeed(f"printf %s {shlex.quote(ca)} > /etc/mvirt/ca.pem")
    host.systemctl("start mvirt-node.service")
    cp.wait_until_succeeds(
        f"curl -sf --cacert {ca_file} -H 'Authorization: Bearer {token}' {url}/v1/nodes"
        " | jq -e '.items[0].status.state == \"online\"'"
    )

    net = api("POST", "/v1/networks", {"name": "net", "spec": {"ipv4_prefix": "10.42.0.0/24"}})
    tpl = api("POST", "/v1/templates", {"name": "tiny", "spec": {
        "source_url": "file:///var/lib/mvirt/images/disk.raw", "format": "raw",
        "kernel_url": "file:///var/lib/mvirt/images/vmlinuz",
        "initramfs_url": "file:///var/lib/mvirt/images/initramfs.img",
        "cmdline": "console=ttyS0 panic=-1"}})
    vm = api("POST", "/v1/vms", {"name": "vm1", "spec": {
        "vcpus": 1, "memory_bytes": 268435456,
        "root_volume": {"template_id": tpl["id"], "size_bytes": 67108864},
        "network_interfaces": [{"network_id": net["id"]}]}})
    cp.wait_until_succeeds(
        f"curl -sf --cacert {ca_file} -H 'Authorization: Bearer {token}' {url}/v1/vms/{vm['id']}"
        " | jq -e '.status.phase == \"running\"'",
        timeout=600,
    )
    host.wait_until_succeeds(f"grep -q MVIRT-GUEST-UP /var/lib/mvirt/vmm/run/{vm['id']}/console.log", timeout=300)

    # KillMode=process: restarting mvirt-vmm keeps the guest, and the new vmm adopts it.
    pid = host.succeed("pgrep -f 'qemu-system.*mvirt'").strip()
    host.systemctl("restart mvirt-vmm.service")
    host.wait_for_unit("mvirt-vmm.service")
    assert host.succeed("pgrep -f 'qemu-system.*mvirt'").strip() == pid
    cp.wait_until_succeeds(
        f"curl -sf --cacert {ca_file} -H 'Authorization: Bearer {token}' {url}/v1/vms/{vm['id']}"
        " | jq -e '.status.phase == \"running\"'"
    )
  '';
}
