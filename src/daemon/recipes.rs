//! Recipes at run time: every recipe's inspector on the one loaded model, and
//! the recipe each source inspects with.
//!
//! Every bank is loaded when the station starts or reloads (a full-size
//! 4-shot bank is about 7 MB; the model is shared), so switching a source to
//! another recipe swaps a name in the worker's settings: no disk, no model
//! load. The switches made by command or by a script are kept in
//! `<state_dir>/active-recipe`, which is also how a script switches: the
//! station reads it again when it changes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::inspector::Inspector;

/// Every recipe's inspector, all on one model.
#[derive(Debug, Clone)]
pub struct Recipes {
    primary: String,
    by_name: BTreeMap<String, Arc<Inspector>>,
}

impl Recipes {
    /// `primary` (`[model]`'s bank, recipe `name`) alone.
    pub fn new(name: &str, primary: Inspector) -> Self {
        Self {
            primary: name.to_string(),
            by_name: BTreeMap::from([(name.to_string(), Arc::new(primary))]),
        }
    }

    /// Add recipe `name`.
    pub fn insert(&mut self, name: &str, inspector: Inspector) {
        self.by_name.insert(name.to_string(), Arc::new(inspector));
    }

    /// `[model]`'s inspector: its model is every recipe's.
    pub fn primary(&self) -> &Arc<Inspector> {
        &self.by_name[&self.primary]
    }

    /// `[model]`'s recipe name.
    pub fn primary_name(&self) -> &str {
        &self.primary
    }

    /// Recipe `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Inspector>> {
        self.by_name.get(name)
    }

    /// The recipes by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Inspector>)> {
        self.by_name.iter().map(|(n, i)| (n.as_str(), i))
    }

    /// The names, for messages.
    pub fn names(&self) -> String {
        self.by_name
            .keys()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The recipes chosen by command or script, by source (`<state_dir>/active-recipe`);
/// a source without a choice inspects with its configured recipe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choices(pub BTreeMap<String, String>);

/// The first line of the file as the station writes it.
const HEADER: &str =
    "# The recipe each source inspects with, set by command (winclip-edge writes this file).\n\
# Edit it to switch: `<source> = \"<recipe>\"` lines, or one recipe name alone for every source.\n";

impl Choices {
    /// Where they are kept under `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("active-recipe")
    }

    /// Read `text`: one recipe name alone (every source in `sources`), or
    /// TOML lines `<source> = "<recipe>"`; `#` starts a comment.
    pub fn parse(text: &str, sources: &[&str]) -> Result<Self, String> {
        let content: Vec<&str> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .collect();
        if let [name] = content[..] {
            if !name.contains('=') {
                let name = name.trim_matches('"');
                return Ok(Self(
                    sources
                        .iter()
                        .map(|s| (s.to_string(), name.to_string()))
                        .collect(),
                ));
            }
        }
        let table: BTreeMap<String, String> = toml::from_str(text).map_err(|e| {
            format!(
                "not `<source> = \"<recipe>\"` lines or one recipe name: {}",
                e.message()
            )
        })?;
        Ok(Self(table))
    }

    /// The sources named that are not among `sources` (a typo, or a source
    /// since removed): their lines do nothing.
    pub fn unknown_sources(&self, sources: &[&str]) -> Vec<&str> {
        self.0
            .keys()
            .map(String::as_str)
            .filter(|s| !sources.contains(s))
            .collect()
    }

    /// Read them from `state_dir` (none when there is no file).
    pub fn load(state_dir: &Path, sources: &[&str]) -> io::Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, sources)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut text = HEADER.to_string();
        for (source, recipe) in &self.0 {
            // Both are plain names (letters, digits, '-', '_', '.'): no escaping.
            text.push_str(&format!("{source} = \"{recipe}\"\n"));
        }
        text
    }

    /// Write them atomically (fsync, rename).
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        crate::fsutil::write_atomic(&Self::path(state_dir), self.to_text().as_bytes())
    }

    /// The recipe each of `config`'s sources inspects with; an error names
    /// a choice that is not one of `recipes`.
    pub fn resolve(&self, config: &Config, recipes: &Recipes) -> Result<Active, String> {
        let mut active = BTreeMap::new();
        for s in &config.sources {
            let name = s.name();
            let recipe = match self.0.get(name) {
                Some(r) => r.as_str(),
                None => config.default_recipe(name),
            };
            if recipes.get(recipe).is_none() {
                return Err(format!(
                    "source {name}: recipe {recipe:?} is not one of the recipes ({})",
                    recipes.names()
                ));
            }
            active.insert(name.to_string(), recipe.to_string());
        }
        Ok(Active(active))
    }
}

/// The recipe each source inspects with now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Active(pub BTreeMap<String, String>);

impl Active {
    /// The recipe of `source` (`None` for a source that is not running).
    pub fn of(&self, source: &str) -> Option<&str> {
        self.0.get(source).map(String::as_str)
    }

    /// The one recipe every source uses, if they agree.
    pub fn common(&self) -> Option<&str> {
        let mut it = self.0.values();
        let first = it.next()?;
        it.all(|r| r == first).then_some(first.as_str())
    }
}

/// `cam1: a, cam2: b`, for the log and messages.
impl std::fmt::Display for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (source, recipe)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{source}: {recipe}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_every_source_and_lines_name_one_each() {
        let sources = ["cam1", "cam2"];
        let all = Choices::parse("bottle-b\n", &sources).unwrap();
        assert_eq!(all.0.len(), 2);
        assert!(all.0.values().all(|r| r == "bottle-b"));
        let one = Choices::parse("# set by me\ncam2 = \"pcb\"  # the second line\n", &sources).unwrap();
        assert_eq!(one.0, BTreeMap::from([("cam2".into(), "pcb".into())]));
        assert_eq!(Choices::parse(&one.to_text(), &sources).unwrap(), one);
        assert_eq!(Choices::parse("", &sources).unwrap(), Choices::default());
    }

    #[test]
    fn garbage_is_refused_and_unknown_sources_are_named() {
        let sources = ["cam1"];
        let c = Choices::parse("cam9 = \"a\"\n", &sources).unwrap();
        assert_eq!(c.unknown_sources(&sources), ["cam9"]);
        let e = Choices::parse("a b c\nd\n", &sources).unwrap_err();
        assert!(e.contains("<source>"), "{e}");
        assert!(Choices::parse("cam1 = 3\n", &sources).is_err());
    }

    #[test]
    fn kept_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Choices::load(dir.path(), &["cam1"]).unwrap(), Choices::default());
        let c = Choices(BTreeMap::from([("cam1".into(), "b".into())]));
        c.save(dir.path()).unwrap();
        assert_eq!(Choices::load(dir.path(), &["cam1"]).unwrap(), c);
        std::fs::write(Choices::path(dir.path()), "cam1 = [").unwrap();
        let e = Choices::load(dir.path(), &["cam1"]).unwrap_err();
        assert!(e.to_string().contains("active-recipe"), "{e}");
    }

    #[test]
    fn sources_agree_or_not() {
        let a = Active(BTreeMap::from([
            ("c1".into(), "a".into()),
            ("c2".into(), "a".into()),
        ]));
        assert_eq!(a.common(), Some("a"));
        let b = Active(BTreeMap::from([
            ("c1".into(), "a".into()),
            ("c2".into(), "b".into()),
        ]));
        assert_eq!(b.common(), None);
        assert_eq!(b.of("c2"), Some("b"));
        assert_eq!(b.to_string(), "c1: a, c2: b");
    }
}
