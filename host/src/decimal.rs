//! Decimal numbers written without `core::fmt`, whose machinery cost a log line or a
//! response head more than the rest of its writing.

/// `n` in decimal, with leading zeros up to a width.
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    /// `n` in at least `width` digits.
    pub fn new(mut n: u64, width: usize) -> Decimal {
        let mut digits = [b'0'; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let widest = digits.len().saturating_sub(width);
        Decimal {
            digits,
            start: start.min(widest),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("digits are ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_and_widths() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            assert_eq!(Decimal::new(n, 1).as_str(), n.to_string());
            assert_eq!(Decimal::new(n, 6).as_str(), format!("{n:06}"));
        }
        assert_eq!(Decimal::new(42, 30).as_str(), format!("{:020}", 42));
    }
}
