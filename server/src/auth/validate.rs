//! The rules an account's email and name follow (../shared/PROTOCOL.md
//! register row: 400 `invalid_email`, `invalid_name`).

/// Longest display name, in Unicode scalar values.
pub const MAX_NAME_CHARS: usize = 50;

/// A plausible address: `local@domain.tld`, at most 254 bytes (RFC 5321 4.5.3.1.3),
/// no whitespace or control characters.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    email.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// 1 to [`MAX_NAME_CHARS`] characters, none of them control characters.
pub fn valid_name(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&chars) && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for good in ["a@b.io", "Ann.Lee+x@mail.example.com"] {
            assert!(valid_email(good), "{good}");
        }
        for bad in ["", "a", "a@b", "@b.io", "a@.io", "a@b.", "a b@c.io", "a@b@c.io"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("Zoë"));
        assert!(valid_name(&"é".repeat(50)));
        assert!(!valid_name(""));
        assert!(!valid_name(&"x".repeat(51)));
        assert!(!valid_name("a\u{7}b"));
    }
}
