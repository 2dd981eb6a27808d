//! Topic names and filters: which thing a shadow update is for, and whether a message is a
//! shadow update, a life cycle event or neither. Pure functions, no I/O.
//!
//! Two topic forms carry a shadow update (spec 9.1):
//! - `$aws/things/<thingName>/shadow/update`: the AWS IoT topic devices publish to;
//! - `thing-update/<domainPath>/<thingName>`: the Cognito-user form, where the domain path has
//!   0 to 6 levels (spec 9.2) and the thing name is the last level.
//!
//! `$aws/things/<thingName>/shadow/update/accepted` (and `/rejected`, `/delta`, `/documents`) are
//! the shadow service's answers, not updates; named shadows
//! (`$aws/things/<thingName>/shadow/name/<shadowName>/update`) are not the classic shadow the rules
//! look at. Both are refused as [`TopicError::NotShadowUpdate`].

use std::fmt;

/// First level of the AWS IoT shadow topic.
const AWS_PREFIX: &str = "$aws";
/// First level of the spec 9.1 topic form.
const THING_UPDATE_PREFIX: &str = "thing-update";
/// Spec 9.2: at most 6 domain levels below the implicit root.
pub const MAX_DOMAIN_LEVELS: usize = 6;
/// MQTT 3.1.1 section 1.5.3: a UTF-8 string is at most 65,535 bytes long.
const MAX_TOPIC_BYTES: usize = 65_535;

/// Where a shadow update comes from, read from its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowTopic<'a> {
    /// The thing the update is for: never empty, no `/`, `+`, `#` or NUL.
    pub thing_name: &'a str,
    /// The domain path of a `thing-update/...` topic without the thing name (`""` for the
    /// root domain, `"sub1/sub2"` below it); `None` for the `$aws/things/...` form.
    pub domain_path: Option<&'a str>,
}

/// Why a topic does not name a thing's shadow update. [`TopicError::as_str`] is a stable label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Neither `$aws/things/<name>/shadow/update` nor `thing-update/.../<name>`.
    NotShadowUpdate,
    /// The thing name level is empty (`$aws/things//shadow/update`, `thing-update/`).
    EmptyThingName,
    /// A domain level of a `thing-update/...` topic is empty (`thing-update//thing`).
    EmptyLevel,
    /// More than [`MAX_DOMAIN_LEVELS`] domain levels (spec 9.2).
    TooDeep,
    /// The thing name holds a wildcard or NUL, which a topic name must not (MQTT 4.7.1, 1.5.3).
    InvalidChar,
    /// The topic matches none of the filters the source subscribed to (a subscription left
    /// in the persistent session by an older configuration, for example).
    NotSubscribed,
}

impl TopicError {
    /// A stable, lower-case label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicError::NotShadowUpdate => "not_shadow_update",
            TopicError::EmptyThingName => "empty_thing_name",
            TopicError::EmptyLevel => "empty_level",
            TopicError::TooDeep => "too_deep",
            TopicError::InvalidChar => "invalid_char",
            TopicError::NotSubscribed => "not_subscribed",
        }
    }
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads the thing name (and domain path) from a shadow update topic.
pub fn parse_shadow_topic(topic: &str) -> Result<ShadowTopic<'_>, TopicError> {
    let (first, rest) = topic.split_once('/').unwrap_or((topic, ""));
    match first {
        AWS_PREFIX => parse_aws_topic(rest),
        THING_UPDATE_PREFIX => parse_thing_update_topic(rest, topic.len() > first.len()),
        _ => Err(TopicError::NotShadowUpdate),
    }
}

/// `rest` is what follows `$aws/`: it must be `things/<name>/shadow/update`, exactly.
fn parse_aws_topic(rest: &str) -> Result<ShadowTopic<'_>, TopicError> {
    let mut levels = rest.split('/');
    let (Some("things"), Some(name), Some("shadow"), Some("update"), None) = (
        levels.next(),
        levels.next(),
        levels.next(),
        levels.next(),
        levels.next(),
    ) else {
        return Err(TopicError::NotShadowUpdate);
    };
    Ok(ShadowTopic {
        thing_name: check_thing_name(name)?,
        domain_path: None,
    })
}

/// `rest` is what follows `thing-update/`; `had_slash` tells `thing-update` from `thing-update/`.
fn parse_thing_update_topic(rest: &str, had_slash: bool) -> Result<ShadowTopic<'_>, TopicError> {
    if !had_slash {
        return Err(TopicError::NotShadowUpdate);
    }
    let (domain_path, name) = match rest.rsplit_once('/') {
        Some((domain_path, name)) => (domain_path, name),
        None => ("", rest),
    };
    let name = check_thing_name(name)?;
    if !domain_path.is_empty() || rest.starts_with('/') {
        let mut depth = 0;
        for level in domain_path.split('/') {
            if level.is_empty() {
                return Err(TopicError::EmptyLevel);
            }
            depth += 1;
        }
        if depth > MAX_DOMAIN_LEVELS {
            return Err(TopicError::TooDeep);
        }
    }
    Ok(ShadowTopic {
        thing_name: name,
        domain_path: Some(domain_path),
    })
}

fn check_thing_name(name: &str) -> Result<&str, TopicError> {
    if name.is_empty() {
        Err(TopicError::EmptyThingName)
    } else if name.contains(['+', '#', '\0']) {
        Err(TopicError::InvalidChar)
    } else {
        Ok(name)
    }
}

/// Whether `filter` is a topic filter a broker accepts (MQTT 3.1.1 section 4.7), naming the
/// problem when it is not. `$share/<group>/<filter>` (shared subscriptions) is accepted.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty");
    }
    if filter.len() > MAX_TOPIC_BYTES {
        return Err("a topic filter is at most 65535 bytes long");
    }
    if filter.contains('\0') {
        return Err("a topic filter must not contain NUL");
    }
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, inner)) if !group.is_empty() && !inner.is_empty() => {
                if group.contains(['+', '#']) {
                    return Err("a shared subscription's group must not contain + or #");
                }
                inner
            }
            _ => return Err("a shared subscription is $share/<group>/<filter>"),
        },
        None => filter,
    };
    let mut levels = inner.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("# must be a whole level and the last one");
        }
        if level.contains('+') && level != "+" {
            return Err("+ must be a whole level");
        }
    }
    Ok(())
}

/// The filter a shared subscription (`$share/<group>/<filter>`) applies to topics, or the
/// filter itself.
pub fn effective_filter(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, inner)| inner)
}

/// Whether topic name `topic` matches topic filter `filter` (MQTT 3.1.1 section 4.7).
///
/// Wildcards in the first level do not match topics that start with `$` (4.7.2): `#` does not
/// match `$aws/things/x/shadow/update`. `a/#` matches `a` too (4.7.1.2). The filter is assumed
/// valid ([`check_filter`]).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let filter = effective_filter(filter);
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    // Levels as bytes: every message goes through here once per filter, and splitting a short
    // topic on a `char` goes through the generic pattern searcher, slower on such short strings
    // than a plain byte split.
    let mut topic_levels = topic.as_bytes().split(|&b| b == b'/');
    for f in filter.as_bytes().split(|&b| b == b'/') {
        if f == b"#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == b"+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// What a received message is, by its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A shadow update for this thing.
    Shadow(ShadowTopic<'a>),
    /// A life cycle event (spec 1.3) on a topic matched by an event filter.
    Event,
    /// Neither: counted, acknowledged and dropped by the source.
    Unroutable(TopicError),
}

/// Classifies topics against the source's two lists of filters.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    shadow: Vec<String>,
    event: Vec<String>,
}

impl Routes {
    /// `shadow` are the filters shadow updates arrive on, `event` those of life cycle events.
    pub fn new(shadow: Vec<String>, event: Vec<String>) -> Self {
        Routes { shadow, event }
    }

    /// Event filters are tried first: a topic that both lists match is an event, since a
    /// shadow filter broad enough to match `event/...` (`#`) was not meant for events.
    pub fn classify<'t>(&self, topic: &'t str) -> Route<'t> {
        if self.event.iter().any(|f| filter_matches(f, topic)) {
            return Route::Event;
        }
        if !self.shadow.iter().any(|f| filter_matches(f, topic)) {
            return Route::Unroutable(TopicError::NotSubscribed);
        }
        match parse_shadow_topic(topic) {
            Ok(shadow) => Route::Shadow(shadow),
            Err(e) => Route::Unroutable(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn thing(topic: &str) -> Result<&str, TopicError> {
        parse_shadow_topic(topic).map(|t| t.thing_name)
    }

    #[test]
    fn aws_shadow_update_names_the_thing() {
        let t = parse_shadow_topic("$aws/things/thing-1/shadow/update").unwrap();
        assert_eq!(t.thing_name, "thing-1");
        assert_eq!(t.domain_path, None);
    }

    #[test]
    fn odd_characters_in_thing_names_are_kept() {
        for name in [
            "a:b_c-d",
            "00000001",
            "with space",
            "ünïcødé",
            "x.y",
            "$dollar",
            "a=b&c",
        ] {
            let topic = format!("$aws/things/{name}/shadow/update");
            assert_eq!(thing(&topic), Ok(name), "{topic}");
            let topic = format!("thing-update/sub1/{name}");
            assert_eq!(thing(&topic), Ok(name), "{topic}");
        }
    }

    #[test]
    fn empty_thing_name_is_refused() {
        assert_eq!(
            thing("$aws/things//shadow/update"),
            Err(TopicError::EmptyThingName)
        );
        assert_eq!(thing("thing-update/"), Err(TopicError::EmptyThingName));
        assert_eq!(thing("thing-update/sub1/"), Err(TopicError::EmptyThingName));
    }

    #[test]
    fn shadow_service_answers_are_not_updates() {
        for topic in [
            "$aws/things/t/shadow/update/accepted",
            "$aws/things/t/shadow/update/rejected",
            "$aws/things/t/shadow/update/delta",
            "$aws/things/t/shadow/update/documents",
            "$aws/things/t/shadow/get",
            "$aws/things/t/shadow/name/n/update",
            "$aws/things/t/shadow",
            "$aws/things/t",
            "$aws/things",
            "$aws",
            "$aws/events/thing/t/created",
            "aws/things/t/shadow/update",
            "/$aws/things/t/shadow/update",
            "thing-update",
            "thing-update-accepted/t",
            "event/sub1",
            "",
            "/",
        ] {
            assert_eq!(thing(topic), Err(TopicError::NotShadowUpdate), "{topic:?}");
        }
    }

    #[test]
    fn wildcards_and_nul_in_thing_names_are_refused() {
        assert_eq!(
            thing("$aws/things/a+b/shadow/update"),
            Err(TopicError::InvalidChar)
        );
        assert_eq!(thing("thing-update/#"), Err(TopicError::InvalidChar));
        assert_eq!(thing("thing-update/a\0b"), Err(TopicError::InvalidChar));
    }

    #[test]
    fn thing_update_topics_carry_the_domain_path() {
        let t = parse_shadow_topic("thing-update/myTestThing").unwrap();
        assert_eq!((t.thing_name, t.domain_path), ("myTestThing", Some("")));
        let t = parse_shadow_topic("thing-update/sub1/sub2/myTestThing").unwrap();
        assert_eq!(
            (t.thing_name, t.domain_path),
            ("myTestThing", Some("sub1/sub2"))
        );
        let deepest = "thing-update/sub1/sub2/sub3/sub4/sub5/sub6/myTestThing";
        assert_eq!(thing(deepest), Ok("myTestThing"));
        assert_eq!(
            thing("thing-update/s1/s2/s3/s4/s5/s6/s7/t"),
            Err(TopicError::TooDeep)
        );
    }

    #[test]
    fn empty_domain_levels_are_refused() {
        assert_eq!(thing("thing-update//t"), Err(TopicError::EmptyLevel));
        assert_eq!(thing("thing-update/a//t"), Err(TopicError::EmptyLevel));
        assert_eq!(thing("thing-update/a/b//t"), Err(TopicError::EmptyLevel));
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        let cases = [
            (
                "$aws/things/+/shadow/update",
                "$aws/things/t1/shadow/update",
                true,
            ),
            (
                "$aws/things/+/shadow/update",
                "$aws/things/t1/shadow/update/accepted",
                false,
            ),
            (
                "$aws/things/+/shadow/update",
                "$aws/things//shadow/update",
                true,
            ),
            ("event/#", "event", true),
            ("event/#", "event/sub1/sub2", true),
            ("event/#", "events/sub1", false),
            ("#", "$aws/things/t/shadow/update", false),
            (
                "+/things/+/shadow/update",
                "$aws/things/t/shadow/update",
                false,
            ),
            ("#", "event/x", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("$share/g/event/#", "event/x", true),
            ("thing-update/#", "thing-update/s/t", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(
                filter_matches(filter, topic),
                expected,
                "{filter} vs {topic}"
            );
        }
    }

    #[test]
    fn filter_validation() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "$aws/things/+/shadow/update",
            "$share/g/a/#",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+",
            "a/b+/c",
            "$share/g",
            "$share//a",
            "a\0b",
        ] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn classify_uses_the_subscribed_filters() {
        let routes = Routes::new(
            vec![
                "$aws/things/+/shadow/update".into(),
                "thing-update/#".into(),
            ],
            vec!["event/#".into()],
        );
        assert!(matches!(
            routes.classify("$aws/things/t/shadow/update"),
            Route::Shadow(ShadowTopic {
                thing_name: "t",
                ..
            })
        ));
        assert!(matches!(
            routes.classify("thing-update/d/t2"),
            Route::Shadow(ShadowTopic {
                thing_name: "t2",
                ..
            })
        ));
        assert_eq!(routes.classify("event/root"), Route::Event);
        assert_eq!(
            routes.classify("other/topic"),
            Route::Unroutable(TopicError::NotSubscribed)
        );
        assert_eq!(
            routes.classify("$aws/things//shadow/update"),
            Route::Unroutable(TopicError::EmptyThingName)
        );
        let broad = Routes::new(vec!["#".into()], vec!["event/#".into()]);
        assert_eq!(broad.classify("event/x"), Route::Event);
        assert_eq!(
            broad.classify("some/thing"),
            Route::Unroutable(TopicError::NotShadowUpdate)
        );
    }
}
