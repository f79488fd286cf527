//! `cargo afl fuzz` target: see `shardgate_fuzz::head`.
fn main() {
    afl::fuzz!(|data: &[u8]| shardgate_fuzz::head(data));
}
