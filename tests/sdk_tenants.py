#!/usr/bin/env python3
"""Tenants with their own identities drive ccstream through unmodified boto3 clients: static
access keys, and temporary credentials from STS or Cognito Identity for an OIDC token.

Usage:
  sdk_tenants.py matrix <endpoint> <keys.json>
      keys.json maps a tenant name to {"accessKeyId", "secretAccessKey"}; the tenants are
      root_rw, root_read, sub1_rw, sub2_read, other_rw (domains of fixtures/directory/small.json:
      sub1 and other under root, sub2 under sub1). Runs the tenant matrix of the JWT tests through
      `lambda.invoke` signed with SigV4: CREATE/GET/LIST/UPDATE/REMOVE across sibling and parent
      domains, readonly marks, Read callers refused, then FIND as sub1_rw and as other_rw (the
      test checks what reached the search stand-in).
  sdk_tenants.py refused <endpoint> <accessKeyId> <secretAccessKey> <ErrorCode> [<sessionToken>]
      A LIST with these keys must raise botocore's ClientError with this code.
  sdk_tenants.py list <endpoint> <accessKeyId> <secretAccessKey>
      A LIST with these keys succeeds.
  sdk_tenants.py web-identity <endpoint> <token> <own domain> <foreign domain>
      STS assume_role_with_web_identity with the OIDC token, then lambda.invoke with those
      credentials: a rule in the own domain is made, listed and removed, one in the foreign
      domain is refused (NOT_AUTHORIZED_DOMAIN); the same session token altered is refused
      (UnrecognizedClientException).
  sdk_tenants.py cognito <endpoint> <provider> <token> <own domain>
      Cognito Identity get_id + get_credentials_for_identity with Logins {provider: token}, then
      lambda.invoke with those credentials (a rule made and removed in the own domain).
  sdk_tenants.py sts-refused <endpoint> <token> <ErrorCode>
      assume_role_with_web_identity must raise ClientError with this code.

Prints "sdk_tenants: OK" and exits 0, or exits 1 with the first mismatch. Run by tests/sigv4.rs
and tests/web_identity.rs.
"""

import json
import sys

import boto3
import botocore
import botocore.exceptions
from botocore.config import Config

RULES = "dev-RuleLambda-12345"
OBSERVATIONS = "dev-ObservationLambda-12345"


def fail(msg):
    print(f"sdk_tenants: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


# One attempt: a refusal must surface as it is, not be retried.
ONCE = Config(retries={"total_max_attempts": 1})


def client(endpoint, key, secret, token=None, service="lambda"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=ONCE,
    )


def unsigned(endpoint, service):
    """A client for the calls that carry no signature (STS web identity, Cognito)."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="eu-west-1",
        config=Config(signature_version=botocore.UNSIGNED, retries={"total_max_attempts": 1}),
    )


def own_domain_round(lam, own, foreign):
    made = create(lam, attrs(own, "made with temporary credentials"))
    check(made["filter"]["domain"] == own, f"{made}")
    check(made["id"] in listed(lam), "the rule made is not listed")
    if foreign:
        refused(lam, {"action": "CREATE", "attributes": attrs(foreign)}, "NOT_AUTHORIZED_DOMAIN")
    check(ok(lam, by_id("REMOVE", made["id"])) is None, "REMOVE answers null")


def web_identity(endpoint, token, own, foreign):
    sts = unsigned(endpoint, "sts")
    resp = sts.assume_role_with_web_identity(
        RoleArn="arn:aws:iam::000000000000:role/ccstream-tenant",
        RoleSessionName="sdk-test",
        WebIdentityToken=token,
        DurationSeconds=900,
    )
    c = resp["Credentials"]
    check(c["AccessKeyId"].startswith("ASIA"), f"{c['AccessKeyId']}")
    check(resp["AssumedRoleUser"]["Arn"].endswith("/ccstream-tenant/sdk-test"), f"{resp}")
    lam = client(endpoint, c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
    own_domain_round(lam, own, foreign)
    altered = c["SessionToken"][:-4] + ("AAAA" if not c["SessionToken"].endswith("AAAA") else "BBBB")
    expect_refused(endpoint, c["AccessKeyId"], c["SecretAccessKey"], "UnrecognizedClientException", altered)


def cognito(endpoint, provider, token, own):
    ci = unsigned(endpoint, "cognito-identity")
    logins = {provider: token}
    identity = ci.get_id(IdentityPoolId="eu-west-1:00000000-0000-0000-0000-000000000000", Logins=logins)
    again = ci.get_id(IdentityPoolId="eu-west-1:00000000-0000-0000-0000-000000000000", Logins=logins)
    check(identity["IdentityId"] == again["IdentityId"], "the identity id changed between calls")
    resp = ci.get_credentials_for_identity(IdentityId=identity["IdentityId"], Logins=logins)
    c = resp["Credentials"]
    lam = client(endpoint, c["AccessKeyId"], c["SecretKey"], c["SessionToken"])
    own_domain_round(lam, own, None)


def sts_refused(endpoint, token, code):
    try:
        unsigned(endpoint, "sts").assume_role_with_web_identity(
            RoleArn="arn:aws:iam::000000000000:role/ccstream-tenant",
            RoleSessionName="sdk-test",
            WebIdentityToken=token,
        )
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        check(got == code, f"expected {code}, got {got}: {e}")
        return
    fail(f"expected {code}, the call succeeded")


def invoke(lam, payload, function=RULES):
    resp = lam.invoke(FunctionName=function, Payload=json.dumps(payload))
    body = resp["Payload"].read()
    check(resp["StatusCode"] == 200, f"{payload}: StatusCode {resp['StatusCode']}")
    result = json.loads(body) if body else None
    if resp.get("FunctionError"):
        # The spec's clients do JSON.parse(errorMessage).
        return json.loads(result["errorMessage"]), None
    return None, result


def ok(lam, payload, function=RULES):
    err, result = invoke(lam, payload, function)
    check(err is None, f"{payload.get('action')}: unexpected error {err}")
    return result


def refused(lam, payload, key):
    err, result = invoke(lam, payload)
    check(err is not None, f"{payload}: expected {key}, got {result}")
    check(err.get("messageKey") == key, f"{payload}: expected {key}, got {err}")
    return err


def attrs(domain, name=None):
    return {
        "name": name or f"rule in {domain}",
        "enabled": True,
        "filter": {"domain": domain, "thingType": "Pump", "thingNames": ["thing-101"]},
        "expression": {"operator": "gte", "resource": "temp", "value": 50},
        "actions": [{"type": "WEBHOOK", "config": {"url": "https://example.com/hook"}}],
        "threshold": {"count": 0, "interval": 60000},
    }


def create(lam, attributes):
    return ok(lam, {"action": "CREATE", "attributes": attributes})


def update(id_, attributes):
    return {"action": "UPDATE", "attributes": dict(attributes, id=id_)}


def by_id(action, id_):
    return {"action": action, "attributes": {"id": id_}}


def listed(lam):
    return {r["id"]: r["readonly"] for r in ok(lam, {"action": "LIST"})}


def matrix(endpoint, keys):
    lam = {name: client(endpoint, k["accessKeyId"], k["secretAccessKey"]) for name, k in keys.items()}

    rule = {}
    for domain in ["root", "sub1", "sub2", "other"]:
        rule[domain] = create(lam["root_rw"], attrs(domain))["id"]

    # Own subtree writable, ancestors read-only, other branches hidden.
    visible = {
        "root_read": {"root": False, "sub1": False, "sub2": False, "other": False},
        "sub1_rw": {"root": True, "sub1": False, "sub2": False},
        "sub2_read": {"root": True, "sub1": True, "sub2": False},
        "other_rw": {"root": True, "other": False},
    }
    for tenant, want in visible.items():
        got = listed(lam[tenant])
        check(got == {rule[d]: ro for d, ro in want.items()}, f"LIST as {tenant}: {got}")
        for domain, ro in want.items():
            one = ok(lam[tenant], by_id("GET", rule[domain]))
            check(one["readonly"] == ro, f"GET {domain} as {tenant}: {one}")

    # Read callers write nothing.
    for tenant, own in [("root_read", "root"), ("sub2_read", "sub2")]:
        err = refused(lam[tenant], {"action": "CREATE", "attributes": attrs(own)}, "NOT_AUTHORIZED")
        check(err.get("messageParams") == {"operation": "CREATE", "objectType": "RULE"}, f"{err}")
        refused(lam[tenant], update(rule[own], attrs(own, "x")), "NOT_AUTHORIZED")
        refused(lam[tenant], by_id("REMOVE", rule[own]), "NOT_AUTHORIZED")

    # sub1's writer: nothing outside its subtree, in either direction.
    sub1 = lam["sub1_rw"]
    refused(sub1, by_id("GET", rule["other"]), "NOT_AUTHORIZED_DOMAIN")
    for target in ["root", "other"]:
        refused(sub1, update(rule[target], attrs(target, "x")), "NOT_AUTHORIZED_DOMAIN")
        refused(sub1, by_id("REMOVE", rule[target]), "NOT_AUTHORIZED_DOMAIN")
        refused(sub1, {"action": "CREATE", "attributes": attrs(target)}, "NOT_AUTHORIZED_DOMAIN")
        refused(sub1, update(rule["sub2"], attrs(target)), "NOT_AUTHORIZED_DOMAIN")
    refused(lam["other_rw"], update(rule["sub2"], attrs("other")), "NOT_AUTHORIZED_DOMAIN")

    # Inside its subtree everything works.
    made = create(sub1, attrs("sub2", "made by sub1"))
    check(made["readonly"] is False, f"{made}")
    moved = ok(sub1, update(rule["sub2"], attrs("sub1", "moved")))
    check(moved["filter"]["domain"] == "sub1", f"{moved}")
    check(ok(sub1, by_id("REMOVE", rule["sub1"])) is None, "REMOVE answers null")

    everything = {r["id"]: r for r in ok(lam["root_rw"], {"action": "LIST"})}
    for domain in ["root", "other"]:
        check(everything[rule[domain]]["name"] == f"rule in {domain}", f"{domain} rule changed")
    check(rule["sub1"] not in everything, "sub1 rule not removed")
    check(made["id"] in everything, "rule made by sub1 missing")

    # FIND: the test checks that each search reached OpenSearch restricted to its caller.
    query = {
        "size": 0,
        "query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1460661813164, "lte": 1460705013163}}},
            {"term": {"thingName": "thing-101"}},
        ]}},
    }
    for tenant in ["sub1_rw", "other_rw"]:
        ok(lam[tenant], {"action": "FIND", "query": query}, OBSERVATIONS)


def expect_refused(endpoint, key, secret, code, token=None):
    try:
        client(endpoint, key, secret, token).invoke(FunctionName=RULES, Payload=b'{"action": "LIST"}')
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        check(got == code, f"expected {code}, got {got}: {e}")
        return
    fail(f"expected {code}, the call succeeded")


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "matrix":
        with open(args[2]) as f:
            matrix(args[1], json.load(f))
    elif len(args) in (5, 6) and args[0] == "refused":
        expect_refused(*args[1:])
    elif len(args) == 4 and args[0] == "list":
        listed(client(*args[1:]))
    elif len(args) == 5 and args[0] == "web-identity":
        web_identity(*args[1:])
    elif len(args) == 5 and args[0] == "cognito":
        cognito(*args[1:])
    elif len(args) == 4 and args[0] == "sts-refused":
        sts_refused(*args[1:])
    else:
        fail(__doc__)
    print("sdk_tenants: OK")


if __name__ == "__main__":
    main()
