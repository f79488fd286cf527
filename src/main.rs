//! The `shardgate` binary: the control plane. Loads and compiles the config, binds
//! the listeners, starts one worker per core, and turns SIGTERM/SIGINT into a drain.

// Tests and the control plane may share state under a mutex; the request path may not (clippy.toml).
#![allow(clippy::disallowed_types)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use shardgate::compile;
use shardgate::config::RuntimeKind;
use shardgate::control::registry::Registry;
use shardgate::control::store::Store;
use shardgate::proxy::worker;

#[cfg_attr(not(feature = "sysalloc"), global_allocator)]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "shardgate", version = shardgate::VERSION, about = "A thread-per-core API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the APIs of a config file.
    Run {
        /// The config file (or `SHARDGATE_CONFIG`).
        #[arg(long, env = "SHARDGATE_CONFIG")]
        config: PathBuf,
        /// Worker threads (overrides `workers:` in the config).
        #[arg(long)]
        workers: Option<usize>,
        /// monoio driver: auto, io_uring or epoll (overrides `runtime:`).
        #[arg(long)]
        runtime: Option<RuntimeKind>,
    },
    /// Check a config file: print every error, or a one-line summary.
    Validate {
        /// The config file (or `SHARDGATE_CONFIG`).
        #[arg(long, env = "SHARDGATE_CONFIG")]
        config: PathBuf,
    },
    /// API keys of a running gateway (its admin API).
    Keys {
        #[command(subcommand)]
        op: shardgate::control::cli::Keys,
        #[command(flatten)]
        target: shardgate::control::cli::Target,
    },
    /// Usage plans of a running gateway.
    Plans {
        #[command(subcommand)]
        op: shardgate::control::cli::Plans,
        #[command(flatten)]
        target: shardgate::control::cli::Target,
    },
    /// SigV4 access keys of a running gateway.
    AccessKeys {
        #[command(subcommand)]
        op: shardgate::control::cli::AccessKeys,
        #[command(flatten)]
        target: shardgate::control::cli::Target,
    },
    /// Deployments and stages of a running gateway.
    Deploy {
        #[command(subcommand)]
        op: shardgate::control::cli::Deploy,
        #[command(flatten)]
        target: shardgate::control::cli::Target,
    },
    /// Makes a config of an OpenAPI document (an AWS export).
    Import {
        #[command(subcommand)]
        what: Import,
    },
    /// Writes an API of a config as an OpenAPI document.
    Export {
        #[command(subcommand)]
        what: Export,
    },
    /// Makes a running gateway compile its config file again.
    Reload {
        #[command(flatten)]
        target: shardgate::control::cli::Target,
    },
    /// A usage plan's daily usage per key (AWS's GetUsage).
    Usage {
        plan: String,
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD.
        #[arg(long)]
        to: String,
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        target: shardgate::control::cli::Target,
    },
}

#[derive(Debug, clap::Subcommand)]
enum Import {
    /// OpenAPI 3.0/3.1 or Swagger 2.0, YAML or JSON, with AWS's
    /// x-amazon-apigateway extensions: the config on stdout (or --out), what
    /// could not be mapped on stderr.
    Openapi {
        file: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum Export {
    /// OpenAPI 3.0 with AWS's x-amazon-apigateway extensions, on stdout.
    Openapi {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        api: String,
        #[arg(long, default_value = "yaml")]
        format: String,
    },
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHARDGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Import {
            what: Import::Openapi { file, out },
        } => done(shardgate::control::openapi::import_file(
            &file,
            out.as_deref(),
        )),
        Command::Export {
            what:
                Export::Openapi {
                    config,
                    api,
                    format,
                },
        } => done(shardgate::control::openapi::export_file(
            &config, &api, &format,
        )),
        Command::Keys { op, target } => admin(&target, shardgate::control::cli::keys(&op)),
        Command::Plans { op, target } => admin(&target, Ok(shardgate::control::cli::plans(&op))),
        Command::AccessKeys { op, target } => {
            admin(&target, Ok(shardgate::control::cli::access_keys(&op)))
        }
        Command::Deploy { op, target } => admin(&target, shardgate::control::cli::deploy(&op)),
        Command::Reload { target } => admin(&target, Ok(shardgate::control::cli::reload())),
        Command::Usage {
            plan,
            from,
            to,
            key,
            target,
        } => admin(
            &target,
            Ok(shardgate::control::cli::usage(
                &plan,
                &from,
                &to,
                key.as_deref(),
            )),
        ),
        Command::Run {
            config,
            workers,
            runtime,
        } => match run(&config, workers, runtime) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shardgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// mimalloc advises the kernel to back its arenas with transparent huge pages, and
/// where THP is enabled (`madvise` or `always`) touching one byte of a region then
/// makes 2 MiB resident: idle connections cost 2.6 KiB of RSS each instead of
/// 0.7 KiB, for no measurable CPU gain (tuning/memory.md). Disabled for this
/// process unless `MIMALLOC_ALLOW_THP` is set, which mimalloc itself honours.
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory
        // of ours; it fails harmlessly on kernels without it.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// Runs one management call and prints its answer.
fn admin(
    target: &shardgate::control::cli::Target,
    call: Result<shardgate::control::cli::Call, String>,
) -> ExitCode {
    match call.and_then(|c| shardgate::control::cli::send(target, &c)) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shardgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match compile::load_plan(path, None) {
        Ok(plan) => {
            let routes: usize = plan.stages.iter().map(|s| s.routes.len()).sum();
            println!(
                "{}: ok: {} listener(s), {} stage(s), {} route(s) across stages",
                path.display(),
                plan.listeners.len(),
                plan.stages.len(),
                routes
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in &errs.0 {
                println!("{}: {e}", path.display());
            }
            println!("{}: {} error(s)", path.display(), errs.0.len());
            ExitCode::FAILURE
        }
    }
}

/// A command's outcome: an error on stderr and exit status 1.
fn done(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    path: &std::path::Path,
    workers: Option<usize>,
    runtime: Option<RuntimeKind>,
) -> anyhow::Result<()> {
    if workers == Some(0) {
        anyhow::bail!("--workers must be at least 1");
    }
    let mut plan = compile::load_plan(path, workers).map_err(|errs| {
        anyhow::anyhow!("{} has {} error(s):\n{errs}", path.display(), errs.0.len())
    })?;
    if let Some(r) = runtime {
        plan.runtime = r;
    }
    // Keys and usage: the store (or memory), and the registry that publishes the
    // first keyring before any worker starts.
    let shared = match &plan.redis {
        Some(r) => Some(Arc::new(shardgate::control::redis::Shared::new(r)?)),
        None => None,
    };
    let store = match (&plan.store_path, &shared) {
        (Some(dir), _) => Store::open(dir)?,
        (None, Some(s)) => Store::memory()?.with_mirror(Arc::clone(s)),
        (None, None) => Store::memory()?,
    };
    if let Some(s) = &shared {
        // Deployments and stage pointers other nodes made, before compiling.
        if let Err(e) = shardgate::control::cluster::pull_deployments(s, &store) {
            tracing::warn!(error = %format!("{e:#}"), "redis unreachable at start: stages follow the config");
        }
    }
    // Stages the management API pointed at deployments serve those, and
    // canaries name deployments of the store.
    let store = Arc::new(store);
    let deployed = shardgate::control::deploy::deployed(&store)?;
    let canaries = plan.stages.iter().any(|s| s.canary.is_some());
    if !deployed.is_empty() || canaries {
        let runtime = plan.runtime;
        plan = compile::load_plan_with(
            path,
            &shardgate::compile::Options {
                workers,
                deployed,
                snapshots: Some(shardgate::control::deploy::snapshots(Arc::clone(&store))),
                ..Default::default()
            },
        )
        .map_err(|errs| {
            anyhow::anyhow!(
                "{} with the store's deployments has {} error(s):\n{errs}",
                path.display(),
                errs.0.len()
            )
        })?;
        plan.runtime = runtime;
    }
    let registry = Registry::new(
        &plan.stages,
        plan.workers,
        Arc::clone(&plan.live),
        store,
        &plan.seed,
    )?;
    let mut registry = registry;
    registry.attach_access_keys(
        Arc::clone(&plan.access_keys),
        std::mem::take(&mut plan.config_access_keys),
    )?;
    // JWKS fetchers start now, so keys are there (or being fetched) by the first
    // request.
    for a in &plan.authorizers {
        a.start();
    }
    plan.logs.start();
    shardgate::upstream::watch::start(&plan.upstreams);
    for f in &plan.functions {
        f.start()?;
    }
    if let Some(exporter) = &plan.telemetry {
        exporter.start();
    }
    let persistent = plan.store_path.is_some();
    if shared.is_some() {
        // Cluster mode: every throttle of the config is Redis's, for all nodes.
        for b in &plan.throttles {
            b.share(plan.workers);
        }
    }
    let registry = Arc::new(Mutex::new(registry));
    let mut cluster_from = 0;
    if let Some(s) = &shared {
        // What other nodes changed wins over this node's config seeds.
        let adopted = match shardgate::control::cluster::sync_now(s, &registry) {
            Ok(v) => v,
            Err(e) => {
                if s.fail_open {
                    tracing::warn!(error = %format!("{e:#}"), "redis unreachable at start: serving the config's keys (fail_open)");
                } else {
                    // Keyed and throttled routes answer 503 until Redis does.
                    tracing::warn!(error = %format!("{e:#}"), "redis unreachable at start: keyed and throttled routes answer 503 until it is back (fail_closed)");
                    plan.live.set_closed(true);
                }
                0
            }
        };
        // Each throttle's reservoir filled before the first request.
        shardgate::control::cluster::fill_reservoirs(s, &plan.throttles, &plan.throttle_names);
        tracing::info!(node = %s.node_id, version = adopted, "cluster mode: shared state adopted");
        cluster_from = adopted;
    }
    let writer = StoreWriter::start(Arc::clone(&registry))?;
    if persistent || shared.is_some() {
        // Saved as soon as leased, so a kill -9 loses as little as it can; an
        // in-memory store is only read by the usage report, every 50 ms is enough.
        plan.live.set_writer(writer.thread());
    }
    // Signals are taken before any worker starts so none is lost.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let sockets = worker::bind_all(&plan)?;
    for (lp, addr) in plan.listeners.iter_mut().zip(&sockets.bound) {
        // A listener configured with port 0 now has a real one: the plan says which,
        // so `X-Forwarded-Port` names it.
        lp.bind = *addr;
    }
    let plan = Arc::new(plan);
    let control = Arc::new(shardgate::control::reload::Control::new(
        path.to_path_buf(),
        Arc::clone(&plan),
        Arc::clone(&registry),
    ));
    let mut admin_addr = None;
    if let Some(admin) = &plan.admin {
        let addr = shardgate::control::admin::start(admin, Arc::clone(&control))?;
        admin_addr = Some(addr.to_string());
        // `admin=`, not `addr=`: tools wait for the public listener's `addr=`.
        tracing::info!(admin = %addr, token = admin.token.is_some(), "admin listening");
    }
    for lp in &plan.listeners {
        tracing::info!(listener = %lp.name, addr = %lp.bind, workers = plan.workers, "listening");
    }
    let workers = worker::start(Arc::clone(&plan), sockets)?;
    control.attach(&workers);
    if let Some(s) = &shared {
        let me = shardgate::control::cluster::NodeInfo {
            listeners: plan.listeners.iter().map(|l| l.bind.to_string()).collect(),
            admin: admin_addr.clone(),
            started_ms: shardgate::clock::unix_ms(),
        };
        shardgate::control::cluster::start(
            Arc::clone(s),
            Arc::clone(&registry),
            Arc::clone(&control),
            me,
            cluster_from,
        );
        shardgate::control::cluster::start_tokens(Arc::clone(s), Arc::clone(&control));
        shardgate::control::relay::start(Arc::clone(s));
    }
    shardgate::control::reload::watch(Arc::clone(&control));
    // Config loaded, listeners bound, workers running: `/readyz` says so.
    plan.metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    for sig in signals.forever() {
        if sig == SIGUSR1 {
            // logrotate moved the files: the writer opens them anew.
            tracing::info!("SIGUSR1: reopening access logs");
            control.plan().logs.reopen();
            continue;
        }
        if sig == SIGHUP {
            // The whole config, certificates included; errors are logged and the
            // running config stays.
            tracing::info!("SIGHUP: reloading the config");
            let _ = control.reload("SIGHUP");
            continue;
        }
        tracing::info!(
            signal = sig,
            drain_ms = plan.drain_timeout.as_millis() as u64,
            "stopping: draining in-flight requests"
        );
        break;
    }
    plan.metrics
        .ready
        .store(false, std::sync::atomic::Ordering::Release);
    workers.begin_shutdown();
    workers.join();
    // Function runtimes stop with the gateway (after the requests they served).
    for f in &control.plan().functions {
        f.shutdown();
    }
    // Lines the workers handed over last reach their files.
    control.plan().logs.drain(Duration::from_secs(1));
    // The workers gave back their unspent leases: save the exact counts.
    writer.stop();
    shardgate::lock(&registry).return_grants();
    let saved = shardgate::lock(&registry).shutdown();
    if let Err(e) = saved {
        tracing::error!(error = %format!("{e:#}"), "could not save usage at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The store's writer: saves quota counts and daily usage when a worker takes a
/// lease (it is woken), at most once per `MIN_COMMIT_GAP` so a busy key costs one
/// commit per gap rather than one per lease, and at least every 50 ms while
/// anything changed.
const MIN_COMMIT_GAP: Duration = Duration::from_millis(10);

struct StoreWriter {
    handle: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl StoreWriter {
    fn start(registry: Arc<Mutex<Registry>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("shardgate-store".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(Duration::from_millis(50));
                    let result = {
                        let mut r = shardgate::lock(&registry);
                        // Cluster mode: more of the quotas this node runs low on.
                        r.top_up_grants();
                        r.store().replay_usage();
                        r.flush_if_changed()
                    };
                    if let Err(e) = result {
                        tracing::error!(error = %format!("{e:#}"), "store write failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    // Wakes meanwhile leave the park token set: the next park
                    // returns at once and saves them together.
                    std::thread::sleep(MIN_COMMIT_GAP);
                }
            })?;
        Ok(Self { handle, stop })
    }

    fn thread(&self) -> std::thread::Thread {
        self.handle.thread().clone()
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        let _ = self.handle.join();
    }
}
