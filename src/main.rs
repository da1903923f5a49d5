use std::process::ExitCode;

use authd::config::Config;
use authd::startup::{Application, open_database, shutdown_signal};

const USAGE: &str = "usage: authd [serve | migrate | descriptor-set <file> | openapi <file>]

  serve                    run the gRPC service (default)
  migrate                  apply database migrations and exit
  descriptor-set <file>    write the protobuf descriptor set (with imports)
                           for REST gateways such as Envoy's transcoder
  openapi <file>           write the OpenAPI document of the REST routes
                           (docs/openapi.json is this output, committed)

Configuration comes from environment variables and .env; see README.md.";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authd: {e:#}");
            return ExitCode::from(2);
        }
    };
    let telemetry = authd::telemetry::init(config.log_format);
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["serve"] => serve(config).await,
        ["migrate"] => migrate(config).await,
        ["descriptor-set", path] => std::fs::write(path, authd::pb::FILE_DESCRIPTOR_SET).map_err(Into::into),
        ["openapi", path] => std::fs::write(path, authd::pb::OPENAPI_JSON).map_err(Into::into),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "authd failed");
            eprintln!("authd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let database = open_database(&config).await?;
    let pool = authd::db::connect_lazy(database.options, 2);
    authd::db::migrate(&pool).await?;
    pool.close().await;
    tracing::info!("migrations applied");
    Ok(())
}
