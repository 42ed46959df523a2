//! The `matrix-turnify` binary: serve (the default), `check`, `healthcheck`,
//! `--version`.

use std::process::ExitCode;

use matrix_turnify::config::{self, Config};
use matrix_turnify::{check, healthcheck, logging};
use matrix_turnify::{raise_nofile_limit, shutdown_signal};

const USAGE: &str = "usage: matrix-turnify [serve | check [--public-url URL [--token TOKEN]] | healthcheck | --version | --help]

  serve        answer /voip/turnServer (the default); with LIVEKIT_SFU_URL, also proxy
               LiveKit on LIVEKIT_LISTEN_ADDR, adding Cloudflare TURN to its joins
  check        try the configuration against Synapse and Cloudflare, print a report;
               with --public-url (the URL clients use, e.g. https://matrix.example.com),
               first ask each turnServer path through it and report whether the reverse
               proxy routes it to the daemon; with --token (an access token, shown in the
               process list: use a throw-away login), also fetch a credential that way;
               with LIVEKIT_SFU_URL, also ask LiveKit and the front door, and with
               LIVEKIT_KEY and LIVEKIT_SECRET join a throw-away room through the front
               door and show the Cloudflare entry in LiveKit's join (run it next to the
               daemon: docker compose exec matrix-turnify matrix-turnify check)
  healthcheck  exit 0 if the daemon on LISTEN_ADDR answers /healthz (container HEALTHCHECK)

Configuration comes from environment variables (an empty one counts as unset):";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["serve"] => serve(),
        ["healthcheck"] => healthcheck(),
        ["check", options @ ..] => match public_route(options) {
            Ok(public) => check(public.as_ref()),
            Err(e) => {
                eprintln!("matrix-turnify check: {e}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        ["--version" | "-V" | "version"] => {
            println!("matrix-turnify {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help" | "-h" | "help"] => {
            print!("{USAGE}\n\n{}", config::help_text());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("matrix-turnify: unknown arguments {args:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The environment as `(name, value)` pairs; a variable that is not valid
/// UTF-8 cannot be one of ours and is skipped.
fn env_vars() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
}

fn serve() -> ExitCode {
    let config = match Config::from_vars(env_vars()) {
        Ok(config) => config,
        Err(rejected) => {
            // The warnings first: a misspelt name is often why one is "not set".
            for warning in &rejected.warnings {
                eprintln!("matrix-turnify: warning: {warning}");
            }
            for error in &rejected.errors {
                eprintln!("matrix-turnify: configuration error: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    logging::init(config.log_level, config.log_format);
    // One thread: the work per request is a few small copies around two
    // upstream calls, and a current-thread runtime measured about half the
    // CPU per request of the multi-thread one (docs/behaviour.md §11).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("matrix-turnify: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!(
                    "matrix-turnify: LISTEN_ADDR: cannot listen on {}: {e}",
                    config.listen_addr
                );
                return ExitCode::FAILURE;
            }
        };
        let livekit = match &config.livekit {
            Some(livekit) => match tokio::net::TcpListener::bind(livekit.listen_addr).await {
                Ok(listener) => Some(listener),
                Err(e) => {
                    eprintln!(
                        "matrix-turnify: LIVEKIT_LISTEN_ADDR: cannot listen on {}: {e}",
                        livekit.listen_addr
                    );
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        let nofile = raise_nofile_limit();
        match nofile.error {
            None => tracing::info!(
                soft_before = nofile.soft_before,
                soft = nofile.soft,
                hard = nofile.hard,
                "file descriptor limit (RLIMIT_NOFILE): soft limit raised to the hard one (none: unlimited)"
            ),
            Some(e) => tracing::warn!(
                error = %e,
                soft = nofile.soft,
                hard = nofile.hard,
                "file descriptor limit (RLIMIT_NOFILE): could not raise the soft limit to the hard one; the \
                 connection caps follow the soft one"
            ),
        }
        let listeners = matrix_turnify::Listeners {
            matrix: listener,
            livekit,
        };
        match matrix_turnify::run(config, listeners, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("matrix-turnify: cannot build the HTTP client: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `--public-url URL [--token TOKEN]`, in either order.
fn public_route(options: &[&str]) -> Result<Option<check::PublicRoute>, String> {
    let mut url = None;
    let mut token = None;
    let mut rest = options.iter();
    while let Some(option) = rest.next() {
        let slot = match *option {
            "--public-url" => &mut url,
            "--token" => &mut token,
            other => return Err(format!("unknown option {other:?}")),
        };
        let value = rest.next().ok_or_else(|| format!("{option} needs a value"))?;
        *slot = Some((*value).to_owned());
    }
    match (url, token) {
        (Some(url), token) => Ok(Some(check::PublicRoute { url, token })),
        (None, Some(_)) => Err("--token needs --public-url".to_owned()),
        (None, None) => Ok(None),
    }
}

fn check(public: Option<&check::PublicRoute>) -> ExitCode {
    let config = match Config::from_vars(env_vars()) {
        Ok(config) => config,
        Err(rejected) => {
            print!("{}", check::render(&check::rejected(&rejected)));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("matrix-turnify: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let findings = runtime.block_on(check::run(&config, public));
    print!("{}", check::render(&findings));
    if !findings.iter().any(check::Finding::failed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn healthcheck() -> ExitCode {
    let addr = match config::listen_addr_from_vars(env_vars()) {
        Ok(addr) => config::local_probe_addr(addr),
        Err(e) => {
            eprintln!("matrix-turnify healthcheck: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match healthcheck::probe(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("matrix-turnify healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}
