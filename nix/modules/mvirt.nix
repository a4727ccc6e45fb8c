# services.mvirt.*: mvirt's daemons as systemd services on NixOS.
#
# Every service, its flags (`settings`), its ordering and its systemd hardening come from
# deploy/services.toml through nix/lib.nix — the same description the Debian units are
# generated from, so the two cannot drift. This file only maps that description onto NixOS
# options and adds what is NixOS-specific: packages, PATHs, the firewall, ZFS support.
# No flag is spelled here: the argv comes from `mvirtLib.argv` (scripts/test-deploy.sh checks
# each one against the daemon's `--help`, and that this file names none).
#
# Packages: the flake sets `services.mvirt.packages` to its own builds (nixosModules.default);
# without the flake, set it to an attribute set with one derivation per binary name.
{ config, lib, pkgs, ... }:
let
  mvirtLib = import ../lib.nix;
  inherit (mvirtLib) services keys;
  cfg = config.services.mvirt;
  enabled = builtins.filter (key: cfg.${key}.enable) keys;
  anyEnabled = enabled != [ ];
  listenOf = key: cfg.${key}.settings.listen;

  # Programs each daemon runs (it calls them with argv, found on PATH).
  servicePath = {
    log = [ ];
    zfs = [ config.boot.zfs.package pkgs.qemu-utils pkgs.coreutils ];
    ebpf = [ pkgs.iproute2 pkgs.nftables ];
    # vhost-device-vsock: the vsock backend mvirt-vmm starts beside each QEMU pod microVM.
    vmm = [ pkgs.qemu_kvm pkgs.cloud-hypervisor pkgs.dosfstools pkgs.mtools pkgs.util-linux pkgs.vhost-device-vsock ];
    api = [ ];
    node = [ ];
  };

  settingOption = key: name: setting:
    let
      kind = mvirtLib.kindOf setting;
      doc = "${setting.description} (`${setting.flag}`).";
    in
    if kind == "switch" then
      lib.mkOption { type = lib.types.bool; default = setting.default or false; description = doc; }
    else if kind == "list" then
      lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = setting.default or [ ];
        example = setting.example or null;
        description = doc;
      }
    else if kind == "credential" then
      lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        example = setting.example or null;
        description = "${doc} Loaded as a systemd credential (readable by the service whoever owns the file); the daemon gets the path of that copy, so the secret is never on its command line or in its environment. Use a path outside the Nix store.";
      }
    else
      lib.mkOption ({
        type = lib.types.nullOr (lib.types.oneOf [ lib.types.str lib.types.int ]);
        default = mvirtLib.defaultOf listenOf setting;
        description = doc + " `null`: not passed (the daemon's own default applies).";
      } // lib.optionalAttrs (setting ? endpoint_of) {
        defaultText = lib.literalExpression
          ''"unix:''${config.services.mvirt.${setting.endpoint_of}.settings.listen}"'';
      } // lib.optionalAttrs (setting ? example) { inherit (setting) example; });

  serviceOptions = key: svc: {
    enable = lib.mkEnableOption svc.description;
    package = lib.mkOption {
      type = lib.types.package;
      default = cfg.packages.${svc.binary};
      defaultText = lib.literalExpression "config.services.mvirt.packages.${svc.binary}";
      description = "The package providing `bin/${svc.binary}`.";
    };
    settings = lib.mapAttrs (settingOption key) svc.settings;
    extraFlags = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "More flags for `${svc.binary}` (see its `--help`).";
    };
  };

  mkService = key: svc:
    let
      c = cfg.${key};
      args = mvirtLib.argv key c.settings ++ c.extraFlags;
      credentials = mvirtLib.credentials key c.settings;
    in
    {
      description = svc.description;
      wantedBy = [ "multi-user.target" ];
      after = map mvirtLib.unitName svc.after;
      wants = map mvirtLib.unitName svc.wants;
      path = servicePath.${key};
      serviceConfig = svc.hardening // {
        Type = "exec";
        ExecStart = "${c.package}/bin/${svc.binary} ${lib.escapeShellArgs args}";
        Restart = "on-failure";
        RestartSec = "2s";
        KillMode = svc.kill_mode;
        StateDirectory = svc.state_directory;
      } // lib.optionalAttrs (svc ? user) {
        User = svc.user;
        Group = svc.group;
      } // lib.optionalAttrs (credentials != [ ]) {
        LoadCredential = credentials;
      };
    };

  ports = proto: lib.concatMap
    (key: map (p: p.port) (builtins.filter (p: p.proto == proto)
      (mvirtLib.firewallPorts key cfg.${key}.settings)))
    enabled;
in
{
  options.services.mvirt = lib.mapAttrs serviceOptions services // {
    packages = lib.mkOption {
      type = lib.types.attrsOf lib.types.package;
      description = "One package per mvirt binary (`mvirt-api`, ..., `mvirt`), e.g. the flake's `packages.<system>`.";
    };
    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Open the ports of the enabled services that other hosts reach: the API's REST, NodeService
        and Raft ports, the agent's console relay, mvirt-ebpf's VXLAN port.
      '';
    };
  };

  config = lib.mkIf anyEnabled (lib.mkMerge [
    {
      users.groups.${mvirtLib.description.common.group} = { };
      users.users.${mvirtLib.description.common.user} = {
        isSystemUser = true;
        group = mvirtLib.description.common.group;
        home = "/var/lib/mvirt";
        description = mvirtLib.description.common.user_description;
      };
      systemd.tmpfiles.rules = mvirtLib.description.common.tmpfiles;
      environment.systemPackages = [ cfg.packages.mvirt ];
      systemd.services = lib.listToAttrs (map
        (key: lib.nameValuePair services.${key}.binary (mkService key services.${key}))
        enabled);
      boot.kernelModules = lib.unique (lib.concatMap (key: services.${key}.kernel_modules) enabled);
      boot.kernel.sysctl = lib.foldl' (acc: key: acc // (services.${key}.sysctl or { })) { } enabled;
      networking.firewall = lib.mkIf cfg.openFirewall {
        allowedTCPPorts = ports "tcp";
        allowedUDPPorts = ports "udp";
      };
    }
    (lib.mkIf (cfg.api.enable && cfg.packages ? mvirt-ui) {
      services.mvirt.api.settings.uiDir = lib.mkDefault "${cfg.packages.mvirt-ui}/share/mvirt/ui";
    })
    (lib.mkIf cfg.zfs.enable {
      boot.supportedFilesystems = [ "zfs" ];
    })
    (lib.mkIf cfg.vmm.enable {
      services.mvirt.vmm.settings.qemuFirmware = lib.mkDefault "${pkgs.OVMF.fd}/FV/OVMF.fd";
      # The packaged default is where the Debian package mvirt-pod-artefacts installs them; on
      # NixOS the flake's mvirt-pod-artefacts package (nixpkgs' kernel), or without it
      # mvirt-vmm's own default, where they can be built on the host (docs/deploy.md, "Pods").
      services.mvirt.vmm.settings.podArtefacts = lib.mkDefault (
        if cfg.packages ? mvirt-pod-artefacts
        then "${cfg.packages.mvirt-pod-artefacts}/lib/mvirt/pod-artefacts"
        else "/var/lib/mvirt/pod-artefacts");
    })
  ]);
}
