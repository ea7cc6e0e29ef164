//! Loading the two RSA keys an Alipay integration needs.
//!
//! - [`AppPrivateKey`]: the merchant application's private key; signs
//!   requests to the gateway.
//! - [`AlipayPublicKey`]: Alipay's public key (支付宝公钥), *not* the app's
//!   own public key; verifies notifications and gateway responses.
//!
//! Alipay's key tool and console hand keys out in several shapes, so both
//! loaders accept PEM and bare base64 DER (no armour, possibly wrapped).
//! ring only takes PKCS#1 `RSAPublicKey` DER for verification and rejects
//! the SPKI that Alipay distributes, so public keys are unwrapped here once.
//! Neither type prints key material in `Debug`, and errors never quote it.

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use ring::signature::{self, RsaKeyPair};
use spki::der::asn1::UintRef;
use spki::der::{Decode as _, Reader as _, SliceReader};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

use crate::AlipayError;

/// `rsaEncryption` (RFC 8017 A.1), the only SPKI algorithm we accept.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Base64 for key material: tolerate missing `=` padding, which some
/// copy-pasted console keys lose; the DER parser catches real damage.
const KEY_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The application's RSA private key, used to sign gateway requests (RSA2:
/// SHA256withRSA, PKCS#1 v1.5).
pub struct AppPrivateKey(pub(crate) RsaKeyPair);

impl AppPrivateKey {
    /// Loads a private key from PEM PKCS#8 (`BEGIN PRIVATE KEY`), PEM PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`, what Alipay's non-Java key tool writes), or
    /// bare base64 of either DER. Encrypted keys are not supported.
    pub fn from_pem_or_base64(s: &str) -> Result<Self, AlipayError> {
        let (label, der) = pem_or_base64(s)?;
        let pair = match label.as_deref() {
            Some("PRIVATE KEY") => RsaKeyPair::from_pkcs8(&der).map_err(rejected)?,
            Some("RSA PRIVATE KEY") => RsaKeyPair::from_der(&der).map_err(rejected)?,
            Some("ENCRYPTED PRIVATE KEY") => {
                return Err(AlipayError::InvalidKey(
                    "encrypted private keys are not supported".into(),
                ));
            }
            Some(other) => return Err(unexpected_label(other)),
            // Bare base64 does not say which DER it is: try both.
            None => match RsaKeyPair::from_pkcs8(&der) {
                Ok(pair) => pair,
                Err(_) => RsaKeyPair::from_der(&der).map_err(|e| {
                    AlipayError::InvalidKey(format!(
                        "not an RSA PKCS#8 or PKCS#1 private key ({e})"
                    ))
                })?,
            },
        };
        Ok(Self(pair))
    }
}

impl std::fmt::Debug for AppPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppPrivateKey(<redacted>)")
    }
}

/// Alipay's RSA public key, used to verify notifications and responses.
///
/// Holds the PKCS#1 `RSAPublicKey` DER that ring expects.
#[derive(Clone)]
pub struct AlipayPublicKey(Vec<u8>);

impl AlipayPublicKey {
    /// Loads a public key from PEM SPKI (`BEGIN PUBLIC KEY`), bare base64
    /// SPKI (the usual console format), or, for convenience, PKCS#1 (`BEGIN
    /// RSA PUBLIC KEY` or bare base64). Certificates (公钥证书 mode) are not
    /// supported.
    pub fn from_pem_or_base64(s: &str) -> Result<Self, AlipayError> {
        let (label, der) = pem_or_base64(s)?;
        let pkcs1 = match label.as_deref() {
            Some("PUBLIC KEY") => spki_to_pkcs1(&der)?,
            Some("RSA PUBLIC KEY") => {
                check_pkcs1_public(&der)?;
                der
            }
            Some("CERTIFICATE") => {
                return Err(AlipayError::InvalidKey(
                    "certificate mode is not supported; configure the Alipay public key".into(),
                ));
            }
            Some(other) => return Err(unexpected_label(other)),
            None => match spki_to_pkcs1(&der) {
                Ok(pkcs1) => pkcs1,
                Err(spki_err) => {
                    if check_pkcs1_public(&der).is_err() {
                        return Err(spki_err);
                    }
                    der
                }
            },
        };
        Ok(Self(pkcs1))
    }

    /// Checks an RSA2 (SHA256withRSA, PKCS#1 v1.5) signature over `msg`.
    pub(crate) fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> Result<(), AlipayError> {
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.0)
            .verify(msg, sig)
            .map_err(|_| AlipayError::BadSignature)
    }
}

impl std::fmt::Debug for AlipayPublicKey {
    // A public key is not secret, but printing it only adds noise to logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlipayPublicKey(..)")
    }
}

/// Splits PEM into its label and DER, or decodes bare base64 (label `None`).
fn pem_or_base64(s: &str) -> Result<(Option<String>, Vec<u8>), AlipayError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(AlipayError::InvalidKey("empty key".into()));
    }
    let Some(after_begin) = s.split_once("-----BEGIN ").map(|(_, rest)| rest) else {
        return Ok((None, decode_b64(s)?));
    };
    let (label, rest) = after_begin
        .split_once("-----")
        .ok_or_else(|| AlipayError::InvalidKey("malformed PEM header".into()))?;
    let end_marker = format!("-----END {label}-----");
    let (body, _) = rest.split_once(&end_marker).ok_or_else(|| {
        AlipayError::InvalidKey(format!("PEM `{label}` has no matching END line"))
    })?;
    if body.contains(':') {
        // RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`): a legacy encrypted key.
        return Err(AlipayError::InvalidKey(
            "encrypted PEM keys are not supported".into(),
        ));
    }
    Ok((Some(label.to_owned()), decode_b64(body)?))
}

/// Base64-decodes after dropping all whitespace (PEM wraps at 64 columns;
/// consoles wrap anywhere).
fn decode_b64(s: &str) -> Result<Vec<u8>, AlipayError> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    KEY_B64
        .decode(compact.as_bytes())
        .map_err(|_| AlipayError::InvalidKey("key is neither PEM nor valid base64".into()))
}

/// Extracts the PKCS#1 `RSAPublicKey` from an RSA SubjectPublicKeyInfo.
fn spki_to_pkcs1(der: &[u8]) -> Result<Vec<u8>, AlipayError> {
    let spki = SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|_| AlipayError::InvalidKey("not a DER SubjectPublicKeyInfo".into()))?;
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err(AlipayError::InvalidKey(format!(
            "public key algorithm {} is not RSA",
            spki.algorithm.oid
        )));
    }
    let pkcs1 = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| AlipayError::InvalidKey("public key BIT STRING has unused bits".into()))?;
    check_pkcs1_public(pkcs1)?;
    Ok(pkcs1.to_vec())
}

/// Checks that `der` is `RSAPublicKey ::= SEQUENCE { modulus, exponent }`
/// with a modulus ring will verify with (2048..=8192 bits), so a bad key
/// fails at load time rather than as a puzzling `BadSignature` later.
fn check_pkcs1_public(der: &[u8]) -> Result<(), AlipayError> {
    let bad = || AlipayError::InvalidKey("not a DER RSAPublicKey".into());
    let mut reader = SliceReader::new(der).map_err(|_| bad())?;
    let modulus_bits = reader
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            let _e = UintRef::decode(r)?;
            Ok::<_, spki::der::Error>(bit_len(n.as_bytes()))
        })
        .map_err(|_| bad())?;
    reader.finish().map_err(|_| bad())?;
    if !(2048..=8192).contains(&modulus_bits) {
        return Err(AlipayError::InvalidKey(format!(
            "RSA modulus is {modulus_bits} bits; RSA2 needs 2048 to 8192"
        )));
    }
    Ok(())
}

/// Bit length of a big-endian unsigned integer without leading zero bytes.
fn bit_len(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(&top) => be.len() * 8 - top.leading_zeros() as usize,
    }
}

/// Maps ring's key rejection (whose text names the check, not the key).
fn rejected(e: ring::error::KeyRejected) -> AlipayError {
    AlipayError::InvalidKey(format!("RSA private key rejected ({e})"))
}

/// Error for a PEM block of the wrong kind.
fn unexpected_label(label: &str) -> AlipayError {
    AlipayError::InvalidKey(format!(
        "unexpected PEM block `{}`",
        crate::error::truncate(label, 40)
    ))
}

/// Standard base64, used for signatures (they are always padded).
pub(crate) const SIGN_B64: GeneralPurpose = general_purpose::STANDARD;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const APP_PKCS8_PEM: &str = include_str!("../testdata/app_private_pkcs8.pem");
    const APP_PKCS1_PEM: &str = include_str!("../testdata/app_private_pkcs1.pem");
    const APP_PKCS8_B64: &str = include_str!("../testdata/app_private_pkcs8.b64");
    const APP_PKCS1_B64: &str = include_str!("../testdata/app_private_pkcs1.b64");
    const APP_PUBLIC_PEM: &str = include_str!("../testdata/app_public.pem");
    const APP_PUBLIC_B64: &str = include_str!("../testdata/app_public.b64");

    #[test]
    fn loads_private_keys_in_all_formats() {
        let sigs: Vec<String> = [APP_PKCS8_PEM, APP_PKCS1_PEM, APP_PKCS8_B64, APP_PKCS1_B64]
            .iter()
            .map(|k| {
                let key = AppPrivateKey::from_pem_or_base64(k).unwrap();
                crate::sign::sign(&key, "x=1").unwrap()
            })
            .collect();
        // Same key, deterministic PKCS#1 v1.5: all four formats sign alike.
        assert!(sigs.windows(2).all(|w| w[0] == w[1]));
        let public = AlipayPublicKey::from_pem_or_base64(APP_PUBLIC_PEM).unwrap();
        crate::sign::verify(&public, "x=1", &sigs[0]).unwrap();
    }

    #[test]
    fn private_key_tolerates_wrapping_and_crlf() {
        let wrapped: String = APP_PKCS8_B64
            .trim()
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n");
        AppPrivateKey::from_pem_or_base64(&wrapped).unwrap();
        AppPrivateKey::from_pem_or_base64(&APP_PKCS1_PEM.replace('\n', "\r\n")).unwrap();
        // Lost padding.
        AppPrivateKey::from_pem_or_base64(APP_PKCS8_B64.trim().trim_end_matches('=')).unwrap();
    }

    #[test]
    fn loads_public_keys_in_all_formats() {
        let from_pem = AlipayPublicKey::from_pem_or_base64(APP_PUBLIC_PEM).unwrap();
        let from_b64 = AlipayPublicKey::from_pem_or_base64(APP_PUBLIC_B64).unwrap();
        assert_eq!(from_pem.0, from_b64.0);
        // PKCS#1 forms of the same key, bare and armoured.
        let pkcs1_b64 = SIGN_B64.encode(&from_pem.0);
        assert_eq!(
            AlipayPublicKey::from_pem_or_base64(&pkcs1_b64).unwrap().0,
            from_pem.0
        );
        let pkcs1_pem =
            format!("-----BEGIN RSA PUBLIC KEY-----\n{pkcs1_b64}\n-----END RSA PUBLIC KEY-----\n");
        assert_eq!(
            AlipayPublicKey::from_pem_or_base64(&pkcs1_pem).unwrap().0,
            from_pem.0
        );
    }

    #[test]
    fn rejects_garbage_and_wrong_kinds() {
        let garbage = [
            "",
            "   \n",
            "not base64 at all!",
            "AAAA",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\nMIIB\n",
            "-----BEGIN PRIVATE KEY",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAAA\n-----END RSA PRIVATE KEY-----",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----",
            APP_PUBLIC_PEM,
            APP_PUBLIC_B64,
        ];
        for g in garbage {
            assert!(
                matches!(
                    AppPrivateKey::from_pem_or_base64(g),
                    Err(AlipayError::InvalidKey(_))
                ),
                "private {g:?}"
            );
        }
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        for g in [
            &garbage[..9],
            &[APP_PKCS8_PEM, APP_PKCS1_PEM, APP_PKCS8_B64, cert],
        ]
        .concat()
        {
            assert!(
                matches!(
                    AlipayPublicKey::from_pem_or_base64(g),
                    Err(AlipayError::InvalidKey(_))
                ),
                "public {g:?}"
            );
        }
    }

    #[test]
    fn rejects_small_rsa_and_non_rsa_public_keys() {
        // openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 | openssl pkey -pubout
        let rsa1024 = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDJKQOAnYGKfPnhkf6jyQHlO3OQybqy6rpc39zsa2KZx4K8EOVSdZ+6ITWxbUagvv+xGwXPz0jRpxst9zP7mIi+/EiKIGtYYyYD6XyX6PECl4b0bFclzoTQd5t2od80QbDmsb3+jk56Sf00ONoTbYWSLJm/8ZzMeLffnnYDTgrPowIDAQAB";
        let err = AlipayPublicKey::from_pem_or_base64(rsa1024).unwrap_err();
        assert!(err.to_string().contains("1024 bits"), "{err}");
        // openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | openssl pkey -pubout
        let p256 = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEKsEa0xS6M3leNlpMzjlETACUk94m8pwtGW+zHu8COzMcvgCtPtM6YU7deoLshTGj8CLYwOpDXZPA7CMT18f8WQ==";
        let err = AlipayPublicKey::from_pem_or_base64(p256).unwrap_err();
        assert!(matches!(err, AlipayError::InvalidKey(_)), "{err}");
    }

    #[test]
    fn debug_does_not_print_keys() {
        let k = AppPrivateKey::from_pem_or_base64(APP_PKCS8_PEM).unwrap();
        assert_eq!(format!("{k:?}"), "AppPrivateKey(<redacted>)");
    }
}
