//! URLs for logs: the password of `scheme://user:password@host` is replaced by `***`.

use url::Url;

/// `url` with its password hidden. A URL that does not parse is not shown at all: it may hold
/// a password the parser could not find.
pub fn url_password(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some("***")).is_ok() {
                parsed.to_string()
            } else {
                url.to_owned()
            }
        }
        Err(_) => "<unparsable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::url_password;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            url_password("postgres://app:s3cret@db:5432/rules"),
            "postgres://app:***@db:5432/rules"
        );
        assert_eq!(
            url_password("mqtts://dev:p%40ss@broker.example.com:8883"),
            "mqtts://dev:***@broker.example.com:8883"
        );
        assert_eq!(
            url_password("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(url_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(url_password("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(url_password("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(url_password("mqtt://broker:1883"), "mqtt://broker:1883");
        assert_eq!(
            url_password("sqlite://data/ccstream.db"),
            "sqlite://data/ccstream.db"
        );
        // `@` and `:` in the query are not a password.
        assert_eq!(url_password("https://h/x?a=b:c@d"), "https://h/x?a=b:c@d");
        assert_eq!(url_password("not a url user:pw@host"), "<unparsable url>");
    }
}
