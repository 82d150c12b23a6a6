//! The management port (2377/tcp): TLS, length-prefixed JSON requests, each
//! answered in turn on the same connection (Raft keeps its connections
//! open; one-shot callers close after one). A join is the only request
//! allowed without a client certificate; everything else is mutual TLS
//! under the cluster CA, and the caller is who its certificate says.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use rustls::{ClientConfig, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    pki,
    store::{Applied, NodeDescription, Proposal, RaftReply, RaftRpc},
};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request for this long is closed by the server.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Serialize, Deserialize)]
pub enum Request {
    Join(JoinRequest),
    /// A node's periodic report of itself; the answer tells it its role
    /// and the current managers.
    Heartbeat {
        description: NodeDescription,
    },
    /// Raft traffic among managers.
    Raft(Box<RaftRpc>),
    /// A write a manager forwards to the leader.
    Write(Box<Proposal>),
    /// A manager that joined asks the leader to make it a Raft voter.
    AddManager {
        node_id: String,
        addr: String,
    },
    /// A manager asks the leader to drop a demoted manager from Raft.
    RemoveManager {
        node_id: String,
    },
    /// A node asks for a certificate for its current role (after a
    /// promotion or a demotion), from a CSR for a key it made.
    Renew {
        csr_der: Vec<u8>,
    },
    /// A node puts a container on an overlay network: the network, and
    /// (with `allocate`) an address for the container, held for the
    /// calling node.
    AttachNetwork {
        network: String,
        container_id: String,
        allocate: bool,
        /// The swarm task the container runs, if any.
        #[serde(default)]
        task_id: Option<String>,
    },
    /// The container no longer holds its address on the network.
    DetachNetwork {
        network_id: String,
        container_id: String,
    },
    /// A node asks for the tasks assigned to it.
    Assignments,
    /// A node reports how its tasks go.
    ReportTasks {
        reports: Vec<crate::store::services::TaskReport>,
    },
}

#[derive(Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub csr_der: Vec<u8>,
    pub description: NodeDescription,
    /// The joiner's management port, should it join as a manager.
    pub listen_port: u16,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &"<redacted>")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManagerPeer {
    pub node_id: String,
    /// `ip:port` of its management listener.
    pub addr: String,
    pub gossip: SocketAddr,
}

#[derive(Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    pub cluster_id: String,
    pub manager: bool,
    pub cert_pem: String,
    pub ca_cert_pem: String,
    pub gossip_key: String,
    pub managers: Vec<ManagerPeer>,
    pub data_path_port: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    Internal,
    NotFound,
}

#[derive(Serialize, Deserialize)]
pub enum Response {
    Joined(Box<JoinResponse>),
    Ok,
    Heartbeat {
        manager: bool,
        managers: Vec<ManagerPeer>,
    },
    Raft(Box<RaftReply>),
    Applied(Applied),
    Renewed {
        cert_pem: String,
        manager: bool,
        managers: Vec<ManagerPeer>,
    },
    Attached(Box<crate::overlay::Attachment>),
    /// The caller's tasks, as of store index `index`.
    Assignments {
        index: u64,
        tasks: Vec<crate::store::services::TaskRecord>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    #[error("connect to manager {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with manager {addr}: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talk to manager {addr}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out talking to manager {0}")]
    Timeout(String),
    #[error("bad frame from manager {0}")]
    Frame(String),
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_u32(len).await?;
    w.write_all(data).await?;
    w.flush().await
}

/// A connection to a manager's management port, opened on first use and
/// kept for the next request; dropped (and reopened later) after any error.
pub struct Conn {
    addr: String,
    tls: Arc<ClientConfig>,
    stream: Option<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl Conn {
    pub fn new(addr: String, tls: Arc<ClientConfig>) -> Self {
        Self {
            addr,
            tls,
            stream: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, MgmtError> {
        let addr = self.addr.clone();
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| MgmtError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(self.tls.clone())
            .connect(pki::manager_server_name(), tcp)
            .await
            .map_err(|source| MgmtError::Handshake { addr, source })
    }

    /// Sends `req` and waits up to `timeout` for the response. Remote
    /// errors come back as [`MgmtError::Remote`].
    pub async fn call(&mut self, req: &Request, timeout: Duration) -> Result<Response, MgmtError> {
        let body = serde_json::to_vec(req).map_err(|e| MgmtError::Frame(e.to_string()))?;
        let addr = self.addr.clone();
        let run = async {
            let mut stream = match self.stream.take() {
                Some(s) => s,
                None => self.connect().await?,
            };
            let io = |source| MgmtError::Io {
                addr: addr.clone(),
                source,
            };
            write_frame(&mut stream, &body).await.map_err(io)?;
            let reply = read_frame(&mut stream).await.map_err(io)?;
            self.stream = Some(stream);
            serde_json::from_slice::<Response>(&reply).map_err(|e| MgmtError::Frame(e.to_string()))
        };
        let resp = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                self.stream = None;
                Err(MgmtError::Timeout(addr))
            }
        }?;
        match resp {
            Response::Error { kind, message } => Err(MgmtError::Remote { kind, message }),
            ok => Ok(ok),
        }
    }
}

/// Sends one request to a manager and returns its response.
async fn call(addr: &str, tls: ClientConfig, req: &Request) -> Result<Response, MgmtError> {
    Conn::new(addr.to_owned(), Arc::new(tls))
        .call(req, IO_TIMEOUT)
        .await
}

/// Joins through the manager at `addr`, trusting only the CA the token pins.
pub async fn join(
    addr: &str,
    token: &crate::token::JoinToken,
    req: JoinRequest,
) -> Result<JoinResponse, MgmtError> {
    let tls = pki::join_client_config(token)?;
    match call(addr, tls, &Request::Join(req)).await? {
        Response::Joined(j) => Ok(*j),
        _ => Err(MgmtError::Frame(addr.to_owned())),
    }
}

/// A request over mutual TLS with this node's certificate.
pub async fn call_authenticated(
    addr: &str,
    identity: &pki::NodeIdentity,
    req: &Request,
    timeout: Duration,
) -> Result<Response, MgmtError> {
    Conn::new(addr.to_owned(), Arc::new(identity.client_config()?))
        .call(req, timeout)
        .await
}

/// Who is calling: the node ID and role from a verified client certificate.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub node: Option<(String, bool)>,
}

pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        peer: Peer,
        req: Request,
    ) -> impl std::future::Future<Output = Response> + Send;
}

/// Serves the management port until `cancel` fires.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Arc<H>,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(error) => {
                    warn!(%error, "management accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(error)) => {
                    debug!(peer = %addr, %error, "management TLS handshake");
                    return;
                }
                Err(_) => return,
            };
            let node = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(pki::peer_identity);
            loop {
                let frame = match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut tls)).await {
                    Ok(Ok(f)) => f,
                    Ok(Err(error)) => {
                        if error.kind() != std::io::ErrorKind::UnexpectedEof {
                            debug!(peer = %addr, %error, "management connection");
                        }
                        return;
                    }
                    Err(_) => return,
                };
                let resp = match serde_json::from_slice::<Request>(&frame) {
                    Ok(req) => {
                        let peer = Peer {
                            addr,
                            node: node.clone(),
                        };
                        handler.clone().handle(peer, req).await
                    }
                    Err(e) => Response::error(ErrorKind::InvalidArgument, e.to_string()),
                };
                let body = match serde_json::to_vec(&resp) {
                    Ok(b) => b,
                    Err(error) => {
                        warn!(%error, "encode management response");
                        return;
                    }
                };
                if let Err(error) = write_frame(&mut tls, &body).await {
                    debug!(peer = %addr, %error, "management write");
                    return;
                }
            }
        });
    }
}
