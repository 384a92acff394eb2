//! The `bllm` binary: parses arguments, runs the command, prints the error chain on failure.

fn main() -> std::process::ExitCode {
    match bllm_cli::run_from(std::env::args_os()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // clap errors (usage, --help, --version) print themselves with their own exit code.
            if let Some(c) = e.downcast_ref::<clap::Error>() {
                let _ = c.print();
                return std::process::ExitCode::from(c.exit_code().clamp(0, 255) as u8);
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
