//! The fuzz targets' checks (`fuzz/src/checks.rs`) over the committed corpora and
//! the crashes fuzzing found once (`fuzz/regressions/`): the targets keep building
//! with the gateway, and every input fuzzing ever flagged stays fixed.

#[path = "../fuzz/src/checks.rs"]
mod checks;

fn replay(target: &str, check: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).expect("read a corpus file");
            check(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn head() {
    replay("head", checks::head);
}

#[test]
fn chunked() {
    replay("chunked", checks::chunked);
}

#[test]
fn path() {
    replay("path", checks::path);
}

#[test]
fn router() {
    replay("router", checks::router);
}

#[test]
fn config() {
    replay("config", checks::config);
}

#[test]
fn jwt() {
    replay("jwt", checks::jwt);
}
