use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use authd::cli::{Cli, Command, CommandDatabase};
use authd::config::Config;
use authd::startup::{Application, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::from_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authd: {e:#}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let logs_on_stderr = command.prints_to_stdout();
    let telemetry = if logs_on_stderr {
        authd::cli::init_stderr_logs(config.log_format)
    } else {
        authd::telemetry::init(config.log_format)
    };
    let result = match command {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::DescriptorSet { file } => write(&file, authd::pb::FILE_DESCRIPTOR_SET),
        Command::Openapi { file } => write(&file, authd::pb::OPENAPI_JSON.as_bytes()),
        Command::ServiceAccount(command) => authd::cli::service_account::run(&config, command).await,
        Command::DataKeys(command) => authd::cli::data_keys::run(&config, command).await,
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A log line on stderr would only repeat the message below.
            if !logs_on_stderr {
                tracing::error!(error = format!("{e:#}"), "authd failed");
            }
            eprintln!("authd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Before anything listens: a SIGTERM from then on is a graceful stop.
    // One during start-up (a database that does not answer, say) stops it
    // there, as the default action did.
    let mut stop = Box::pin(shutdown_signal());
    let app = tokio::select! {
        app = Application::build(config) => app?,
        () = &mut stop => return Ok(()),
    };
    app.run_until_stopped(stop).await
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    CommandDatabase::open(&config).await?.close().await;
    tracing::info!("migrations applied");
    Ok(())
}

fn write(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
