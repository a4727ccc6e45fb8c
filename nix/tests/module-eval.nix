# Evaluates nix/modules/mvirt.nix itself, with every service enabled and every setting at its
# default (plus a join, its token file and the CA fingerprint for the API), and returns the systemd services it defines.
# nixpkgs cannot be fetched on the machines the tests run on, so `lib` and `pkgs` here are
# TEST DOUBLES: the few nixpkgs functions the module calls, reduced to what they return for
# plain values (mkIf/mkMerge/mkDefault resolved eagerly, option types as names). They check the
# module's own logic - which flags reach ExecStart, KillMode, ordering, credentials - not the
# NixOS module system; the NixOS VM test (nix/tests/vm.nix) does that where Nix can run.
# scripts/test-deploy.sh checks every flag on these ExecStart lines against the daemon's --help.
let
  lib = rec {
    mkOption = x: x // { _type = "option"; };
    mkEnableOption = d: { _type = "option"; default = false; };
    types = { bool = "bool"; str = "str"; int = "int"; path = "path"; package = "package";
      listOf = t: "listOf"; nullOr = t: "nullOr"; oneOf = l: "oneOf"; attrsOf = t: "attrsOf"; };
    literalExpression = x: x;
    optionalAttrs = c: a: if c then a else { };
    mapAttrs = builtins.mapAttrs;
    mkIf = c: x: if c then x else { };
    recursiveUpdate = a: b: a // builtins.mapAttrs (n: v: if builtins.isAttrs v && a ? ${n} && builtins.isAttrs a.${n} then recursiveUpdate a.${n} v else v) b;
    mkMerge = l: builtins.foldl' recursiveUpdate { } l;
    mkDefault = x: x;
    mkForce = x: x;
    nameValuePair = name: value: { inherit name value; };
    listToAttrs = builtins.listToAttrs;
    unique = l: builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] l;
    concatMap = builtins.concatMap;
    foldl' = builtins.foldl';
    escapeShellArgs = l: builtins.concatStringsSep " " (map (x: "'${x}'") l);
    concatMapStrings = f: l: builtins.concatStringsSep "" (map f l);
  };
  pkgs = { writeShellScript = name: text: "/nix/store/script-${name}:\n${text}"; qemu-utils = "qemu-utils";
    coreutils = "coreutils"; iproute2 = "iproute2"; nftables = "nftables"; qemu_kvm = "qemu"; cloud-hypervisor = "ch";
    dosfstools = "dosfstools"; mtools = "mtools"; util-linux = "util-linux"; OVMF = { fd = "/nix/store/ovmf"; };
    vhost-device-vsock = "vhost-device-vsock"; };
  module = import ../modules/mvirt.nix;
  m = module { inherit config lib pkgs; };
  opts = m.options.services.mvirt;
  keys = [ "log" "zfs" "ebpf" "vmm" "api" "node" ];
  config = {
    boot.zfs.package = "zfs";
    services.mvirt = builtins.listToAttrs (map (k: { name = k; value = {
      enable = true;
      package = "/nix/store/${k}";
      extraFlags = [ ];
      settings = builtins.mapAttrs (n: o: o.default) opts.${k}.settings // (if k == "api" then { joinTokenFile = "/run/keys/jt"; join = "https://10.0.0.1:8080"; caFingerprint = "sha256:${builtins.concatStringsSep "" (builtins.genList (_: "ab") 32)}"; } else { });
    }; }) keys) // { packages = { mvirt = "/nix/store/mvirt"; mvirt-ui = "/nix/store/ui"; }; openFirewall = true; };
  };
in
{
  services = builtins.mapAttrs
    (n: s: {
      inherit (s.serviceConfig) ExecStart KillMode;
      inherit (s) after wants;
      credentials = s.serviceConfig.LoadCredential or [ ];
      user = s.serviceConfig.User or null;
    })
    m.config.systemd.services;
  firewall = m.config.networking.firewall;
  kernelModules = m.config.boot.kernelModules;
  sysctl = m.config.boot.kernel.sysctl;
  tmpfiles = m.config.systemd.tmpfiles.rules;
}
