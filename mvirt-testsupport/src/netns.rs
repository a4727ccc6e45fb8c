//! Network namespaces, veth pairs and TAP devices removed on drop (owned by the mvirt-ebpf work).
