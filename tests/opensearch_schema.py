#!/usr/bin/env python3
"""Validates search bodies against OpenSearch's published OpenAPI description, strictly.

Usage: opensearch_schema.py <opensearch-api dir> <bodies.json> [search | bulk]
    bodies.json: {"name": <body>, ...}: search bodies (JSON), or `_bulk` bodies (NDJSON text,
    whose action lines are validated as OperationContainer and whose document lines must be JSON
    objects). Prints one line per body, "ok" or its errors, and exits 1 when any body fails.

No OpenSearch server can be installed on these machines, so the bodies ccstream sends to
`_search` are checked against the OpenSearch project's own description
(`../shared/opensearch-api/`, read-only, not copied into the project) instead of against a
stand-in its authors wrote.

Strict, as OpenSearch's parsers are: many object schemas there list their properties without
`additionalProperties: false`, yet OpenSearch refuses unknown query types and fields. So a
schema group (a schema with what its `$ref`s and `allOf`/`anyOf`/`oneOf` branches add) that lists
`properties` and allows no other names (no `additionalProperties`, no `patternProperties`
anywhere in it) is closed: a property no part of it evaluated is an error, the way JSON Schema's
`unevaluatedProperties: false` works.
"""

import json
import os
import re
import sys

import yaml

SEARCH_BODY = ("namespaces/_core.yaml", ["components", "requestBodies", "search", "content",
                                          "application/json", "schema"])
BULK_ACTION = ("schemas/_core.bulk.yaml", ["components", "schemas", "OperationContainer"])

_documents = {}


def document(path):
    if path not in _documents:
        with open(path) as f:
            _documents[path] = yaml.safe_load(f)
    return _documents[path]


def resolve(schema, base):
    """Follows `$ref`s: (the schema with its sibling keywords, the file it is in)."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema:
        seen += 1
        if seen > 64:
            raise ValueError(f"$ref loop at {schema['$ref']}")
        ref = schema["$ref"]
        target, _, pointer = ref.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(base), target)) if target else base
        node = document(path)
        for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        if siblings:
            # The siblings' own $refs are relative to the referring file: they keep it.
            return {"allOf": [node, {"__base__": base, **siblings}]}, path
        schema, base = node, path
    return schema, base


TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class Result:
    def __init__(self):
        self.errors = []
        self.evaluated = set()
        self.listed = False
        self.open = False

    def merge(self, other):
        self.errors += other.errors
        self.evaluated |= other.evaluated
        self.listed |= other.listed
        self.open |= other.open


def check(inst, schema, base, path, entry=True):
    """Validates `inst`; `entry` says that this schema is where a group starts (not a branch of
    an `allOf`/`anyOf`/`oneOf`), where closedness is decided."""
    result = Result()
    if schema is True or schema is None or schema == {}:
        result.open = True
        return result
    if schema is False:
        result.errors.append(f"{path}: nothing is allowed here")
        return result
    schema, base = resolve(schema, base)
    base = schema.get("__base__", base)

    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        if not any(TYPES[t](inst) for t in types):
            result.errors.append(f"{path}: {json.dumps(inst)[:60]} is not of type {types}")
            return result
    if "enum" in schema and inst not in schema["enum"]:
        result.errors.append(f"{path}: {inst!r} is not one of {schema['enum']}")
    if "const" in schema and inst != schema["const"]:
        result.errors.append(f"{path}: {inst!r} is not {schema['const']!r}")

    if isinstance(inst, dict):
        props = schema.get("properties") or {}
        patterns = schema.get("patternProperties") or {}
        if props:
            result.listed = True
        if patterns or ("additionalProperties" in schema and schema["additionalProperties"] is not False):
            result.open = True
        for key, value in inst.items():
            matched = False
            if key in props:
                matched = True
                sub = check(value, props[key], base, f"{path}.{key}")
                result.errors += sub.errors
            for pattern, sub_schema in patterns.items():
                if re.search(pattern, key):
                    matched = True
                    result.errors += check(value, sub_schema, base, f"{path}.{key}").errors
            if matched:
                result.evaluated.add(key)
            elif "additionalProperties" in schema:
                extra = schema["additionalProperties"]
                if extra is False:
                    result.errors.append(f"{path}: unknown property {key!r}")
                else:
                    result.errors += check(value, extra, base, f"{path}.{key}").errors
                    result.evaluated.add(key)
        if "propertyNames" in schema:
            for key in inst:
                result.errors += check(key, schema["propertyNames"], base, f"{path}[name {key}]").errors
        for key in schema.get("required", []):
            if key not in inst:
                result.errors.append(f"{path}: {key!r} is required")
        if "minProperties" in schema and len(inst) < schema["minProperties"]:
            result.errors.append(f"{path}: fewer than {schema['minProperties']} properties")
        if "maxProperties" in schema and len(inst) > schema["maxProperties"]:
            result.errors.append(f"{path}: more than {schema['maxProperties']} properties")

    if isinstance(inst, list) and "items" in schema:
        for i, item in enumerate(inst):
            result.errors += check(item, schema["items"], base, f"{path}[{i}]").errors

    for sub in schema.get("allOf", []):
        result.merge(check(inst, sub, base, path, entry=False))
    for keyword in ("anyOf", "oneOf"):
        if keyword not in schema:
            continue
        passing, failures = [], []
        for sub in schema[keyword]:
            # A branch is checked as a group of its own: strict inside, and also as part of
            # this group for the properties it evaluates.
            alone = check(inst, sub, base, path, entry=True)
            if alone.errors:
                failures.append(alone)
            else:
                passing.append(check(inst, sub, base, path, entry=False))
        if not passing:
            # The closest branch is the one that recognised most of the properties (the
            # aggregation or query type the body meant), then the one with the fewest errors.
            best = max(failures, key=lambda r: (len(r.evaluated), -len(r.errors)), default=None)
            reasons = best.errors if best else []
            result.errors.append(f"{path}: matches no branch of {keyword}; closest: {reasons}")
        for branch in passing:
            result.evaluated |= branch.evaluated
            result.listed |= branch.listed
            result.open |= branch.open

    if entry and isinstance(inst, dict) and result.listed and not result.open:
        for key in sorted(set(inst) - result.evaluated):
            result.errors.append(f"{path}: unknown property {key!r}")
    return result


def schema_at(spec_dir, where):
    base = os.path.join(spec_dir, "spec", where[0])
    node = document(base)
    for part in where[1]:
        node = node[part]
    return node, base


def bulk_errors(text, action, base):
    """The `_bulk` body's errors: action lines against the schema, documents as objects."""
    errors = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    else:
        errors.append("the body does not end with a newline")
    if len(lines) % 2:
        errors.append("an action line has no document")
    for i, line in enumerate(lines):
        try:
            value = json.loads(line)
        except ValueError as e:
            errors.append(f"line {i + 1}: not JSON ({e})")
            continue
        if i % 2 == 0:
            errors += check(value, action, base, f"line {i + 1}").errors
        elif not isinstance(value, dict):
            errors.append(f"line {i + 1}: the document is not an object")
    return errors


def main():
    if len(sys.argv) not in (3, 4) or sys.argv[3:] not in ([], ["search"], ["bulk"]):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    spec_dir, bodies_file = sys.argv[1], sys.argv[2]
    bulk = sys.argv[3:] == ["bulk"]
    schema, base = schema_at(spec_dir, BULK_ACTION if bulk else SEARCH_BODY)
    with open(bodies_file) as f:
        bodies = json.load(f)
    failed = False
    for name, body in bodies.items():
        if bulk:
            errors = bulk_errors(body, schema, base)
        else:
            errors = check(body, schema, base, "body").errors
        if errors:
            failed = True
            print(f"{name}: " + "; ".join(dict.fromkeys(errors)))
        else:
            print(f"{name}: ok")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
