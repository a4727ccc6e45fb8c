# mvirt's packages, built with crane: one per binary (dependencies compiled once and shared),
# the eBPF object, the web UI when mvirt-ui/ exists, and `mvirt-all` with every binary.
# Pods: `mvirt-one` (the microVM's init), `mvirt-pod-image` (builds the pod artefacts) and
# `mvirt-pod-artefacts`: the artefacts themselves (vmlinuz, initramfs.img, manifest.json) made
# by mvirt-pod-image from nixpkgs' kernel (`--kernel-dir`, instead of the Debian package it
# fetches with apt elsewhere). vhost-device-vsock, which QEMU pod microVMs need, is nixpkgs'
# own package (the module puts it on mvirt-vmm's PATH).
{ pkgs, crane, src, podKernel ? pkgs.linuxPackages.kernel }:
let
  inherit (pkgs) lib;
  craneLib = crane.mkLib pkgs;
  version = (builtins.fromTOML (builtins.readFile (src + "/Cargo.toml"))).workspace.package.version;

  # What cargo reads: Rust sources and manifests (also .cargo/config.toml: SQLite is built with
  # HAVE_FDATASYNC) and every non-Rust file a crate compiles in (protos, the eBPF C source, the
  # API docs page, vendored openraft). The list is nix/cargo-src.nix; scripts/test-deploy.sh
  # evaluates that filter for every file an include_str!/include_bytes! or a build.rs names.
  cargoSrc = lib.cleanSourceWith {
    inherit src;
    filter = path: type:
      craneLib.filterCargoSources path type || (import ./cargo-src.nix).filter src path type;
  };

  commonArgs = {
    src = cargoSrc;
    pname = "mvirt";
    inherit version;
    strictDeps = true;
    nativeBuildInputs = [ pkgs.protobuf pkgs.clang pkgs.pkg-config ];
    buildInputs = [ pkgs.libbpf pkgs.linuxHeaders ];
    # mvirt-ebpf's build.rs compiles bpf/datapath.c with `clang -target bpf`: the compiler
    # wrapper's hardening flags (stack protector, zero-call-used-regs) do not exist for BPF.
    hardeningDisable = [ "all" ];
    MVIRT_CLANG = "${pkgs.clang}/bin/clang";
    # The UAPI and libbpf headers for `-target bpf` (build.rs defaults to Debian's multiarch dir).
    MVIRT_BPF_CFLAGS = "-I${pkgs.libbpf}/include -I${pkgs.linuxHeaders}/include";
    # The tests need root, zfs-fuse, QEMU and TAP devices: scripts/test.sh runs them.
    doCheck = false;
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  binary = crate: bin: craneLib.buildPackage (commonArgs // {
    inherit cargoArtifacts;
    pname = bin;
    cargoExtraArgs = "--locked -p ${crate} --bin ${bin}";
    meta.mainProgram = bin;
  });

  binaries = {
    mvirt-api = binary "mvirt-api" "mvirt-api";
    mvirt-node = binary "mvirt-node" "mvirt-node";
    mvirt-vmm = binary "mvirt-vmm" "mvirt-vmm";
    mvirt-zfs = binary "mvirt-zfs" "mvirt-zfs";
    mvirt-ebpf = binary "mvirt-ebpf" "mvirt-ebpf";
    mvirt-log = binary "mvirt-log" "mvirt-log";
    mvirt = binary "mvirt-cli" "mvirt";
    mvirt-one = binary "mvirt-one" "mvirt-one";
    mvirt-pod-image = binary "mvirt-podimage" "mvirt-pod-image";
  };

  # The datapath object on its own, for inspection with bpftool (mvirt-ebpf embeds its own copy).
  mvirt-ebpf-objects = pkgs.stdenv.mkDerivation {
    pname = "mvirt-ebpf-objects";
    inherit version;
    src = src + "/mvirt-ebpf/bpf";
    nativeBuildInputs = [ pkgs.llvmPackages.clang-unwrapped ];
    dontConfigure = true;
    buildPhase = ''
      clang -target bpf -O2 -g -Wall -Werror \
        -I${pkgs.libbpf}/include -I${pkgs.linuxHeaders}/include \
        -c datapath.c -o datapath.o
    '';
    installPhase = ''
      install -D -m 0644 datapath.o $out/lib/mvirt/bpf/datapath.o
    '';
  };

  # The web UI, built with npm from its committed lockfile, installed where mvirt-api's
  # --ui-dir expects it (share/mvirt/ui).
  ui = lib.optionalAttrs (builtins.pathExists (src + "/mvirt-ui/package.json")) {
    mvirt-ui = pkgs.buildNpmPackage {
      pname = "mvirt-ui";
      inherit version;
      src = src + "/mvirt-ui";
      npmDeps = pkgs.importNpmLock { npmRoot = src + "/mvirt-ui"; };
      npmConfigHook = pkgs.importNpmLock.npmConfigHook;
      installPhase = ''
        runHook preInstall
        mkdir -p $out/share/mvirt
        cp -r dist $out/share/mvirt/ui
        runHook postInstall
      '';
    };
  };

  # The pod boot artefacts, by mvirt-podimage's recipe (mvirt-podimage/README.md): `podKernel`'s
  # bzImage as vmlinuz; an uncompressed initramfs with this flake's mvirt-one as /init, its
  # libraries at the /nix/store paths ldd names, the virtio/vsock/overlay/button/evdev modules
  # from the kernel's lib/modules (dependencies first; built-in ones skipped; a module the kernel
  # lacks fails the build with its name) and nixpkgs' CA bundle; manifest.json with the digests
  # mvirt-vmm checks. Installed as lib/mvirt/pod-artefacts (the module's default podArtefacts).
  mvirt-pod-artefacts = pkgs.runCommand "mvirt-pod-artefacts-${version}"
    {
      # strip (binutils), ldd (glibc's bin output), xz/zstd for compressed modules.
      nativeBuildInputs = [ pkgs.binutils pkgs.glibc.bin pkgs.xz pkgs.zstd ];
    } ''
    mkdir -p $out/lib/mvirt/pod-artefacts
    ${binaries.mvirt-pod-image}/bin/mvirt-pod-image build \
      --out $out/lib/mvirt/pod-artefacts \
      --kernel-dir ${podKernel} \
      --mvirt-one ${binaries.mvirt-one}/bin/mvirt-one \
      --ca-bundle ${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt \
      --cache-dir "$TMPDIR/pod-image-cache"
    ${binaries.mvirt-pod-image}/bin/mvirt-pod-image verify --out $out/lib/mvirt/pod-artefacts
  '';
in
binaries // ui // {
  inherit mvirt-ebpf-objects mvirt-pod-artefacts;
  # nixpkgs' build, re-exported so a host without the module can install it next to mvirt-vmm.
  inherit (pkgs) vhost-device-vsock;
  mvirt-all = pkgs.symlinkJoin {
    name = "mvirt-all-${version}";
    paths = builtins.attrValues binaries;
  };
}
