//! The command line: the server, and the one-shot commands an operator runs
//! next to it.

pub mod data_keys;
mod database;
pub mod service_account;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;
use crate::telemetry::Telemetry;

pub use database::CommandDatabase;

/// authd: an identity service over gRPC.
///
/// Configuration comes from environment variables and .env; see README.md.
#[derive(Debug, Parser)]
#[command(name = "authd", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service (the default)
    Serve,
    /// Apply database migrations and exit
    Migrate,
    /// Write the protobuf descriptor set (with imports) for REST gateways
    /// such as Envoy's transcoder
    DescriptorSet { file: PathBuf },
    /// Write the OpenAPI document of the REST routes (docs/openapi.json is
    /// this output, committed)
    Openapi { file: PathBuf },
    /// Manage the accounts other services call authd with
    #[command(subcommand)]
    ServiceAccount(service_account::ServiceAccountCommand),
    /// Make data keys and re-seal stored secrets under the first one
    /// (rotation of AUTHD_DATA_KEYS)
    #[command(subcommand)]
    DataKeys(data_keys::DataKeysCommand),
}

impl Command {
    /// Whether stdout is the command's output, which logs must stay out of.
    pub fn prints_to_stdout(&self) -> bool {
        matches!(self, Self::ServiceAccount(_) | Self::DataKeys(_))
    }
}

impl Cli {
    /// The parsed command line; or, after printing help or a one-line usage
    /// error, the code to exit with.
    pub fn from_args() -> Result<Self, ExitCode> {
        Self::try_parse().map_err(|e| {
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // `authd service-account` alone: its help lists what to type.
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
            } else {
                eprintln!("authd: {} (see authd --help)", one_line(&e.to_string()));
            }
            ExitCode::from(2)
        })
    }
}

/// clap's message without its usage block, on one line: a script's log then
/// shows what was wrong in one place.
fn one_line(rendered: &str) -> String {
    let message = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    message
        .strip_prefix("error: ")
        .map(str::to_owned)
        .unwrap_or(message)
}

/// Logs on stderr, for commands whose stdout is their result (a key a
/// script captures, a listing). No trace exporter: a one-shot command's
/// spans would be noise next to the server's.
pub fn init_stderr_logs(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let telemetry = Telemetry::disabled();
    // Fails only when a subscriber is installed already, which then logs.
    let _ = telemetry.subscriber(format, filter, std::io::stderr).try_init();
    telemetry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_fit_on_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --scope <SCOPE>\n\n\
                        Usage: authd service-account create --scope <SCOPE> <NAME>\n";
        assert_eq!(
            one_line(rendered),
            "the following required arguments were not provided: --scope <SCOPE>"
        );
    }

    #[test]
    fn no_arguments_means_serve_and_the_old_commands_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("authd").chain(args.iter().copied()));
        assert!(matches!(parse(&[]).map(|c| c.command), Ok(None)));
        assert!(matches!(
            parse(&["serve"]).map(|c| c.command),
            Ok(Some(Command::Serve))
        ));
        assert!(matches!(
            parse(&["migrate"]).map(|c| c.command),
            Ok(Some(Command::Migrate))
        ));
        assert!(matches!(
            parse(&["descriptor-set", "a.pb"]).map(|c| c.command),
            Ok(Some(Command::DescriptorSet { .. }))
        ));
        assert!(matches!(
            parse(&["data-keys", "generate", "k"]).map(|c| c.command),
            Ok(Some(Command::DataKeys(
                data_keys::DataKeysCommand::Generate { .. }
            )))
        ));
        assert!(matches!(
            parse(&["data-keys", "reseal"]).map(|c| c.command),
            Ok(Some(Command::DataKeys(data_keys::DataKeysCommand::Reseal {
                batch_size: 500
            })))
        ));
        assert!(parse(&["data-keys", "reseal", "--batch-size", "0"]).is_err());
        assert!(parse(&["openapi"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
    }
}
