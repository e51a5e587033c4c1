//! The `flowaudit` binary: parse, set up logging, run, map errors to an exit code.
use clap::Parser;

/// The default log filter: flowaudit at info; librdkafka and the Delta Lake libraries (which log
/// every snapshot they build at info) at warn.
const DEFAULT_LOG: &str =
    "info,librdkafka=warn,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn,buoyant_kernel_engine=warn";

fn main() {
    // Two TLS back-ends are linked (ring for Flight SQL, aws-lc-rs through delta-rs's HTTP
    // client): name the one every TLS connection of this process uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = flowaudit_analytics::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWAUDIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = flowaudit_analytics::cli::run(cli) {
        // Errors may quote values from events: nothing in them may act on the terminal.
        let e = format!("{e:#}");
        eprintln!(
            "Error: {}",
            flowaudit_analytics::sqlout::neutralise_keeping_layout(&e)
        );
        std::process::exit(1);
    }
}
