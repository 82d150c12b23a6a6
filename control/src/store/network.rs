//! openraft's network over the management port: every RPC is a
//! [`mgmt::Request::Raft`] on a kept-open mutual-TLS connection to the
//! target manager.

use std::{sync::Arc, time::Duration};

use openraft::{
    BasicNode, RaftNetwork, RaftNetworkFactory,
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::{Backoff, RPCOption},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::mgmt::{self, MgmtError};

type NodeId = u64;

#[derive(Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

#[derive(Clone)]
pub struct Network {
    tls: Arc<ClientConfig>,
}

impl Network {
    pub fn new(tls: Arc<ClientConfig>) -> Self {
        Self { tls }
    }
}

pub struct Peer {
    target: NodeId,
    conn: mgmt::Conn,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            conn: mgmt::Conn::new(node.addr.clone(), self.tls.clone()),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn rpc<E: std::error::Error>(
        &mut self,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Result<RaftReply, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let req = mgmt::Request::Raft(Box::new(rpc));
        match self.conn.call(&req, timeout).await {
            Ok(mgmt::Response::Raft(reply)) => Ok(*reply),
            Ok(_) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("unexpected reply to a Raft request"),
            ))),
            Err(e @ (MgmtError::Connect { .. } | MgmtError::Handshake { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
            "mismatched Raft reply from {}",
            self.conn.addr()
        ))))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.rpc(RaftRpc::Append(rpc), option.hard_ttl()).await? {
            RaftReply::Append(Ok(r)) => Ok(r),
            RaftReply::Append(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.rpc(RaftRpc::Snapshot(rpc), option.hard_ttl()).await? {
            RaftReply::Snapshot(Ok(r)) => Ok(r),
            RaftReply::Snapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.rpc(RaftRpc::Vote(rpc), option.hard_ttl()).await? {
            RaftReply::Vote(Ok(r)) => Ok(r),
            RaftReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected()),
        }
    }

    /// Retry an unreachable peer soon: a restarted manager catches up in
    /// tens of milliseconds instead of openraft's default 500 ms.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}
