//! The modules of lb-user import only downwards: no import cycle between
//! the top-level modules (`cli`, `daemon`, `monitor`, ...), nor between the
//! files of one folder (its `mod.rs` aside, which declares them). Reads the
//! sources, follows every `crate::X` and `super::X` path, and prints the
//! cycle when there is one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Module graph: module -> the modules it refers to.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `monitor/http.rs` -> [monitor, http],
/// `monitor/mod.rs` -> [monitor], `plan.rs` -> [plan]; `lib.rs` -> [].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_string()),
    }
    parts
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Every path of a group `{a, b::c, d::{e, f}}` (or the single path `rest` starts with).
fn heads(rest: &str) -> Vec<String> {
    let rest = rest.trim_start();
    if !rest.starts_with('{') {
        return vec![rest.to_string()];
    }
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 1);
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                let entry = rest[start..i].trim_start();
                if !ident(entry).is_empty() {
                    out.push(entry.to_string());
                }
                start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    out
}

/// Every module path (absolute, from the crate root) `text` refers to, as
/// written in a file of module `me`. Comments are skipped.
fn references(me: &[String], text: &str) -> Vec<Vec<String>> {
    let code: String =
        text.lines().map(|l| l.split_once("//").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find(['c', 's']).map(|i| at + i) {
        at = i + 1;
        let preceded = code[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        if preceded {
            continue;
        }
        let (base, mut rest) = if let Some(r) = code[i..].strip_prefix("crate::") {
            (Vec::new(), r)
        } else if code[i..].starts_with("super::") {
            let mut base = me.to_vec();
            let mut r = &code[i..];
            while let Some(next) = r.strip_prefix("super::") {
                base.pop();
                r = next;
            }
            (base, r)
        } else {
            continue;
        };
        rest = rest.trim_start();
        for entry in heads(rest) {
            let head = ident(&entry);
            let mut path = base.clone();
            path.push(head.to_string());
            // One level deeper when it names a file of a folder: `crate::monitor::http`.
            if let Some(sub) = entry[head.len()..].strip_prefix("::") {
                let sub = ident(sub);
                if !sub.is_empty() {
                    path.push(sub.to_string());
                }
            }
            out.push(path);
        }
    }
    out
}

/// A cycle of `g`, if any (depth-first search).
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(n: &str, g: &Graph, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

/// The graphs of `src`: the top-level modules, and the files of each folder.
fn graphs(src: &Path) -> (Graph, BTreeMap<String, Graph>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: Vec<(Vec<String>, String)> =
        files.iter().map(|f| (module_of(src, f), fs::read_to_string(f).unwrap())).collect();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(m, _)| m.clone()).collect();
    let (mut top, mut folders) = (Graph::new(), BTreeMap::<String, Graph>::new());
    for (me, text) in &modules {
        let Some(my_top) = me.first() else { continue };
        top.entry(my_top.clone()).or_default();
        if me.len() == 2 {
            folders.entry(my_top.clone()).or_default().entry(me[1].clone()).or_default();
        }
        for r in references(me, text) {
            let Some(their_top) = r.first() else { continue };
            if !known.contains(&vec![their_top.clone()]) {
                continue;
            }
            if their_top != my_top {
                top.entry(my_top.clone()).or_default().insert(their_top.clone());
            } else if me.len() == 2 && r.len() >= 2 && r[1] != me[1] && known.contains(&r[..2]) {
                folders.entry(my_top.clone()).or_default().entry(me[1].clone()).or_default().insert(r[1].clone());
            }
        }
    }
    (top, folders)
}

fn assert_no_cycle(src: &Path) {
    let (top, folders) = graphs(src);
    for (m, uses) in &top {
        eprintln!("{m} -> {}", uses.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(top.len() > 5, "expected the top-level modules of {}, found {top:?}", src.display());
    if let Some(c) = find_cycle(&top) {
        panic!("import cycle between top-level modules: {}\ngraph: {top:#?}", c.join(" -> "));
    }
    for (folder, g) in &folders {
        if let Some(c) = find_cycle(g) {
            panic!("import cycle between the files of {folder}/: {}\ngraph: {g:#?}", c.join(" -> "));
        }
    }
}

#[test]
fn lb_user_modules_import_only_downwards() {
    assert_no_cycle(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
}

/// The check itself finds cycles: a copy of the sources with one upward
/// import added (maglev -> balancer, balancer -> maglev exists through plan)
/// and one inside a folder (snapshot -> rates -> snapshot).
#[test]
fn a_cycle_is_found_and_named() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (file, line, want) in [
        ("maglev.rs", "use crate::balancer::Balancer;\n", "import cycle between top-level modules"),
        ("monitor/snapshot.rs", "use super::{rates::Rates, status};\n", "import cycle between the files of monitor/"),
    ] {
        let copy = std::env::temp_dir().join(format!("xlb-layers-{}-{}", std::process::id(), file.replace('/', "-")));
        copy_tree(&src, &copy);
        let path = copy.join(file);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{line}{text}")).unwrap();
        let result = std::panic::catch_unwind(|| assert_no_cycle(&copy));
        let _ = fs::remove_dir_all(&copy);
        let message = match result {
            Ok(()) => panic!("adding {line:?} to {file} made a cycle, but none was reported"),
            Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
        };
        assert!(message.contains(want), "expected {want:?}, got: {message}");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &dest);
        } else {
            fs::copy(&path, &dest).unwrap();
        }
    }
}

#[test]
fn paths_are_read_like_rustc_reads_them() {
    let me = vec!["monitor".to_string(), "http".to_string()];
    let refs = references(
        &me,
        "use super::{prometheus, rates::History};\nuse crate::{balancer::Balancer, config};\n// crate::daemon\nlet x = crate::plan::load(p);",
    );
    let refs: Vec<String> = refs.iter().map(|r| r.join("::")).collect();
    assert_eq!(refs, ["monitor::prometheus", "monitor::rates::History", "balancer::Balancer", "config", "plan::load"]);
}
