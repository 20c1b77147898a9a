//! The model pack: loading checks and parity with the torch reference (issue #2).

use winclip_edge::model::reference::{self, ParityReport};
use winclip_edge::model::ModelPack;

use crate::util::{copy_dir, run, text, tiny_pack};

#[test]
fn tiny_pack_matches_the_torch_reference() {
    let pack = ModelPack::open(tiny_pack()).unwrap();
    let r = reference::verify(&pack).unwrap();

    // Every model output: max abs diff <= 1e-4 and cosine >= 0.99999.
    for group in [&r.vision, &r.vision_end_to_end, &r.text] {
        for c in group.iter() {
            assert!(
                c.max_abs_diff <= 1e-4,
                "{}: max abs diff {:e}",
                c.name,
                c.max_abs_diff
            );
            assert!(c.min_cosine >= 0.99999, "{}: min cosine {}", c.name, c.min_cosine);
        }
    }
    // Both window scales, the embedding and the patch features were compared, for every image.
    let images = pack.manifest().reference.as_ref().unwrap().images.len();
    for what in [
        "embedding",
        "patch_features",
        "windows.2",
        "windows.3",
        "token_map",
    ] {
        assert_eq!(
            r.vision.iter().filter(|c| c.name.ends_with(what)).count(),
            images,
            "{what}"
        );
    }
    // Preprocessing vs torchvision's antialiased bicubic resize, square and
    // non-square and upscaled inputs: stated tolerance 1e-4 in normalised units
    // (~0.007 grey levels).
    assert_eq!(r.preprocess.len(), 3);
    for c in &r.preprocess {
        assert!(c.max_abs_diff <= 1e-4, "{}: {:e}", c.name, c.max_abs_diff);
    }
    // Token ids identical to open_clip's for a full ensemble (242 prompts) plus edge cases.
    assert!(r.prompts >= 242, "only {} prompts", r.prompts);
    assert_eq!(
        r.tokens_identical, r.prompts,
        "mismatches: {:?}",
        r.token_mismatches
    );
    let (d, c) = ParityReport::worst(&r.vision_end_to_end);
    eprintln!("tiny pack end-to-end parity: max abs diff {d:e}, min cosine {c}");
}

#[test]
fn model_info_summarises_the_pack() {
    let o = run(&[
        "model",
        "info",
        "--model",
        tiny_pack().to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["architecture"]["grid"], 15);
    assert_eq!(v["architecture"]["vocab_size"], 49408);
    assert_eq!(v["source"]["pretrained"], "none");
    assert_eq!(v["verified"], true);
    assert_eq!(v["id"].as_str().unwrap().len(), 16);
}

#[test]
fn model_verify_passes_on_the_tiny_pack() {
    let o = run(&["model", "verify", "--model", tiny_pack().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("PASS"), "{}", text(&o));
}

#[test]
fn a_corrupt_model_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("pack");
    copy_dir(&tiny_pack(), &pack);
    let enc = pack.join("encoder.onnx");
    let mut bytes = std::fs::read(&enc).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&enc, bytes).unwrap();

    let o = run(&["model", "info", "--model", pack.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("encoder.onnx") && t.contains("sha256"), "{t}");

    // Without hashing, a same-size corruption is not detected: sizes still are.
    let o = run(&["model", "info", "--no-verify", "--model", pack.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_missing_or_truncated_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("pack");
    copy_dir(&tiny_pack(), &pack);
    std::fs::remove_file(pack.join("text.onnx")).unwrap();
    let o = run(&["model", "info", "--no-verify", "--model", pack.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("missing") && text(&o).contains("text.onnx"),
        "{}",
        text(&o)
    );

    copy_dir(&tiny_pack(), &pack);
    let tok = pack.join("tokenizer.json");
    let len = std::fs::metadata(&tok).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tok)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = run(&["model", "info", "--no-verify", "--model", pack.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("tokenizer.json") && text(&o).contains("size"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_directory_without_manifest_is_not_a_pack() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["model", "info", "--model", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("manifest.toml"), "{}", text(&o));
}

#[test]
fn features_dump_holds_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.safetensors");
    let img = tiny_pack().join("reference/square.png");
    let o = run(&[
        "model",
        "features",
        "--model",
        tiny_pack().to_str().unwrap(),
        img.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(shape("embedding"), vec![32]);
    assert_eq!(shape("token_map"), vec![226, 64]);
    assert_eq!(shape("patch_features"), vec![225, 64]);
    assert_eq!(shape("windows.2"), vec![196, 32]);
    assert_eq!(shape("windows.3"), vec![169, 32]);

    // The dumped embedding is the reference embedding of that image.
    let ref_bytes = std::fs::read(tiny_pack().join("reference/reference.safetensors")).unwrap();
    let refs = safetensors::SafeTensors::deserialize(&ref_bytes).unwrap();
    let f32s = |d: &[u8]| {
        d.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    let ours = f32s(st.tensor("embedding").unwrap().data());
    let theirs = f32s(refs.tensor("image.0.embedding").unwrap().data());
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "embedding differs by {diff}");
}

#[test]
fn an_unreadable_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let o = run(&[
        "model",
        "features",
        "--model",
        tiny_pack().to_str().unwrap(),
        bad.to_str().unwrap(),
        "-o",
        dir.path().join("x.safetensors").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("broken.png"), "{}", text(&o));
}
