//! Fuzz targets for every parser of outside input (issue #16, finding 15):
//! the daemon's configuration, banks, outbox entries, model pack manifests
//! and the image decoding front end.
//!
//! Each target starts from a valid input and applies generated edits (bytes
//! overwritten, the input cut short), so random runs reach deep into the
//! parser instead of failing on the first byte. Inputs come from proptest:
//! `cargo test` runs each target on a fixed number of inputs from a fixed
//! seed (tests/run, CI: repeatable); `WINCLIP_FUZZ_CASES=100000 cargo test
//! --release --lib fuzz` runs longer, from a fresh seed each time, and a
//! failure prints the smallest input that still fails. None may panic;
//! inputs that once crashed stay below as regression tests.

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// Byte edits of a seed: (position, new byte) pairs, then a cut.
    type Edits = (Vec<(u32, u8)>, Option<u32>);

    fn edits() -> impl Strategy<Value = Edits> {
        (
            prop::collection::vec((any::<u32>(), any::<u8>()), 0..24),
            prop::option::of(any::<u32>()),
        )
    }

    /// Run `target` on `cases` inputs (or `$WINCLIP_FUZZ_CASES`, from a fresh seed).
    fn fuzz<S: Strategy>(cases: u32, strategy: S, target: impl Fn(&S::Value)) {
        let fresh: Option<u32> = std::env::var("WINCLIP_FUZZ_CASES")
            .ok()
            .and_then(|c| c.parse().ok());
        let config = Config {
            cases: fresh.unwrap_or(cases),
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = match fresh {
            Some(_) => TestRunner::new(config),
            // The same inputs every run: CI is repeatable.
            None => TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha)),
        };
        if let Err(e) = runner.run(&strategy, |v| {
            target(&v);
            Ok(())
        }) {
            panic!("{e}");
        }
    }

    fn apply(seed: &[u8], (edits, cut): &Edits) -> Vec<u8> {
        let mut b = seed.to_vec();
        if b.is_empty() {
            return b;
        }
        for &(at, v) in edits {
            let i = at as usize % b.len();
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(*c as usize % (b.len() + 1));
        }
        b
    }

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn config_parser() {
        let path = root().join("config/winclip-edge.toml");
        let seed = std::fs::read(&path).unwrap();
        fuzz(3000, edits(), |e| {
            let text = String::from_utf8_lossy(&apply(&seed, e)).into_owned();
            if let Ok(c) = crate::config::parse(&text, &path) {
                assert!(c.config.mqtt.keep_alive.as_secs() >= 1);
                assert!(c.config.station.queue_capacity >= 1);
                let _ = c.config.to_toml();
            }
        });
    }

    #[test]
    fn bank_reader() {
        let dir = tempfile::tempdir().unwrap();
        let seed = std::fs::read(crate::daemon::testing::tiny_bank(dir.path(), "bottle")).unwrap();
        fuzz(2000, edits(), |e| {
            let _ = crate::bank::Bank::from_bytes(&apply(&seed, e));
        });
    }

    #[test]
    fn outbox_entry_reader() {
        let seed = br#"{"id":"9e09559741a1f570ab7d","station":"s","source":"cam","file":"/x/a.png","verdict":"pass","score":0.3,"heatmap":{"bytes":3,"width":2,"height":2}}"#;
        fuzz(300, edits(), |e| {
            let json = apply(seed, e);
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("0000000000000001.json"), &json).unwrap();
            std::fs::write(dir.path().join("0000000000000001.jpg"), b"jpg").unwrap();
            let ob = crate::daemon::outbox::Outbox::open(dir.path(), 10, 1 << 20).unwrap();
            for seq in ob.index().after(0).collect::<Vec<_>>() {
                if let Ok(Some(entry)) = ob.read(seq) {
                    let _ = crate::daemon::mqtt::published(&entry, "winclip", "s");
                }
            }
        });
    }

    #[test]
    fn manifest_reader() {
        let path = root().join("models/tiny/manifest.toml");
        let seed = std::fs::read(&path).unwrap();
        fuzz(3000, edits(), |e| {
            let text = String::from_utf8_lossy(&apply(&seed, e)).into_owned();
            let _ = crate::model::Manifest::parse(&text, &path);
        });
    }

    #[test]
    fn image_decoding() {
        let png = std::fs::read(root().join("tests/fixtures/winclip/queries/good.png")).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let mut jpg = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
            .unwrap();
        let mut bmp = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bmp), image::ImageFormat::Bmp)
            .unwrap();
        let seeds = [png, jpg, bmp];
        // Small limits: a mutated header must not make it allocate much.
        let limits = crate::imageio::Limits {
            max_bytes: 1 << 20,
            max_pixels: 1_000_000,
        };
        fuzz(1500, (any::<u8>(), edits()), |(which, e)| {
            let bytes = apply(&seeds[*which as usize % seeds.len()], e);
            if let Ok(img) = crate::imageio::decode_rgb_within(&bytes, Path::new("fuzz"), &limits) {
                assert!(u64::from(img.width()) * u64::from(img.height()) <= limits.max_pixels);
            }
        });
    }

    /// The JPEG decoder behind `station.jpeg_dct_scaling` (a second decoder:
    /// it must refuse what it cannot read, never panic, within the limits).
    #[test]
    fn reduced_jpeg_decoding() {
        let png = std::fs::read(root().join("tests/fixtures/winclip/queries/good.png")).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let gray = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
        let seeds: Vec<Vec<u8>> = [
            image::DynamicImage::ImageRgb8(img),
            image::DynamicImage::ImageLuma8(gray),
        ]
        .iter()
        .map(|i| {
            let mut jpg = Vec::new();
            i.write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
                .unwrap();
            jpg
        })
        .collect();
        let limits = crate::imageio::Limits {
            max_bytes: 1 << 20,
            max_pixels: 1_000_000,
        };
        let whole = crate::imageio::decode_rgb_reduced(&seeds[0], Path::new("fuzz"), &limits, 16).unwrap();
        assert!(whole.factor > 1, "the seed is decoded reduced");
        fuzz(1500, (any::<u8>(), edits()), |(which, e)| {
            let bytes = apply(&seeds[*which as usize % seeds.len()], e);
            if let Ok(r) = crate::imageio::decode_rgb_reduced(&bytes, Path::new("fuzz"), &limits, 16) {
                assert!(u64::from(r.width) * u64::from(r.height) <= limits.max_pixels);
                assert_eq!(r.image.width(), r.width.div_ceil(r.factor));
            }
        });
    }
}
