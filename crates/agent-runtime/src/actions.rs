//! Finding an action's steps across several action roots (reference section 4.1).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const VALIDATE_INPUT: &str = "validate-input.json";
pub const VALIDATE_OUTPUT: &str = "validate-output.json";

/// The directory entry's type comes with the listing; only a symlink needs a `stat`
/// (a linked step is still a step, a linked directory is not).
fn is_dir(entry: &std::fs::DirEntry) -> bool {
    match entry.file_type() {
        Ok(t) if t.is_symlink() => entry.path().is_dir(),
        Ok(t) => t.is_dir(),
        Err(_) => entry.path().is_dir(),
    }
}

/// What running one action means: its steps in order, and its schemas.
#[derive(Debug, Default, PartialEq)]
pub struct ActionPlan {
    /// `(file name, path)`, in byte order of the name.
    pub steps: Vec<(String, PathBuf)>,
    pub input_schema: Option<PathBuf>,
    pub output_schema: Option<PathBuf>,
}

/// Merge `<root>/<action>/*` over all roots by file name, later roots winning, which is
/// how a module overrides a base step. Directories are ignored.
pub fn plan(roots: &[PathBuf], action: &str) -> ActionPlan {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    // An action name is a directory name: never let it climb out of a root.
    if action.is_empty() || action.contains('/') || action == "." || action == ".." {
        return ActionPlan::default();
    }
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root.join(action)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_dir(&entry) {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                files.insert(name.to_owned(), path);
            }
        }
    }
    let input_schema = files.remove(VALIDATE_INPUT);
    let output_schema = files.remove(VALIDATE_OUTPUT);
    ActionPlan { steps: files.into_iter().collect(), input_schema, output_schema }
}

/// Union of the action directory names found in all roots.
pub fn list(roots: &[PathBuf]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            if is_dir(&entry)
                && let Some(name) = entry.file_name().to_str()
            {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Executable regular files of a directory, sorted: an event handler's steps.
pub fn handler_steps(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut steps: Vec<_> = entries
        .flatten()
        .filter(|e| !is_dir(e))
        .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
        .collect();
    steps.sort();
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_roots_override_and_schemas_are_separated() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for (root, name) in [(&a, "10one"), (&a, "20two"), (&b, "20two"), (&b, "05zero"), (&a, VALIDATE_INPUT)] {
            std::fs::create_dir_all(root.path().join("act")).unwrap();
            std::fs::write(root.path().join("act").join(name), "").unwrap();
        }
        std::fs::create_dir_all(a.path().join("act/subdir")).unwrap();
        std::fs::create_dir_all(b.path().join("other")).unwrap();
        let roots = vec![a.path().to_owned(), b.path().to_owned()];
        let p = plan(&roots, "act");
        let names: Vec<_> = p.steps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["05zero", "10one", "20two"]);
        assert!(p.steps[2].1.starts_with(b.path()));
        assert_eq!(p.input_schema, Some(a.path().join("act").join(VALIDATE_INPUT)));
        assert_eq!(p.output_schema, None);
        assert_eq!(plan(&roots, "missing"), ActionPlan::default());
        assert_eq!(plan(&roots, ".."), ActionPlan::default());
        assert_eq!(list(&roots).into_iter().collect::<Vec<_>>(), ["act", "other"]);
    }
}
