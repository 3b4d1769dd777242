//! The immutable snapshot workers read once per burst.

use crate::config::{Config, NonVip};

/// Everything the fast path needs, built off the fast path and published whole.
#[derive(Debug)]
pub struct Tables {
    /// Incremented by every published change.
    pub generation: u64,
    pub decap: vxlan::DecapConfig,
    pub local_mac: [u8; 6],
    pub next_hop_mac: [u8; 6],
    pub non_vip: NonVip,
}

impl Tables {
    /// Builds the tables a config describes.
    pub fn build(cfg: &Config, generation: u64) -> Result<Tables, String> {
        let g = &cfg.gateway;
        Ok(Tables {
            generation,
            decap: vxlan::DecapConfig {
                vtep_v4: g.vtep_v4(),
                vtep_v6: g.vtep_v6(),
                ports: g.vxlan_ports.clone(),
            },
            local_mac: g.local_mac,
            next_hop_mac: g.next_hop_mac,
            non_vip: g.non_vip,
        })
    }
}
