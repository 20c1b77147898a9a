//! Dataset layouts for evaluation: MVTec-AD, VisA (split CSV), and a plain folder.
//!
//! Readers only list files and check that they exist and belong together; the
//! images are decoded later. Every problem names the file.

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A dataset problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A directory or file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The layout is not what the reader expects.
    #[error("{path}: {message}")]
    Layout {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Which layout a dataset has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<cat>/train/good`, `<cat>/test/<defect>`, `<cat>/ground_truth/<defect>/<stem>_mask.png`.
    Mvtec,
    /// `split_csv/1cls.csv` with columns object, split, label, image, mask.
    Visa,
    /// `good/`, `bad/`, optional `masks/<stem>_mask.png`, optional `train/` (references).
    Folder,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Mvtec => "MVTec-AD",
            Kind::Visa => "VisA",
            Kind::Folder => "folder",
        })
    }
}

/// `kind:PATH` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Layout.
    pub kind: Kind,
    /// Root directory.
    pub root: PathBuf,
}

impl FromStr for Spec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, root) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected mvtec:PATH, visa:PATH or folder:PATH"))?;
        let kind = match kind {
            "mvtec" => Kind::Mvtec,
            "visa" => Kind::Visa,
            "folder" => Kind::Folder,
            other => return Err(format!("unknown dataset kind {other:?} (mvtec, visa or folder)")),
        };
        Ok(Self {
            kind,
            root: PathBuf::from(root),
        })
    }
}

/// One test image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image.
    pub image: PathBuf,
    /// Ground-truth mask (defective images with masks only).
    pub mask: Option<PathBuf>,
    /// True for defective.
    pub anomalous: bool,
    /// Defect type ("good" for normal images).
    pub defect: String,
}

/// One category of a dataset.
#[derive(Debug, Clone)]
pub struct Category {
    /// Category name (also the object name used in prompts, `_` → space).
    pub name: String,
    /// Normal training images: the pool few-shot references are drawn from.
    pub train: Vec<PathBuf>,
    /// Test images.
    pub test: Vec<Sample>,
}

impl Category {
    /// The object name for prompts ("metal_nut" → "metal nut").
    pub fn object_name(&self) -> String {
        self.name.replace('_', " ")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn layout(path: &Path, message: impl Into<String>) -> Error {
    Error::Layout {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Image files of a directory, sorted.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && crate::fsutil::is_image_name(p))
        .collect();
    v.sort();
    Ok(v)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<dir>/<stem>_mask.png` of a defective `image`, which must exist.
fn mask_of(dir: &Path, image: &Path) -> Result<PathBuf, Error> {
    let m = dir.join(format!("{}_mask.png", stem(image)));
    if !m.is_file() {
        return Err(layout(&m, format!("mask of {} is missing", image.display())));
    }
    Ok(m)
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Read the categories of a dataset (all, or those named in `only`).
pub fn load(spec: &Spec, only: &[String]) -> Result<Vec<Category>, Error> {
    // Categories not asked for are listed but not read, so a problem in one of
    // them does not stop the evaluation of another.
    let keep = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let (cats, found) = match spec.kind {
        Kind::Mvtec => mvtec(&spec.root, &keep)?,
        Kind::Visa => visa(&spec.root, &keep)?,
        Kind::Folder => {
            let c = folder(&spec.root)?;
            let found = vec![c.name.clone()];
            (vec![c].into_iter().filter(|c| keep(&c.name)).collect(), found)
        }
    };
    if let Some(o) = only.iter().find(|o| !found.contains(o)) {
        return Err(layout(
            &spec.root,
            format!("no category {o:?} (found: {})", found.join(", ")),
        ));
    }
    if cats.is_empty() {
        return Err(layout(&spec.root, "no categories found"));
    }
    Ok(cats)
}

/// Categories read, and the names of all categories found.
type Listing = (Vec<Category>, Vec<String>);

fn mvtec(root: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Listing, Error> {
    let mut out = Vec::new();
    let mut found = Vec::new();
    for dir in subdirs(root)? {
        let (train_dir, test_dir) = (dir.join("train/good"), dir.join("test"));
        if !train_dir.is_dir() || !test_dir.is_dir() {
            continue; // not a category (license files, etc.)
        }
        found.push(name(&dir));
        if !keep(&name(&dir)) {
            continue;
        }
        let mut test = Vec::new();
        for defect_dir in subdirs(&test_dir)? {
            let defect = name(&defect_dir);
            let anomalous = defect != "good";
            for image in images_in(&defect_dir)? {
                let mask = if anomalous {
                    Some(mask_of(&dir.join("ground_truth").join(&defect), &image)?)
                } else {
                    None
                };
                test.push(Sample {
                    image,
                    mask,
                    anomalous,
                    defect: defect.clone(),
                });
            }
        }
        let train = images_in(&train_dir)?;
        if train.is_empty() {
            return Err(layout(&train_dir, "no training images"));
        }
        out.push(Category {
            name: name(&dir),
            train,
            test,
        });
    }
    if found.is_empty() {
        return Err(layout(
            root,
            "no MVTec-AD categories (<cat>/train/good and <cat>/test) found",
        ));
    }
    Ok((out, found))
}

fn visa(root: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Listing, Error> {
    let csv = root.join("split_csv/1cls.csv");
    let text = std::fs::read_to_string(&csv).map_err(io(&csv))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').map(str::trim).collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| *h == n)
            .ok_or_else(|| layout(&csv, format!("column {n:?} missing")))
    };
    let (c_obj, c_split, c_label, c_image, c_mask) = (
        col("object")?,
        col("split")?,
        col("label")?,
        col("image")?,
        col("mask")?,
    );
    let mut cats: Vec<Category> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |c: usize| f.get(c).copied().unwrap_or("");
        let obj = get(c_obj).to_string();
        if !found.contains(&obj) {
            found.push(obj.clone());
        }
        if !keep(&obj) {
            continue;
        }
        let image = root.join(get(c_image));
        if !image.is_file() {
            return Err(layout(
                &csv,
                format!("line {}: image {} does not exist", i + 2, image.display()),
            ));
        }
        let anomalous = match get(c_label) {
            "normal" => false,
            "anomaly" => true,
            other => {
                return Err(layout(
                    &csv,
                    format!("line {}: label {other:?} (normal or anomaly)", i + 2),
                ))
            }
        };
        let idx = match cats.iter().position(|c| c.name == obj) {
            Some(i) => i,
            None => {
                cats.push(Category {
                    name: obj.clone(),
                    train: vec![],
                    test: vec![],
                });
                cats.len() - 1
            }
        };
        match get(c_split) {
            "train" => {
                if !anomalous {
                    cats[idx].train.push(image);
                }
            }
            "test" => {
                let mask = if anomalous && !get(c_mask).is_empty() {
                    let m = root.join(get(c_mask));
                    if !m.is_file() {
                        return Err(layout(
                            &csv,
                            format!("line {}: mask {} does not exist", i + 2, m.display()),
                        ));
                    }
                    Some(m)
                } else {
                    None
                };
                let defect = if anomalous { "anomaly" } else { "good" }.to_string();
                cats[idx].test.push(Sample {
                    image,
                    mask,
                    anomalous,
                    defect,
                });
            }
            other => {
                return Err(layout(
                    &csv,
                    format!("line {}: split {other:?} (train or test)", i + 2),
                ))
            }
        }
    }
    Ok((cats, found))
}

fn folder(root: &Path) -> Result<Category, Error> {
    let good = images_in(&root.join("good"))?;
    let bad_dir = root.join("bad");
    let bad = if bad_dir.is_dir() {
        images_in(&bad_dir)?
    } else {
        vec![]
    };
    let masks = root.join("masks");
    let mut test: Vec<Sample> = good
        .iter()
        .map(|p| Sample {
            image: p.clone(),
            mask: None,
            anomalous: false,
            defect: "good".into(),
        })
        .collect();
    for p in bad {
        let mask = if masks.is_dir() {
            Some(mask_of(&masks, &p)?)
        } else {
            None
        };
        test.push(Sample {
            image: p,
            mask,
            anomalous: true,
            defect: "bad".into(),
        });
    }
    let train_dir = root.join("train");
    let train = if train_dir.is_dir() {
        images_in(&train_dir)?
    } else {
        vec![]
    };
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "parts".into());
    Ok(Category { name, train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn mvtec_layout_is_read_with_masks() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("bottle/train/good/000.png"));
        touch(&r.join("bottle/test/good/000.png"));
        touch(&r.join("bottle/test/broken_large/000.png"));
        touch(&r.join("bottle/ground_truth/broken_large/000_mask.png"));
        touch(&r.join("license.txt"));
        let spec: Spec = format!("mvtec:{}", r.display()).parse().unwrap();
        let cats = load(&spec, &[]).unwrap();
        assert_eq!(cats.len(), 1);
        assert_eq!(cats[0].train.len(), 1);
        let bad: Vec<_> = cats[0].test.iter().filter(|s| s.anomalous).collect();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].defect, "broken_large");
        assert!(bad[0]
            .mask
            .as_ref()
            .unwrap()
            .ends_with("ground_truth/broken_large/000_mask.png"));
    }

    #[test]
    fn a_missing_mask_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("pcb/train/good/a.png"));
        touch(&r.join("pcb/test/scratch/007.png"));
        let err = load(
            &Spec {
                kind: Kind::Mvtec,
                root: r.to_owned(),
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("007_mask.png") && err.contains("007.png"), "{err}");
    }

    #[test]
    fn visa_split_csv_is_read() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "candle/Data/Images/Normal/0.JPG",
            "candle/Data/Images/Normal/1.JPG",
            "candle/Data/Images/Anomaly/2.JPG",
            "candle/Data/Masks/Anomaly/2.png",
        ] {
            touch(&r.join(f));
        }
        let csv = "object,split,label,image,mask\n\
            candle,train,normal,candle/Data/Images/Normal/0.JPG,\n\
            candle,test,normal,candle/Data/Images/Normal/1.JPG,\n\
            candle,test,anomaly,candle/Data/Images/Anomaly/2.JPG,candle/Data/Masks/Anomaly/2.png\n";
        std::fs::create_dir_all(r.join("split_csv")).unwrap();
        std::fs::write(r.join("split_csv/1cls.csv"), csv).unwrap();
        let cats = load(
            &Spec {
                kind: Kind::Visa,
                root: r.to_owned(),
            },
            &[],
        )
        .unwrap();
        assert_eq!(cats[0].name, "candle");
        assert_eq!(cats[0].train.len(), 1);
        assert_eq!(cats[0].test.len(), 2);
        assert!(cats[0].test[1].mask.is_some());
        let bad = csv.replace(
            "anomaly,candle/Data/Images/Anomaly/2.JPG",
            "broken,candle/Data/Images/Anomaly/2.JPG",
        );
        std::fs::write(r.join("split_csv/1cls.csv"), bad).unwrap();
        let err = load(
            &Spec {
                kind: Kind::Visa,
                root: r.to_owned(),
            },
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 4") && err.contains("broken"), "{err}");
    }

    #[test]
    fn folder_layout_and_unknown_categories() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("gears");
        touch(&r.join("good/1.png"));
        touch(&r.join("bad/2.png"));
        let cats = load(
            &Spec {
                kind: Kind::Folder,
                root: r.clone(),
            },
            &[],
        )
        .unwrap();
        assert_eq!(cats[0].name, "gears");
        assert_eq!(cats[0].test.len(), 2);
        assert!(cats[0].test[1].mask.is_none());
        let err = load(
            &Spec {
                kind: Kind::Folder,
                root: r,
            },
            &["bolts".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bolts") && err.contains("gears"), "{err}");
        assert!("zip:/x".parse::<Spec>().is_err());
    }
}
