#!/usr/bin/env python3
"""Drives ccstream's Rule API with an unmodified boto3 Lambda client.

Usage: sdk_invoke.py <endpoint>    (for example http://127.0.0.1:8088)

Runs CREATE, GET, LIST, UPDATE and REMOVE through `lambda.invoke`, checks one function error
(FunctionError == "Unhandled", errorMessage a JSON string) and that an unknown function name
raises ResourceNotFoundException. Exits non-zero with a message on the first mismatch. Run by
tests/rule_api.rs against a started binary (auth = "none", so the SigV4 signature is ignored).
"""

import json
import sys

import boto3

FUNCTION = "dev-RuleLambda-12345"


def fail(msg):
    print(f"sdk_invoke: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def invoke(client, payload, function=FUNCTION):
    resp = client.invoke(FunctionName=function, Payload=json.dumps(payload))
    body = resp["Payload"].read()
    check(resp["StatusCode"] == 200, f"{payload.get('action')}: StatusCode {resp['StatusCode']}")
    try:
        result = json.loads(body) if body else None
    except ValueError:
        fail(f"{payload.get('action')}: payload is not JSON: {body!r}")
    return resp.get("FunctionError"), result


def ok(client, payload):
    err, result = invoke(client, payload)
    check(err is None, f"{payload['action']}: unexpected FunctionError {err}: {result}")
    return result


def main():
    if len(sys.argv) != 2:
        fail("usage: sdk_invoke.py <endpoint>")
    client = boto3.client(
        "lambda",
        endpoint_url=sys.argv[1],
        region_name="eu-west-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )

    attrs = {
        "name": "Thing Overheating",
        "description": "Triggered if the temperature is too high",
        "enabled": True,
        "filter": {"domain": "root", "thingType": "Pump", "thingNames": ["thing-001"]},
        "expression": {"operator": "gte", "resource": "temp", "value": 50},
        "actions": [{"type": "WEBHOOK", "config": {"url": "https://example.com/hook"}}],
        "threshold": {"count": 2, "interval": 60000},
    }

    created = ok(client, {"action": "CREATE", "attributes": attrs})
    check(isinstance(created, dict), f"CREATE: expected a rule object, got {created!r}")
    rule_id = created.get("id")
    check(isinstance(rule_id, str) and rule_id, f"CREATE: no id in {created}")
    check(created.get("name") == attrs["name"], f"CREATE: name in {created}")
    check(created.get("filter", {}).get("thingType") == "Pump", f"CREATE: filter in {created}")
    check(created.get("readonly") is False, f"CREATE: readonly in {created}")

    got = ok(client, {"action": "GET", "attributes": {"id": rule_id}})
    check(got.get("id") == rule_id, f"GET: {got}")
    check(got.get("expression") == attrs["expression"], f"GET: expression in {got}")

    listed = ok(client, {"action": "LIST"})
    check(isinstance(listed, list), f"LIST: expected an array, got {listed!r}")
    check(any(r.get("id") == rule_id for r in listed), f"LIST: {rule_id} missing in {listed}")

    updated_attrs = dict(attrs, id=rule_id, name="Renamed", enabled=False)
    updated = ok(client, {"action": "UPDATE", "attributes": updated_attrs})
    check(updated.get("name") == "Renamed" and updated.get("enabled") is False,
          f"UPDATE: {updated}")
    got = ok(client, {"action": "GET", "attributes": {"id": rule_id}})
    check(got.get("name") == "Renamed", f"GET after UPDATE: {got}")

    removed = ok(client, {"action": "REMOVE", "attributes": {"id": rule_id}})
    check(removed is None, f"REMOVE: expected null, got {removed!r}")

    # A function error: clients JSON.parse(payload.errorMessage).
    err, result = invoke(client, {"action": "GET", "attributes": {"id": rule_id}})
    check(err == "Unhandled", f"GET removed rule: FunctionError {err!r}, payload {result!r}")
    check(isinstance(result, dict) and isinstance(result.get("errorMessage"), str),
          f"GET removed rule: errorMessage must be a string: {result!r}")
    detail = json.loads(result["errorMessage"])
    check(detail.get("messageKey") == "RULE_NOT_FOUND", f"GET removed rule: {detail}")
    check(detail.get("property") == "id", f"GET removed rule: {detail}")
    check(isinstance(detail.get("message"), str) and detail["message"],
          f"GET removed rule: {detail}")

    try:
        invoke(client, {"action": "LIST"}, function="dev-UserLambda-12345")
    except client.exceptions.ResourceNotFoundException:
        pass
    except Exception as e:  # noqa: BLE001 - report whatever the SDK raised instead
        fail(f"unknown function: expected ResourceNotFoundException, got {type(e).__name__}: {e}")
    else:
        fail("unknown function: expected ResourceNotFoundException, the call succeeded")

    print("sdk_invoke: OK (CREATE, GET, LIST, UPDATE, REMOVE, function error, unknown function)")


if __name__ == "__main__":
    main()
