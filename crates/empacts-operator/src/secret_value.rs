//! Secret values: generated with a CSPRNG and never printed.

use rand::Rng;
use rand::distr::Alphanumeric;

/// A secret value. Debug and Display redact it, so it cannot reach logs or Events by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// `length` alphanumeric characters from the OS-seeded CSPRNG (ChaCha12 via `rand::rng`):
    /// log2(62) ≈ 5.95 bits each, so the admission minimum of 43 gives more than 256 bits.
    pub fn generate(length: u32) -> Self {
        let mut rng = rand::rng();
        SecretValue((0..length).map(|_| rng.sample(Alphanumeric)).collect())
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SecretValue(bytes)
    }

    /// The raw bytes, for the one place that writes them to the API server.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// A value used by `empacts render`, which must never show or invent a real secret.
    pub fn placeholder() -> Self {
        SecretValue(b"<generated-by-operator>".to_vec())
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<redacted {} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_are_alphanumeric_of_the_asked_length_and_distinct() {
        let a = SecretValue::generate(64);
        let b = SecretValue::generate(64);
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().iter().all(u8::is_ascii_alphanumeric));
        assert_ne!(a, b);
    }

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::from_bytes(b"hunter2".to_vec());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
