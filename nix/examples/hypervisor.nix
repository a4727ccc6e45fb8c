# Example: a hypervisor host (10.0.0.11) of the cluster in docs/deploy.md. It runs mvirt-log,
# mvirt-zfs (pool `tank`, mounted at /tank), mvirt-ebpf, mvirt-vmm and the agent, which reaches
# the control plane at 10.0.0.1 over TLS with a node token the operator put in
# /etc/mvirt/node.token and the cluster CA in /etc/mvirt/ca.pem.
{ lib, ... }:
{
  networking.hostName = "host-a";
  networking.hostId = "8425e349"; # ZFS wants a unique host id
  boot.zfs.extraPools = [ "tank" ];

  services.mvirt = {
    openFirewall = true; # console relay (50057/tcp) and VXLAN (4789/udp)
    log.enable = true;
    zfs = {
      enable = true;
      settings.pool = "tank";
    };
    ebpf = {
      enable = true;
      settings.uplink = "eno1"; # public networks are SNATed to this interface
    };
    vmm = {
      enable = true;
      settings.allowedDirs = [ "/var/lib/mvirt" "/tank" ];
    };
    node = {
      enable = true;
      settings = {
        api = "https://10.0.0.1:50056";
        # The cluster CA, copied from a member's /var/lib/mvirt/api/tls/ca.pem (or
        # caFingerprint = "sha256:..." to fetch and pin it on the first start).
        caFile = "/etc/mvirt/ca.pem";
        tokenFile = "/etc/mvirt/node.token";
        address = "10.0.0.11";
        labels = [ "zone=a" ];
      };
    };
  };

  # Hardware of the example (replace with the host's hardware-configuration.nix).
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  networking.interfaces.eno1.ipv4.addresses = [{ address = "10.0.0.11"; prefixLength = 24; }];
  system.stateVersion = lib.trivial.release;
}
