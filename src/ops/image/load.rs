//! Reading image files: JPEG and PNG into [`RgbImage`], with the size limit checked from the
//! header before decoding and truncated JPEGs detected from their marker stream.

use std::path::Path;

use super::RgbImage;
use crate::error::{Error, Result};

/// The largest image [`load_rgb`] decodes: 2^27 pixels (134 megapixels, e.g. 16384 × 8192),
/// ~400 MB as 8-bit RGB. A header claiming more is refused before anything is allocated: a
/// 68-byte PNG can claim 10^10 pixels.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 27;

/// Reads a JPEG or PNG file as 8-bit RGB. Grey images are replicated to three channels, an
/// alpha channel is dropped, 16-bit samples are reduced to 8 bits, and an EXIF orientation tag
/// is applied (as `cv2.imread` does by default). Images over [`MAX_IMAGE_PIXELS`] are an error;
/// a JPEG that ends before its end-of-image marker is decoded as OpenCV does (the decoder fills
/// in the rest) with a warning on stderr.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    crate::textfile::check_regular(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: &dyn std::fmt::Display| {
        // Decoder messages can span lines; the error stays one line.
        let msg = crate::error::flatten(e);
        Error::Input(format!("{}: not a readable image ({msg})", path.display()))
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| bad(&e))?;
    let format = reader.format();
    if format.is_none() {
        return Err(bad(&"neither JPEG nor PNG"));
    }
    let mut decoder = reader.into_decoder().map_err(|e| bad(&e))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    if w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        return Err(Error::Input(format!(
            "{}: {w}×{h} pixels is more than handcov reads ({} megapixels at most); downscale it",
            path.display(),
            MAX_IMAGE_PIXELS / 1_000_000
        )));
    }
    let orientation = image::ImageDecoder::orientation(&mut decoder).map_err(|e| bad(&e))?;
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(&e))?;
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        eprintln!(
            "warning: {}: the JPEG ends before its end-of-image marker (truncated?); the missing \
             part is filled in by the decoder",
            path.display()
        );
    }
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    if width == 0 || height == 0 {
        return Err(bad(&"empty image"));
    }
    Ok(RgbImage {
        width,
        height,
        data: rgb.into_raw(),
    })
}

/// Whether a JPEG's marker stream reaches its end-of-image marker: segments are skipped by
/// their lengths, entropy-coded data up to the next marker (`FF 00` is a stuffed byte and
/// `FF D0`–`FF D7` are restart markers inside it). An EOI inside an embedded EXIF thumbnail
/// does not count: it sits inside an APP1 segment, which is skipped whole.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut pos = 2;
    loop {
        // The next marker: FF, possibly padded with more FFs, then its code.
        if pos >= b.len() || b[pos] != 0xFF {
            return false;
        }
        while pos < b.len() && b[pos] == 0xFF {
            pos += 1;
        }
        let Some(&code) = b.get(pos) else {
            return false;
        };
        pos += 1;
        match code {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(pos..pos + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        pos += len;
        if code == 0xDA {
            // Entropy-coded data runs to the next marker that is neither a stuffed byte nor
            // a restart marker.
            loop {
                if pos + 1 >= b.len() {
                    return false;
                }
                if b[pos] == 0xFF && !matches!(b[pos + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
                    break;
                }
                pos += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: image::ImageFormat, w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 5) as u8, 77]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn write_tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("handcov_image_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn jpeg_completeness_follows_the_marker_stream() {
        let jpg = encoded(image::ImageFormat::Jpeg, 40, 24);
        assert!(jpeg_is_complete(&jpg));
        // Bytes after the end-of-image marker (some cameras append data) are fine.
        let mut trailer = jpg.clone();
        trailer.extend_from_slice(&[0u8; 100]);
        assert!(jpeg_is_complete(&trailer));
        // Cut anywhere before the end: incomplete, whatever the cut point.
        for cut in [3, 20, jpg.len() / 3, jpg.len() - 2, jpg.len() - 1] {
            assert!(
                !jpeg_is_complete(&jpg[..cut]),
                "cut at {cut} of {}",
                jpg.len()
            );
        }
        // An end-of-image marker inside a skipped segment (an EXIF thumbnail's) does not count.
        let mut app = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00];
        app.extend_from_slice(&jpg[2..jpg.len() / 2]);
        assert!(!jpeg_is_complete(&app));
        assert!(!jpeg_is_complete(b"not a jpeg"));
    }

    #[test]
    fn truncated_jpeg_still_decodes_and_a_complete_one_is_exact_size() {
        // Large enough that two thirds of the file end inside the entropy-coded data.
        let jpg = encoded(image::ImageFormat::Jpeg, 320, 240);
        let full = load_rgb(&write_tmp("full.jpg", &jpg)).unwrap();
        assert_eq!((full.width, full.height), (320, 240));
        // As OpenCV: decoded (with a warning on stderr), at its full size.
        let cut = load_rgb(&write_tmp("cut.jpg", &jpg[..jpg.len() * 2 / 3])).unwrap();
        assert_eq!((cut.width, cut.height), (320, 240));
    }

    /// CRC-32 (PNG's chunk checksum), bit by bit.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= b as u32;
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

    #[test]
    fn an_image_claiming_too_many_pixels_is_refused_before_decoding() {
        // A 1×1 PNG whose header is edited to claim 100000 × 100000 pixels (CRC fixed up).
        let mut png = encoded(image::ImageFormat::Png, 1, 1);
        let ihdr = 8; // the IHDR chunk: length (4), "IHDR" (4), width, height, ..., CRC
        assert_eq!(&png[ihdr + 4..ihdr + 8], b"IHDR");
        png[ihdr + 8..ihdr + 12].copy_from_slice(&100_000u32.to_be_bytes());
        png[ihdr + 12..ihdr + 16].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[ihdr + 4..ihdr + 8 + 13]);
        png[ihdr + 8 + 13..ihdr + 8 + 17].copy_from_slice(&crc.to_be_bytes());
        let e = load_rgb(&write_tmp("huge.png", &png))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("100000×100000 pixels") && e.contains("huge.png"),
            "{e}"
        );
        // A JPEG whose frame header claims 60000 × 60000.
        let mut jpg = encoded(image::ImageFormat::Jpeg, 8, 8);
        let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpg[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        jpg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        let e = load_rgb(&write_tmp("huge.jpg", &jpg))
            .unwrap_err()
            .to_string();
        assert!(e.contains("60000×60000 pixels"), "{e}");
        // At the limit's edge a real image still loads.
        assert!(load_rgb(&write_tmp(
            "ok.png",
            &encoded(image::ImageFormat::Png, 64, 32)
        ))
        .is_ok());
    }

    #[test]
    fn decoder_messages_stay_on_one_line() {
        let jpg = encoded(image::ImageFormat::Jpeg, 16, 16);
        let e = load_rgb(&write_tmp("header.jpg", &jpg[..4]))
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains('\n') && e.contains("not a readable image"),
            "{e:?}"
        );
    }
}
