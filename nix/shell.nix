# `nix develop`: what building and testing mvirt needs (tests also want root and zfs-fuse or
# kernel ZFS; see ../../shared/TESTING.md for what the test machines provide).
{ pkgs }:
pkgs.mkShell {
  packages = with pkgs; [
    cargo rustc clippy rustfmt rust-analyzer
    protobuf pkg-config
    clang llvm libbpf bpftools
    qemu_kvm qemu-utils OVMF dosfstools mtools cpio busybox
    zfs iproute2 nftables iperf3 ethtool
    sqlite curl jq
    nodejs_20
    python3
    nix
  ];
  MVIRT_CLANG = "${pkgs.clang}/bin/clang";
  hardeningDisable = [ "all" ];
}
