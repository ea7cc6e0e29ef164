//! Minimal PEM armour and DER walking, just enough for the key formats
//! WeChat Pay hands out.
//!
//! Why hand-written: the format is tiny (base64 between `BEGIN`/`END`
//! lines) and the maintained crates (`rustls-pki-types`) would be a new
//! dependency for ~30 lines. The DER reader only walks tag/length/value
//! triples; it is used to pull the SubjectPublicKeyInfo and serial out of an
//! X.509 certificate and to sanity-check PKCS#1 public keys. Every access is
//! bounds-checked, so malformed input yields `None`, never a panic.

use base64::Engine as _;

use crate::PayError;

/// One decoded PEM block.
pub(crate) struct PemBlock {
    /// The label between `BEGIN ` and the dashes, e.g. `PRIVATE KEY`.
    pub label: String,
    /// The decoded DER bytes.
    pub der: Vec<u8>,
}

/// Decodes the first PEM block of `input`.
///
/// Encapsulated headers (`Proc-Type: 4,ENCRYPTED`) are refused: encrypted
/// keys are not supported and silently decoding them would only produce a
/// confusing DER error later.
pub(crate) fn parse_first_block(input: &str) -> Result<PemBlock, PayError> {
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let bad = |why: &str| PayError::InvalidKey(format!("PEM: {why}"));

    let start = input.find(BEGIN).ok_or_else(|| bad("no BEGIN line"))?;
    let after_begin = input
        .get(start + BEGIN.len()..)
        .ok_or_else(|| bad("truncated"))?;
    let label_len = after_begin
        .find(DASHES)
        .ok_or_else(|| bad("unterminated BEGIN line"))?;
    let label = after_begin
        .get(..label_len)
        .ok_or_else(|| bad("truncated"))?;
    if label.is_empty()
        || label.len() > 64
        || !label
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(bad("bad label"));
    }
    let body_and_rest = after_begin
        .get(label_len + DASHES.len()..)
        .ok_or_else(|| bad("truncated"))?;
    let end_marker = format!("-----END {label}-----");
    let body_len = body_and_rest
        .find(&end_marker)
        .ok_or_else(|| bad("no matching END line"))?;
    let body = body_and_rest
        .get(..body_len)
        .ok_or_else(|| bad("truncated"))?;
    if body.contains(':') {
        return Err(bad("PEM headers (encrypted keys) are not supported"));
    }
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| bad("invalid base64"))?;
    if der.is_empty() {
        return Err(bad("empty body"));
    }
    Ok(PemBlock {
        label: label.to_owned(),
        der,
    })
}

/// One DER element.
pub(crate) struct Tlv<'a> {
    /// The identifier octet (only low-tag-number form is supported).
    pub tag: u8,
    /// The content octets.
    pub content: &'a [u8],
    /// The whole element, header included (what sub-parsers want).
    pub whole: &'a [u8],
    /// Whatever follows the element.
    pub rest: &'a [u8],
}

/// Reads one definite-length DER element from the front of `input`.
pub(crate) fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        // High-tag-number form never occurs in the structures we walk.
        return None;
    }
    let first_len = *input.get(1)?;
    let (len, header) = if first_len < 0x80 {
        (usize::from(first_len), 2usize)
    } else {
        let n = usize::from(first_len & 0x7f);
        // 0 would be indefinite length (BER, not DER); >4 bytes is absurd.
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some(Tlv {
        tag,
        content: input.get(header..end)?,
        whole: input.get(..end)?,
        rest: input.get(end..)?,
    })
}

/// DER tag of SEQUENCE.
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
/// DER tag of INTEGER.
pub(crate) const TAG_INTEGER: u8 = 0x02;
/// Context-specific constructed tag `[0]` (the X.509 version field).
const TAG_CONTEXT_0: u8 = 0xa0;

/// The parts of an X.509 certificate we need.
pub(crate) struct CertParts<'a> {
    /// Serial number content octets (big-endian, maybe with a 0x00 pad).
    pub serial: &'a [u8],
    /// The complete SubjectPublicKeyInfo element.
    pub spki: &'a [u8],
}

/// Walks `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity, subject,
/// subjectPublicKeyInfo, ... }, ... }`.
///
/// Validity dates and the issuer signature are deliberately not checked:
/// WeChat platform certificates are pinned by configuration, the chain is
/// not what makes them trustworthy.
pub(crate) fn certificate_parts(der: &[u8]) -> Option<CertParts<'_>> {
    let cert = read_tlv(der)?;
    if cert.tag != TAG_SEQUENCE {
        return None;
    }
    let tbs = read_tlv(cert.content)?;
    if tbs.tag != TAG_SEQUENCE {
        return None;
    }
    let mut field = read_tlv(tbs.content)?;
    if field.tag == TAG_CONTEXT_0 {
        field = read_tlv(field.rest)?;
    }
    if field.tag != TAG_INTEGER {
        return None;
    }
    let serial = field.content;
    // signature AlgorithmIdentifier, issuer, validity, subject.
    let mut rest = field.rest;
    for _ in 0..4 {
        let skipped = read_tlv(rest)?;
        if skipped.tag != TAG_SEQUENCE {
            return None;
        }
        rest = skipped.rest;
    }
    let spki = read_tlv(rest)?;
    if spki.tag != TAG_SEQUENCE {
        return None;
    }
    Some(CertParts {
        serial,
        spki: spki.whole,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_rejects_truncation_and_indefinite_length() {
        assert!(read_tlv(&[]).is_none());
        assert!(read_tlv(&[0x30]).is_none());
        assert!(read_tlv(&[0x30, 0x05, 1, 2]).is_none());
        assert!(read_tlv(&[0x30, 0x80, 0, 0]).is_none());
        assert!(read_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        let t = read_tlv(&[0x02, 0x01, 0x07, 0xff]).unwrap();
        assert_eq!(
            (t.tag, t.content, t.rest),
            (0x02, &[7u8][..], &[0xffu8][..])
        );
        let long = read_tlv(&[0x04, 0x81, 0x01, 0x09]).unwrap();
        assert_eq!(long.content, &[9u8]);
    }

    #[test]
    fn pem_rejects_junk() {
        assert!(parse_first_block("").is_err());
        assert!(parse_first_block("-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
        assert!(parse_first_block("-----BEGIN X-----\n!!!\n-----END X-----").is_err());
        assert!(
            parse_first_block(
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----"
            )
            .is_err()
        );
        let ok =
            parse_first_block("junk\r\n-----BEGIN X-----\r\nAAEC\r\n-----END X-----\r\n").unwrap();
        assert_eq!(ok.label, "X");
        assert_eq!(ok.der, vec![0, 1, 2]);
    }
}
