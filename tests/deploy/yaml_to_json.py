"""YAML documents on stdin (what `kubectl kustomize` prints) as one JSON array on stdout.

tests/deploy.rs asserts on the rendered manifests as JSON; `kubectl kustomize` only prints YAML
and the test has no YAML parser of its own. Empty documents are left out.
"""

import json
import sys

import yaml

json.dump([doc for doc in yaml.safe_load_all(sys.stdin) if doc is not None], sys.stdout)
