"""The deployment's commands, as docs/deployment.md gives them, parsed by Bodywork 3.0.12's own CLI.

Each `bodywork ...` command in the document's `deployment-commands` code blocks is parsed by
Bodywork's command-line app (typer on click) without running it, so a wrong flag, a missing
argument or a bad value fails here rather than on the cluster.
"""
from typing import List

import pytest
from bodywork.cli.secrets import parse_cli_secrets_strings
from bodywork.cli.workflow_jobs import _is_valid_cron_schedule
from bodywork.config import BodyworkConfig
from bodywork.k8s import ingress_route, make_valid_k8s_name

from pipeline.settings import API
from tests.helpers import (
    deployment_command,
    deployment_commands,
    deployment_commands_starting,
    deployment_text,
    parse_with_bodywork_cli,
)


DEPLOYMENT_COMMANDS = deployment_commands()


def test_deployment_doc_has_the_deployment_commands() -> None:
    verbs = sorted(" ".join(command[1:3]) for command in DEPLOYMENT_COMMANDS)
    for expected in ("configure-cluster", "create secret", "create deployment", "create cronjob",
                     "get cronjob"):
        assert any(verb.startswith(expected) for verb in verbs), f"no `bodywork {expected}` in {verbs}"


@pytest.mark.parametrize("command", DEPLOYMENT_COMMANDS, ids=lambda c: " ".join(c[1:3]))
def test_deployment_command_parses_with_the_bodywork_cli(command: List[str]) -> None:
    path, _ = parse_with_bodywork_cli(command)
    assert path == [word for word in command[1:1 + len(path)]]


SECRET_COMMANDS = deployment_commands_starting("create", "secret")


def test_deployment_creates_the_aws_and_the_model_signing_secrets() -> None:
    names = [parse_with_bodywork_cli(command)[1]["name"] for command in SECRET_COMMANDS]
    assert names == ["aws-credentials", "model-signing"]


@pytest.mark.parametrize("command", SECRET_COMMANDS, ids=lambda c: c[3])
def test_deployment_secret_is_created_in_the_configs_secrets_group(
    bodywork_config: BodyworkConfig, command: List[str]
) -> None:
    _, params = parse_with_bodywork_cli(command)
    assert params["group"] == bodywork_config.pipeline.secrets_group


def test_deployment_secrets_hold_every_variable_the_stages_read(bodywork_config: BodyworkConfig) -> None:
    held = set()
    for command in SECRET_COMMANDS:
        _, params = parse_with_bodywork_cli(command)
        held |= {(params["name"], key) for key in parse_cli_secrets_strings(params["data"])}
    read = {pair for stage in bodywork_config.stages.values() for pair in stage.env_vars_from_secrets}
    assert sorted(read - held) == []


def test_deployment_cronjob_schedule_is_valid_for_bodywork() -> None:
    _, params = parse_with_bodywork_cli(deployment_command("create", "cronjob"))
    assert _is_valid_cron_schedule(params["schedule"])


def test_deployment_cronjob_redeploys_what_ci_deploys() -> None:
    _, cronjob = parse_with_bodywork_cli(deployment_command("create", "cronjob"))
    _, deployment = parse_with_bodywork_cli(deployment_command("create", "deployment"))
    assert (cronjob["git_url"], cronjob["git_branch"]) == (deployment["git_url"], "master")
    assert deployment["git_branch"] == "master"


def test_deployment_curl_targets_the_ingress_route_of_the_serve_stage(bodywork_config: BodyworkConfig) -> None:
    route = ingress_route(bodywork_config.pipeline.namespace, make_valid_k8s_name("serve_model"))
    assert f"{route}{API.predict_path}" in deployment_text()
