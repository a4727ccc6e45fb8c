//! `/v1/networks`: CRUD of networks.

use super::resources::crud;
use crate::model::*;
use crate::state::{ApiError, Command};
use crate::validate;

crud!(
    Kind::Network,
    "networks",
    "/v1/networks",
    "/v1/networks/{id}",
    Network,
    NetworkSpec,
    validate::network,
    build_network
);

fn build_network(meta: Meta, spec: NetworkSpec) -> Result<Command, ApiError> {
    Ok(Command::CreateNetwork {
        network: Network {
            meta,
            spec,
            status: Status::default(),
        },
    })
}
