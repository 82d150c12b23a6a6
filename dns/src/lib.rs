//! swarmnet embedded DNS (hickory-server over a snapshot of cluster records).
//! Filled by the DNS issue; nothing here yet.
