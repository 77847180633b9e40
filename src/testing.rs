//! What the unit tests of several modules share (built for tests only): one
//! way to make the engine they talk to.

use std::net::SocketAddr;

use crate::service::{EngineConfig, ServiceConfig};
use crate::Engine;

/// The service `198.18.0.1:80` over `backends` (`"IP:PORT"`, weight 1 each),
/// mode nth, defaults otherwise.
pub(crate) fn config(backends: &[&str]) -> EngineConfig {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    EngineConfig::one(ServiceConfig::new(
        addr("198.18.0.1:80"),
        backends.iter().map(|b| addr(b)),
    ))
}

/// An engine for [`config`] with the one backend `198.18.2.3:80`.
pub(crate) fn engine() -> Engine {
    Engine::new(config(&["198.18.2.3:80"])).unwrap()
}
