//! Fuzz target `geoip_mmdb`: see docs/fuzzing.md.
//!
//! Without afl's panic hook: `GeoIp::lookup` catches the panics of the MMDB reader on a corrupt
//! file (the address is then unknown), and the hook would abort on those before they are
//! caught. A panic that escapes the harness is still a crash.
fn main() {
    afl::fuzz_nohook!(|data: &[u8]| flowaudit_ingest::fuzz::geoip_mmdb(data));
}
