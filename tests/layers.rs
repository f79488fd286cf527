//! The source tree's shape, read from the files: no import cycle between source
//! files (edges are the `crate::`, `super::` and `self::` paths each file names,
//! unit-test modules left out), no file over 1,000 lines, and `lib.rs`'s module
//! list matching the tree. `cargo test --test layers -- --nocapture` prints the
//! files in layer order (each imports only files printed before it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 1000;

/// The layers, lowest first, by module path prefix (`lib.rs` is the crate root's
/// helpers): a file may import files of its own layer (without a cycle) and of
/// the layers below, never above. The same order as `lib.rs`'s diagram.
const LAYERS: &[&[&str]] = &[
    &["lib", "ids", "clock", "counter", "encode"],
    &["config"],
    &["http"],
    &["upstream"],
    &["route"],
    &["policy"],
    &["observe"],
    &["plan"],
    &["compile"],
    &["proxy"],
    &["control"],
];

fn layer_of(m: &[String]) -> Option<usize> {
    let top = m.first().map_or("lib", String::as_str);
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Every `.rs` file under `src/` except the binary's `main.rs`, keyed by module
/// path (`["proxy", "conn"]`); `lib.rs` is the empty path.
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut map = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        match parts.last().map(String::as_str) {
            Some("main") if parts.len() == 1 => continue,
            Some("lib") if parts.len() == 1 => parts.clear(),
            Some("mod") => {
                parts.pop();
            }
            _ => {}
        }
        map.insert(parts, f);
    }
    map
}

/// The text that counts: comments, string literals and `#[cfg(test)]` modules
/// left out.
fn code(src: &str) -> String {
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => src,
    };
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // A raw string's hashes are not handled: the tree has none with `crate::`.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident(b: &[u8], mut i: usize) -> (String, usize) {
    let s = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&b[s..i]).into_owned(), i)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The paths named from `i` on (after `crate::`): `a::b::C`, `a::{b, c::{D, e}}`.
fn paths(b: &[u8], i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut i = skip_ws(b, i);
    let mut path = prefix.to_vec();
    loop {
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                i = skip_ws(b, i);
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
                i = paths(b, i, &path, out);
                i = skip_ws(b, i);
                if i < b.len() && b[i] == b',' {
                    i += 1;
                }
            }
        }
        let (name, j) = ident(b, i);
        if name.is_empty() {
            out.push(path);
            return if i < b.len() && b[i] == b'*' {
                i + 1
            } else {
                i
            };
        }
        path.push(name);
        i = j;
        if b[i..].starts_with(b"::") {
            i = skip_ws(b, i + 2);
        } else {
            out.push(path);
            // `as alias`
            let k = skip_ws(b, i);
            if b[k..].starts_with(b"as ") {
                let (_, e) = ident(b, skip_ws(b, k + 3));
                return e;
            }
            return i;
        }
    }
}

/// The files each file imports.
fn edges(mods: &BTreeMap<Vec<String>, PathBuf>) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut all = BTreeMap::new();
    for (m, f) in mods {
        let text = code(&std::fs::read_to_string(f).unwrap());
        let b = text.as_bytes();
        let mut named = Vec::new();
        for (kw, base) in [
            ("crate::", Vec::new()),
            ("super::", m[..m.len().saturating_sub(1)].to_vec()),
            ("self::", m.clone()),
        ] {
            let mut from = 0;
            while let Some(k) = text[from..].find(kw) {
                let at = from + k;
                from = at + kw.len();
                let before = if at == 0 { b' ' } else { b[at - 1] };
                if before.is_ascii_alphanumeric() || before == b'_' || before == b':' {
                    continue;
                }
                paths(b, from, &base, &mut named);
            }
        }
        // A child module named by its bare path (`load::load_plan`, `pub use
        // load::...`) is an edge too: a parent that re-exports or calls its children
        // sits above them.
        for (c, _) in mods
            .range(m.clone()..)
            .filter(|(c, _)| c.len() == m.len() + 1 && c.starts_with(m))
        {
            let leaf = &c[m.len()];
            let mut from = 0;
            while let Some(k) = text[from..].find(&format!("{leaf}::")) {
                let at = from + k;
                from = at + leaf.len() + 2;
                let before = if at == 0 { b' ' } else { b[at - 1] };
                if !(before.is_ascii_alphanumeric() || before == b'_' || before == b':') {
                    named.push(c.clone());
                }
            }
        }
        let mut to = BTreeSet::new();
        for p in named {
            let target = (0..=p.len())
                .rev()
                .map(|n| p[..n].to_vec())
                .find(|pre| mods.contains_key(pre))
                .unwrap_or_default();
            if target != *m {
                to.insert(target);
            }
        }
        all.insert(m.clone(), to);
    }
    all
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

/// Tarjan's strongly connected components with more than one file.
fn cycles(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, (usize, usize)>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        t.index.insert(v, (t.next, t.next));
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in &t.g[v] {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.index[w].1;
                let e = t.index.get_mut(v).unwrap();
                e.1 = e.1.min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w].0;
                let e = t.index.get_mut(v).unwrap();
                e.1 = e.1.min(iw);
            }
        }
        let (i, low) = t.index[v];
        if i == low {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(name(w));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycle_between_source_files() {
    let g = edges(&modules());
    let found = cycles(&g);
    // Layer order: a file's layer is one more than the highest layer it imports.
    let mut layer: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    if found.is_empty() {
        while layer.len() < g.len() {
            for (m, to) in &g {
                if !layer.contains_key(m) && to.iter().all(|t| layer.contains_key(t)) {
                    let l = to.iter().map(|t| layer[t] + 1).max().unwrap_or(0);
                    layer.insert(m.clone(), l);
                }
            }
        }
        let mut by: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (m, l) in &layer {
            by.entry(*l).or_default().push(name(m));
        }
        for (l, ms) in by {
            println!("{l:>2}: {}", ms.join(", "));
        }
    }
    let text: Vec<String> = found
        .iter()
        .map(|c| {
            let inner: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    g.iter()
                        .filter(|(m, _)| name(m) == *a)
                        .flat_map(|(_, to)| {
                            to.iter()
                                .map(|t| name(t))
                                .filter(|t| c.contains(t))
                                .map(move |t| format!("{a} → {t}"))
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            format!(
                "{} files: {}\n  {}",
                c.len(),
                c.join(", "),
                inner.join("\n  ")
            )
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", text.join("\n"));
}

#[test]
fn each_file_imports_only_its_layer_and_those_below() {
    let g = edges(&modules());
    let mut wrong = Vec::new();
    for (m, to) in &g {
        let Some(from) = layer_of(m) else {
            wrong.push(format!(
                "{} is in no layer (add it to LAYERS and lib.rs)",
                name(m)
            ));
            continue;
        };
        for t in to {
            if layer_of(t).is_some_and(|l| l > from) {
                wrong.push(format!("{} → {}", name(m), name(t)));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports from a lower layer into a higher one:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn no_source_file_over_1000_lines() {
    let long: Vec<String> = modules()
        .values()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn lib_rs_lists_every_module() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let doc: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<String> = modules()
        .keys()
        .filter(|m| !m.is_empty())
        .map(|m| m.join("::"))
        .filter(|m| !doc.contains(&format!("`{m}`")))
        .collect();
    assert!(missing.is_empty(), "lib.rs's module list lacks {missing:?}");
}
