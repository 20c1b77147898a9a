//! Decoding image files safely: bounded dimensions and allocations, clear errors.

use std::path::{Path, PathBuf};

use image::{ImageReader, RgbImage};

/// Largest accepted image side in pixels (a 64 MP camera is 9248 wide).
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoder allocation in bytes.
pub const MAX_ALLOC: u64 = 512 * 1024 * 1024;

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
    /// The image exceeds the decoding limits.
    #[error("image {path} is too large: {message} (limits: {MAX_SIDE} px per side, {} MiB)", MAX_ALLOC >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What exceeded the limit.
        message: String,
    },
}

/// Decode `path` (format guessed from the content) into 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    decode_rgb(&bytes, path)
}

/// Decode in-memory bytes into 8-bit RGB; `path` is only used in messages.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, Error> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => Error::TooLarge {
            path: path.to_owned(),
            message: l.to_string(),
        },
        other => Error::Decode {
            path: path.to_owned(),
            message: other.to_string(),
        },
    })?;
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_png_is_a_decode_error_naming_the_file() {
        let mut png = Vec::new();
        RgbImage::new(32, 32)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png.truncate(png.len() / 2);
        let err = decode_rgb(&png, Path::new("cam/0001.png")).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
        assert!(err.to_string().contains("cam/0001.png"));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = decode_rgb(b"not an image at all", Path::new("x.jpg")).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }

    #[test]
    fn oversized_dimensions_are_refused_before_allocation() {
        // A valid PNG header claiming 20000 x 20000 pixels.
        let mut png = Vec::new();
        let enc = image::codecs::png::PngEncoder::new(&mut png);
        use image::ImageEncoder;
        enc.write_image(&[0u8; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        // IHDR width/height live at bytes 16..24.
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let err = decode_rgb(&png, Path::new("big.png")).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { .. } | Error::Decode { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("big.png"));
    }
}
