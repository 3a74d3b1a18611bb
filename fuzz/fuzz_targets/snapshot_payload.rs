//! Any bytes as a stored payload, whole or split into chunks, with the right
//! or a wrong checksum: decoding refuses or succeeds, never panics, and what
//! was encoded always decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapback::store::codec::{decode, encode, sha256_hex};

fuzz_target!(|data: &[u8]| {
    // Corrupted or hostile payloads, as chunks.
    let split = data.first().map(|b| *b as usize % 4 + 1).unwrap_or(1);
    let chunk = (data.len() / split).max(1);
    let chunks: Vec<&[u8]> = data.chunks(chunk).collect();
    let _ = decode(&chunks, &sha256_hex(data));
    let _ = decode(&chunks, "0000");
    // Round trip of any JSON document the bytes happen to be.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let size = data.len() % 97 + 1;
        if let Ok(enc) = encode(&value, size) {
            let refs: Vec<&[u8]> = enc.chunks.iter().map(Vec::as_slice).collect();
            assert_eq!(decode(&refs, &enc.sha256).ok(), Some(value));
        }
    }
});
