{
  description = "mvirt: a distributed manager for virtual machines";

  # No flake.lock is committed: the machines this was written on cannot fetch nixpkgs. The
  # first `nix flake lock` (or any nix build) on a machine with network pins both inputs.
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    crane.url = "github:ipetkov/crane";
  };

  outputs = { self, nixpkgs, crane }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      packages = import ./nix/packages.nix { inherit pkgs crane; src = ./.; };
    in
    {
      packages.${system} = packages // { default = packages.mvirt-all; };

      devShells.${system}.default = import ./nix/shell.nix { inherit pkgs; };

      # services.mvirt.* with this flake's packages.
      nixosModules.default = { ... }: {
        imports = [ ./nix/modules/mvirt.nix ];
        services.mvirt.packages = nixpkgs.lib.mkDefault packages;
      };

      nixosConfigurations =
        let
          host = modules: nixpkgs.lib.nixosSystem {
            inherit system;
            modules = [ self.nixosModules.default ] ++ modules;
          };
        in
        {
          # A hypervisor host: log, zfs, ebpf, vmm and the agent.
          hypervisor = host [ ./nix/examples/hypervisor.nix ];
          # A three-member control plane: cp1 bootstraps, cp2 and cp3 join it.
          cp1 = host [ (import ./nix/examples/controlplane.nix { member = 1; }) ];
          cp2 = host [ (import ./nix/examples/controlplane.nix { member = 2; }) ];
          cp3 = host [ (import ./nix/examples/controlplane.nix { member = 3; }) ];
        };

      # Boots a control-plane member and a hypervisor host in NixOS test VMs and creates a VM
      # through REST. Needs Nix with KVM (`nix flake check` or `nix build .#checks.x86_64-linux.vm`).
      checks.${system}.vm = import ./nix/tests/vm.nix {
        inherit pkgs;
        module = self.nixosModules.default;
      };
    };
}
