//! What the unit tests of several modules share (built for tests only): one
//! way to make the engine they talk to.

use crate::service::{BackendConfig, EngineConfig, ServiceConfig};
use crate::Engine;

/// The service `198.18.0.1:80` over `backends` (`"IP:PORT"`, weight 1 each),
/// mode nth, defaults otherwise.
pub(crate) fn config(backends: &[&str]) -> EngineConfig {
    EngineConfig {
        services: vec![ServiceConfig {
            vip: "198.18.0.1:80".parse().unwrap(),
            backends: backends
                .iter()
                .map(|b| BackendConfig {
                    addr: b.parse().unwrap(),
                    weight: 1,
                })
                .collect(),
            mode: Default::default(),
            snat: vec![],
        }],
        ..Default::default()
    }
}

/// An engine for [`config`] with the one backend `198.18.2.3:80`.
pub(crate) fn engine() -> Engine {
    Engine::new(config(&["198.18.2.3:80"])).unwrap()
}
