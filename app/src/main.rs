//! `crane-app [--listen ADDR]`: the book's app, on 0.0.0.0:7070 unless told otherwise.

use std::process::ExitCode;

use tokio::net::TcpListener;

const USAGE: &str =
    "usage: crane-app [--listen ADDR]   (default 0.0.0.0:7070; port 0 picks a free one)";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => crane_app::DEFAULT_LISTEN.to_string(),
        ["--listen", addr] => addr.to_string(),
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&listen).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crane-app: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: &str) -> std::io::Result<()> {
    let termination = crane_app::Termination::install()?;
    let listener = TcpListener::bind(listen).await?;
    let hostname = crane_app::hostname();
    println!(
        "crane-app listening on {}, answering as {hostname}",
        listener.local_addr()?
    );
    let shutdown = async move {
        let signal = termination.recv().await;
        println!("{signal} received: finishing the requests in flight, then exiting");
    };
    crane_app::serve(listener, hostname, shutdown).await?;
    println!("crane-app stopped");
    Ok(())
}
