//! `cargo afl fuzz` target: see `shardgate_fuzz::jwt`.
fn main() {
    afl::fuzz!(|data: &[u8]| shardgate_fuzz::jwt(data));
}
