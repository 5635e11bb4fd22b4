//! Replays the fuzz corpus on the stable toolchain: every file of `fuzz/corpus/<target>/`
//! through the body of `<target>` (`dap_tests::fuzz`), so a regression input that crashed a
//! fuzzer once is checked by every `cargo test`, without nightly or libFuzzer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use dap_tests::fuzz::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// The files of a target's corpus, sorted; panics when the directory is missing or empty.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: the corpus of `{target}` is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    assert!(!files.is_empty(), "{}: the corpus of `{target}` is empty", dir.display());
    files.sort();
    files
}

#[test]
fn every_target_replays_its_whole_corpus() {
    let mut failed = Vec::new();
    for &(name, body) in TARGETS {
        let started = Instant::now();
        let files = corpus(name);
        for file in &files {
            let data = std::fs::read(file).expect("a readable corpus file");
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
        eprintln!("{name}: {} inputs in {:.2?}", files.len(), started.elapsed());
    }
    assert!(failed.is_empty(), "these corpus inputs fail their target:\n{}", failed.join("\n"));
}

#[test]
fn every_corpus_directory_has_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for entry in std::fs::read_dir(&root).expect("fuzz/corpus") {
        let name = entry.expect("an entry").file_name().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|(n, _)| *n == name),
            "fuzz/corpus/{name} has no target in dap_tests::fuzz::TARGETS"
        );
    }
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        let file = targets.join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("dap_tests::fuzz::{name}::run")),
            "{} does not run dap_tests::fuzz::{name}::run",
            file.display()
        );
    }
}
