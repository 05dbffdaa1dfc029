//! Sealing: chunk plaintext -> blob id -> zstd -> age -> SHA-256, and back. The only module that
//! touches cryptography.
//!
//! * A blob id is HMAC-SHA256 over the chunk's plaintext, keyed with the repository's dedup salt
//!   or the policy's `repository.dedup_key`, so equal content gets one id without the id
//!   revealing the content to anyone who lacks the key.
//! * A sealed blob is an age file (X25519 recipients only: the backup host holds public keys and
//!   can never decrypt) whose plaintext is one zstd frame with its content size recorded, so
//!   `age -d -i KEY blob | zstd -d` recovers the chunk with the stock tools.
//! * Opening checks everything it can: the age MAC (any flipped byte fails), the zstd frame, and,
//!   when the caller gives the expected id, that the plaintext's HMAC is that id.

use crate::error::{Error, Kind, Result};
use age::secrecy::ExposeSecret;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

/// Content-defined chunking parameters, recorded in backstop.json so every writer of a
/// repository cuts the same content at the same places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub algorithm: ChunkAlgorithm,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChunkAlgorithm {
    #[serde(rename = "fastcdc-2020")]
    FastCdc2020,
}

impl Default for ChunkerParams {
    /// 256 KiB average: small enough that a nightly dump whose header changed re-stores little,
    /// large enough that a 1 GB database is ~4,000 blobs.
    fn default() -> Self {
        ChunkerParams {
            algorithm: ChunkAlgorithm::FastCdc2020,
            min_size: 64 * 1024,
            avg_size: 256 * 1024,
            max_size: 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<()> {
        let ok = self.min_size >= fastcdc::v2020::MINIMUM_MIN
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.avg_size <= fastcdc::v2020::AVERAGE_MAX
            && self.max_size <= fastcdc::v2020::MAXIMUM_MAX;
        if ok {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "backstop.json has unusable chunker parameters {self:?}"
            )))
        }
    }

    /// An iterator of content-defined chunks over a reader.
    pub fn chunks<R: Read>(&self, reader: R) -> fastcdc::v2020::StreamCDC<R> {
        fastcdc::v2020::StreamCDC::new(reader, self.min_size, self.avg_size, self.max_size)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient> {
    age::x25519::Recipient::from_str(text.trim()).map_err(|e| {
        Error::input(format!(
            "`{}` is not an age X25519 public key (age1...): {}",
            crate::util::preview(text),
            crate::util::mask_age_secrets(e)
        ))
    })
}

/// Blob ids: HMAC-SHA256 keyed with the dedup key. Restore uses it to prove each chunk's
/// plaintext is the one the manifest names.
#[derive(Clone)]
pub struct BlobIds {
    mac: Hmac<Sha256>,
}

impl BlobIds {
    pub fn new(key: &[u8]) -> BlobIds {
        // HMAC accepts keys of any length: new_from_slice cannot fail for Hmac<Sha256>.
        let mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        BlobIds { mac }
    }

    pub fn id(&self, plain: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(plain);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Everything the backup host needs to write blobs: public keys and the dedup key. No secret
/// that could decrypt anything.
pub struct Sealer {
    recipients: Vec<age::x25519::Recipient>,
    ids: BlobIds,
    level: i32,
}

impl Sealer {
    pub fn new(recipients: &[String], dedup_key: &[u8], level: i32) -> Result<Sealer> {
        if recipients.is_empty() {
            return Err(Error::input(
                "no encryption recipient configured: backstop never writes plaintext; add an age public key to [encryption] recipients",
            ));
        }
        let recipients = recipients
            .iter()
            .map(|r| parse_recipient(r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Sealer {
            recipients,
            ids: BlobIds::new(dedup_key),
            level,
        })
    }

    pub fn blob_id(&self, plain: &[u8]) -> String {
        self.ids.id(plain)
    }

    /// zstd then age. Returns the stored bytes.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let compressed = zstd::bulk::compress(plain, self.level)
            .map_err(|e| Error::failed(format!("zstd compression failed: {e}")))?;
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| Error::failed(format!("age encryption setup failed: {e}")))?;
        let mut out = Vec::with_capacity(compressed.len() + 256 + compressed.len() / 4096);
        let mut w = encryptor
            .wrap_output(&mut out)
            .map_err(|e| Error::failed(format!("age encryption failed: {e}")))?;
        w.write_all(&compressed)
            .and_then(|_| w.finish().map(|_| ()))
            .map_err(|e| Error::failed(format!("age encryption failed: {e}")))?;
        Ok(out)
    }
}

/// The largest manifest a reader decompresses (1 GiB).
pub const MANIFEST_MAX: u64 = 1 << 30;

/// The most [`Opener::open_bounded`] reserves up front: the largest chunk FastCDC makes. Pages
/// of a larger reservation than a small manifest needs are never touched.
const CHUNK_CAPACITY: u64 = fastcdc::v2020::MAXIMUM_MAX as u64 + 1;

/// Private keys, loaded only by restore, verify and `check --identity`.
pub struct Opener {
    identities: Vec<age::x25519::Identity>,
    source: String,
}

impl Opener {
    /// Reads an identity file as `age-keygen` and `backstop keygen` write it: `#` comments and
    /// one `AGE-SECRET-KEY-1...` per line.
    pub fn from_file(path: &Path) -> Result<Opener> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::input(format!("cannot read identity file {}: {e}", path.display()))
        })?;
        let mut identities = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| {
                Error::input(format!(
                    "{}:{}: not an age identity (expected AGE-SECRET-KEY-1...)",
                    path.display(),
                    n + 1
                ))
            })?;
            identities.push(id);
        }
        if identities.is_empty() {
            return Err(Error::input(format!(
                "{} holds no age identity (AGE-SECRET-KEY-1...)",
                path.display()
            )));
        }
        Ok(Opener {
            identities,
            source: path.display().to_string(),
        })
    }

    /// Refuses, as the operator's mistake, an identity whose public keys are none of
    /// `recipients` (the repository's and the policy's): it can open nothing of theirs.
    pub fn check_matches(&self, recipients: &[String]) -> Result<()> {
        let public: Vec<String> = self
            .identities
            .iter()
            .map(|i| i.to_public().to_string())
            .collect();
        if public.iter().any(|p| recipients.contains(p)) {
            return Ok(());
        }
        Err(Error::new(
            Kind::WrongIdentity,
            format!(
                "the identity in {} (public key {}) is not one of the recipients of this repository or policy ({}): use the key whose public key is in the policy's [encryption] recipients",
                self.source,
                public.join(", "),
                recipients.join(", ")
            ),
        ))
    }

    /// age-decrypts and zstd-decompresses a manifest (at most [`MANIFEST_MAX`] bytes).
    /// `what` names the object in errors.
    pub fn open(&self, sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        self.open_bounded(sealed, what, MANIFEST_MAX)
    }

    /// age-decrypts and zstd-decompresses at most `max` bytes of plaintext; more is damage.
    pub fn open_bounded(&self, sealed: &[u8], what: &str, max: u64) -> Result<Vec<u8>> {
        let decryptor = age::Decryptor::new_buffered(sealed).map_err(|e| {
            Error::new(
                Kind::Damaged,
                format!("{what} is damaged: not a readable age file ({e})"),
            )
        })?;
        let mut reader = decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => Error::new(Kind::WrongKey, format!(
                    "the identity in {} matches none of the recipients {what} was encrypted to: use the key whose public key is in the policy's [encryption] recipients",
                    self.source
                )),
                other => Error::new(Kind::Damaged, format!("{what} is damaged: {other}")),
            })?;
        let mut compressed = Vec::with_capacity(sealed.len());
        reader.read_to_end(&mut compressed).map_err(|e| {
            Error::new(
                Kind::Damaged,
                format!("{what} is damaged: decryption failed ({e})"),
            )
        })?;
        // Decompression stops one byte past what the manifest records: a frame that claims
        // more (damage, or a crafted one) never fills memory.
        // Sized for the recorded length (plus the byte that detects more), capped so that a
        // manifest's bound never becomes an allocation.
        let mut plain = Vec::with_capacity(max.saturating_add(1).min(CHUNK_CAPACITY) as usize);
        zstd::stream::read::Decoder::new(compressed.as_slice())
            .and_then(|d| d.take(max.saturating_add(1)).read_to_end(&mut plain))
            .map_err(|e| {
                Error::new(
                    Kind::Damaged,
                    format!("{what} is damaged: zstd frame unreadable ({e})"),
                )
            })?;
        if plain.len() as u64 > max {
            return Err(Error::new(
                Kind::Damaged,
                format!("{what} is damaged: it decompresses to more than the {max} bytes recorded"),
            ));
        }
        Ok(plain)
    }
}

/// A new identity in the file format of `age-keygen`, and its public key.
pub fn generate_identity() -> (String, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let file = format!(
        "# created: {}\n# public key: {public}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        id.to_string().expose_secret()
    );
    (file, public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (Sealer, Opener, tempfile::NamedTempFile) {
        let (file, public) = generate_identity();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(file.as_bytes()).unwrap();
        let sealer = Sealer::new(&[public], b"salt", 3).unwrap();
        let opener = Opener::from_file(f.path()).unwrap();
        (sealer, opener, f)
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let (sealer, opener, _f) = pair();
        let plain = b"hello sealed world".repeat(1000);
        let sealed = sealer.seal(&plain).unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"hello seale"));
        assert_eq!(opener.open(&sealed, "blob x").unwrap(), plain);
        let mut bad = sealed.clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        let e = opener.open(&bad, "blob x").unwrap_err();
        assert!(e.message.contains("blob x is damaged"), "{}", e.message);
    }

    #[test]
    fn decompression_stops_at_the_recorded_length() {
        let (sealer, opener, _f) = pair();
        // 16 MiB of zeros compress to almost nothing: a small blob that claims 1000 bytes.
        let sealed = sealer.seal(&vec![0u8; 16 << 20]).unwrap();
        assert!(sealed.len() < 4096);
        let e = opener.open_bounded(&sealed, "blob z", 1000).unwrap_err();
        assert_eq!(e.kind, Kind::Damaged);
        assert!(
            e.message.contains("more than the 1000 bytes"),
            "{}",
            e.message
        );
        assert_eq!(
            opener
                .open_bounded(&sealed, "blob z", 16 << 20)
                .unwrap()
                .len(),
            16 << 20
        );
    }

    #[test]
    fn wrong_identity_is_named() {
        let (sealer, _, _f) = pair();
        let (_, other, _g) = pair();
        let e = other
            .open(&sealer.seal(b"x").unwrap(), "blob y")
            .unwrap_err();
        assert!(
            e.message.contains("matches none of the recipients"),
            "{}",
            e.message
        );
        assert_eq!(e.kind, Kind::WrongKey);
    }

    #[test]
    fn no_recipient_no_sealer() {
        assert!(Sealer::new(&[], b"k", 3).is_err());
        assert!(Sealer::new(&["age1nope".into()], b"k", 3).is_err());
    }

    #[test]
    fn ids_depend_on_key_and_content() {
        let a = Sealer::new(&[generate_identity().1], b"k1", 3).unwrap();
        let b = Sealer::new(&[generate_identity().1], b"k2", 3).unwrap();
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
        assert_ne!(a.blob_id(b"x"), a.blob_id(b"y"));
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Content-defined chunking: an insertion near the start leaves later chunks unchanged,
        /// and chunks always respect the size bounds and reassemble the input.
        #[test]
        fn chunking_is_local(seed in any::<u64>(), insert in 1usize..5000) {
            let p = ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536, ..Default::default() };
            let mut state = seed | 1;
            let data: Vec<u8> = (0..600_000).map(|_| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state as u8 }).collect();
            let cut = |d: &[u8]| -> Vec<Vec<u8>> { p.chunks(d).map(|c| c.unwrap().data).collect() };
            let a = cut(&data);
            prop_assert_eq!(a.concat(), data.clone());
            for c in &a[..a.len() - 1] { prop_assert!(c.len() >= 4096 && c.len() <= 65536); }
            let mut changed = vec![7u8; insert];
            changed.extend_from_slice(&data);
            let b = cut(&changed);
            let shared = a.iter().filter(|c| b.contains(c)).count();
            prop_assert!(shared + 6 >= a.len(), "only {} of {} chunks survived", shared, a.len());
        }
    }
}
