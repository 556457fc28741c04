//! `empacts run`: the operator process — metrics/health server, leader election on a
//! coordination.k8s.io Lease, the controller, and graceful shutdown on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use empacts_operator::client::ClientSettings;
use empacts_operator::context::{Context, Settings};
use empacts_operator::controller::{self, Scope};
use empacts_operator::leader::{Elector, LeaderConfig, Leadership, LossReason};
use empacts_operator::metrics::Metrics;
use empacts_operator::server;
use empacts_operator::shard;
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch only these namespaces, comma-separated (default: all namespaces). With a list,
    /// the operator needs a Role in each of them and no ClusterRole at all.
    #[arg(long, alias = "namespace", env = "EMPACTS_WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Reconciles running at once, over all watched namespaces.
    #[arg(long, env = "EMPACTS_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Seconds a reconcile may take; past it, it is abandoned and retried with backoff.
    #[arg(long, env = "EMPACTS_RECONCILE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_timeout: u64,
    /// Seconds between re-checks of a settled app (drift; referenced Secrets without the
    /// `empacts.io/watch=true` label are re-read then).
    #[arg(long, env = "EMPACTS_RESYNC", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync: u64,
    /// Seconds without any finished reconcile, while apps wait, before /healthz fails.
    #[arg(long, env = "EMPACTS_STALL_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: u64,
    /// Client-side limit of requests per second to the API server.
    #[arg(long, env = "EMPACTS_KUBE_API_QPS", default_value_t = 200.0)]
    pub kube_api_qps: f64,
    /// Requests allowed in a burst above the QPS limit.
    #[arg(long, env = "EMPACTS_KUBE_API_BURST", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub kube_api_burst: u32,
    /// Seconds to connect to the API server.
    #[arg(long, env = "EMPACTS_CONNECT_TIMEOUT", default_value_t = 10)]
    pub connect_timeout: u64,
    /// Seconds without a byte of a response before it fails (above the ~60 s watch bookmarks).
    #[arg(long, env = "EMPACTS_READ_TIMEOUT", default_value_t = 120)]
    pub read_timeout: u64,
    /// Log filter, e.g. `info` or `empacts_operator=debug,info`.
    #[arg(long, env = "EMPACTS_LOG", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "EMPACTS_LOG_FORMAT", value_parser = ["json", "text"], default_value = "json")]
    pub log_format: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "EMPACTS_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect one active replica through a Lease (disable only for a single replica).
    #[arg(long, env = "EMPACTS_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: the pod's namespace, else the kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "EMPACTS_LEASE_NAME", default_value = "empacts-operator")]
    pub lease_name: String,
    /// Seconds a leader's lease is valid without renewal; a standby takes over after it.
    #[arg(long, env = "EMPACTS_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,
    /// Seconds between the leader's Lease renewals and a standby's polls (decimals allowed;
    /// default: a third of duration minus grace). Each Lease call times out after 3/4 of it.
    #[arg(long, env = "EMPACTS_LEASE_RENEW_PERIOD", value_parser = seconds)]
    pub lease_renew_period: Option<Duration>,
    /// A leader whose renewals keep failing stops reconciling and exits this many seconds
    /// before a standby may take over (decimals allowed; default: a third of the duration).
    #[arg(long, env = "EMPACTS_LEASE_GRACE", value_parser = seconds)]
    pub lease_grace: Option<Duration>,
    /// Seconds in-flight reconciles get to finish on SIGTERM before they are cancelled; keep it
    /// plus 5 s (releasing the Lease) under the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "EMPACTS_SHUTDOWN_TIMEOUT", value_parser = seconds, default_value = "20")]
    pub shutdown_timeout: Duration,
    /// Split the apps into this many shards, each elected through its own Lease
    /// (`<lease-name>-shard-<i>-of-<n>`): every replica reconciles the apps of the shards it
    /// holds, and takes over a dead replica's shard after its lease duration. 1: no sharding,
    /// one Lease. Replicas of another count (or unsharded ones) must stop before any shard starts.
    #[arg(long, env = "EMPACTS_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: u32,
    /// The shard this replica campaigns for at once (others only one lease duration after it
    /// started); default: the trailing number of --instance (`empacts-operator-1` -> 1) modulo
    /// --shards, else a hash of it.
    #[arg(long, env = "EMPACTS_SHARD_PREFERENCE")]
    pub shard_preference: Option<u32>,
    /// Name of this replica (Lease holder and Events' reporting instance); defaults to the pod name.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
}

/// Bound on releasing the Lease at shutdown, so an unreachable API server cannot hold the
/// process past its termination grace period (the Lease then simply expires).
const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on the metrics server's own graceful shutdown (a scraper may hold a connection open).
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// A non-negative number of seconds, decimals allowed.
fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s:?} is not a non-negative number of seconds"))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, &args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_operator(args))
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How the leader's term ended.
enum End {
    /// SIGTERM; in-flight reconciles finished or were cancelled.
    Stopped,
    /// The Lease was lost (possibly during shutdown): stop writing at once.
    Lost(LossReason),
}

pub async fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    let identity = args.instance.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "empacts".into());
        format!("{host}-{}", std::process::id())
    });
    // Invalid timings fail before anything starts.
    let leader_config = args
        .leader_elect
        .then(|| {
            LeaderConfig::new(
                identity.clone(),
                Duration::from_secs(args.lease_duration),
                args.lease_renew_period,
                args.lease_grace,
            )
        })
        .transpose()?;
    if args.shards > 1 && leader_config.is_none() {
        anyhow::bail!("--shards needs leader election (--leader-elect=true): shards are owned through Leases");
    }
    let client_settings = ClientSettings {
        qps: args.kube_api_qps,
        burst: args.kube_api_burst,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        read_timeout: Duration::from_secs(args.read_timeout),
        ..ClientSettings::default()
    };
    let metrics = Arc::new(Metrics::new());
    let client = empacts_operator::client::build(&client_settings, &metrics).await?;
    // The config-hash key lives in the operator's own namespace (the Lease's).
    let own_ns = args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let hash_key = empacts_operator::hash_key::load_or_create(&client, &own_ns).await?;
    let settings = Settings {
        reconcile_timeout: Duration::from_secs(args.reconcile_timeout),
        concurrency: usize::from(args.concurrency),
        resync: Duration::from_secs(args.resync),
        ..Settings::default()
    };
    let ctx =
        Arc::new(Context::with_settings(client.clone(), metrics.clone(), Some(identity.clone()), hash_key, settings));
    let readiness = ctx.readiness.clone();
    readiness.set_stall_timeout(Duration::from_secs(args.stall_timeout));

    // SIGTERM/SIGINT flips `stop`; everything below shuts down from it.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(server::serve(
        args.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        bound_tx,
        stopped(stop_rx.clone()),
    ));
    if let Ok(addr) = bound_rx.await {
        info!(%addr, "serving /metrics, /healthz, /readyz");
    }
    let scope = Scope { namespaces: args.namespaces.iter().filter(|n| !n.is_empty()).cloned().collect() };

    let Some(leader_config) = leader_config else {
        readiness.leader.store(true, Ordering::Release);
        metrics.leader.set(1);
        let mut controller = Box::pin(controller::run(ctx, scope, stopped(stop_rx.clone())));
        tokio::select! {
            _ = &mut controller => {}
            _ = stopped(stop_rx.clone()) => drain(&mut controller, args.shutdown_timeout).await,
        }
        let _ = tokio::time::timeout(SERVER_STOP_TIMEOUT, server).await;
        return Ok(());
    };

    let lease_ns = args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    if args.shards > 1 {
        let result = run_shards(&args, ctx, scope, client, &lease_ns, leader_config, stop_rx).await;
        let _ = tokio::time::timeout(SERVER_STOP_TIMEOUT, server).await;
        return result;
    }
    let base = args.lease_name.clone();
    let elector = Elector::new(client.clone(), &lease_ns, &args.lease_name, leader_config)
        .exclusive_of(move |lease| shard::foreign_lease(&base, 1, lease));
    readiness.standby_ok.store(true, Ordering::Release);
    info!(lease = %format!("{lease_ns}/{}", args.lease_name), %identity, config = ?elector.config(), "waiting to become leader");
    let mut leadership = tokio::select! {
        leadership = elector.campaign() => leadership,
        _ = stopped(stop_rx.clone()) => {
            let _ = tokio::time::timeout(SERVER_STOP_TIMEOUT, server).await;
            return Ok(());
        }
    };
    info!(%identity, "became leader");
    metrics.leader.set(1);
    readiness.leader.store(true, Ordering::Release);

    // Lead until SIGTERM or until the Lease is lost; on SIGTERM the controller stops starting
    // reconciles and in-flight ones get `shutdown_timeout`, unless the Lease runs out first.
    let mut controller = Box::pin(controller::run(ctx, scope, stopped(stop_rx.clone())));
    let end = tokio::select! {
        reason = leadership.lost() => End::Lost(reason),
        _ = stopped(stop_rx.clone()) => tokio::select! {
            reason = leadership.lost() => End::Lost(reason),
            _ = drain(&mut controller, args.shutdown_timeout) => End::Stopped,
        },
        _ = &mut controller => End::Stopped,
    };
    // Dropping the controller cancels whatever reconcile still runs: no write starts after this.
    drop(controller);
    metrics.leader.set(0);
    readiness.leader.store(false, Ordering::Release);
    match end {
        End::Lost(reason) => {
            readiness.lease_lost.store(true, Ordering::Release);
            drop(leadership);
            error!(%reason, "lost the leader lease; stopped reconciling");
            // Exit rather than campaign again: a fresh process starts with no task, cache or
            // in-process record left over from the old term, and the restart is visible.
            anyhow::bail!("lost the leader lease ({reason}); exiting so a fresh process campaigns again");
        }
        End::Stopped => match leadership.release(LEASE_RELEASE_TIMEOUT).await {
            Ok(()) => info!("lease released"),
            Err(e) => warn!(error = %e, "lease not released"),
        },
    }
    let _ = tokio::time::timeout(SERVER_STOP_TIMEOUT, server).await;
    Ok(())
}

/// What happened to a sharded replica.
enum ShardEvent {
    Acquired(u32, Box<Leadership>),
    Lost(u32, LossReason),
    /// The preferred replica of a shard held as a foster asks for it back.
    Wanted(u32, String),
    /// SIGTERM, or the controller ended by itself.
    Stop,
}

/// Resolves when the first of `held` is lost (never while none is held).
async fn first_lost(held: &mut [(u32, Leadership)]) -> (u32, LossReason) {
    if held.is_empty() {
        return std::future::pending().await;
    }
    let lost = held.iter_mut().map(|(i, l)| Box::pin(async move { (*i, l.lost().await) }));
    futures::future::select_all(lost).await.0
}

/// Resolves when another replica asks for one of `fostered` (never while none is).
async fn first_wanted(mut fostered: Vec<(u32, watch::Receiver<Option<String>>)>) -> (u32, String) {
    if fostered.is_empty() {
        return std::future::pending().await;
    }
    let asked = fostered.iter_mut().map(|(i, rx)| {
        Box::pin(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(by) => (*i, by.clone().unwrap_or_default()),
                // The renewer ended: the loss is reported by `first_lost`.
                Err(_) => std::future::pending().await,
            }
        })
    });
    futures::future::select_all(asked).await.0
}

/// Shard `lost` is lost and the controller stopped: report it, hand the other `held` shards
/// over at once, and return the error that exits the process (a fresh process campaigns again).
async fn shard_lost(ctx: &Context, lost: u32, reason: LossReason, held: Vec<(u32, Leadership)>) -> anyhow::Error {
    ctx.metrics.leader.set(0);
    ctx.metrics.shards_held.set(0);
    ctx.readiness.leader.store(false, Ordering::Release);
    ctx.readiness.lease_lost.store(true, Ordering::Release);
    error!(shard = lost, %reason, "lost a shard lease; stopped reconciling");
    release_all(held.into_iter().filter(|(j, _)| *j != lost).collect()).await;
    anyhow::anyhow!("lost the lease of shard {lost} ({reason}); exiting so a fresh process campaigns again")
}

/// Release every held Lease at once, each within the release bound.
async fn release_all(held: Vec<(u32, Leadership)>) {
    let releases = held.into_iter().map(|(i, l)| async move {
        match l.release(LEASE_RELEASE_TIMEOUT).await {
            Ok(()) => info!(shard = i, "shard lease released"),
            Err(e) => warn!(shard = i, error = %e, "shard lease not released"),
        }
    });
    futures::future::join_all(releases).await;
}

/// Aborts the campaigns when the replica stops: a campaign that already sent its acquire may
/// have succeeded, and that Lease then simply expires.
struct Campaigns(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Campaigns {
    fn drop(&mut self) {
        self.0.iter().for_each(|c| c.abort());
    }
}

type ControllerRun = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// `--shards` > 1: campaign for every shard's Lease (the preferred one at once, asking a foster
/// holding it to hand it back; the others as a foster after a head start), and run the
/// controller over the apps of the shards held. A change of the held set restarts the
/// controller over the new set, the old one stopped first (the replica still holds the
/// shards it keeps, so their cancelled reconciles are simply redone); a fostered shard is
/// handed back only after that. Any held shard lost stops the controller at once and exits,
/// like a lost single Lease.
async fn run_shards(
    args: &RunArgs,
    ctx: Arc<Context>,
    scope: Scope,
    client: kube::Client,
    lease_ns: &str,
    cfg: LeaderConfig,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let shards = args.shards;
    let preferred = shard::preferred_shard(&cfg.identity, shards, args.shard_preference);
    ctx.readiness.standby_ok.store(true, Ordering::Release);
    let (acquired_tx, mut acquired_rx) = tokio::sync::mpsc::unbounded_channel();
    let campaign = |i: u32, not_before: tokio::time::Instant| {
        let lease = shard::lease_name(&args.lease_name, i, shards);
        // Switching a running operator to sharding, or to another shard count: the replicas of
        // the old configuration reconcile their apps until they stop; no shard starts before.
        let base = args.lease_name.clone();
        let elector = Elector::new(client.clone(), lease_ns, &lease, cfg.clone())
            .exclusive_of(move |lease| shard::foreign_lease(&base, shards, lease));
        let elector = if i == preferred { elector.asking() } else { elector };
        let tx = acquired_tx.clone();
        tokio::spawn(async move {
            let leadership = elector.campaign_from(not_before).await;
            let _ = tx.send((i, leadership));
        })
    };
    let started = tokio::time::Instant::now();
    let mut campaigns = Campaigns(
        (0..shards).map(|i| campaign(i, shard::campaign_start(i == preferred, started, cfg.lease_duration))).collect(),
    );
    let (metrics, readiness) = (ctx.metrics.clone(), ctx.readiness.clone());
    info!(identity = %cfg.identity, shards, preferred, lease_namespace = %lease_ns, config = ?cfg, "campaigning for shards");
    // The controller over the apps of `held`, or None while none is held.
    let start = |held: &[(u32, Leadership)]| -> Option<ControllerRun> {
        let filter = shard::Filter::new(shards, held.iter().map(|(i, _)| *i));
        metrics.shards_held.set(held.len() as i64);
        metrics.leader.set(i64::from(!held.is_empty()));
        readiness.leader.store(!held.is_empty(), Ordering::Release);
        if held.is_empty() {
            return None;
        }
        info!(held = ?filter.held, "reconciling the apps of the shards held");
        Some(Box::pin(controller::run_sharded(ctx.clone(), scope.clone(), Some(filter), stopped(stop_rx.clone()))))
    };

    let mut held: Vec<(u32, Leadership)> = Vec::new();
    let mut controller: Option<ControllerRun> = None;
    loop {
        let event = {
            let fostered = held.iter().filter(|(i, _)| *i != preferred).map(|(i, l)| (*i, l.wanted())).collect();
            let running = async {
                match controller.as_mut() {
                    Some(c) => c.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((i, l)) = acquired_rx.recv() => ShardEvent::Acquired(i, Box::new(l)),
                (i, reason) = first_lost(&mut held) => ShardEvent::Lost(i, reason),
                (i, by) = first_wanted(fostered) => ShardEvent::Wanted(i, by),
                _ = stopped(stop_rx.clone()) => ShardEvent::Stop,
                _ = running => ShardEvent::Stop,
            }
        };
        match event {
            ShardEvent::Acquired(i, leadership) => {
                // Stop the controller over the old set before anything else.
                drop(controller.take());
                held.push((i, *leadership));
                info!(shard = i, preferred = i == preferred, "acquired a shard");
                controller = start(&held);
            }
            ShardEvent::Wanted(i, by) => {
                let Some(at) = held.iter().position(|(j, _)| *j == i) else { continue };
                // Stop reconciling (the controller covers the shard) before releasing its Lease to
                // the asker; reconciling the others resumes after, unless one was lost meanwhile.
                drop(controller.take());
                let (_, leadership) = held.remove(at);
                info!(shard = i, wanted_by = %by, "handing a fostered shard back to its preferred replica");
                let lost = tokio::select! {
                    released = leadership.release(LEASE_RELEASE_TIMEOUT) => {
                        match released {
                            Ok(()) => info!(shard = i, "shard lease released"),
                            Err(e) => warn!(shard = i, error = %e, "shard lease not released"),
                        }
                        None
                    }
                    lost = first_lost(&mut held) => Some(lost),
                };
                if let Some((j, reason)) = lost {
                    return Err(shard_lost(&ctx, j, reason, held).await);
                }
                // Campaign for it again as a foster, giving the asker a head start.
                let not_before = shard::campaign_start(false, tokio::time::Instant::now(), cfg.lease_duration);
                campaigns.0.push(campaign(i, not_before));
                controller = start(&held);
            }
            ShardEvent::Lost(i, reason) => {
                // Dropping the controller cancels whatever reconcile still runs: no write starts
                // after this, then the other shards are handed over at once.
                drop(controller.take());
                return Err(shard_lost(&ctx, i, reason, held).await);
            }
            ShardEvent::Stop => break,
        }
    }
    drop(campaigns);
    let lost = match controller.take() {
        Some(mut run) => tokio::select! {
            lost = first_lost(&mut held) => Some(lost),
            _ = drain(&mut run, args.shutdown_timeout) => None,
        },
        None => None,
    };
    metrics.leader.set(0);
    metrics.shards_held.set(0);
    readiness.leader.store(false, Ordering::Release);
    if let Some((i, reason)) = lost {
        return Err(shard_lost(&ctx, i, reason, held).await);
    }
    release_all(held).await;
    Ok(())
}

/// Give in-flight reconciles `limit` to finish after shutdown began, then cancel them.
async fn drain(controller: impl std::future::Future<Output = ()>, limit: Duration) {
    if tokio::time::timeout(limit, controller).await.is_err() {
        warn!(timeout = ?limit, "cancelling in-flight reconciles: shutdown timeout reached");
    }
}

fn init_logging(level: &str, format: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    info!("shutdown requested; finishing in-flight reconciles");
}
