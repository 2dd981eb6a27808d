//! Error text for logs, metrics' neighbours and dead letters: an error with its causes, cut to
//! a size a log line or a JSON record can carry.

use std::error::Error as StdError;

/// `outer: inner: innermost`, leaving out a cause whose text an outer one already contains
/// (reqwest and hyper repeat their sources), cut to `max` bytes.
pub(crate) fn error_chain(error: &(dyn StdError + 'static), max: usize) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(error);
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    let mut joined = parts.join(": ");
    truncate(&mut joined, max);
    joined
}

/// Cuts `text` to at most `max` bytes at a character boundary.
pub(crate) fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn causes_are_joined_without_repeats_and_cut() {
        let e = Layer(
            "error sending request: connection refused",
            Some(Box::new(Layer(
                "connection refused",
                Some(Box::new(Layer("os error 111", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e, 400),
            "error sending request: connection refused: os error 111"
        );
        assert_eq!(error_chain(&e, 13), "error sending");
    }

    #[test]
    fn truncation_respects_characters() {
        let mut s = "aé".repeat(4);
        truncate(&mut s, 4);
        assert_eq!(s, "aéa");
        let mut s = "ééé".to_owned();
        truncate(&mut s, 3);
        assert_eq!(s, "é");
        let mut short = "abc".to_owned();
        truncate(&mut short, 10);
        assert_eq!(short, "abc");
    }
}
