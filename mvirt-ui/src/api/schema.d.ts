// Generated from mvirt-api's /v1/openapi.json by `npm run gen:api` (openapi-typescript).
// Do not edit: regenerate against a running mvirt-api when the API changes. The e2e run fails
// when this file and the live spec drift.
export interface paths {
    "/v1/controlplane": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["controlplane"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/controlplane/join": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        /** Called by `mvirt-api --join`: authenticated by the join token in the body (no Bearer). */
        post: operations["join"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/controlplane/join-tokens": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post: operations["create_join_token"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/controlplane/members/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post?: never;
        delete: operations["remove_member"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/events": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["events"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/health": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["health"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/logs": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["logs"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/networks": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_networks"];
        put?: never;
        /** @description A network needs `ipv4_prefix`, `ipv6_prefix` or both; each prefix is a network address (its host bits are zero), IPv4 at most /30, IPv6 at most /126. */
        post: operations["post_v1_networks"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/networks/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_networks_id_"];
        /**
         * @description A network needs `ipv4_prefix`, `ipv6_prefix` or both; each prefix is a network address (its host bits are zero), IPv4 at most /30, IPv6 at most /126.
         *
         *     An update may omit `tunnel_key` or repeat the network's own; a different one is refused.
         */
        put: operations["put_v1_networks_id_"];
        post?: never;
        delete: operations["delete_v1_networks_id_"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/nics": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_nics"];
        put?: never;
        /**
         * @description Addresses are valid IP addresses of their family; ids in a list are distinct.
         *
         *     Each routed prefix is a network address (its host bits are zero) of a valid length.
         */
        post: operations["post_v1_nics"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/nics/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_nics_id_"];
        /**
         * @description Addresses are valid IP addresses of their family; ids in a list are distinct.
         *
         *     Each routed prefix is a network address (its host bits are zero) of a valid length.
         */
        put: operations["put_v1_nics_id_"];
        post?: never;
        delete: operations["delete_v1_nics_id_"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/nodes": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["list_nodes"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/nodes/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_node"];
        put: operations["update_node"];
        post?: never;
        delete: operations["delete_node"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/nodes/{id}/host": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_host"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/projects": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["list_projects"];
        put?: never;
        post: operations["create_project"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/projects/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_project"];
        put: operations["update_project"];
        post?: never;
        delete: operations["delete_project"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/security-groups": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_security_groups"];
        put?: never;
        /** @description A rule with ports (`port_min`/`port_max` not both 0) must be `tcp` or `udp` with 1 <= `port_min` <= `port_max`; a rule has `cidr` (a valid prefix) or `remote_group_id`, not both. */
        post: operations["post_v1_security_groups"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/security-groups/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_security_groups_id_"];
        /** @description A rule with ports (`port_min`/`port_max` not both 0) must be `tcp` or `udp` with 1 <= `port_min` <= `port_max`; a rule has `cidr` (a valid prefix) or `remote_group_id`, not both. */
        put: operations["put_v1_security_groups_id_"];
        post?: never;
        delete: operations["delete_v1_security_groups_id_"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/security-groups/{id}/rules": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        /** @description A rule with ports (`port_min`/`port_max` not both 0) must be `tcp` or `udp` with 1 <= `port_min` <= `port_max`; a rule has `cidr` (a valid prefix) or `remote_group_id`, not both. */
        post: operations["add_rule"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/security-groups/{id}/rules/{rule_id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post?: never;
        delete: operations["delete_rule"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/templates": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_templates"];
        put?: never;
        /** @description `kernel_sha256` needs `kernel_url`, `initramfs_sha256` needs `initramfs_url`, and `initramfs_url` needs `kernel_url`. */
        post: operations["post_v1_templates"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/templates/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_templates_id_"];
        /** @description `kernel_sha256` needs `kernel_url`, `initramfs_sha256` needs `initramfs_url`, and `initramfs_url` needs `kernel_url`. */
        put: operations["put_v1_templates_id_"];
        post?: never;
        delete: operations["delete_v1_templates_id_"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/tokens": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["list_tokens"];
        put?: never;
        post: operations["create_token"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/tokens/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post?: never;
        delete: operations["delete_token"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/vms": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_vms"];
        put?: never;
        /**
         * @description Addresses are valid IP addresses of their family; ids in a list are distinct.
         *
         *     `user_data` is at most 64 KiB of UTF-8; each SSH key is `<type> <key> [comment]`.
         */
        post: operations["post_v1_vms"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/vms/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_vms_id_"];
        /**
         * @description Addresses are valid IP addresses of their family; ids in a list are distinct.
         *
         *     `user_data` is at most 64 KiB of UTF-8; each SSH key is `<type> <key> [comment]`.
         */
        put: operations["put_v1_vms_id_"];
        post?: never;
        delete: operations["delete_v1_vms_id_"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/vms/{id}/{action}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post: operations["vm_action"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/vms/{id}/console": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["vm_console"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/volumes": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_volumes"];
        put?: never;
        post: operations["post_v1_volumes"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/volumes/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["get_v1_volumes_id_"];
        /** @description A volume only grows: `size_bytes` below the current size is refused. */
        put: operations["put_v1_volumes_id_"];
        post?: never;
        delete: operations["delete_v1_volumes_id_"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/volumes/{id}/resize": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        /** @description A volume only grows: `size_bytes` below the current size is refused. */
        post: operations["resize_volume"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/volumes/{id}/snapshots": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get: operations["list_snapshots"];
        put?: never;
        post: operations["create_snapshot"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/volumes/{id}/snapshots/{snapshot_id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post?: never;
        delete: operations["delete_snapshot"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/volumes/{id}/snapshots/{snapshot_id}/promote": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post: operations["promote_snapshot"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/v1/volumes/{id}/snapshots/{snapshot_id}/rollback": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post: operations["rollback_snapshot"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
}
export type webhooks = Record<string, never>;
export interface components {
    schemas: {
        Capacity: {
            /** Format: int64 */
            memory_bytes: number;
            /** Format: int64 */
            storage_bytes: number;
            /** Format: int32 */
            vcpus: number;
        };
        Condition: {
            message?: string;
            status: string;
            type: string;
        };
        ControlPlaneView: {
            /** Format: int64 */
            applied_index: number;
            /** Format: int64 */
            last_log_index?: number | null;
            /** Format: int64 */
            leader_id?: number | null;
            /** Format: int64 */
            member_id: number;
            members: components["schemas"]["MemberView"][];
            /**
             * Format: int64
             * @description The log is purged up to here (entries up to it exist only in the snapshot).
             */
            purged_index?: number | null;
            /** Format: int64 */
            snapshot_index?: number | null;
            state: string;
            /** Format: int64 */
            term: number;
        };
        CreateJoinTokenRequest: {
            /**
             * Format: int64
             * @description Seconds until the token expires (default 3600, at most 7 days).
             */
            ttl_seconds?: number | null;
        };
        CreateProjectRequest: {
            description?: string | null;
            labels?: {
                [key: string]: string;
            } | null;
            name: string;
        };
        /** @description Body of a create: `{"name", "project"?, "labels"?, "spec"}`. */
        CreateRequest_NetworkSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            name: string;
            /** @description Project name (default `default`). */
            project?: string | null;
            spec: {
                dns_servers?: (string | unknown | unknown)[];
                ipv4_prefix?: string | null;
                ipv6_prefix?: string | null;
                is_public?: boolean;
                ntp_servers?: (string | unknown | unknown)[];
                /**
                 * Format: int32
                 * @description VXLAN VNI that names the network between nodes (1..=16777215). Allocated by the control
                 *     plane when omitted on create (unique in the cluster, never reused while the network
                 *     exists); a requested key is refused with 409 when another network has it. Fixed after
                 *     create: an update may omit it or repeat it.
                 */
                tunnel_key?: number | null;
            };
        };
        /** @description Body of a create: `{"name", "project"?, "labels"?, "spec"}`. */
        CreateRequest_NicSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            name: string;
            /** @description Project name (default `default`). */
            project?: string | null;
            spec: {
                /** Format: ipv4 */
                ipv4_address?: string | null;
                /** Format: ipv6 */
                ipv6_address?: string | null;
                /** @description unicast, not all zero */
                mac_address?: string | null;
                network_id: string;
                /**
                 * @description Prefixes (CIDR, in the network's address families) routed to this NIC, for a VM that
                 *     routes for others. Changeable.
                 */
                routed_prefixes?: string[];
                security_group_ids?: string[];
            };
        };
        /** @description Body of a create: `{"name", "project"?, "labels"?, "spec"}`. */
        CreateRequest_SecurityGroupSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            name: string;
            /** @description Project name (default `default`). */
            project?: string | null;
            spec: {
                rules?: components["schemas"]["SecurityGroupRule"][];
            };
        };
        /** @description Body of a create: `{"name", "project"?, "labels"?, "spec"}`. */
        CreateRequest_TemplateSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            name: string;
            /** @description Project name (default `default`). */
            project?: string | null;
            spec: {
                cmdline?: string | null;
                /**
                 * @description `raw` or `qcow2`.
                 * @enum {string}
                 */
                format?: "raw" | "qcow2";
                /**
                 * @description SHA-256 of the file at `initramfs_url` (64 lowercase hex characters; needs
                 *     `initramfs_url`). Every node verifies its download and fails the import on a mismatch.
                 */
                initramfs_sha256?: string | null;
                initramfs_url?: string | null;
                /**
                 * @description SHA-256 of the file at `kernel_url` (64 lowercase hex characters; needs `kernel_url`).
                 *     Every node verifies its download and fails the import on a mismatch.
                 */
                kernel_sha256?: string | null;
                kernel_url?: string | null;
                sha256?: string | null;
                /**
                 * @description `file://` or `http(s)://` image to import on every node. Empty for a template promoted
                 *     from a snapshot (then `source_snapshot` names it).
                 */
                source_url: string;
            };
        };
        /** @description Body of a create: `{"name", "project"?, "labels"?, "spec"}`. */
        CreateRequest_VmSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            name: string;
            /** @description Project name (default `default`). */
            project?: string | null;
            spec: {
                /**
                 * @description `uefi`, `direct_kernel`, or omitted (direct kernel when the root template has a kernel).
                 * @enum {string|null}
                 */
                boot_mode?: "uefi" | "direct_kernel" | null;
                /**
                 * @description `running` (default) or `stopped`.
                 * @enum {string}
                 */
                desired_state?: "running" | "stopped";
                hostname?: string | null;
                /**
                 * @description Back the guest's memory with the host's hugepages (the VM fails to start, with the
                 *     reason, on a node without enough free hugepages). Fixed after create.
                 */
                hugepages?: boolean;
                kernel_cmdline?: string | null;
                /** Format: int64 */
                memory_bytes: number;
                /** @description Expose the CPU's virtualization extensions to the guest. Fixed after create. */
                nested_virtualization?: boolean;
                /** @description Create-only: owned NICs (appended to `nic_ids`). */
                network_interfaces?: components["schemas"]["NetworkInterfaceRequest"][];
                nic_ids?: string[];
                /** @description A node id, a node name, or `k=v,k2=v2` labels. */
                node_selector?: string | null;
                root_volume?: null | components["schemas"]["RootVolumeRequest"];
                ssh_authorized_keys?: string[];
                user_data?: string | null;
                /** Format: int32 */
                vcpus: number;
                volume_ids?: string[];
            };
        };
        /** @description Body of a create: `{"name", "project"?, "labels"?, "spec"}`. */
        CreateRequest_VolumeSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            name: string;
            /** @description Project name (default `default`). */
            project?: string | null;
            spec: {
                /** @description Pin the volume to a node (otherwise it goes where its first VM is placed). */
                node_id?: string | null;
                /** Format: int64 */
                size_bytes: number;
                template_id?: string | null;
            };
        };
        CreateTokenRequest: {
            name: string;
            /**
             * @description `admin` (REST and NodeService) or `node` (NodeService only).
             * @enum {string}
             */
            role: "admin" | "node";
        };
        ErrorBody: {
            /**
             * @description `invalid_argument`, `unauthenticated`, `permission_denied`, `not_found`, `already_exists`,
             *     `conflict`, `precondition_failed`, `payload_too_large`, `no_leader`, `internal`.
             */
            code: string;
            /** @description what is in the way (e.g. the ids that block a delete), or null */
            details: Record<string, never> | null;
            message: string;
        };
        /** @description The error envelope, for the OpenAPI document. */
        ErrorEnvelope: {
            error: components["schemas"]["ErrorBody"];
        };
        /** @description One change, appended by `apply`. `revision` is the Raft log index of the command. */
        Event: {
            id: string;
            kind: string;
            /** @description The object after the change (`null` for deletions). */
            object: Record<string, never>;
            project?: string;
            /** Format: int64 */
            revision: number;
            /** @description `<kind>.<verb>`, e.g. `vm.created`, `vm.status`, `network.deleted`. */
            type: string;
        };
        /** @description A node's host, as its agent reads it now. */
        HostInfo: {
            /**
             * Format: int32
             * @description Logical CPUs.
             */
            cpu_cores: number;
            cpu_model: string;
            hostname: string;
            /** Format: int64 */
            hugepage_size_bytes: number;
            /** Format: int64 */
            hugepages_free: number;
            /** Format: int64 */
            hugepages_total: number;
            /** Format: int64 */
            memory_available_bytes: number;
            /** Format: int64 */
            memory_total_bytes: number;
            node_id: string;
            /** Format: int32 */
            numa_nodes: number;
            pool?: null | components["schemas"]["StoragePool"];
            /** Format: int32 */
            running_vms: number;
        };
        JoinRequest: {
            /** @description The joining member's REST URL (`http://host:port`). */
            api_url: string;
            /** @description The joining member's Raft address (`host:port`). */
            raft_addr: string;
            /** @description The single-use join token. */
            token: string;
        };
        JoinResponse: {
            /** @description The secret members authenticate Raft traffic with. */
            cluster_secret: string;
            /** Format: int64 */
            member_id: number;
        };
        JoinTokenView: {
            /** Format: int64 */
            expires_at_ms: number;
            token: string;
        };
        ListResponse: {
            items: Record<string, never>[];
            next_page_token?: string | null;
            /**
             * Format: int64
             * @description The applied revision the list was read at.
             */
            revision: number;
        };
        LogEntryView: {
            component: string;
            id: string;
            level: string;
            message: string;
            object_ids: string[];
            /** Format: int64 */
            timestamp_ns: number;
        };
        LogPage: {
            entries: components["schemas"]["LogEntryView"][];
            next_cursor?: string | null;
        };
        /** @description A control-plane member as Raft knows it (openraft's `Node` type). */
        Member: {
            /** @description `http://host:port` of the member's REST API. */
            api_url: string;
            /** @description `host:port` of the member's Raft listener. */
            raft_addr: string;
        };
        MemberView: {
            api_url: string;
            /** Format: int64 */
            id: number;
            raft_addr: string;
            /** @description `leader`, `voter` or `learner`. */
            role: string;
        };
        /** @description Identity and bookkeeping shared by every resource. */
        Meta: {
            created_at: string;
            id: string;
            labels?: {
                [key: string]: string;
            };
            name: string;
            /** @description Project name (projects themselves carry their own name here). */
            project: string;
            /**
             * Format: int64
             * @description Raft log index that last changed this object (its ETag).
             */
            revision: number;
            /**
             * Format: int64
             * @description Raft log index that last changed what a node must do (spec, placement); status reports
             *     do not move it.
             */
            spec_revision: number;
            updated_at: string;
        };
        Network: components["schemas"]["Meta"] & {
            spec: components["schemas"]["NetworkSpec"];
            status: components["schemas"]["Status"];
        };
        NetworkInterfaceRequest: {
            ipv4_address?: ((string | unknown | unknown) | null) | unknown | unknown;
            ipv6_address?: ((string | unknown | unknown) | null) | unknown | unknown;
            network_id: string;
            security_group_ids?: string[];
        };
        NetworkSpec: {
            dns_servers?: string[];
            ipv4_prefix?: string | null;
            ipv6_prefix?: string | null;
            is_public?: boolean;
            ntp_servers?: string[];
            /**
             * Format: int32
             * @description VXLAN VNI that names the network between nodes (1..=16777215). Allocated by the control
             *     plane when omitted on create (unique in the cluster, never reused while the network
             *     exists); a requested key is refused with 409 when another network has it. Fixed after
             *     create: an update may omit it or repeat it.
             */
            tunnel_key?: number | null;
        };
        Nic: components["schemas"]["Meta"] & {
            /** @description Set when the NIC was created by and belongs to a VM (deleted with it). */
            owner_vm_id?: string | null;
            spec: components["schemas"]["NicSpec"];
            status: components["schemas"]["Status"];
            /** @description The VM this NIC is attached to. */
            vm_id?: string | null;
        };
        NicSpec: {
            ipv4_address?: string | null;
            ipv6_address?: string | null;
            mac_address?: string | null;
            network_id: string;
            /**
             * @description Prefixes (CIDR, in the network's address families) routed to this NIC, for a VM that
             *     routes for others. Changeable.
             */
            routed_prefixes?: string[];
            security_group_ids?: string[];
        };
        Node: components["schemas"]["Meta"] & {
            /** @description Sum of what is placed on the node (filled when read, not stored). */
            allocated?: components["schemas"]["Capacity"];
            spec: components["schemas"]["NodeSpec"];
            status: components["schemas"]["NodeStatus"];
        };
        NodeSpec: {
            /** @description False = cordoned: nothing new is placed here. */
            schedulable?: boolean;
        };
        NodeStatus: {
            address: string;
            agent_version: string;
            capacity: components["schemas"]["Capacity"];
            /** @description The agent's NodeAgent endpoint (console relay); empty = none. */
            console_endpoint?: string;
            last_state_change_at?: string | null;
            /** @description `online` or `offline`. */
            state: string;
        };
        /** @description One node's report on a resource that lives on several nodes. */
        PerNodeStatus: {
            /** Format: int64 */
            import_bytes_done?: number | null;
            /** Format: int64 */
            import_bytes_total?: number | null;
            message?: string;
            phase: string;
            updated_at?: string | null;
        };
        Project: components["schemas"]["Meta"] & {
            description?: string;
        };
        PromoteRequest: {
            labels?: {
                [key: string]: string;
            } | null;
            /** @description Name of the new template. */
            name: string;
        };
        ResizeRequest: {
            /** Format: int64 */
            size_bytes: number;
        };
        RootVolumeRequest: {
            /** Format: int64 */
            size_bytes: number;
            template_id: string;
        };
        Scheduling: {
            reason?: string;
            /** @description `pending` or `scheduled`. */
            state: string;
        };
        SecurityGroup: components["schemas"]["Meta"] & {
            spec: components["schemas"]["SecurityGroupSpec"];
            status: components["schemas"]["Status"];
        };
        SecurityGroupRule: {
            cidr?: string | null;
            description?: string;
            /**
             * @description `ingress` or `egress`.
             * @enum {string}
             */
            direction: "ingress" | "egress";
            /** @description Minted by the API when omitted. */
            id?: string | null;
            /** Format: int32 */
            port_max?: number;
            /** Format: int32 */
            port_min?: number;
            /**
             * @description `any`, `tcp`, `udp`, `icmp`, `icmpv6`.
             * @enum {string}
             */
            protocol?: "any" | "tcp" | "udp" | "icmp" | "icmpv6";
            remote_group_id?: string | null;
        };
        SecurityGroupSpec: {
            rules?: components["schemas"]["SecurityGroupRule"][];
        };
        SnapshotRequest: {
            name: string;
        };
        /** @description Where a template promoted from a volume snapshot comes from. */
        SnapshotSource: {
            snapshot_id: string;
            volume_id: string;
        };
        SnapshotStatus: {
            message?: string;
            /** @description `pending`, `ready` or `failed`. */
            phase: string;
            /**
             * Format: int64
             * @description Bytes held only by this snapshot.
             */
            used_bytes?: number | null;
        };
        /** @description What nodes report. Empty phase until the first report. */
        Status: {
            conditions?: components["schemas"]["Condition"][];
            fields?: {
                [key: string]: string;
            };
            /** Format: int64 */
            import_bytes_done?: number | null;
            /** Format: int64 */
            import_bytes_total?: number | null;
            ipv4_addresses?: string[];
            ipv6_addresses?: string[];
            message?: string;
            node_id?: string | null;
            /**
             * @description For resources that exist on several nodes (templates, networks, security groups): each
             *     node's own report, by node id. The top-level fields then mirror the least advanced node
             *     (failed before pending/importing before ready), so one node's success never hides
             *     another's failure.
             */
            nodes?: {
                [key: string]: components["schemas"]["PerNodeStatus"];
            };
            /** Format: int64 */
            observed_revision?: number;
            phase?: string;
            /**
             * Format: int64
             * @description Volumes: the generation of the last rollback the node carried out.
             */
            rollback_generation?: number | null;
            updated_at?: string | null;
            /** Format: int64 */
            used_bytes?: number | null;
        };
        /** @description The node's ZFS pool (or parent dataset) that holds volumes and templates. */
        StoragePool: {
            /** Format: int64 */
            allocated_bytes: number;
            /** Format: double */
            compression_ratio: number;
            dataset: string;
            /** Format: int64 */
            free_bytes: number;
            pool: string;
            /**
             * Format: int64
             * @description Sum of the virtual sizes of all volumes and templates (thin provisioning).
             */
            provisioned_bytes: number;
            /** Format: int64 */
            size_bytes: number;
            /** Format: int32 */
            template_count: number;
            /** Format: int32 */
            volume_count: number;
        };
        Template: components["schemas"]["Meta"] & {
            /**
             * @description The one node a template promoted from a snapshot lives on (VMs cloning it are placed
             *     there); none for imported templates, which every node imports.
             */
            node_id?: string | null;
            spec: components["schemas"]["TemplateSpec"];
            status: components["schemas"]["Status"];
        };
        TemplateSpec: {
            cmdline?: string | null;
            /** @description `raw` or `qcow2`. */
            format?: string;
            /**
             * @description SHA-256 of the file at `initramfs_url` (64 lowercase hex characters; needs
             *     `initramfs_url`). Every node verifies its download and fails the import on a mismatch.
             */
            initramfs_sha256?: string | null;
            initramfs_url?: string | null;
            /**
             * @description SHA-256 of the file at `kernel_url` (64 lowercase hex characters; needs `kernel_url`).
             *     Every node verifies its download and fails the import on a mismatch.
             */
            kernel_sha256?: string | null;
            kernel_url?: string | null;
            sha256?: string | null;
            source_snapshot?: null | components["schemas"]["SnapshotSource"];
            /**
             * @description `file://` or `http(s)://` image to import on every node. Empty for a template promoted
             *     from a snapshot (then `source_snapshot` names it).
             */
            source_url?: string;
        };
        /** @description A token as listed (never with its secret or hash). */
        TokenView: {
            created_at: string;
            id: string;
            name: string;
            role: string;
            /** @description Only in the answer to the create call. */
            token?: string | null;
        };
        UpdateProjectRequest: {
            labels?: {
                [key: string]: string;
            } | null;
        };
        /** @description Body of an update: labels and/or the full spec. */
        UpdateRequest_NetworkSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            spec?: {
                dns_servers?: (string | unknown | unknown)[];
                ipv4_prefix?: string | null;
                ipv6_prefix?: string | null;
                is_public?: boolean;
                ntp_servers?: (string | unknown | unknown)[];
                /**
                 * Format: int32
                 * @description VXLAN VNI that names the network between nodes (1..=16777215). Allocated by the control
                 *     plane when omitted on create (unique in the cluster, never reused while the network
                 *     exists); a requested key is refused with 409 when another network has it. Fixed after
                 *     create: an update may omit it or repeat it.
                 */
                tunnel_key?: number | null;
            } | null;
        };
        /** @description Body of an update: labels and/or the full spec. */
        UpdateRequest_NicSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            spec?: {
                /** Format: ipv4 */
                ipv4_address?: string | null;
                /** Format: ipv6 */
                ipv6_address?: string | null;
                /** @description unicast, not all zero */
                mac_address?: string | null;
                network_id: string;
                /**
                 * @description Prefixes (CIDR, in the network's address families) routed to this NIC, for a VM that
                 *     routes for others. Changeable.
                 */
                routed_prefixes?: string[];
                security_group_ids?: string[];
            } | null;
        };
        /** @description Body of an update: labels and/or the full spec. */
        UpdateRequest_NodeSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            spec?: {
                /** @description False = cordoned: nothing new is placed here. */
                schedulable?: boolean;
            } | null;
        };
        /** @description Body of an update: labels and/or the full spec. */
        UpdateRequest_SecurityGroupSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            spec?: {
                rules?: components["schemas"]["SecurityGroupRule"][];
            } | null;
        };
        /** @description Body of an update: labels and/or the full spec. */
        UpdateRequest_TemplateSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            spec?: {
                cmdline?: string | null;
                /**
                 * @description `raw` or `qcow2`.
                 * @enum {string}
                 */
                format?: "raw" | "qcow2";
                /**
                 * @description SHA-256 of the file at `initramfs_url` (64 lowercase hex characters; needs
                 *     `initramfs_url`). Every node verifies its download and fails the import on a mismatch.
                 */
                initramfs_sha256?: string | null;
                initramfs_url?: string | null;
                /**
                 * @description SHA-256 of the file at `kernel_url` (64 lowercase hex characters; needs `kernel_url`).
                 *     Every node verifies its download and fails the import on a mismatch.
                 */
                kernel_sha256?: string | null;
                kernel_url?: string | null;
                sha256?: string | null;
                /**
                 * @description `file://` or `http(s)://` image to import on every node. Empty for a template promoted
                 *     from a snapshot (then `source_snapshot` names it).
                 */
                source_url: string;
            } | null;
        };
        /** @description Body of an update: labels and/or the full spec. */
        UpdateRequest_VmSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            spec?: {
                /**
                 * @description `uefi`, `direct_kernel`, or omitted (direct kernel when the root template has a kernel).
                 * @enum {string|null}
                 */
                boot_mode?: "uefi" | "direct_kernel" | null;
                /**
                 * @description `running` (default) or `stopped`.
                 * @enum {string}
                 */
                desired_state?: "running" | "stopped";
                hostname?: string | null;
                /**
                 * @description Back the guest's memory with the host's hugepages (the VM fails to start, with the
                 *     reason, on a node without enough free hugepages). Fixed after create.
                 */
                hugepages?: boolean;
                kernel_cmdline?: string | null;
                /** Format: int64 */
                memory_bytes: number;
                /** @description Expose the CPU's virtualization extensions to the guest. Fixed after create. */
                nested_virtualization?: boolean;
                nic_ids?: string[];
                /** @description A node id, a node name, or `k=v,k2=v2` labels. */
                node_selector?: string | null;
                ssh_authorized_keys?: string[];
                user_data?: string | null;
                /** Format: int32 */
                vcpus: number;
                volume_ids?: string[];
            } | null;
        };
        /** @description Body of an update: labels and/or the full spec. */
        UpdateRequest_VolumeSpec: {
            labels?: {
                [key: string]: string;
            } | null;
            spec?: {
                /** @description Pin the volume to a node (otherwise it goes where its first VM is placed). */
                node_id?: string | null;
                /** Format: int64 */
                size_bytes: number;
                template_id?: string | null;
            } | null;
        };
        Vm: components["schemas"]["Meta"] & {
            node_id?: string | null;
            /**
             * @description The state of the VM's node (`online`/`offline`) as the control plane sees it, kept
             *     current when the node's state changes. While it is `offline`, `status` is only the node's
             *     last report and may be stale.
             */
            node_state?: string | null;
            /** Format: int64 */
            restart_generation?: number;
            scheduling: components["schemas"]["Scheduling"];
            spec: components["schemas"]["VmSpec"];
            status: components["schemas"]["Status"];
            /** @description `graceful` or `force`: how the last stop was requested. */
            stop_mode?: string;
        };
        VmSpec: {
            /** @description `uefi`, `direct_kernel`, or omitted (direct kernel when the root template has a kernel). */
            boot_mode?: string | null;
            /** @description `running` (default) or `stopped`. */
            desired_state?: string;
            hostname?: string | null;
            /**
             * @description Back the guest's memory with the host's hugepages (the VM fails to start, with the
             *     reason, on a node without enough free hugepages). Fixed after create.
             */
            hugepages?: boolean;
            kernel_cmdline?: string | null;
            /** Format: int64 */
            memory_bytes: number;
            /** @description Expose the CPU's virtualization extensions to the guest. Fixed after create. */
            nested_virtualization?: boolean;
            /** @description Create-only: owned NICs (appended to `nic_ids`). */
            network_interfaces?: components["schemas"]["NetworkInterfaceRequest"][];
            nic_ids?: string[];
            /** @description A node id, a node name, or `k=v,k2=v2` labels. */
            node_selector?: string | null;
            root_volume?: null | components["schemas"]["RootVolumeRequest"];
            ssh_authorized_keys?: string[];
            user_data?: string | null;
            /** Format: int32 */
            vcpus: number;
            volume_ids?: string[];
        };
        Volume: components["schemas"]["Meta"] & {
            /** @description Where the volume lives (set by pinning or by its first VM's placement). */
            node_id?: string | null;
            owner_vm_id?: string | null;
            rollback?: null | components["schemas"]["VolumeRollback"];
            snapshots?: components["schemas"]["VolumeSnapshot"][];
            spec: components["schemas"]["VolumeSpec"];
            status: components["schemas"]["Status"];
            /** @description The VM the volume is attached to. */
            vm_id?: string | null;
        };
        /**
         * @description A rollback asked for through `POST /v1/volumes/{id}/snapshots/{sid}/rollback`. The volume's
         *     node carries it out once (it remembers the generation it applied) and reports the generation
         *     in `status.rollback_generation`; until they match, the rollback is pending.
         */
        VolumeRollback: {
            /**
             * Format: int64
             * @description Counts the rollbacks of this volume (1 for the first).
             */
            generation: number;
            requested_at: string;
            snapshot_id: string;
        };
        VolumeSnapshot: {
            created_at: string;
            id: string;
            name: string;
            /**
             * @description What the volume's node reports: `pending` until ZFS holds the snapshot (or while the
             *     volume is on no node yet), then `ready`, or `failed` with the reason.
             */
            status?: components["schemas"]["SnapshotStatus"];
        };
        VolumeSpec: {
            /** @description Pin the volume to a node (otherwise it goes where its first VM is placed). */
            node_id?: string | null;
            /** Format: int64 */
            size_bytes: number;
            template_id?: string | null;
        };
    };
    responses: never;
    parameters: never;
    requestBodies: never;
    headers: never;
    pathItems: never;
}
export type $defs = Record<string, never>;
export interface operations {
    controlplane: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ControlPlaneView"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    join: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["JoinRequest"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["JoinResponse"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    create_join_token: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: {
            content: {
                "application/json": components["schemas"]["CreateJoinTokenRequest"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["JoinTokenView"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    remove_member: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description member id */
                id: number;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    events: {
        parameters: {
            query?: {
                /** @description Resume after this revision (like `Last-Event-ID`). */
                from_revision?: number;
                /** @description Only events of this project. */
                project?: string;
                /** @description Only events of this type (`vm.created`) or kind prefix (`vm`). */
                type?: string;
            };
            header?: {
                /** @description resume after this revision */
                "Last-Event-ID"?: string | null;
            };
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description text/event-stream of Event objects */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "text/event-stream": components["schemas"]["Event"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    health: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description the member is up */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
        };
    };
    logs: {
        parameters: {
            query?: {
                component?: string;
                cursor?: string;
                follow?: boolean;
                /** @description Comma-separated levels: audit, info, warn, error, debug. */
                level?: string;
                limit?: number;
                object_id?: string;
                /** @description `newest` (default) or `oldest`. */
                order?: "newest" | "oldest";
                /** @description Inclusive lower bound, nanoseconds since the epoch. */
                since_ns?: number;
                /** @description Substring of the message. */
                text?: string;
                /** @description Exclusive upper bound, nanoseconds since the epoch. */
                until_ns?: number;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["LogPage"];
                    "text/event-stream": string;
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_networks: {
        parameters: {
            query?: {
                /** @description Label selector `k=v,k2=v2` (all must match). */
                label?: string;
                /** @description Page size (default 100, at most 1000). */
                limit?: number;
                /** @description Only objects placed on this node (id or name): VMs, volumes. */
                node?: string;
                /** @description `next_page_token` of the previous page. */
                page_token?: string;
                /** @description Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs). */
                phase?: string;
                /** @description Only objects of this project (name). Default: all projects. */
                project?: string;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ListResponse"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: the `node` filter names no node */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    post_v1_networks: {
        parameters: {
            query?: never;
            header?: {
                /** @description a retry with the same key returns the first result */
                "Idempotency-Key"?: string | null;
            };
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CreateRequest_NetworkSpec"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Network"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_networks_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Network"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    put_v1_networks_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["UpdateRequest_NetworkSpec"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Network"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_v1_networks_id_: {
        parameters: {
            query?: {
                /** @description Networks: also delete the network's NICs. */
                force?: boolean;
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_nics: {
        parameters: {
            query?: {
                /** @description Label selector `k=v,k2=v2` (all must match). */
                label?: string;
                /** @description Page size (default 100, at most 1000). */
                limit?: number;
                /** @description Only objects placed on this node (id or name): VMs, volumes. */
                node?: string;
                /** @description `next_page_token` of the previous page. */
                page_token?: string;
                /** @description Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs). */
                phase?: string;
                /** @description Only objects of this project (name). Default: all projects. */
                project?: string;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ListResponse"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: the `node` filter names no node */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    post_v1_nics: {
        parameters: {
            query?: never;
            header?: {
                /** @description a retry with the same key returns the first result */
                "Idempotency-Key"?: string | null;
            };
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CreateRequest_NicSpec"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Nic"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_nics_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Nic"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    put_v1_nics_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["UpdateRequest_NicSpec"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Nic"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_v1_nics_id_: {
        parameters: {
            query?: {
                /** @description Networks: also delete the network's NICs. */
                force?: boolean;
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    list_nodes: {
        parameters: {
            query?: {
                /** @description Label selector `k=v,k2=v2` (all must match). */
                label?: string;
                /** @description Page size (default 100, at most 1000). */
                limit?: number;
                /** @description Only objects placed on this node (id or name): VMs, volumes. */
                node?: string;
                /** @description `next_page_token` of the previous page. */
                page_token?: string;
                /** @description Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs). */
                phase?: string;
                /** @description Only objects of this project (name). Default: all projects. */
                project?: string;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ListResponse"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: the `node` filter names no node */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_node: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Node"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    update_node: {
        parameters: {
            query?: never;
            header?: {
                /** @description "<revision>": the change is made only if the object is still at this revision */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["UpdateRequest_NodeSpec"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Node"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description precondition_failed: the object is no longer at the `If-Match` revision */
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_node: {
        parameters: {
            query?: never;
            header?: {
                /** @description "<revision>": the change is made only if the object is still at this revision */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description precondition_failed: the object is no longer at the `If-Match` revision */
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_host: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["HostInfo"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description the node is offline or offers no agent endpoint */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description the node's agent cannot be reached or its daemons fail */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    list_projects: {
        parameters: {
            query?: {
                /** @description Label selector `k=v,k2=v2` (all must match). */
                label?: string;
                /** @description Page size (default 100, at most 1000). */
                limit?: number;
                /** @description Only objects placed on this node (id or name): VMs, volumes. */
                node?: string;
                /** @description `next_page_token` of the previous page. */
                page_token?: string;
                /** @description Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs). */
                phase?: string;
                /** @description Only objects of this project (name). Default: all projects. */
                project?: string;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ListResponse"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: the `node` filter names no node */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    create_project: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CreateProjectRequest"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Project"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_project: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Project"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    update_project: {
        parameters: {
            query?: never;
            header?: {
                /** @description "<revision>": the change is made only if the object is still at this revision */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["UpdateProjectRequest"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Project"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description precondition_failed: the object is no longer at the `If-Match` revision */
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_project: {
        parameters: {
            query?: never;
            header?: {
                /** @description "<revision>": the change is made only if the object is still at this revision */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description precondition_failed: the object is no longer at the `If-Match` revision */
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_security_groups: {
        parameters: {
            query?: {
                /** @description Label selector `k=v,k2=v2` (all must match). */
                label?: string;
                /** @description Page size (default 100, at most 1000). */
                limit?: number;
                /** @description Only objects placed on this node (id or name): VMs, volumes. */
                node?: string;
                /** @description `next_page_token` of the previous page. */
                page_token?: string;
                /** @description Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs). */
                phase?: string;
                /** @description Only objects of this project (name). Default: all projects. */
                project?: string;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ListResponse"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: the `node` filter names no node */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    post_v1_security_groups: {
        parameters: {
            query?: never;
            header?: {
                /** @description a retry with the same key returns the first result */
                "Idempotency-Key"?: string | null;
            };
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CreateRequest_SecurityGroupSpec"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["SecurityGroup"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_security_groups_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["SecurityGroup"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    put_v1_security_groups_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["UpdateRequest_SecurityGroupSpec"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["SecurityGroup"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_v1_security_groups_id_: {
        parameters: {
            query?: {
                /** @description Networks: also delete the network's NICs. */
                force?: boolean;
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    add_rule: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["SecurityGroupRule"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["SecurityGroupRule"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_rule: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
                /** @description rule id */
                rule_id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_templates: {
        parameters: {
            query?: {
                /** @description Label selector `k=v,k2=v2` (all must match). */
                label?: string;
                /** @description Page size (default 100, at most 1000). */
                limit?: number;
                /** @description Only objects placed on this node (id or name): VMs, volumes. */
                node?: string;
                /** @description `next_page_token` of the previous page. */
                page_token?: string;
                /** @description Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs). */
                phase?: string;
                /** @description Only objects of this project (name). Default: all projects. */
                project?: string;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ListResponse"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: the `node` filter names no node */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    post_v1_templates: {
        parameters: {
            query?: never;
            header?: {
                /** @description a retry with the same key returns the first result */
                "Idempotency-Key"?: string | null;
            };
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CreateRequest_TemplateSpec"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Template"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_templates_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Template"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    put_v1_templates_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["UpdateRequest_TemplateSpec"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Template"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_v1_templates_id_: {
        parameters: {
            query?: {
                /** @description Networks: also delete the network's NICs. */
                force?: boolean;
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    list_tokens: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["TokenView"][];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    create_token: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CreateTokenRequest"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["TokenView"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_token: {
        parameters: {
            query?: never;
            header?: never;
            path: {
                /** @description token id */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_vms: {
        parameters: {
            query?: {
                /** @description Label selector `k=v,k2=v2` (all must match). */
                label?: string;
                /** @description Page size (default 100, at most 1000). */
                limit?: number;
                /** @description Only objects placed on this node (id or name): VMs, volumes. */
                node?: string;
                /** @description `next_page_token` of the previous page. */
                page_token?: string;
                /** @description Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs). */
                phase?: string;
                /** @description Only objects of this project (name). Default: all projects. */
                project?: string;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ListResponse"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: the `node` filter names no node */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    post_v1_vms: {
        parameters: {
            query?: never;
            header?: {
                /** @description a retry with the same key returns the first result */
                "Idempotency-Key"?: string | null;
            };
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CreateRequest_VmSpec"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Vm"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_vms_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Vm"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    put_v1_vms_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["UpdateRequest_VmSpec"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Vm"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_v1_vms_id_: {
        parameters: {
            query?: {
                /** @description Networks: also delete the network's NICs. */
                force?: boolean;
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    vm_action: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description start, stop, kill or restart */
                action: "start" | "stop" | "kill" | "restart";
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Vm"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    vm_console: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description WebSocket: binary frames in both directions */
            101: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_volumes: {
        parameters: {
            query?: {
                /** @description Label selector `k=v,k2=v2` (all must match). */
                label?: string;
                /** @description Page size (default 100, at most 1000). */
                limit?: number;
                /** @description Only objects placed on this node (id or name): VMs, volumes. */
                node?: string;
                /** @description `next_page_token` of the previous page. */
                page_token?: string;
                /** @description Only objects whose `status.phase` is this (`scheduling.state` `pending` also matches VMs). */
                phase?: string;
                /** @description Only objects of this project (name). Default: all projects. */
                project?: string;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ListResponse"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: the `node` filter names no node */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    post_v1_volumes: {
        parameters: {
            query?: never;
            header?: {
                /** @description a retry with the same key returns the first result */
                "Idempotency-Key"?: string | null;
            };
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["CreateRequest_VolumeSpec"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Volume"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    get_v1_volumes_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Volume"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    put_v1_volumes_id_: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["UpdateRequest_VolumeSpec"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Volume"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_v1_volumes_id_: {
        parameters: {
            query?: {
                /** @description Networks: also delete the network's NICs. */
                force?: boolean;
                project?: string;
            };
            header?: {
                /** @description "<revision>" */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    resize_volume: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: {
                /** @description "<revision>": the change is made only if the object is still at this revision */
                "If-Match"?: string;
            };
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["ResizeRequest"];
            };
        };
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Volume"];
                };
            };
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description precondition_failed: the object is no longer at the `If-Match` revision */
            412: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    list_snapshots: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["VolumeSnapshot"][];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    create_snapshot: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["SnapshotRequest"];
            };
        };
        responses: {
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["VolumeSnapshot"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description not_found: nothing with this id or name */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    delete_snapshot: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
                /** @description snapshot id or name */
                snapshot_id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            204: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description already_exists or conflict: the change is refused by the current state; `details` names what is in the way */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    promote_snapshot: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
                /** @description snapshot id or name */
                snapshot_id: string;
            };
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["PromoteRequest"];
            };
        };
        responses: {
            /** @description a template copied from the snapshot on the volume's node (it exists on that node only) */
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Template"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description the snapshot is not ready, or the name is taken */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description payload_too_large: the body exceeds 1 MiB */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unsupported_media_type: the body is not application/json */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
    rollback_snapshot: {
        parameters: {
            query?: {
                /** @description Project (name) for resolving a name in the path (default `default`). */
                project?: string;
            };
            header?: never;
            path: {
                /** @description id or name */
                id: string;
                /** @description snapshot id or name */
                snapshot_id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description accepted: the volume's node rolls back; `rollback.generation` equals `status.rollback_generation` when done. Newer snapshots are removed. */
            202: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["Volume"];
                };
            };
            /** @description invalid_argument: a parameter or the body is malformed or breaks a rule */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description unauthenticated: no token, or an unknown or revoked one */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description permission_denied: the token may not call this (node tokens are for NodeService only) */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description a VM using the volume runs or is asked to run, or the snapshot is not ready */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
            /** @description no_leader (or unavailable): no Raft leader is elected or reachable right now; retry */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ErrorEnvelope"];
                };
            };
        };
    };
}
