//! `hotplugctl`: the admin's tool. Everything is in the library's `ctl` module.

fn main() -> std::process::ExitCode {
    hotplugd::ctl::main(std::env::args_os())
}
