//! The VXLAN device (external, collect_md) that carries routes to other nodes: created with
//! `ip link` on the first route and attached to the datapath once.

use super::{Inner, NetManager, Result};
use crate::{ip, nat, tap};

impl NetManager {
    pub(super) fn ensure_tunnel(&self, inner: &mut Inner) -> Result<u32> {
        if let Some(i) = inner.tunnel_ifindex {
            return Ok(i);
        }
        let dev = &self.config.tunnel_device;
        tap::check_name(dev)?;
        if !ip::link_exists(dev) {
            let port = self.config.tunnel_port.to_string();
            ip::ip(&[
                "link", "add", "name", dev, "type", "vxlan", "external", "dstport", &port,
            ])
            .map_err(nat::NatError::from)?;
        }
        ip::ip(&["link", "set", "dev", dev, "up"]).map_err(nat::NatError::from)?;
        let i = inner.datapath.attach_tunnel(dev)?;
        inner.tunnel_ifindex = Some(i);
        Ok(i)
    }
}
