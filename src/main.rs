#![forbid(unsafe_code)]

use std::process::ExitCode;

/// mimalloc hands freed memory back to the system far more readily than
/// glibc's per-thread arenas, which kept a rollback's peak resident for good
/// (BENCHMARKS.md, memory).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser};
use snapback::config::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // Only memory is at stake if the kernel refuses (src/memory.rs).
    let _ = snapback::memory::no_transparent_huge_pages();
    snapback::tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(mut args) => {
            // The client's --context (a global flag, so `serve --help` lists
            // it) names a kubeconfig context too: the same as --kube-context.
            match (cli.client.connect.context, &args.kube_context) {
                (Some(context), Some(kube_context)) if context != *kube_context => {
                    eprintln!(
                        "snapback: --context {context} and --kube-context {kube_context} name different kubeconfig contexts"
                    );
                    return ExitCode::from(2);
                }
                (Some(context), None) => args.kube_context = Some(context),
                _ => {}
            }
            snapback::server::run((*args).into()).await
        }
        Command::Certs(args) => snapback::certs::generate(&args.out, &args.hosts)
            .map(|ca| match ca {
                snapback::certs::CaUsed::New => eprintln!(
                    "wrote ca.crt, ca.key, tls.crt, tls.key to {} (a new CA: put ca.crt in the webhook configurations' caBundle)",
                    args.out.display()
                ),
                snapback::certs::CaUsed::Existing => eprintln!(
                    "wrote tls.crt, tls.key to {}, signed by the CA already there (ca.crt unchanged: the caBundle stays valid)",
                    args.out.display()
                ),
            })
            .map_err(Into::into),
        Command::WebhookConfig(args) => snapback::server::print_webhook_config(&args),
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let name = std::env::args()
                .next()
                .and_then(|a| {
                    std::path::Path::new(&a)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "snapback".into());
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut script);
            let mut script = String::from_utf8_lossy(&script).into_owned();
            if shell == clap_complete::Shell::Bash && name.contains('-') {
                // clap_complete names a hyphenated binary's subcommand
                // states two ways (`kubectl__snapback__subcmd__rollback`
                // when it enters them, `kubectl__subcmd__snapback__…` in
                // the case labels), so nothing past the first word would
                // complete: one spelling.
                script = script.replace(
                    &name.replace('-', "__subcmd__"),
                    &name.replace('-', "__"),
                );
            }
            print!("{script}");
            Ok(())
        }
        Command::Client(cmd) => {
            quiet_on_closed_stdout();
            return match snapback::client::run(cli.client, cmd).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(f) => {
                    eprintln!("error: {}", f.message);
                    ExitCode::from(f.code)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapback: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `kubectl snapback show X | head -1`: once the reader is gone, printing
/// fails with a broken pipe, and `println!` panics. Exit quietly instead,
/// with the status a process killed by SIGPIPE has (128 + 13), as the
/// usual command-line tools do.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
}
