"""Validates deploy/ecs/ against AWS's own API model and registers it with moto.

    python3 tests/deploy/validate_ecs.py DEPLOY_ECS_DIR [MOTO_ENDPOINT]

1. botocore's service models (the ones the AWS CLI and SDKs are generated from) check
   task-definition.json as RegisterTaskDefinition input and service.json as CreateService
   input: unknown keys, wrong types, missing required members and enum values are errors,
   as `aws ecs register-task-definition --cli-input-json file://...` would report them.
2. With a moto endpoint: the task definition is registered and described back, the cluster
   and the service are created from service.json, and both IAM policies are created (moto
   checks the policy grammar as IAM does).

Prints "validate_ecs: OK" at the end; any failure raises (non-zero exit).
"""

import json
import pathlib
import sys

import botocore.exceptions
import botocore.session
import botocore.validate


def load(directory, name):
    with open(directory / name, encoding="utf-8") as f:
        return json.load(f)


def validate_model(operation, params):
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model(operation).input_shape
    # Raises ParamValidationError listing every problem.
    botocore.validate.validate_parameters(params, shape)
    # The validator is live: the same input with a misspelt key is refused.
    try:
        botocore.validate.validate_parameters({**params, "misspeltKey": 1}, shape)
    except botocore.exceptions.ParamValidationError:
        pass
    else:
        raise AssertionError(f"botocore accepted an unknown key in {operation} input")
    print(f"validate_ecs: {operation} input matches botocore's ecs model")


def register_with_moto(endpoint, task_definition, service, policies):
    import boto3

    common = dict(
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="ccstream-test",
        aws_secret_access_key="ccstream-test-secret",
    )
    ecs = boto3.client("ecs", **common)
    registered = ecs.register_task_definition(**task_definition)["taskDefinition"]
    arn = registered["taskDefinitionArn"]
    described = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    names = [c["name"] for c in described["containerDefinitions"]]
    expected = [c["name"] for c in task_definition["containerDefinitions"]]
    assert names == expected, f"moto describes containers {names}, registered {expected}"
    print(f"validate_ecs: moto registered {arn}")

    # moto checks that the subnets and the security group exist: make them, and put their ids
    # in place of the placeholders.
    ec2 = boto3.client("ec2", **common)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    network = service["networkConfiguration"]["awsvpcConfiguration"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"]
        for i, _ in enumerate(network["subnets"])
    ]
    groups = [
        ec2.create_security_group(GroupName=f"ccstream-{i}", Description="ccstream", VpcId=vpc)[
            "GroupId"
        ]
        for i, _ in enumerate(network["securityGroups"])
    ]
    service = json.loads(json.dumps(service))
    service["networkConfiguration"]["awsvpcConfiguration"].update(
        subnets=subnets, securityGroups=groups
    )
    ecs.create_cluster(clusterName=service["cluster"])
    created = ecs.create_service(**service)["service"]
    assert created["desiredCount"] == service["desiredCount"], created
    print(f"validate_ecs: moto created service {created['serviceArn']}")

    iam = boto3.client("iam", **common)
    for name, document in policies.items():
        iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))
        print(f"validate_ecs: moto accepted IAM policy {name}")


def main():
    directory = pathlib.Path(sys.argv[1])
    endpoint = sys.argv[2] if len(sys.argv) > 2 else None
    task_definition = load(directory, "task-definition.json")
    service = load(directory, "service.json")
    policies = {
        "ccstream-task": load(directory, "task-role-policy.json"),
        "ccstream-execution": load(directory, "execution-role-policy.json"),
    }
    validate_model("RegisterTaskDefinition", task_definition)
    validate_model("CreateService", service)
    if endpoint:
        register_with_moto(endpoint, task_definition, service, policies)
    print("validate_ecs: OK")


if __name__ == "__main__":
    main()
