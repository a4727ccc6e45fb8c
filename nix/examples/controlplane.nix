# Example: member `member` (1, 2 or 3) of a three-member control plane on 10.0.0.1-3. Member 1
# bootstraps the cluster on its first start and writes the admin token to
# /var/lib/mvirt/api/admin.token; members 2 and 3 join it with a single-use join token
# (`POST /v1/controlplane/join-tokens` on member 1) that the operator copies to
# /run/keys/mvirt-join-token, and member 1's CA certificate to /etc/mvirt/ca.pem, before their
# first start (docs/deploy.md).
{ member }:
{ lib, ... }:
let
  address = "10.0.0.${toString member}";
in
{
  networking.hostName = "cp${toString member}";

  services.mvirt = {
    openFirewall = true; # REST 8080, NodeService 50056, Raft 6001
    log.enable = true; # audit entries of the API and GET /v1/logs
    api = {
      enable = true;
      settings = {
        advertiseHost = address;
      } // lib.optionalAttrs (member != 1) {
        join = "https://10.0.0.1:8080";
        joinTokenFile = "/run/keys/mvirt-join-token";
        # The cluster CA the member joined must present: member 1's tls/ca.pem, copied here
        # (or caFingerprint = "sha256:..." from the join-token answer).
        caFile = "/etc/mvirt/ca.pem";
      };
    };
  };

  # Hardware of the example (replace with the host's hardware-configuration.nix).
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  networking.interfaces.eth0.ipv4.addresses = [{ inherit address; prefixLength = 24; }];
  system.stateVersion = lib.trivial.release;
}
