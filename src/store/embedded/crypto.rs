//! Keys and AEAD for the embedded store: the master key (env or key file),
//! data keys wrapped by it, and the `credgate:v1:` ciphertext format.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::config::{ENV_MASTER_KEY, StoreConfig};
use crate::store::{Plaintext, StoreError};

/// Prefix of every ciphertext [`seal_value`] makes.
pub(super) const CIPHERTEXT_PREFIX: &str = "credgate:v1:";

const TAG_LEN: usize = 16;
/// AAD of the master key check value kept in the log header.
const KEY_CHECK_AAD: &[u8] = b"credgate:master-key-check";
/// Message for a master key that does not open this store.
pub(super) const WRONG_MASTER_KEY: &str = "master key does not match this store";

/// A 32-byte AES-256 key, wiped on drop.
pub(super) type KeyBytes = Zeroizing<[u8; 32]>;

/// Loads the master key: `env_key` (`CREDGATE_MASTER_KEY`) if set, else the
/// key file, which is created (mode 0600, 32 random bytes as base64) on first
/// start.
pub(super) fn load_master_key(
    config: &StoreConfig,
    env_key: Option<&SecretString>,
) -> Result<KeyBytes, StoreError> {
    match env_key {
        Some(value) => decode_key(value.expose_secret()).ok_or_else(env_key_error),
        None => load_or_create_key_file(&config.master_key_path()),
    }
}

fn env_key_error() -> StoreError {
    // Never echo the value: it may be a real key with a typo.
    StoreError::Refused(format!(
        "{ENV_MASTER_KEY} must be 32 bytes in standard base64"
    ))
}

fn decode_key(text: &str) -> Option<KeyBytes> {
    let bytes = Zeroizing::new(B64.decode(text.trim()).ok()?);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return None;
    }
    key.copy_from_slice(&bytes);
    Some(key)
}

pub(super) fn load_or_create_key_file(path: &Path) -> Result<KeyBytes, StoreError> {
    let io = |what: &str, e: std::io::Error| {
        StoreError::Io(format!("{what} master key file {}: {e}", path.display()))
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            warn_if_loose(path);
            return decode_key(&text).ok_or_else(|| {
                StoreError::Refused(format!(
                    "master key file {} must hold 32 bytes in standard base64",
                    path.display()
                ))
            });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot read", e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    fill_random(&mut key[..])?;
    let text = Zeroizing::new(format!("{}\n", B64.encode(&key[..])));

    // Write a private temp file, then hard-link it into place: the link fails
    // if the key file appeared meanwhile, so two processes starting at once
    // agree on one key and nobody ever reads a half-written file.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            super::log::sync_dir(path)?;
            tracing::info!(path = %path.display(), "created the embedded store master key file");
            Ok(key)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => load_or_create_key_file(path),
        Err(e) => Err(io("cannot create", e)),
    }
}

fn warn_if_loose(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "master key file is readable by others; chmod 600 it");
    }
}

pub(super) fn fill_random(buf: &mut [u8]) -> Result<(), StoreError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| StoreError::Unavailable("the system random generator failed".into()))
}

/// A fresh random data key.
pub(super) fn new_data_key() -> Result<KeyBytes, StoreError> {
    let mut key = Zeroizing::new([0u8; 32]);
    fill_random(&mut key[..])?;
    Ok(key)
}

/// nonce ‖ ciphertext ‖ tag under `key`, bound to `aad`.
fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    let key = aead_key(key);
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| StoreError::Unavailable("encryption failed".into()))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Inverse of [`seal`]; any failure is [`StoreError::Decrypt`].
fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Plaintext, StoreError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(StoreError::Decrypt);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Decrypt)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = aead_key(key)
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| StoreError::Decrypt)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // Infallible: AES-256-GCM takes exactly 32 bytes.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

/// The key that authenticates every log entry: HKDF-SHA256 of the master
/// key, for this one purpose. Whoever can write the file but lacks the master
/// key cannot make an entry that passes.
pub(super) fn record_mac_key(master: &[u8; 32]) -> ring::hmac::Key {
    use ring::hkdf;
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"credgate:embedded-store").extract(master);
    prk.expand(&[b"credgate:record-mac:v1"], ring::hmac::HMAC_SHA256)
        // Infallible: one 32-byte output block is well within HKDF's limit.
        .expect("HKDF output length")
        .into()
}

/// The header's proof of which master key made the store.
pub(super) fn key_check(master: &[u8; 32]) -> Result<String, StoreError> {
    Ok(B64.encode(seal(master, KEY_CHECK_AAD, &[])?))
}

/// Fails with [`WRONG_MASTER_KEY`] unless `check` was made by `master`.
pub(super) fn verify_key_check(master: &[u8; 32], check: &str) -> Result<(), StoreError> {
    let sealed = B64
        .decode(check)
        .map_err(|_| StoreError::Corrupt("store header key check is not base64".into()))?;
    open(master, KEY_CHECK_AAD, &sealed)
        .map(drop)
        .map_err(|_| StoreError::Refused(WRONG_MASTER_KEY.into()))
}

fn wrap_aad(keyring: &str) -> Vec<u8> {
    format!("credgate:data-key:{keyring}").into_bytes()
}

/// A data key wrapped by the master key, as base64, bound to its keyring.
pub(super) fn wrap_data_key(
    master: &[u8; 32],
    keyring: &str,
    key: &[u8; 32],
) -> Result<String, StoreError> {
    Ok(B64.encode(seal(master, &wrap_aad(keyring), key)?))
}

/// Inverse of [`wrap_data_key`].
pub(super) fn unwrap_data_key(
    master: &[u8; 32],
    keyring: &str,
    wrapped: &str,
) -> Result<KeyBytes, StoreError> {
    let bad = || {
        StoreError::Corrupt(format!(
            "the data key of keyring {keyring:?} does not unwrap"
        ))
    };
    let sealed = B64.decode(wrapped).map_err(|_| bad())?;
    let plain = open(master, &wrap_aad(keyring), &sealed).map_err(|_| bad())?;
    let mut key = Zeroizing::new([0u8; 32]);
    if plain.len() != key.len() {
        return Err(bad());
    }
    key.copy_from_slice(&plain);
    Ok(key)
}

/// `credgate:v1:` + base64(nonce ‖ ciphertext ‖ tag), AAD = `context`.
pub(super) fn seal_value(
    key: &[u8; 32],
    context: &str,
    plaintext: &[u8],
) -> Result<String, StoreError> {
    let sealed = seal(key, context.as_bytes(), plaintext)?;
    Ok(format!("{CIPHERTEXT_PREFIX}{}", B64.encode(sealed)))
}

/// Inverse of [`seal_value`]; a bad format is [`StoreError::Decrypt`] too.
pub(super) fn open_value(
    key: &[u8; 32],
    context: &str,
    ciphertext: &str,
) -> Result<Plaintext, StoreError> {
    let body = ciphertext
        .strip_prefix(CIPHERTEXT_PREFIX)
        .ok_or(StoreError::Decrypt)?;
    let sealed = B64.decode(body).map_err(|_| StoreError::Decrypt)?;
    open(key, context.as_bytes(), &sealed)
}
