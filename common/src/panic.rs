//! The message of a caught panic, for the log and the health checks of the thread or task
//! that died.

use std::any::Any;

/// The message of a panic payload (`panic!` with a literal or a formatted string).
pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_formatted_and_other_payloads() {
        let caught = |f: fn()| std::panic::catch_unwind(f).expect_err("panics");
        assert_eq!(panic_text(&*caught(|| panic!("plain"))), "plain");
        let n = 3;
        let formatted = std::panic::catch_unwind(move || panic!("thing {n}")).expect_err("panics");
        assert_eq!(panic_text(&*formatted), "thing 3");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).expect_err("panics");
        assert_eq!(panic_text(&*other), "a panic without a message");
    }
}
