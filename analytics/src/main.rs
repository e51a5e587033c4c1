//! The `flowaudit` binary: parse, set up logging, run, map errors to an exit code.
use clap::Parser;

fn main() {
    let cli = flowaudit_analytics::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWAUDIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn"));
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
