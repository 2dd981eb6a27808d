//! The fast path of [`ParsedObservation::parse`]: a hand-written scanner for the shape nearly
//! every shadow update has (objects, strings without escapes, numbers, literals; no arrays or
//! objects inside resources).
//!
//! Why: the parse is a large share of the work per observation, and a scanner for the one
//! common shape does it in a fraction of what serde_json's general visitor interface needs. It
//! is strictly an optimization: on anything it does not handle, and on anything invalid, it
//! gives up (`None`) and the serde path parses the payload and decides how to reject it. It
//! accepts only valid JSON, and whatever it accepts comes out identical to the serde path's
//! result: property tests in `observation/tests.rs` check both.
//!
//! The input is a `str`: the caller has checked UTF-8 once for the whole payload.

use std::borrow::Cow;

use super::{ParsedObservation, Resource, ResourceValue, SubThing, UNTYPED};

/// Scans `text`; `Some(reported)` when handled (with `out` filled), `None` to fall back.
pub(super) fn scan<'a>(
    text: &'a str,
    max_depth: u32,
    out: &mut ParsedObservation<'a>,
) -> Option<bool> {
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        i: 0,
        max_depth,
    };
    s.ws();
    let reported = s.top(out)?;
    s.ws();
    (s.i == s.bytes.len()).then_some(reported)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    i: usize,
    max_depth: u32,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        if self.peek()? == b {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string without escapes (escapes: fall back).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = self
            .bytes
            .get(start..)?
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        // Escapes are the serde path's job; raw control characters are invalid JSON.
        if self.bytes[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        self.text.get(start..start + len)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        if self.bytes.get(self.i..end)? == word {
            self.i = end;
            Some(())
        } else {
            None
        }
    }

    /// Skips digits, appending them to `acc` (wrapping: exact while the total stays within 19
    /// digits, which callers check); answers how many there were and the new `acc`.
    fn digits(&mut self, mut acc: u64) -> (usize, u64) {
        let start = self.i;
        while let Some(&b) = self.bytes.get(self.i) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            acc = acc.wrapping_mul(10).wrapping_add(u64::from(d));
            self.i += 1;
        }
        (self.i - start, acc)
    }

    /// A number with the JSON grammar, converted as serde_json does: non-negative integers to
    /// `u64`, negative ones to `i64`, `-0` and anything with a fraction or exponent to `f64`
    /// (see [`Self::float`]), so that both paths agree to the last bit. Integers out of range:
    /// fall back.
    fn number(&mut self) -> Option<ResourceValue<'a>> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        let (int_digits, int_value) = self.digits(0);
        match int_digits {
            0 => return None,
            1 => {}
            _ if self.bytes[int_start] == b'0' => return None, // leading zero
            _ => {}
        }
        // Digits of the significand (integer and fraction) and the power of ten to apply.
        let mut digits = int_digits;
        let mut significand = int_value;
        let mut exponent: i64 = 0;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            let (n, value) = self.digits(significand);
            if n == 0 {
                return None;
            }
            significand = value;
            digits += n;
            exponent -= i64::try_from(n).ok()?;
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            let exp_negative = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    true
                }
                Some(b'+') => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            let (n, value) = self.digits(0);
            if n == 0 {
                return None;
            }
            let e = if n <= 18 {
                i64::try_from(value).unwrap_or(i64::MAX)
            } else {
                i64::MAX
            };
            exponent = if exp_negative {
                exponent.saturating_sub(e)
            } else {
                exponent.saturating_add(e)
            };
            float = true;
        }
        if float {
            return Some(ResourceValue::Float(self.float(
                negative,
                digits,
                significand,
                exponent,
                start,
            )?));
        }
        // 19 digits always fit in a u64; 20 may not.
        let magnitude = if int_digits <= 19 {
            int_value
        } else {
            self.text.get(int_start..self.i)?.parse().ok()?
        };
        if !negative {
            return Some(ResourceValue::UInt(magnitude));
        }
        if magnitude == 0 {
            // serde_json reads `-0` as the float -0.0.
            return Some(ResourceValue::Float(-0.0));
        }
        let v = i64::try_from(-i128::from(magnitude)).ok()?;
        Some(ResourceValue::Int(v))
    }

    /// The value of a number with a fraction or an exponent. When the significand has at most
    /// 15 digits (so it is exact as an `f64`) and the power of ten is at most 22 (exact too),
    /// one multiplication or division gives the correctly rounded result, which is what
    /// serde_json computes as well, with or without its `float_roundtrip` feature. Anything
    /// else is handed to serde_json for this one number.
    fn float(
        &self,
        negative: bool,
        digits: usize,
        significand: u64,
        exponent: i64,
        start: usize,
    ) -> Option<f64> {
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        if digits <= 15 {
            if let Some(&pow) = usize::try_from(exponent.unsigned_abs())
                .ok()
                .and_then(|e| POW10.get(e))
            {
                let magnitude = significand as f64;
                let f = if exponent >= 0 {
                    magnitude * pow
                } else {
                    magnitude / pow
                };
                return Some(if negative { -f } else { f });
            }
        }
        serde_json::from_str(self.text.get(start..self.i)?).ok()
    }

    /// A scalar value; `None` for containers (and invalid input).
    fn scalar(&mut self) -> Option<ResourceValue<'a>> {
        match self.peek()? {
            b'"' => Some(ResourceValue::Str(Cow::Borrowed(self.string()?))),
            b't' => self.literal(b"true").map(|()| ResourceValue::Bool(true)),
            b'f' => self.literal(b"false").map(|()| ResourceValue::Bool(false)),
            b'n' => self.literal(b"null").map(|()| ResourceValue::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Any value, validated and dropped; `depth` is the depth a container here would have.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'{' => {
                if depth > self.max_depth {
                    return None;
                }
                self.members(|s, _| s.skip(depth + 1))
            }
            b'[' => {
                if depth > self.max_depth {
                    return None;
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => self.scalar().map(drop),
        }
    }

    /// An object at the cursor: calls `member` with the cursor on each value.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The top-level object: answers whether `state.reported` was an object. The rules for
    /// repeated keys are the serde path's: the last `state` and the last `reported` count.
    fn top(&mut self, out: &mut ParsedObservation<'a>) -> Option<bool> {
        if self.peek()? != b'{' {
            return None; // not an object: the serde path says which kind of bad
        }
        let mut reported = false;
        self.members(|s, key| {
            out.top_keys.see(key);
            match key {
                "state" => reported = s.state(out)?,
                "timestamp" => out.timestamp = s.timestamp()?,
                _ => s.skip(2)?,
            }
            Some(())
        })?;
        Some(reported)
    }

    fn timestamp(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'{' | b'[' => self.skip(2).map(|()| None),
            _ => Some(match self.scalar()? {
                ResourceValue::UInt(n) => Some(n),
                ResourceValue::Float(f) if (0.0..1.8e19).contains(&f) => Some(f as u64),
                _ => None,
            }),
        }
    }

    fn state(&mut self, out: &mut ParsedObservation<'a>) -> Option<bool> {
        if self.peek()? != b'{' {
            return self.skip(2).map(|()| false);
        }
        out.clear_reported();
        let mut reported = false;
        self.members(|s, key| {
            if key == "reported" {
                out.clear_reported();
                reported = s.reported(out)?;
            } else {
                s.skip(3)?;
            }
            Some(())
        })?;
        Some(reported)
    }

    fn reported(&mut self, out: &mut ParsedObservation<'a>) -> Option<bool> {
        if self.peek()? != b'{' {
            return self.skip(3).map(|()| false);
        }
        self.members(|s, name| {
            if s.peek()? == b'{' {
                let start = out.sub_resources.len();
                let mut kind = None;
                s.members(|s, member| {
                    // Containers inside a sub thing become JSON values: the serde path's job.
                    let value = s.scalar()?;
                    if member == "type" {
                        kind = match &value {
                            ResourceValue::Str(t) => Some(t.clone()),
                            _ => None,
                        };
                    }
                    out.sub_resources.push(Resource {
                        name: Cow::Borrowed(member),
                        value,
                    });
                    Some(())
                })?;
                out.sub_things.push(SubThing {
                    id: Cow::Borrowed(name),
                    kind: kind.unwrap_or(Cow::Borrowed(UNTYPED)),
                    resources: start..out.sub_resources.len(),
                });
            } else {
                let value = s.scalar()?;
                out.resources.push(Resource {
                    name: Cow::Borrowed(name),
                    value,
                });
            }
            Some(())
        })?;
        Some(true)
    }
}
