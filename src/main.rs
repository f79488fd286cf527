//! The `shardgate` binary: the control plane. Loads and compiles the config, binds
//! the listeners, starts one worker per core, and turns SIGTERM/SIGINT into a drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use shardgate::config::{self, RuntimeKind};
use shardgate::worker;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "shardgate", version, about = "A thread-per-core API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the APIs of a config file.
    Run {
        #[arg(long)]
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
        #[arg(long)]
        config: PathBuf,
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

fn validate(path: &std::path::Path) -> ExitCode {
    match config::load_plan(path, None) {
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

fn run(
    path: &std::path::Path,
    workers: Option<usize>,
    runtime: Option<RuntimeKind>,
) -> anyhow::Result<()> {
    if workers == Some(0) {
        anyhow::bail!("--workers must be at least 1");
    }
    let mut plan = config::load_plan(path, workers).map_err(|errs| {
        anyhow::anyhow!("{} has {} error(s):\n{errs}", path.display(), errs.0.len())
    })?;
    if let Some(r) = runtime {
        plan.runtime = r;
    }
    // Signals are taken before any worker starts so none is lost.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let sockets = worker::bind_all(&plan)?;
    for (lp, addr) in plan.listeners.iter_mut().zip(&sockets.bound) {
        // A listener configured with port 0 now has a real one: the plan says which,
        // so `X-Forwarded-Port` names it.
        lp.bind = *addr;
        tracing::info!(listener = %lp.name, addr = %addr, workers = plan.workers, "listening");
    }
    let plan = Arc::new(plan);
    let workers = worker::start(Arc::clone(&plan), sockets)?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(
            signal = sig,
            drain_ms = plan.drain_timeout.as_millis() as u64,
            "stopping: draining in-flight requests"
        );
    }
    workers.begin_shutdown();
    workers.join();
    tracing::info!("stopped");
    Ok(())
}
