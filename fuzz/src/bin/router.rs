//! `cargo afl fuzz` target: see `shardgate_fuzz::router`.
fn main() {
    afl::fuzz!(|data: &[u8]| shardgate_fuzz::router(data));
}
