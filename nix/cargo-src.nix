# Which files of this checkout the crane build (nix/packages.nix) copies into the store for
# cargo: Rust sources and manifests (what crane's filterCargoSources keeps: *.rs, *.toml,
# Cargo.lock, so also .cargo/config.toml) and every non-Rust file a crate compiles in.
# Builtins only (no nixpkgs): scripts/test-deploy.sh evaluates this very filter
# (deploy/tests/check_cargo_src.py) for every file an include_str!/include_bytes!/include!
# names and every file a build.rs reads, and fails on one it would drop.
let
  # Kept wherever they are.
  suffixes = [
    ".rs"
    ".toml"
    ".proto" # tonic-prost-build in the daemons' build.rs
    ".c" # mvirt-ebpf/bpf/datapath.c, compiled by mvirt-ebpf's build.rs
  ];
  names = [ "Cargo.lock" ];
  # Kept with everything under them (paths relative to the checkout).
  directories = [
    "vendor" # the vendored openraft crate (its own include_str!s, README and all)
    "mvirt-api/src/rest/docs" # include_str!: the API docs page (index.html, docs.js, docs.css)
  ];

  hasSuffix = suffix: s:
    let
      ls = builtins.stringLength s;
      lx = builtins.stringLength suffix;
    in
    ls >= lx && builtins.substring (ls - lx) lx s == suffix;
  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  baseName = rel: builtins.baseNameOf rel;
  any = f: l: builtins.foldl' (acc: x: acc || f x) false l;

  # keep REL TYPE: REL is a path relative to the checkout ("mvirt-api/src/lib.rs"), TYPE what
  # cleanSourceWith passes ("directory", "regular", "symlink"). Directories are all kept
  # (cleanSourceWith drops none it is asked about by their content), as crane does.
  keep = rel: type:
    type == "directory"
    || any (s: hasSuffix s rel) suffixes
    || builtins.elem (baseName rel) names
    || any (d: rel == d || hasPrefix "${d}/" rel) directories;

  # The filter for lib.cleanSourceWith over `root`: paths come in absolute.
  filter = root: path: type:
    let
      prefix = "${toString root}/";
      p = toString path;
    in
    keep (if hasPrefix prefix p then builtins.substring (builtins.stringLength prefix) (builtins.stringLength p) p else p) type;

  # The files of `rels` (regular files, relative paths) the filter drops, itself or through a
  # directory above it (for deploy/tests/check_cargo_src.py).
  dropped = rels: builtins.filter
    (rel:
      let
        parts = builtins.filter builtins.isString (builtins.split "/" rel);
        n = builtins.length parts;
        dirs = builtins.genList
          (i: builtins.concatStringsSep "/" (builtins.genList (j: builtins.elemAt parts j) (i + 1)))
          (n - 1);
      in
      !(keep rel "regular" && builtins.all (d: keep d "directory") dirs))
    rels;
in
{
  inherit suffixes names directories keep filter dropped;
}
