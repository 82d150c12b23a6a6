//! The swarmnet cluster harness.
//!
//! A [`Cluster`] is a hub network namespace holding a Linux bridge, and `n`
//! node namespaces, each with a veth whose node end is `eth0`
//! (198.18.0.{10+i}/24) and whose other end is a port of the hub's bridge.
//! Each node runs the real `swarmnet agent`, entered into its namespace with
//! `nsenter --net=...`, and the tests drive it the way users do: the docker
//! CLI, bollard, the Python docker SDK, raw HTTP on the unix socket, and
//! packets on the underlay.
//!
//! Nothing is created in the root namespace; everything a cluster made
//! (agents, namespaces, its temp dir) goes away when it is dropped, also on
//! panic. The tests need root: they panic, saying so, without it.
//!
//! Environment:
//! - `SWARMNET_BIN`: the agent binary (default: `swarmnet` beside the test
//!   binary's `deps/` dir, i.e. `target/debug/swarmnet`).
//! - `SWARMNET_TEST_PATIENCE_SECS`: how long `assert_eventually!` and
//!   [`retry`] wait for convergence (default 30).
//! - `SWARMNET_TEST_KEEP=1`: keep the cluster's temp dir (agent logs, data
//!   dirs) after the test.

pub mod cluster;
pub mod containers;
pub mod eventually;
pub mod exclusive;
pub mod fakereg;
pub mod http;
pub mod metrics;
pub mod net;
pub mod netns;
pub mod util;

pub use cluster::{Cluster, ClusterBuilder, Node, NodeRow, SwarmTokens};
pub use eventually::{patience, retry, retry_for};
pub use exclusive::exclusive;
pub use http::HttpResponse;
pub use metrics::Metrics;
pub use util::{require_root, rt};
