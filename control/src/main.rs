//! `swarmnet`: the node agent of a Docker-Swarm-compatible cluster.
//!
//! `swarmnet agent` runs on every host and serves the Docker Engine API;
//! `swarmnet demo up|down` builds a demo cluster in network namespaces.

#![forbid(unsafe_code)]

mod agent;
mod api;
mod demo;
mod gossip;
mod images;
mod metrics;
mod mgmt;
mod orchestrator;
mod overlay;
mod pki;
mod runtime;
mod store;
mod token;
mod util;
mod worker;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "swarmnet", version, about = "A Docker Swarm mode node agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent.
    Agent(Box<AgentArgs>),
    /// A demo cluster of nodes in network namespaces on this machine.
    Demo {
        #[command(subcommand)]
        cmd: demo::DemoCmd,
    },
    /// The monitor of one container (started by the agent).
    #[command(hide = true)]
    Shim(runtime::shim::ShimArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Where the agent keeps its state.
    #[arg(long, default_value = "/var/lib/swarmnet")]
    data_dir: PathBuf,
    /// Daemon socket(s) to listen on: unix://PATH or tcp://ADDR:PORT.
    #[arg(
        short = 'H',
        long = "host",
        default_value = "unix:///run/swarmnet/docker.sock"
    )]
    hosts: Vec<String>,
    /// The node's name in the swarm (defaults to the system's hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// Default listen address for the management port (2377).
    #[arg(long)]
    listen_addr: Option<SocketAddr>,
    /// Default address advertised to other nodes.
    #[arg(long)]
    advertise_addr: Option<IpAddr>,
    /// UDP (and later TCP) port of SWIM gossip.
    #[arg(long, default_value_t = 7946)]
    gossip_port: u16,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Interface carrying the underlay, for the eBPF counters (defaults to
    /// the interface holding --advertise-addr).
    #[arg(long)]
    underlay_iface: Option<String>,
    /// A mirror for Docker Hub images (e.g. http://198.18.0.2:5000), tried
    /// in order before docker.io; repeatable.
    #[arg(long = "registry-mirror")]
    registry_mirrors: Vec<String>,
    /// A registry (HOST[:PORT]) spoken to over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Where the agent keeps runtime state that ends with the machine's
    /// run (runc state, shim sockets, network namespaces).
    #[arg(long, default_value = "/run/swarmnet")]
    exec_root: PathBuf,
    /// The OCI runtime that runs containers.
    #[arg(long, default_value = "runc")]
    runtime: PathBuf,
    /// The address and subnet of the node's `bridge` network (its bridge
    /// holds the address).
    #[arg(long, default_value = "172.17.0.1/16")]
    bip: String,
    /// The Linux bridge of the `bridge` network.
    #[arg(short = 'b', long, default_value = "docker0")]
    bridge: String,
    /// The MTU of the `bridge` network.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// The cgroup under which containers' cgroups are made.
    #[arg(long, default_value = "/swarmnet")]
    cgroup_parent: String,
    /// debug, info, warn or error (or a tracing filter).
    #[arg(short = 'l', long, default_value = "info")]
    log_level: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Agent(args) => {
            init_tracing(&args.log_level)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("tokio runtime")?
                .block_on(run_agent(*args))
        }
        Cmd::Demo { cmd } => {
            init_tracing("info")?;
            demo::run(cmd)
        }
        Cmd::Shim(args) => {
            init_tracing("info")?;
            std::process::exit(runtime::shim::main(args))
        }
    }
}

fn init_tracing(level: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid --log-level {level}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

async fn run_agent(args: AgentArgs) -> Result<()> {
    let hostname = match args.hostname.clone() {
        Some(h) => h,
        None => nix::unistd::gethostname()
            .context("hostname")?
            .to_string_lossy()
            .into_owned(),
    };
    // `docker exec -t` processes are detached by runc and reparented here,
    // so their exit status is the agent's to collect.
    nix::sys::prctl::set_child_subreaper(true).context("become a child subreaper")?;
    let metrics = metrics::Metrics::new();
    attach_counters(&args, &metrics);
    let cfg = agent::AgentConfig {
        data_dir: args.data_dir.clone(),
        hostname,
        advertise_addr: args.advertise_addr,
        listen_addr: args.listen_addr,
        gossip_port: args.gossip_port,
        registry_mirrors: args.registry_mirrors.clone(),
        insecure_registries: args.insecure_registries.clone(),
        runtime: runtime::RuntimeConfig {
            data_dir: args.data_dir.join("containers"),
            exec_root: args.exec_root.clone(),
            runtime: args.runtime.clone(),
            cgroup_parent: args.cgroup_parent.clone(),
            bip: args.bip.clone(),
            bridge_name: args.bridge.clone(),
            mtu: args.mtu,
            self_exe: std::env::current_exe().context("this binary's path")?,
        },
        underlay_iface: args
            .underlay_iface
            .clone()
            .or_else(|| args.advertise_addr.and_then(util::interface_with_addr)),
    };
    let agent = agent::Agent::start(cfg, metrics.clone())
        .await
        .context("start agent")?;
    let mut servers = tokio::task::JoinSet::new();
    for host in &args.hosts {
        serve_api(&mut servers, host, agent.clone()).await?;
    }
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listener {addr}"))?;
        let metrics = metrics.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        );
        info!(%addr, "metrics listening");
        servers.spawn(async move { axum::serve(listener, app).await.context("metrics server") });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("signal handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted, stopping"),
        _ = term.recv() => info!("terminated, stopping"),
        Some(r) = servers.join_next() => {
            match r {
                Ok(Ok(())) => bail!("a server stopped"),
                Ok(Err(e)) => return Err(e),
                Err(e) => bail!("a server panicked: {e}"),
            }
        }
    }
    Ok(())
}

/// Loads the eBPF counters on the underlay interface. A node without them
/// still works; the failure is logged and the metrics lack the family.
fn attach_counters(args: &AgentArgs, metrics: &metrics::Metrics) {
    let iface = args
        .underlay_iface
        .clone()
        .or_else(|| args.advertise_addr.and_then(util::interface_with_addr));
    let Some(iface) = iface else {
        warn!("no --underlay-iface and no --advertise-addr: eBPF underlay counters not loaded");
        return;
    };
    match swarmnet_dataplane::UnderlayCounters::attach(&iface) {
        Ok(c) => {
            info!(%iface, mode = c.mode(), "eBPF underlay counters attached");
            *metrics.underlay.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        }
        Err(error) => {
            warn!(%iface, error = %error_chain(&error), "eBPF underlay counters not loaded")
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

async fn serve_api(
    servers: &mut tokio::task::JoinSet<Result<()>>,
    host: &str,
    agent: Arc<agent::Agent>,
) -> Result<()> {
    let make = api::service(agent);
    if let Some(path) = host.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
        }
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("listen on {}", path.display()))?;
        info!(socket = %path.display(), "API listening");
        servers.spawn(async move {
            axum::serve(listener, tower::make::Shared::new(make))
                .await
                .context("API server (unix)")
        });
    } else if let Some(addr) = host.strip_prefix("tcp://") {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        warn!(%addr, "API listening on TCP without TLS: anyone who reaches it controls this node");
        servers.spawn(async move {
            axum::serve(listener, tower::make::Shared::new(make))
                .await
                .context("API server (tcp)")
        });
    } else {
        bail!("invalid -H {host}: use unix://PATH or tcp://ADDR:PORT");
    }
    Ok(())
}
