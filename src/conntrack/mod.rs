//! Connection tracking: tuples, the TCP state machine, the flow table and
//! MASQUERADE port allocation.
//!
//! The pieces map onto netfilter one to one: [`Tuple`] is
//! `nf_conntrack_tuple`, [`Flow`] is `nf_conn` (both tuples, the state, the
//! timeout, the counters), [`tcp`] is `nf_conntrack_proto_tcp.c`, [`ConnTable`]
//! is the conntrack hash and [`ports`] is `nf_nat_l4proto_unique_tuple`.

pub mod ports;
pub mod table;
pub mod tcp;
pub mod tuple;
pub mod window;

pub use table::{ConnTable, Flow};
pub use tcp::{TcpState, Timeouts};
pub use tuple::{Direction, Tuple};
