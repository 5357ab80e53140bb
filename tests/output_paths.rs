//! Commands that write check their output paths before any work: a missing or unwritable
//! folder, an output that is a folder, or an output that is the input fail at once with one
//! line naming the path (exit 2), without reading the input.

mod common;

use std::path::{Path, PathBuf};

/// A file that is not a model: a command that reads it before checking its output would fail
/// on decoding it, so an error about the output proves the check came first.
fn not_a_model(dir: &Path) -> PathBuf {
    let p = dir.join("in.onnx");
    std::fs::write(&p, b"this is not protobuf").unwrap();
    p
}

/// The failure contract, and the input was not read (see [`not_a_model`]).
fn fails(args: &[&str], expect: &[&str]) -> String {
    let err = common::cli_fails(args, expect);
    assert!(
        !err.contains("not a valid ONNX model"),
        "{args:?}: the input was read before the output was checked: {err}"
    );
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn missing_folder_folder_output_and_file_as_folder() {
    let dir = tempfile::tempdir().unwrap();
    let input = not_a_model(dir.path());
    let missing = dir.path().join("missing_dir/out.onnx");
    let file_parent = input.join("out.onnx");
    for cmd in ["rewrite", "fuse"] {
        fails(
            &[cmd, s(&input), s(&missing)],
            &["out.onnx: the folder", "missing_dir' does not exist"],
        );
        fails(
            &[cmd, s(&input), s(dir.path())],
            &["is a folder, not a file path"],
        );
        fails(
            &[cmd, s(&input), s(&file_parent)],
            &["in.onnx' is not a folder"],
        );
        // The report is an output too.
        fails(
            &[
                cmd,
                s(&input),
                s(&dir.path().join("out.onnx")),
                "--report",
                s(&missing.with_file_name("r.json")),
            ],
            &["r.json: the folder", "does not exist"],
        );
    }
    fails(
        &[
            "run",
            s(&input),
            "--output",
            s(&missing.with_file_name("o.npz")),
        ],
        &["o.npz: the folder", "does not exist"],
    );
    // Nothing was left behind by the writability probes.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("in.onnx")]);
}

#[test]
fn unwritable_folder() {
    let dir = tempfile::tempdir().unwrap();
    let input = not_a_model(dir.path());
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    // root ignores folder permissions; a folder of a pseudo file system refuses it too.
    let ro = if std::fs::write(ro.join("probe"), b"").is_ok() {
        PathBuf::from("/proc")
    } else {
        ro
    };
    for cmd in ["rewrite", "fuse"] {
        fails(
            &[cmd, s(&input), s(&ro.join("out.onnx"))],
            &["out.onnx: cannot write in the folder"],
        );
    }
}

#[test]
fn the_input_is_refused_by_path_link_and_inode() {
    let dir = tempfile::tempdir().unwrap();
    let input = not_a_model(dir.path());
    let dotted = dir.path().join(".").join("in.onnx");
    let symlink = dir.path().join("sym.onnx");
    let hardlink = dir.path().join("hard.onnx");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&input, &symlink).unwrap();
    std::fs::hard_link(&input, &hardlink).unwrap();
    for cmd in ["rewrite", "fuse"] {
        for out in [&input, &dotted, &symlink, &hardlink] {
            fails(
                &[cmd, s(&input), s(out)],
                &["refusing to overwrite the input (pass --overwrite-input to allow it)"],
            );
        }
    }
    // With --overwrite-input the check lets it through, and the input is read (and refused
    // as a model).
    let out = common::cli(&["rewrite", s(&input), s(&hardlink), "--overwrite-input"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid ONNX model"), "{err}");
}

#[test]
fn a_real_rewrite_still_writes_beside_an_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mlp.int8.onnx");
    std::fs::write(&out, b"old").unwrap();
    common::rewrite(&common::fixture("mlp.onnx"), &out, &[]);
    assert!(onnx_dynq::load(&out).is_ok());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["mlp.int8.onnx".to_string()]);
}
