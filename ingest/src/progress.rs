//! Progress bars for long work (`convert`, `compact`, `generate`, backfills, `verify`, `report`),
//! drawn on stderr only when it is a terminal: in a service, a pipe or a test they draw nothing,
//! and the log says what happened.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps counting `unit` (e.g. "days", "files", "bytes"), labelled `what`.
pub fn bar(len: u64, what: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = if unit == "bytes" {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} [{bar:30}] {pos}/{len} {unit} eta {eta}"
    };
    if let Ok(style) = ProgressStyle::with_template(&template.replace("{unit}", unit)) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Whether bars are drawn (stderr is a terminal).
pub fn visible() -> bool {
    !ProgressDrawTarget::stderr().is_hidden()
}
