//! `/v1/nics`: CRUD of NICs.

use super::resources::crud;
use crate::model::*;
use crate::state::{ApiError, Command};
use crate::validate;

crud!(
    Kind::Nic,
    "nics",
    "/v1/nics",
    "/v1/nics/{id}",
    Nic,
    NicSpec,
    validate::nic,
    build_nic
);

fn build_nic(meta: Meta, spec: NicSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateNic {
        nic: Nic {
            meta,
            spec,
            status: Status::default(),
            vm_id: None,
            owner_vm_id: None,
            pod_id: None,
            owner_pod_id: None,
        },
    })
}
