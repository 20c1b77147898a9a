//! Decoding image files safely: the file size and the declared dimensions are
//! checked against [`Limits`] before anything large is allocated, the decoder
//! is bounded too, and a JPEG that stops before its end is refused (decoders
//! fill the missing part with grey, which would give a verdict on a picture
//! that was never fully there).

use std::io::Read;
use std::path::{Path, PathBuf};

use image::{ImageFormat, ImageReader, RgbImage};

/// Largest accepted image side in pixels (a 64 MP camera is 9248 wide).
pub const MAX_SIDE: u32 = 16_384;

/// What a picture may cost before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Largest file, bytes.
    pub max_bytes: u64,
    /// Most pixels (width × height) the image may declare.
    pub max_pixels: u64,
}

impl Limits {
    /// Sized for a 2 GB board: a 64 MiB file, 50 megapixels (a 5472 × 3648
    /// 20 MP camera fits twice; decoding 50 MP to RGB takes 150 MB).
    pub const DEFAULT: Limits = Limits {
        max_bytes: 64 * 1024 * 1024,
        max_pixels: 50_000_000,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read image {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a supported, intact image.
    #[error("cannot decode image {path}: {message}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's explanation.
        message: String,
    },
    /// The data stops before the image's end: a file cut short or still being written.
    #[error("image {path} is truncated: {message}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// The file or the image exceeds the limits.
    #[error("image {path} is too large: {message}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What exceeded which limit.
        message: String,
    },
}

/// Read and decode `path` (format guessed from the content) into 8-bit RGB,
/// within the default [`Limits`].
pub fn load_rgb(path: &Path) -> Result<RgbImage, Error> {
    let bytes = read_limited(path, &Limits::DEFAULT)?;
    decode_rgb(&bytes, path)
}

/// Read `path` whole, unless it is larger than `limits.max_bytes` (checked
/// before reading, and while reading in case it grows).
pub fn read_limited(path: &Path, limits: &Limits) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let too_large = |bytes: u64| Error::TooLarge {
        path: path.to_owned(),
        message: format!(
            "{} MiB file, more than the limit of {} MiB",
            bytes.div_ceil(1 << 20),
            limits.max_bytes >> 20
        ),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > limits.max_bytes {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limits.max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Decode in-memory bytes into 8-bit RGB within the default [`Limits`];
/// `path` is only used in messages.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, Error> {
    decode_rgb_within(bytes, path, &Limits::DEFAULT)
}

/// [`decode_rgb`] within `limits`: the declared dimensions are read from
/// the header and checked before the pixels are decoded.
pub fn decode_rgb_within(bytes: &[u8], path: &Path, limits: &Limits) -> Result<RgbImage, Error> {
    let decode_error = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => Error::TooLarge {
            path: path.to_owned(),
            message: format!(
                "{l} (limits: {MAX_SIDE} px per side, {} pixels)",
                limits.max_pixels
            ),
        },
        other => Error::Decode {
            path: path.to_owned(),
            message: other.to_string(),
        },
    };
    let reader = || {
        ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })
    };
    let format = reader()?.format();
    let (w, h) = reader()?.into_dimensions().map_err(decode_error)?;
    if w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            message: format!(
                "{w} × {h} pixels declared, more than the limit of {} pixels ({MAX_SIDE} per side)",
                limits.max_pixels
            ),
        });
    }
    if format == Some(ImageFormat::Jpeg) && !ends_like_a_jpeg(bytes) {
        return Err(no_end_marker(path));
    }
    let mut reader = reader()?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    // Room for the decoded pixels (up to 4 channels of 16 bits) and no more.
    l.max_alloc = Some(limits.max_pixels * 8 + (16 << 20));
    reader.limits(l);
    let img = reader.decode().map_err(|e| match &e {
        image::ImageError::Decoding(d) if is_premature_end(&d.to_string()) => Error::Truncated {
            path: path.to_owned(),
            message: d.to_string(),
        },
        _ => decode_error(e),
    })?;
    Ok(img.to_rgb8())
}

/// A picture decoded at a reduced scale ([`decode_rgb_reduced`]).
#[derive(Debug, Clone)]
pub struct Reduced {
    /// The pixels decoded.
    pub image: RgbImage,
    /// How many times smaller each side is than the file's picture: 1, 2, 4 or 8.
    pub factor: u32,
    /// The file's picture, in pixels: what coordinates in results refer to.
    pub width: u32,
    /// See [`Reduced::width`].
    pub height: u32,
}

impl Reduced {
    /// A picture decoded in full.
    pub fn full(image: RgbImage) -> Self {
        Reduced {
            width: image.width(),
            height: image.height(),
            image,
            factor: 1,
        }
    }
}

/// Decode as [`decode_rgb_within`], but let a JPEG's decoder skip the detail
/// nobody will look at: its inverse DCT runs at ½, ¼ or ⅛ scale (the largest
/// reduction that keeps the picture's shorter side at least twice
/// `model_input`, the model's input side, so that the antialiased resize
/// still does the last step), so
/// the colour conversion and everything after work on 4–64 × fewer pixels.
/// Each output pixel is then the mean of a 2×2 … 8×8 block rather than a
/// pixel, which is *not* the reference pipeline (torchvision resizes the full
/// picture): an opt-in, with its difference measured by `bench
/// --picture-size`. Other formats, and JPEGs too small to reduce, are
/// decoded in full (`factor` 1).
pub fn decode_rgb_reduced(
    bytes: &[u8],
    path: &Path,
    limits: &Limits,
    model_input: u32,
) -> Result<Reduced, Error> {
    let full = || decode_rgb_within(bytes, path, limits).map(Reduced::full);
    let is_jpeg = matches!(image::guess_format(bytes), Ok(ImageFormat::Jpeg));
    if !is_jpeg {
        return full();
    }
    let decode_error = |e: jpeg_decoder::Error| {
        let message = e.to_string();
        if is_premature_end(&message) {
            Error::Truncated {
                path: path.to_owned(),
                message,
            }
        } else {
            Error::Decode {
                path: path.to_owned(),
                message,
            }
        }
    };
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    decoder.read_info().map_err(decode_error)?;
    let Some(info) = decoder.info() else {
        return full();
    };
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let factor = reduction(w, h, 2 * model_input);
    let reducible = matches!(
        info.pixel_format,
        jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8
    );
    if factor == 1 || !reducible {
        // Nothing to gain, or a format (16-bit grey, CMYK) left to the full decoder.
        return full();
    }
    // The same checks as a full decode: limits (the full decoder's refusal
    // says why), then a complete file.
    if w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > limits.max_pixels {
        return full();
    }
    if !ends_like_a_jpeg(bytes) {
        return Err(no_end_marker(path));
    }
    let scaled = |len: u32| len.div_ceil(factor);
    let (rw, rh) = decoder
        .scale(scaled(w) as u16, scaled(h) as u16)
        .map_err(decode_error)?;
    decoder.set_max_decoding_buffer_size(limits.max_pixels as usize * 3 + (16 << 20));
    let pixels = decoder.decode().map_err(decode_error)?;
    let (rw, rh) = (u32::from(rw), u32::from(rh));
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        _ => pixels,
    };
    let image = RgbImage::from_raw(rw, rh, rgb).ok_or_else(|| Error::Decode {
        path: path.to_owned(),
        message: format!("the decoder returned too few pixels for {rw} × {rh}"),
    })?;
    Ok(Reduced {
        image,
        factor,
        width: w,
        height: h,
    })
}

/// The largest DCT reduction (8, 4, 2, else 1) that keeps the shorter side
/// of a `w` × `h` picture at least `min_side` pixels.
fn reduction(w: u32, h: u32, min_side: u32) -> u32 {
    let short = w.min(h);
    [8, 4, 2]
        .into_iter()
        .find(|f| short.div_ceil(*f) >= min_side)
        .unwrap_or(1)
}

fn no_end_marker(path: &Path) -> Error {
    Error::Truncated {
        path: path.to_owned(),
        message: "no end-of-image marker: the file was cut short or is still being written".into(),
    }
}

/// A complete JPEG ends with its EOI marker (FF D9); some writers pad after
/// it. Inside the entropy-coded data FF is always followed by 00 or a restart
/// marker, so FF D9 near the end is the real end.
fn ends_like_a_jpeg(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn is_premature_end(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unexpected end",
        "premature end",
        "unexpected eof",
        "end of file",
        "truncated",
        "not enough data",
    ]
    .iter()
    .any(|s| m.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: ImageFormat, side: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(side, side, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, (x ^ y) as u8])
        });
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), format).unwrap();
        out
    }

    #[test]
    fn truncated_png_is_an_error_naming_the_file() {
        let mut png = encoded(ImageFormat::Png, 32);
        png.truncate(png.len() / 2);
        let err = decode_rgb(&png, Path::new("cam/0001.png")).unwrap_err();
        assert!(
            matches!(err, Error::Decode { .. } | Error::Truncated { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("cam/0001.png"));
    }

    /// Issue #16, finding 5: JPEGs cut at 5–99 % got verdicts.
    #[test]
    fn a_jpeg_cut_anywhere_is_truncated_never_a_picture() {
        let jpg = encoded(ImageFormat::Jpeg, 64);
        decode_rgb(&jpg, Path::new("whole.jpg")).unwrap();
        for percent in [5, 30, 50, 90, 99] {
            let cut = &jpg[..jpg.len() * percent / 100];
            let err = decode_rgb(cut, Path::new("cut.jpg")).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { .. } | Error::Decode { .. }),
                "{percent} %: {err}"
            );
        }
        let cut = &jpg[..jpg.len() * 90 / 100];
        assert!(matches!(
            decode_rgb(cut, Path::new("cut.jpg")),
            Err(Error::Truncated { .. })
        ));
        // Padding after the end marker is fine.
        let mut padded = jpg.clone();
        padded.extend_from_slice(&[0; 100]);
        decode_rgb(&padded, Path::new("padded.jpg")).unwrap();
    }

    #[test]
    fn the_reduction_keeps_the_shorter_side() {
        assert_eq!(reduction(5472, 3648, 480), 4);
        assert_eq!(reduction(2448, 2048, 480), 4);
        assert_eq!(reduction(1280, 1024, 480), 2);
        assert_eq!(reduction(640, 480, 480), 1);
        assert_eq!(reduction(4000, 4000, 480), 8);
    }

    /// A JPEG decoded at ½ scale is the full decode averaged over 2×2
    /// blocks, to a few grey levels; a PNG is decoded in full.
    #[test]
    fn a_reduced_jpeg_is_the_block_mean_of_the_full_decode() {
        let img = RgbImage::from_fn(480, 320, |x, y| {
            image::Rgb([(x / 2) as u8, (y / 2) as u8, ((x + y) / 4) as u8])
        });
        let mut jpg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 95)
            .encode_image(&img)
            .unwrap();
        let full = decode_rgb(&jpg, Path::new("a.jpg")).unwrap();
        let r = decode_rgb_reduced(&jpg, Path::new("a.jpg"), &Limits::DEFAULT, 80).unwrap();
        assert_eq!((r.factor, r.image.dimensions()), (2, (240, 160)));
        assert_eq!((r.width, r.height), (480, 320));
        let mut worst = 0f32;
        for (x, y, p) in r.image.enumerate_pixels() {
            for c in 0..3 {
                let mean = (0..4)
                    .map(|i| f32::from(full.get_pixel(2 * x + i % 2, 2 * y + i / 2).0[c]))
                    .sum::<f32>()
                    / 4.0;
                worst = worst.max((mean - f32::from(p.0[c])).abs());
            }
        }
        assert!(worst <= 6.0, "{worst} grey levels");

        let png = encoded(ImageFormat::Png, 600);
        let r = decode_rgb_reduced(&png, Path::new("a.png"), &Limits::DEFAULT, 50).unwrap();
        assert_eq!(r.factor, 1);
        assert_eq!(r.image, decode_rgb(&png, Path::new("a.png")).unwrap());
    }

    #[test]
    fn a_cut_jpeg_is_truncated_when_reduced_too() {
        let jpg = encoded(ImageFormat::Jpeg, 512);
        let cut = &jpg[..jpg.len() * 90 / 100];
        let err = decode_rgb_reduced(cut, Path::new("cut.jpg"), &Limits::DEFAULT, 32).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
        let ok = decode_rgb_reduced(&jpg, Path::new("whole.jpg"), &Limits::DEFAULT, 32).unwrap();
        assert_eq!((ok.factor, ok.image.dimensions()), (8, (64, 64)));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = decode_rgb(b"not an image at all", Path::new("x.jpg")).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }

    /// A PNG whose header declares `w` × `h` pixels (CRC fixed, so decoders believe it).
    fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        let mut png = encoded(ImageFormat::Png, 1);
        // IHDR: length at 8, type at 12, width/height at 16..24, CRC at 29..33.
        png[16..20].copy_from_slice(&w.to_be_bytes());
        png[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// Issue #16, finding 6: a small PNG declaring 16384 × 16384 pixels drove
    /// the daemon to 1 GB before anything was checked.
    #[test]
    fn declared_dimensions_over_the_limit_are_refused_before_decoding() {
        let err = decode_rgb(&png_declaring(16_384, 16_384), Path::new("big.png")).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("16384 × 16384"), "{err}");
        let small = Limits {
            max_bytes: 1 << 20,
            max_pixels: 100,
        };
        let err = decode_rgb_within(&encoded(ImageFormat::Png, 11), Path::new("p.png"), &small).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        decode_rgb_within(&encoded(ImageFormat::Png, 10), Path::new("p.png"), &small).unwrap();
    }

    #[test]
    fn a_file_over_the_size_limit_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        // Sparse: 1.5 GiB that takes no disk.
        std::fs::File::create(&path).unwrap().set_len(3 << 29).unwrap();
        let err = read_limited(&path, &Limits::DEFAULT).unwrap_err();
        assert!(
            err.to_string()
                .contains("1536 MiB file, more than the limit of 64 MiB"),
            "{err}"
        );
    }
}
