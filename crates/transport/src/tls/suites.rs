//! Which cipher suite a migration channel uses, chosen for throughput: the migration stream
//! is bulk data, and on a loaded 2-core host the AEAD is a large share of what TLS costs.
//!
//! ring's default order puts AES-256-GCM first. With AES instructions (AES-NI, and VAES with
//! AVX2, which ring uses when present) AES-128-GCM does the same work in 10 rounds instead of
//! 14, so it goes first; ChaCha20-Poly1305 is only faster on a CPU without them, and goes
//! first there. The suites offered are ring's defaults, all of them (nothing weaker is
//! added, nothing is dropped), so every peer that could connect before still can: only the
//! preference changes. A livemig server picks by its own order (`ignore_client_order`), so a
//! QEMU source, whose GnuTLS prefers AES-256, gets AES-128 too.
//!
//! | rank | with AES instructions | without |
//! | --- | --- | --- |
//! | 1 | AES-128-GCM | ChaCha20-Poly1305 |
//! | 2 | AES-256-GCM | AES-128-GCM |
//! | 3 | ChaCha20-Poly1305 | AES-256-GCM |
//!
//! TLS 1.3 suites stay ahead of TLS 1.2 ones.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, SupportedCipherSuite};

/// Whether this CPU has AES instructions (what makes AES-GCM faster than ChaCha20).
fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Cipher {
    Aes128,
    Aes256,
    ChaCha,
}

fn cipher(s: &SupportedCipherSuite) -> Cipher {
    match s.suite() {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Cipher::Aes128,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Cipher::ChaCha,
        _ => Cipher::Aes256,
    }
}

/// Orders `suites` for a CPU with (`aes`) or without AES instructions; see the module doc.
fn order(suites: &mut [SupportedCipherSuite], aes: bool) {
    suites.sort_by_key(|s| {
        let rank = match (cipher(s), aes) {
            (Cipher::Aes128, true) | (Cipher::ChaCha, false) => 0,
            (Cipher::Aes256, true) | (Cipher::Aes128, false) => 1,
            (Cipher::ChaCha, true) | (Cipher::Aes256, false) => 2,
        };
        (matches!(s, SupportedCipherSuite::Tls12(_)), rank)
    });
}

/// ring's provider with the suites in the order above.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    order(&mut provider.cipher_suites, has_aes_instructions());
    Arc::new(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastest_suite_first_tls13_before_tls12_nothing_dropped() {
        let default = rustls::crypto::ring::default_provider().cipher_suites;
        for aes in [true, false] {
            let mut suites = default.clone();
            order(&mut suites, aes);
            assert_eq!(suites.len(), default.len());
            assert!(default.iter().all(|s| suites.contains(s)));
            let first = if aes { Cipher::Aes128 } else { Cipher::ChaCha };
            assert_eq!(cipher(&suites[0]), first);
            assert!(matches!(suites[0], SupportedCipherSuite::Tls13(_)));
            let tls12_at = suites
                .iter()
                .position(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
                .unwrap();
            assert!(suites[tls12_at..]
                .iter()
                .all(|s| matches!(s, SupportedCipherSuite::Tls12(_))));
            assert_eq!(cipher(&suites[tls12_at]), first);
        }
    }
}
