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
        let out = match self
            .client
            .describe_thing()
            .thing_name(thing_name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception())
                {
                    return Answer::NotFound("AWS IoT has no such thing".into());
                }
                return Answer::Failed(format!("DescribeThing: {}", DisplayErrorContext(e)));
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
