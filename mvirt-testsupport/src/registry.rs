//! Local OCI registry on 127.0.0.1 (owned by the mvirt-one work).
