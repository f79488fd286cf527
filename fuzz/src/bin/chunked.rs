//! `cargo afl fuzz` target: see `shardgate_fuzz::chunked`.
fn main() {
    afl::fuzz!(|data: &[u8]| shardgate_fuzz::chunked(data));
}
