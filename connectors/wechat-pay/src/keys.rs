//! Key material: the merchant's RSA private key, WeChat Pay platform public
//! keys and the APIv3 symmetric key.
//!
//! All three types redact themselves in `Debug` so that a stray `{:?}` in a
//! log line cannot leak them.

use std::fmt;

use ring::signature::{self, RsaKeyPair, UnparsedPublicKey};

use crate::PayError;
use crate::pem::{self, TAG_INTEGER, TAG_SEQUENCE};

/// The merchant API private key (`apiclient_key.pem`), used to sign every
/// request's `Authorization` header.
pub struct MerchantKey(RsaKeyPair);

impl MerchantKey {
    /// Loads an RSA private key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`, what
    /// WeChat's certificate tool writes) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    /// Encrypted PEM is not supported. ring accepts 2048–4096-bit keys.
    pub fn from_pem(pem: &str) -> Result<Self, PayError> {
        let block = pem::parse_first_block(pem)?;
        let pair = match block.label.as_str() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&block.der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&block.der),
            other => {
                return Err(PayError::InvalidKey(format!(
                    "expected PRIVATE KEY or RSA PRIVATE KEY, got {other}"
                )));
            }
        }
        // KeyRejected's description is a fixed string such as "InvalidEncoding";
        // it never contains key bytes.
        .map_err(|e| PayError::InvalidKey(format!("RSA private key rejected: {e}")))?;
        Ok(Self(pair))
    }

    /// The ring key pair, for signing inside this crate.
    pub(crate) fn key_pair(&self) -> &RsaKeyPair {
        &self.0
    }

    /// The matching public key as PKCS#1 `RSAPublicKey` DER. Handy for tests
    /// and for printing a fingerprint; it is not secret.
    #[must_use]
    pub fn public_key_der(&self) -> &[u8] {
        self.0.public().as_ref()
    }
}

impl fmt::Debug for MerchantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MerchantKey(<redacted>)")
    }
}

/// A WeChat Pay platform public key, used to verify notifications and
/// responses. Stored as PKCS#1 `RSAPublicKey` DER because that is the only
/// encoding ring's RSA verifier accepts.
#[derive(Clone)]
pub struct PlatformKey(Vec<u8>);

/// OID of `rsaEncryption` (1.2.840.113549.1.1.1), the only SPKI algorithm we
/// accept.
const RSA_ENCRYPTION: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

impl PlatformKey {
    /// Loads a platform public key from PEM:
    ///
    /// * `BEGIN PUBLIC KEY` (SPKI): WeChat Pay public-key mode
    ///   (`pub_key.pem`, id `PUB_KEY_ID_…`); the SPKI wrapper is removed
    ///   because ring rejects it;
    /// * `BEGIN RSA PUBLIC KEY` (PKCS#1);
    /// * `BEGIN CERTIFICATE`: a legacy platform certificate; only its public
    ///   key is used (see [`PlatformKey::from_certificate_pem`] for the serial).
    pub fn from_pem(pem: &str) -> Result<Self, PayError> {
        let block = pem::parse_first_block(pem)?;
        match block.label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&block.der),
            "RSA PUBLIC KEY" => Self::from_pkcs1_der(&block.der),
            "CERTIFICATE" => Self::from_certificate_der(&block.der).map(|(_, key)| key),
            other => Err(PayError::InvalidKey(format!(
                "expected PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE, got {other}"
            ))),
        }
    }

    /// Loads a legacy platform certificate and returns its serial number in
    /// upper-case hex (the value WeChat puts into `Wechatpay-Serial`) together
    /// with its public key. Validity dates and the issuer signature are not
    /// checked: platform certificates are pinned by configuration.
    pub fn from_certificate_pem(pem: &str) -> Result<(String, Self), PayError> {
        let block = pem::parse_first_block(pem)?;
        if block.label != "CERTIFICATE" {
            return Err(PayError::InvalidKey(format!(
                "expected CERTIFICATE, got {}",
                block.label
            )));
        }
        Self::from_certificate_der(&block.der)
    }

    fn from_certificate_der(der: &[u8]) -> Result<(String, Self), PayError> {
        let parts = pem::certificate_parts(der)
            .ok_or_else(|| PayError::InvalidKey("malformed X.509 certificate".into()))?;
        // DER integers carry a 0x00 pad when the high bit is set; the
        // serial WeChat prints does not.
        let mut serial = parts.serial;
        while let [0, rest @ ..] = serial {
            if rest.is_empty() {
                break;
            }
            serial = rest;
        }
        let key = Self::from_spki_der(parts.spki)?;
        Ok((hex::encode_upper(serial), key))
    }

    fn from_spki_der(der: &[u8]) -> Result<Self, PayError> {
        let info = spki::SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|_| PayError::InvalidKey("malformed SubjectPublicKeyInfo".into()))?;
        if info.algorithm.oid != RSA_ENCRYPTION {
            return Err(PayError::InvalidKey("public key is not RSA".into()));
        }
        let pkcs1 = info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| PayError::InvalidKey("malformed public key bit string".into()))?;
        Self::from_pkcs1_der(pkcs1)
    }

    fn from_pkcs1_der(der: &[u8]) -> Result<Self, PayError> {
        // ring only parses the key lazily at verify time, so check the shape
        // here: a misconfigured key should fail at startup, not on the first
        // payment.
        let bad = || PayError::InvalidKey("malformed PKCS#1 RSAPublicKey".into());
        let seq = pem::read_tlv(der).ok_or_else(bad)?;
        if seq.tag != TAG_SEQUENCE || !seq.rest.is_empty() {
            return Err(bad());
        }
        let n = pem::read_tlv(seq.content).ok_or_else(bad)?;
        let e = pem::read_tlv(n.rest).ok_or_else(bad)?;
        if n.tag != TAG_INTEGER
            || e.tag != TAG_INTEGER
            || !e.rest.is_empty()
            || e.content.is_empty()
        {
            return Err(bad());
        }
        let modulus = match n.content {
            [0, rest @ ..] => rest,
            all => all,
        };
        let bits = modulus.len() * 8;
        if !(2048..=8192).contains(&bits) {
            return Err(PayError::InvalidKey(format!(
                "RSA modulus of {bits} bits, expected 2048..=8192"
            )));
        }
        Ok(Self(der.to_vec()))
    }

    /// Checks an RSASSA-PKCS1-v1_5 / SHA-256 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), PayError> {
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.0)
            .verify(message, signature)
            .map_err(|_| PayError::BadSignature)
    }
}

impl fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public, but a wall of hex in logs helps nobody.
        write!(f, "PlatformKey({} bytes)", self.0.len())
    }
}

/// The 32-byte APIv3 key (set in the merchant platform), the AES-256-GCM key
/// for notification resources.
#[derive(Clone)]
pub struct ApiV3Key([u8; 32]);

impl ApiV3Key {
    /// Accepts exactly 32 ASCII bytes, as configured in the merchant
    /// platform. WeChat uses the characters themselves as the key bytes (no
    /// base64/hex decoding).
    pub fn new(s: &str) -> Result<Self, PayError> {
        if !s.is_ascii() {
            return Err(PayError::InvalidKey("APIv3 key must be ASCII".into()));
        }
        let bytes: [u8; 32] = s.as_bytes().try_into().map_err(|_| {
            PayError::InvalidKey(format!("APIv3 key must be 32 bytes, got {}", s.len()))
        })?;
        Ok(Self(bytes))
    }

    /// The raw key bytes, for the AEAD inside this crate.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERCHANT_PKCS8: &str = include_str!("../testdata/test_only_merchant_key.pem");
    const MERCHANT_PKCS1: &str = include_str!("../testdata/test_only_merchant_key_pkcs1.pem");
    const MERCHANT_PUB: &str = include_str!("../testdata/test_only_merchant_pub.pem");
    const PLATFORM_PUB: &str = include_str!("../testdata/test_only_platform_pub.pem");
    const PLATFORM_PUB_PKCS1: &str = include_str!("../testdata/test_only_platform_pub_pkcs1.pem");

    #[test]
    fn merchant_key_loads_pkcs8_and_pkcs1_as_the_same_key() {
        let a = MerchantKey::from_pem(MERCHANT_PKCS8).unwrap();
        let b = MerchantKey::from_pem(MERCHANT_PKCS1).unwrap();
        assert_eq!(a.public_key_der(), b.public_key_der());
        let spki = PlatformKey::from_pem(MERCHANT_PUB).unwrap();
        assert_eq!(spki.0, a.public_key_der());
    }

    #[test]
    fn spki_and_pkcs1_public_keys_unwrap_to_the_same_bytes() {
        let a = PlatformKey::from_pem(PLATFORM_PUB).unwrap();
        let b = PlatformKey::from_pem(PLATFORM_PUB_PKCS1).unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(a.0.first(), Some(&0x30));
    }

    #[test]
    fn wrong_pem_kinds_are_rejected() {
        assert!(MerchantKey::from_pem(PLATFORM_PUB).is_err());
        assert!(PlatformKey::from_pem(MERCHANT_PKCS8).is_err());
        assert!(PlatformKey::from_certificate_pem(PLATFORM_PUB).is_err());
        // A structurally valid PEM with garbage inside.
        let junk = "-----BEGIN PUBLIC KEY-----\nMAMCAQE=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            PlatformKey::from_pem(junk),
            Err(PayError::InvalidKey(_))
        ));
        let junk = "-----BEGIN PRIVATE KEY-----\nMAMCAQE=\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            MerchantKey::from_pem(junk),
            Err(PayError::InvalidKey(_))
        ));
    }

    #[test]
    fn small_rsa_public_key_is_rejected() {
        // SEQUENCE { INTEGER (128 bytes), INTEGER 65537 }: a 1024-bit key.
        let mut der = vec![0x30, 0x81, 0x88, 0x02, 0x81, 0x81, 0x00];
        der.extend(std::iter::repeat_n(0xc5u8, 128));
        der.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        assert!(PlatformKey::from_pkcs1_der(&der).is_err());
    }

    #[test]
    fn api_v3_key_is_exactly_32_ascii_bytes_and_redacted() {
        let k = ApiV3Key::new("a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb").unwrap();
        assert_eq!(format!("{k:?}"), "ApiV3Key(<redacted>)");
        assert!(ApiV3Key::new("testAPIv3Key0000").is_err());
        assert!(ApiV3Key::new("a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gbx").is_err());
        // 32 bytes but not ASCII.
        assert!(ApiV3Key::new(&"é".repeat(16)).is_err());
        let m = MerchantKey::from_pem(MERCHANT_PKCS8).unwrap();
        assert_eq!(format!("{m:?}"), "MerchantKey(<redacted>)");
    }
}
