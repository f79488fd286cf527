//! `cargo afl fuzz` target: see `shardgate_fuzz::path`.
fn main() {
    afl::fuzz!(|data: &[u8]| shardgate_fuzz::path(data));
}
