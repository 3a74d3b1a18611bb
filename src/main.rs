#![forbid(unsafe_code)]

use clap::Parser;
use snapback::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    snapback::tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => snapback::server::run((*args).into()).await,
        Command::Certs(args) => snapback::certs::generate(&args.out, &args.hosts)
            .map(|()| eprintln!("wrote ca.crt, tls.crt, tls.key to {}", args.out.display()))
            .map_err(Into::into),
        Command::WebhookConfig(args) => snapback::server::print_webhook_config(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapback: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
