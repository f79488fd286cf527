//! `cargo afl fuzz` target: see `shardgate_fuzz::config`.
fn main() {
    afl::fuzz!(|data: &[u8]| shardgate_fuzz::config(data));
}
