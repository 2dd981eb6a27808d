//! `directory.resolver = "aws-iot"`: AWS IoT `DescribeThing`. The type is the thing's
//! `thingTypeName`; the domain is the attribute `directory.domain_attribute` (an id, or a path
//! such as `/sub1/sub2/`).

use aws_sdk_iot::error::DisplayErrorContext;

use super::{parse_domain, Answer, ResolvedThing};

pub struct AwsIot {
    client: aws_sdk_iot::Client,
    domain_attribute: String,
}

impl AwsIot {
    pub fn new(sdk: &aws_config::SdkConfig, domain_attribute: String) -> Self {
        Self {
            client: aws_sdk_iot::Client::new(sdk),
            domain_attribute,
        }
    }

    pub async fn lookup(&self, thing_name: &str) -> Answer {
        // A name AWS IoT cannot hold is not asked about: its refusal would read as the service
        // failing, and pause every lookup.
        if !is_thing_name(thing_name) {
            return Answer::NotFound("not an AWS IoT thing name".into());
        }
        let out = match self
            .client
            .describe_thing()
            .thing_name(thing_name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let about_the_thing = e.as_service_error().is_some_and(|e| {
                    e.is_resource_not_found_exception() || e.is_invalid_request_exception()
                });
                let reason = format!("DescribeThing: {}", DisplayErrorContext(e));
                return if about_the_thing {
                    Answer::NotFound(reason)
                } else {
                    Answer::Failed(reason)
                };
            }
        };
        let Some(thing_type) = out.thing_type_name().filter(|t| !t.is_empty()) else {
            return Answer::NotFound("the thing has no thing type".into());
        };
        let domain = out
            .attributes()
            .and_then(|a| a.get(&self.domain_attribute))
            .and_then(|d| parse_domain(d));
        let Some((domain, ancestors)) = domain else {
            return Answer::NotFound(format!(
                "the thing has no attribute {:?} naming its domain",
                self.domain_attribute
            ));
        };
        Answer::Found(ResolvedThing {
            thing_type: thing_type.to_owned(),
            domain,
            ancestors,
        })
    }
}

/// AWS IoT's thing names: 1 to 128 of `[a-zA-Z0-9:_-]`.
fn is_thing_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_names_as_aws_iot_takes_them() {
        assert!(is_thing_name("dev-001:a_b"));
        assert!(is_thing_name(&"a".repeat(128)));
        assert!(!is_thing_name(&"a".repeat(129)));
        assert!(!is_thing_name(""));
        assert!(!is_thing_name("a.b"));
        assert!(!is_thing_name("a b"));
    }
}
