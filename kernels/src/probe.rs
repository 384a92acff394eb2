//! Probing a device runtime without a panic reaching the user.
//!
//! Device runtimes (CubeCL's wgpu and CUDA clients, Burn's CUDA backend) panic when there is no
//! adapter or driver — often first on a runtime thread, so the caller only sees a channel
//! error. [`quietly`] runs a probe with panic messages captured instead of printed, and turns a
//! panic into the first message recorded (the root cause), shortened.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

/// Runs `f`; a panic (on this or any thread while `f` runs) becomes `Err(message)`. The panic
/// hook is replaced for the duration and restored after.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook = std::panic::take_hook();
    let sink = seen.clone();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut v) = sink.lock() {
            v.push(info.to_string());
        }
    }));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        let first = seen.lock().ok().and_then(|v| v.first().cloned());
        let own = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".to_owned());
        shorten(&first.unwrap_or(own).replace('\n', " "))
    })
}

/// At most 240 characters (the CUDA driver-loading panic lists 34 library names).
fn shorten(m: &str) -> String {
    match m.char_indices().nth(240) {
        Some((i, _)) => format!("{}…", &m[..i]),
        None => m.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_first_message_and_the_hook_is_restored() {
        assert_eq!(quietly(|| 7), Ok(7));
        let e = quietly(|| -> u8 { panic!("no adapter {}", "x".repeat(300)) }).unwrap_err();
        assert!(e.contains("no adapter xxx") && e.ends_with('…'), "{e}");
        assert!(e.chars().count() <= 241);
        let e = quietly(|| {
            std::thread::spawn(|| panic!("root cause on a runtime thread"))
                .join()
                .map_err(|_| ())
                .expect("channel closed")
        })
        .unwrap_err();
        assert!(e.contains("root cause on a runtime thread"), "{e}");
    }
}
