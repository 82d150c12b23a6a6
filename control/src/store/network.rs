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
use tokio::sync::{mpsc, oneshot};

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

/// The connection to one peer manager. openraft gives an AppendEntries
/// RPC only a heartbeat interval (100 ms) and drops it when that runs out;
/// so the exchange itself runs in a task that owns the connection and
/// finishes what it started, and a slow answer (a loaded machine) never
/// costs the TLS session. A dropped caller just does not get the reply.
pub struct Peer {
    target: NodeId,
    addr: String,
    tx: mpsc::Sender<Call>,
}

type Call = (RaftRpc, oneshot::Sender<Result<RaftReply, MgmtError>>);

/// How long the connection task waits for one answer before it gives up
/// on the connection (a dead or cut-off peer).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        let (tx, mut rx) = mpsc::channel::<Call>(64);
        let mut conn = mgmt::Conn::new(node.addr.clone(), self.tls.clone());
        tokio::spawn(async move {
            while let Some((rpc, reply)) = rx.recv().await {
                let req = mgmt::Request::Raft(Box::new(rpc));
                let result = match conn.call(&req, EXCHANGE_TIMEOUT).await {
                    Ok(mgmt::Response::Raft(r)) => Ok(*r),
                    Ok(_) => Err(MgmtError::Frame(
                        "unexpected reply to a Raft request".into(),
                    )),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
        });
        Peer {
            target,
            addr: node.addr.clone(),
            tx,
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn rpc<E: std::error::Error>(
        &mut self,
        rpc: RaftRpc,
    ) -> Result<RaftReply, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let (reply, answer) = oneshot::channel();
        let gone = || {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                "connection task stopped",
            )))
        };
        self.tx.send((rpc, reply)).await.map_err(|_| gone())?;
        match answer.await.map_err(|_| gone())? {
            Ok(r) => Ok(r),
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
            self.addr
        ))))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.rpc(RaftRpc::Append(rpc)).await? {
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
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.rpc(RaftRpc::Snapshot(rpc)).await? {
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
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.rpc(RaftRpc::Vote(rpc)).await? {
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
