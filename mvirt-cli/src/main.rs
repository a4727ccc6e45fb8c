//! `mvirt`: parse the command line, run the command, exit with its code.

use clap::Parser;

fn main() {
    let cli = mvirt_cli::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            std::process::exit(mvirt_cli::client::exit::API);
        }
    };
    let code = rt.block_on(mvirt_cli::commands::run(cli));
    // Do not wait for blocked stdin/terminal reader threads.
    rt.shutdown_background();
    std::process::exit(code);
}
