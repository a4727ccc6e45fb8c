# What the NixOS module knows about mvirt's services, read from deploy/services.toml, and the
# argv each daemon is started with. Builtins only (no nixpkgs), so the tests evaluate it with
# plain `nix-instantiate --eval` where nixpkgs cannot be fetched: scripts/test-deploy.sh checks
# every flag `argv` can produce against the daemon's `--help`.
let
  description = builtins.fromTOML (builtins.readFile ../deploy/services.toml);
  services = description.services;
  keys = builtins.attrNames services;

  kindOf = setting: setting.kind or "value";

  # How a client on the same host reaches a local daemon from its `listen` value (the same
  # rule as `endpoint` in deploy/gen.py).
  # A unix socket path becomes "unix:/path", a TCP host:port "http://host:port".
  endpoint = listen:
    if builtins.substring 0 1 listen == "/" then "unix:${listen}" else "http://${listen}";

  # The value a setting has when the operator sets nothing: its `default`, or the endpoint of
  # the service it names (with that service's configured `listen`).
  defaultOf = listenOf: setting:
    if setting ? endpoint_of then endpoint (listenOf setting.endpoint_of)
    else setting.default or null;

  # argv for service `key` from `values` (setting name -> value; null = not passed). A
  # credential's file is loaded by systemd (LoadCredential=, see `credentials`) and the daemon
  # gets the path of its copy: `%d` is the unit's credentials directory.
  argv = key: values:
    let
      settings = services.${key}.settings;
      one = name:
        let
          s = settings.${name};
          v = values.${name} or null;
          kind = kindOf s;
        in
        if v == null then [ ]
        else if kind == "credential" then [ s.flag "%d/${name}" ]
        else if kind == "switch" then (if v then [ s.flag ] else [ ])
        else if kind == "list" then builtins.concatMap (x: [ s.flag (toString x) ]) v
        else [ s.flag (toString v) ];
    in
    builtins.concatMap one (builtins.attrNames settings);

  # LoadCredential= lines ("name:path") for the credential settings of service `key` that are
  # set in `values`.
  credentials = key: values:
    let settings = services.${key}.settings;
    in map (name: "${name}:${toString values.${name}}")
      (builtins.filter (name: kindOf settings.${name} == "credential" && (values.${name} or null) != null)
        (builtins.attrNames settings));

  # Ports to open: [{ proto, port }] for the settings marked `firewall` that are set.
  firewallPorts = key: values:
    let
      settings = services.${key}.settings;
      portOf = v:
        if builtins.isInt v then v
        else
          let m = builtins.match ".*:([0-9]+)" v;
          in if m == null then null else builtins.fromJSON (builtins.head m);
      one = name:
        let
          s = settings.${name};
          v = values.${name} or null;
          port = if v == null then null else portOf v;
        in
        if s ? firewall && port != null then [{ proto = s.firewall; inherit port; }] else [ ];
    in
    builtins.concatMap one (builtins.attrNames settings);

  # systemd unit name for a reference in `after`/`wants`: a service key or a unit.
  unitName = ref: if services ? ${ref} then "${services.${ref}.binary}.service" else ref;

  # Every setting of every service set to its default, or its example where it has none: the
  # largest argv the module can pass (scripts/test-deploy.sh checks it against `--help`).
  everySetting = key:
    let
      settings = services.${key}.settings;
      listenOf = k: services.${k}.settings.listen.default;
      valueOf = s:
        let d = defaultOf listenOf s;
        in if kindOf s == "switch" then true else if d != null then d else s.example or "x";
    in
    builtins.mapAttrs (_: valueOf) settings;

  flagCheck = builtins.listToAttrs (map
    (key: {
      name = key;
      value = {
        binary = services.${key}.binary;
        argv = argv key (everySetting key);
        env = map (s: s.env) (builtins.attrValues services.${key}.settings);
        credentials = credentials key (everySetting key);
      };
    })
    keys);
in
{
  inherit description services keys kindOf endpoint defaultOf argv credentials firewallPorts
    unitName flagCheck;
}
