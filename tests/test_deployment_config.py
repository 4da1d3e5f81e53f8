"""The deployment's files agree with each other, with the code and with the measurements.

These checks need no Bodywork package (the ones made with Bodywork's own code are in
tests/bodywork/ and run in the `bodywork` tox environment):

- every stage's `requirements` in bodywork.yaml are lines of requirements_pipe.txt, cover
  the pinned libraries the stage imports and pin everything those lines pull in;
- the memory requests and time limits in bodywork.yaml cover the benchmarks' figures with a
  margin (the figures are read from benchmarks/results/, which the benchmarks write; the
  train stage's from its run on a 100,000-row week);
- static analysis and the tests target the stages' runtime image's Python;
- bodywork.yaml names the runtime image by the digest of what it is built from (image/tag.py),
  in a repository Bodywork can use;
- .circleci/config.yml is valid for CircleCI, tests branches (the image too), and on master
  pushes the image before it deploys;
- the weekly cronjob in docs/deployment.md fires after the Friday 23:00 UTC data drop, with retries;
- the Kubernetes objects and Prometheus configuration Bodywork does not make are files under
  deploy/, never code blocks of the docs: every file of deploy/kubernetes/ is a Kubernetes object,
  every file of deploy/ is named by a document, and every deploy/ path a document names exists.
  (What those files say is checked with Bodywork's own objects in tests/bodywork/.)
"""
import configparser
import json
import re
import shlex
import subprocess
import sys
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml
from croniter import croniter
from packaging.requirements import Requirement

from image.tag import image_tag
from tests.helpers import (
    BATCH_JOB,
    CRONJOB_V1,
    DEPLOY,
    KUBERNETES_DIR,
    SCRAPE_CONFIG,
    SERVICEMONITOR,
    bodywork_commands,
    deploy_yaml,
    deployment_command,
    deployment_commands,
    fenced_blocks,
)

from pipeline.settings import LOCAL, SERVE

README = LOCAL.repo_root / "README.md"
DOCS = LOCAL.repo_root / "docs"
BODYWORK_YAML = LOCAL.repo_root / "bodywork.yaml"
# terminationGracePeriodSeconds' default; Bodywork's Deployment does not set it.
CIRCLECI_CONFIG = LOCAL.repo_root / ".circleci" / "config.yml"
TOX_INI = LOCAL.repo_root / "tox.ini"
REQUIREMENTS_PIPE, REQUIREMENTS_CICD, REQUIREMENTS_MLFLOW = LOCAL.requirement_files
REQUIREMENTS_BODYWORK_ENV = LOCAL.repo_root / "tests" / "bodywork" / "requirements.txt"
MYPY_INI = LOCAL.repo_root / "mypy.ini"
TRAIN_BENCHMARK = LOCAL.repo_root / "benchmarks" / "results" / "train.json"
SERVE_BENCHMARK = LOCAL.repo_root / "benchmarks" / "results" / "serve.json"
STAGES = ("train_model", "serve_model", "stream_predict")
# The Python of the stages' runtime image (docs/deployment.md): what the deployed code runs
# on, so what mypy checks it for and what the tests and the Bodywork checks run on.
IMAGE_PYTHON = "3.11"

# The train stage is sized for a week a hundred times the usual (about 1,000 orders).
SIZING_WEEK_ROWS = 100_000
# Requests and limits must leave room above what was measured: memory 1.5x the peak RSS,
# time 3x the measured duration (a busier node, a slower disk, a bigger week).
MEMORY_MARGIN = 1.5
TIME_MARGIN = 3.0
# Bodywork turns memory_request_mb into the Kubernetes quantity "<n>M" (10^6 bytes); the
# benchmarks report MiB (2^20 bytes).
BYTES_PER_REQUEST_MB = 10**6
BYTES_PER_BENCHMARK_MB = 2**20

# Data engineering drops each week's file on Friday at 23:00 UTC. The retraining must start
# at least an hour later (a late upload still makes it) and within a day (Saturday's shop
# gets the new model).
DROP_WEEKDAY, DROP_HOUR = 4, 23  # Friday
MIN_DELAY_AFTER_DROP = timedelta(hours=1)
MAX_DELAY_AFTER_DROP = timedelta(hours=24)
WEEKS_CHECKED = 12


# --- reading the files -------------------------------------------------------------------

def documents() -> List[Path]:
    """The README and every document of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def bodywork_config() -> Dict[str, Any]:
    """bodywork.yaml as plain data."""
    config = yaml.safe_load(BODYWORK_YAML.read_text())
    assert isinstance(config, dict), "bodywork.yaml is not a mapping"
    return config


def requirement_lines(path: Path) -> List[str]:
    """The requirement lines of a requirements file and of the files it includes with `-r`,
    without comments or blank lines."""
    found: List[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found += requirement_lines(path.parent / line[3:].strip())
        elif line and not line.startswith("-"):
            found.append(line)
    return found


def distribution_name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (`moto[server]==5` -> `moto`)."""
    name = re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def option_values(command: List[str], option: str) -> List[str]:
    """The values given to `--option` in a split command (`--option V` or `--option=V`)."""
    values = []
    for i, word in enumerate(command):
        if word == option and i + 1 < len(command):
            values.append(command[i + 1])
        elif word.startswith(option + "="):
            values.append(word[len(option) + 1:])
    return values


def option_value(command: List[str], option: str) -> Optional[str]:
    """The value given to `--option`, if it is given once; None if not given."""
    values = option_values(command, option)
    assert len(values) <= 1, f"{option} is given {len(values)} times in {command}"
    return values[0] if values else None


def circleci_config() -> Dict[str, Any]:
    """.circleci/config.yml as plain data."""
    config = yaml.safe_load(CIRCLECI_CONFIG.read_text())
    assert isinstance(config, dict), ".circleci/config.yml is not a mapping"
    return config


def job_commands(config: Dict[str, Any], job: str) -> List[str]:
    """The shell commands of a CircleCI job's `run` steps, in order."""
    commands = []
    for step in config["jobs"][job]["steps"]:
        if isinstance(step, dict) and "run" in step:
            run = step["run"]
            commands.append(run["command"] if isinstance(run, dict) else run)
    return commands


def workflow_jobs(config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The jobs of the one workflow, by name, with their settings (requires, filters)."""
    workflows = {k: v for k, v in config["workflows"].items() if k != "version"}
    assert len(workflows) == 1, f"expected one workflow, found {sorted(workflows)}"
    jobs: Dict[str, Dict[str, Any]] = {}
    for entry in next(iter(workflows.values()))["jobs"]:
        if isinstance(entry, str):
            jobs[entry] = {}
        else:
            (name, settings), = entry.items()
            jobs[name] = settings or {}
    return jobs


def runs_on_branch(settings: Dict[str, Any], branch: str) -> bool:
    """Whether a workflow job with these settings runs for a push to `branch`."""
    branches = settings.get("filters", {}).get("branches", {})
    only, ignore = branches.get("only"), branches.get("ignore")
    if only is not None and branch not in _as_list(only):
        return False
    return branch not in _as_list(ignore)


def _as_list(value: Any) -> List[str]:
    return [value] if isinstance(value, str) else list(value or [])


def firing_delays(schedule: str, first_drop: datetime, weeks: int) -> List[List[timedelta]]:
    """For each of `weeks` weekly drops, how long after it each firing of `schedule` comes,
    counting the firings before the next drop."""
    delays: List[List[timedelta]] = []
    runs = croniter(schedule, first_drop)
    fire = runs.get_next(datetime)
    for week in range(weeks):
        drop = first_drop + timedelta(weeks=week)
        this_week = []
        while fire < drop + timedelta(weeks=1):
            this_week.append(fire - drop)
            fire = runs.get_next(datetime)
        delays.append(this_week)
    return delays


def schedule_problems(schedule: str) -> List[str]:
    """What is wrong with a retraining schedule: it must fire once per week, 1 to 24 hours
    after the Friday 23:00 UTC drop (EKS evaluates CronJob schedules in UTC)."""
    first_drop = LOCAL.synthetic_first_drop
    assert (first_drop.weekday(), first_drop.hour, first_drop.utcoffset()) == (
        DROP_WEEKDAY, DROP_HOUR, timedelta(0)
    )
    problems = []
    for week, delays in enumerate(firing_delays(schedule, LOCAL.synthetic_first_drop, WEEKS_CHECKED)):
        if len(delays) != 1:
            problems.append(f"week {week}: {len(delays)} firings between two drops, not 1")
        elif not MIN_DELAY_AFTER_DROP <= delays[0] < MAX_DELAY_AFTER_DROP:
            problems.append(f"week {week}: fires {delays[0]} after the drop")
    return problems


# --- requirements ------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_stage_requirements_are_lines_of_requirements_pipe(stage: str) -> None:
    requirements = bodywork_config()["stages"][stage]["requirements"]
    pipe = requirement_lines(REQUIREMENTS_PIPE)
    assert requirements, f"{stage} has no requirements"
    assert [r for r in requirements if r not in pipe] == []


@pytest.mark.parametrize("stage", STAGES)
def test_stage_requirements_cover_the_pinned_libraries_the_stage_imports(stage: str) -> None:
    """Importing the stage's module loads no pinned library its requirements leave out (pip
    in the container would install some other version of it, or none)."""
    module = bodywork_config()["stages"][stage]["executable_module_path"][:-3].replace("/", ".")
    loaded = subprocess.run(
        [sys.executable, "-c",
         f"import importlib, sys; importlib.import_module({module!r}); "
         "print('\\n'.join(str(getattr(m, '__file__', None) or '') for m in list(sys.modules.values())))"],
        cwd=LOCAL.repo_root, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.split("\n")
    # By the files the modules were loaded from, not by top-level name: a namespace package
    # (opentelemetry) is shared by distributions the stage never imports from.
    owners = {str(file.locate()): dist.metadata["Name"] for dist in metadata.distributions()
              for file in (dist.files or []) if file.suffix in (".py", ".so")}
    imported = {distribution_name(owners[path]) for path in loaded if path in owners}
    pinned = {distribution_name(line) for line in requirement_lines(REQUIREMENTS_PIPE)}
    listed = {distribution_name(r) for r in bodywork_config()["stages"][stage]["requirements"]}
    assert sorted((imported & pinned) - listed) == []


def dependencies_of(requirement_line: str) -> List[str]:
    """The normalised names of what a requirement line pulls in, read from the metadata of
    the distribution installed here, with its markers (and the line's extras) evaluated for
    this Python, which is the image's."""
    requirement = Requirement(requirement_line)
    installed = metadata.distribution(requirement.name)
    assert requirement.specifier.contains(installed.version), (
        f"{requirement_line} but {installed.version} is installed: install requirements_pipe.txt"
    )
    found = []
    for line in installed.requires or []:
        dependency = Requirement(line)
        extras = requirement.extras or {""}
        if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
            found.append(distribution_name(dependency.name))
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_stage_requirements_pin_everything_their_lines_pull_in(stage: str) -> None:
    """pip in the pod installs nothing the stage's list leaves to float to another version:
    the list is closed under the dependencies of its lines (extras such as uvicorn's
    `[standard]` included)."""
    requirements = bodywork_config()["stages"][stage]["requirements"]
    listed = {distribution_name(line) for line in requirements}
    unpinned = {
        (distribution_name(line), dependency)
        for line in requirements
        for dependency in dependencies_of(line)
        if dependency not in listed
    }
    assert sorted(unpinned) == []


def test_dependency_check_sees_what_uvicorn_standard_pulls_in() -> None:
    assert {"uvloop", "httptools", "websockets"} <= set(dependencies_of("uvicorn[standard]==0.54.0"))
    assert "uvloop" not in dependencies_of("uvicorn==0.54.0")


def test_bodywork_env_pins_what_it_shares_with_the_other_requirements_as_they_do() -> None:
    """tests/bodywork/requirements*.txt pin PyYAML and click for the Bodywork CLI alone (CI's
    deploy job); the bodywork tox environment installs them with the other two files."""
    others = {
        distribution_name(line): line
        for path in (REQUIREMENTS_PIPE, REQUIREMENTS_CICD) for line in requirement_lines(path)
    }
    bodywork_env = {distribution_name(line): line for line in requirement_lines(REQUIREMENTS_BODYWORK_ENV)}
    shared = sorted(set(others) & set(bodywork_env))
    assert shared, "expected the Bodywork CLI's pins to share some libraries with the others"
    assert [bodywork_env[name] for name in shared] == [others[name] for name in shared]


# --- the runtime image -------------------------------------------------------------------

def test_bodywork_yaml_names_the_image_tagged_with_the_digest_of_its_build_inputs() -> None:
    image = bodywork_config()["pipeline"]["docker_image"]
    repository = image.rsplit(":", 1)[0]
    assert image == f"{repository}:{image_tag()}", (
        f"the image's build inputs changed: put `docker_image: {repository}:{image_tag()}` in bodywork.yaml "
        "(and the same image in deploy/kubernetes/cronjob-v1.yaml and deploy/kubernetes/batch-job.yaml)"
    )


def test_bodywork_yaml_image_is_in_an_ecr_repository_bodywork_can_parse() -> None:
    """Bodywork 3.0 splits the image name at `/` and refuses anything but two parts, so the
    repository name has no `/` of its own."""
    image = bodywork_config()["pipeline"]["docker_image"]
    assert re.fullmatch(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/[a-z0-9._-]+:[0-9a-f]{16}", image), image


# --- resources sized from the benchmarks -------------------------------------------------

def benchmark(path: Path) -> Dict[str, Any]:
    """A benchmark's results file; a missing file fails the test that needs it."""
    assert path.exists(), f"{path.relative_to(LOCAL.repo_root)} is missing: run the benchmark (see docs/benchmarks.md)"
    results = json.loads(path.read_text())
    assert isinstance(results, dict)
    return results


def memory_request_bytes(stage: str) -> int:
    return int(bodywork_config()["stages"][stage]["memory_request_mb"]) * BYTES_PER_REQUEST_MB


def test_train_memory_request_covers_the_peak_rss_of_a_hundred_times_week() -> None:
    figures = benchmark(TRAIN_BENCHMARK)
    assert figures["rows"] >= SIZING_WEEK_ROWS
    needed = MEMORY_MARGIN * figures["peak_rss_mb"] * BYTES_PER_BENCHMARK_MB
    assert memory_request_bytes("train_model") >= needed


def test_train_time_limit_covers_a_hundred_times_week_on_the_cores_the_stage_requests() -> None:
    """The node may give the stage no more than it requests: the run's CPU time spread over
    the requested cores, with the margin, must fit the limit. CPU time, not wall time: on the
    shared machine the benchmarks ran on, wall time measured the other programs' load as well
    (the load average is recorded next to each run; docs/benchmarks.md)."""
    figures = benchmark(TRAIN_BENCHMARK)
    assert figures["rows"] >= SIZING_WEEK_ROWS
    stage = bodywork_config()["stages"]["train_model"]
    limit = stage["batch"]["max_completion_time_seconds"]
    assert limit >= TIME_MARGIN * figures["cpu_seconds"] / float(stage["cpu_request"])


def test_train_sizing_run_trained_and_persisted_a_model() -> None:
    figures = benchmark(TRAIN_BENCHMARK)
    assert figures[f"rows_{figures['rows']}"]["exit_code"] == 0


def test_serve_memory_request_covers_the_rss_after_ten_thousand_requests() -> None:
    figures = benchmark(SERVE_BENCHMARK)
    needed = MEMORY_MARGIN * figures["rss_mb_after_10000_requests"] * BYTES_PER_BENCHMARK_MB
    assert memory_request_bytes("serve_model") >= needed


def test_serve_startup_time_covers_the_cold_start() -> None:
    figures = benchmark(SERVE_BENCHMARK)
    limit = bodywork_config()["stages"]["serve_model"]["service"]["max_startup_time_seconds"]
    assert limit >= TIME_MARGIN * figures["cold_start_seconds"]


def test_serve_drain_and_graceful_shutdown_end_inside_kubernetes_grace_period() -> None:
    """After SIGTERM the service serves on for its drain period, then gives requests in flight
    up to SERVE.graceful_shutdown_seconds; both must end before Kubernetes' default grace period of
    30 s ends in SIGKILL (Bodywork sets no other)."""
    args = bodywork_config()["stages"]["serve_model"]["args"]
    drain = float(args[args.index("--drain-seconds") + 1])
    assert drain > 0
    assert drain + SERVE.graceful_shutdown_seconds < SERVE.termination_grace_seconds


# --- the image's Python ------------------------------------------------------------------

def test_mypy_checks_the_pipeline_for_the_image_python() -> None:
    mypy = configparser.ConfigParser(interpolation=None)
    mypy.read(MYPY_INI)
    assert mypy["mypy"]["python_version"] == IMAGE_PYTHON


def test_static_analysis_checks_for_no_other_python_than_the_image_one() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(TOX_INI)
    assert re.findall(r"--python-version\s+(\S+)", tox["testenv:static"]["commands"]) == []


def test_tox_runs_every_environment_on_the_image_python() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(TOX_INI)
    basepythons = {
        section: tox[section]["basepython"] for section in tox.sections() if "basepython" in tox[section]
    }
    assert basepythons == {"testenv": f"python{IMAGE_PYTHON}"}


# --- CircleCI ----------------------------------------------------------------------------

def test_circleci_config_is_valid_against_circleci_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.circle-ci",
         str(CIRCLECI_CONFIG)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_circleci_config_is_version_2_1() -> None:
    assert str(circleci_config()["version"]) == "2.1"


def test_circleci_runs_static_analysis_then_tests_and_the_image_on_other_branches_than_master() -> None:
    config = circleci_config()
    jobs = workflow_jobs(config)
    on_branch = [name for name, settings in jobs.items() if runs_on_branch(settings, "feature-x")]
    assert on_branch == ["static-analysis", "tests", "image"]
    assert jobs["tests"]["requires"] == jobs["image"]["requires"] == ["static-analysis"]
    assert any("tox -e static" in c for c in job_commands(config, "static-analysis"))


# The cluster test builds and runs a Kubernetes node from Debian's packages as root: CircleCI's
# Docker executor can do neither, so it runs where `tox` runs whole (`.ci/run`), not there.
NOT_ON_CIRCLECI = {"cluster"}


def test_circleci_runs_every_tox_environment_on_branches() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(TOX_INI)
    envlist = {env.strip() for env in tox["tox"]["envlist"].split(",")} - NOT_ON_CIRCLECI
    config = circleci_config()
    run = set()
    for job in ("static-analysis", "tests", "image"):
        for command in job_commands(config, job):
            for envs in re.findall(r"tox -e ([\w,-]+)", command):
                run.update(envs.split(","))
    assert run == envlist


def test_circleci_image_job_makes_a_skip_a_failure_and_runs_as_root() -> None:
    (command,) = [c for c in job_commands(circleci_config(), "image") if "tox -e image" in c]
    assert ("sudo " in command, "CI=true" in command) == (True, True)


def test_circleci_on_master_pushes_the_image_then_deploys() -> None:
    config = circleci_config()
    jobs = workflow_jobs(config)
    on_master = [name for name, settings in jobs.items() if runs_on_branch(settings, "master")]
    assert on_master == ["image-push", "deploy"]
    assert jobs["deploy"]["requires"] == ["image-push"]


def test_circleci_pushes_the_image_only_when_its_tag_is_not_in_ecr() -> None:
    (command,) = [c for c in job_commands(circleci_config(), "image-push") if "docker push" in c]
    lookup, push = command.index("aws ecr describe-images"), command.index("docker push")
    assert lookup < command.index("exit 0") < push
    assert 'imageTag="$TAG"' in command and 'TAG=$(python3 image/tag.py)' in command


@pytest.mark.parametrize("job", ["image-push", "deploy"])
def test_circleci_refuses_a_bodywork_yaml_not_naming_the_ci_repository(job: str) -> None:
    """The first command of both master jobs checks bodywork.yaml's image against
    $ECR_REGISTRY/$ECR_REPOSITORY with this commit's tag (tests/image/test_tag.py tests it)."""
    check = 'python3 image/tag.py --check "$ECR_REGISTRY/$ECR_REPOSITORY"'
    commands = job_commands(circleci_config(), job)
    assert check in commands
    assert all("docker" not in c and "bodywork create" not in c for c in commands[:commands.index(check)])


def test_circleci_deploys_only_master_with_bodywork() -> None:
    config = circleci_config()
    deploy = [c for c in job_commands(config, "deploy") if "bodywork create deployment" in c]
    assert len(deploy) == 1
    assert option_value(shlex.split(deploy[0]), "--branch") == "master"


def test_circleci_installs_the_bodywork_version_the_bodywork_env_tests() -> None:
    tested = re.findall(r"bodywork==[\d.]+", TOX_INI.read_text())
    installed = re.findall(r"bodywork==[\d.]+", "\n".join(job_commands(circleci_config(), "deploy")))
    assert tested == ["bodywork==3.0.12"]
    assert installed == tested


# --- the weekly retraining ---------------------------------------------------------------

def test_deployment_cronjob_fires_once_a_week_after_the_friday_drop() -> None:
    schedule = option_value(deployment_command("create", "cronjob"), "--schedule")
    assert schedule is not None, "the deployment's cronjob command has no --schedule"
    assert schedule_problems(schedule) == []


def test_schedule_check_rejects_the_original_articles_schedule() -> None:
    """Friday 11:45 comes half a day before the drop: every run retrains on last week's data."""
    assert len(schedule_problems("45 11 * * 5")) == WEEKS_CHECKED


def test_deployment_cronjob_retries_a_failed_run() -> None:
    retries = option_value(deployment_command("create", "cronjob"), "--retries")
    assert retries is not None and int(retries) >= 1


def test_deployment_cronjob_deploys_the_master_branch() -> None:
    assert option_value(deployment_command("create", "cronjob"), "--branch") == "master"


# --- the documented commands -------------------------------------------------------------

def test_every_bodywork_command_in_the_docs_is_one_the_checks_read() -> None:
    """A `bodywork ...` command in any other code block would escape the checks made with
    Bodywork's own CLI (tests/bodywork/test_cli.py): it belongs in a `deployment-commands`
    block of docs/deployment.md, or it should refer to one."""
    checked = deployment_commands()
    unchecked = [
        (str(path.relative_to(LOCAL.repo_root)), " ".join(command))
        for path in documents()
        for _, text in fenced_blocks(path)
        for command in bodywork_commands(text)
        if command not in checked
    ]
    assert unchecked == []


# --- the files under deploy/ -------------------------------------------------------------

# A line of a Kubernetes object (`apiVersion: batch/v1`, `kind: Job`, at any indentation, as in
# a heredoc) and the key of a Prometheus scrape configuration.
K8S_API_VERSION = re.compile(r"^\s*apiVersion:\s*\S", re.MULTILINE)
K8S_KIND = re.compile(r"^\s*kind:\s*\S", re.MULTILINE)
SCRAPE_CONFIGS = re.compile(r"^\s*scrape_configs:", re.MULTILINE)
# A path under deploy/ as the docs name it (`deploy/kubernetes/batch-job.yaml`, `../deploy/monitoring`).
DEPLOY_PATH = re.compile(r"(?<![\w/-])(?:\.\./)?(deploy/(?:[\w./-]*[\w/])?)")


def is_manifest(text: str) -> bool:
    """Whether a code block holds a Kubernetes object (an `apiVersion:` and a `kind:` line, in a
    yaml block or inside a shell heredoc) or a Prometheus scrape configuration."""
    return bool(K8S_API_VERSION.search(text) and K8S_KIND.search(text)) or bool(SCRAPE_CONFIGS.search(text))


def manifest_blocks(path: Path) -> List[str]:
    """The info strings of the code blocks of a markdown file that hold a manifest."""
    return [" ".join(info) or "(no info string)" for info, text in fenced_blocks(path) if is_manifest(text)]


def deploy_files() -> List[Path]:
    """Every file under deploy/."""
    return sorted(path for path in DEPLOY.rglob("*") if path.is_file())


def kubernetes_files() -> List[Path]:
    """Every file under deploy/kubernetes/."""
    return sorted(path for path in KUBERNETES_DIR.rglob("*") if path.is_file())


def test_no_doc_holds_a_manifest() -> None:
    """The manifests live in deploy/, where the tests read them; a copy in a doc's code block
    would be read by nothing and drift from the file. The docs link to the file and show the
    command that applies it."""
    found = {str(path.relative_to(LOCAL.repo_root)): manifest_blocks(path) for path in documents()}
    assert {path: blocks for path, blocks in found.items() if blocks} == {}


def test_manifest_check_finds_manifests_in_yaml_blocks_heredocs_and_scrape_configs(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```yaml servicemonitor\napiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\n```\n\n"
        "```sh\nkubectl apply -f - <<EOF\napiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\nEOF\n```\n\n"
        "```yaml\nscrape_configs:\n  - job_name: x\n```\n\n"
        "```sh\nkubectl apply -f deploy/kubernetes/batch-job.yaml\nkubectl get jobs -o yaml | grep kind:\n```\n\n"
        "```text\nkind: ServiceMonitor, with no apiVersion line\n```\n"
    )
    assert manifest_blocks(doc) == ["yaml servicemonitor", "sh", "yaml"]


def test_deploy_kubernetes_holds_the_objects_the_docs_apply() -> None:
    names = {path.relative_to(KUBERNETES_DIR).as_posix() for path in kubernetes_files()}
    assert {CRONJOB_V1.name, BATCH_JOB.name, SERVICEMONITOR.name} <= names


@pytest.mark.parametrize("path", kubernetes_files(), ids=lambda path: path.name)
def test_every_kubernetes_file_is_a_kubernetes_object(path: Path) -> None:
    objects = [obj for obj in yaml.safe_load_all(path.read_text()) if obj is not None]
    assert objects, f"{path.relative_to(LOCAL.repo_root)} holds no object"
    for obj in objects:
        assert isinstance(obj, dict), f"{path.relative_to(LOCAL.repo_root)}: {obj!r} is not a mapping"
        assert isinstance(obj.get("apiVersion"), str) and isinstance(obj.get("kind"), str), (
            f"{path.relative_to(LOCAL.repo_root)}: an object without apiVersion or kind"
        )
        assert isinstance(obj.get("metadata", {}).get("name"), str), f"{path.relative_to(LOCAL.repo_root)}: no name"


def test_scrape_config_is_a_list_of_scrape_jobs() -> None:
    jobs = deploy_yaml(SCRAPE_CONFIG)["scrape_configs"]
    assert isinstance(jobs, list) and jobs and all(isinstance(job.get("job_name"), str) for job in jobs)


@pytest.mark.parametrize("path", deploy_files(), ids=lambda path: path.relative_to(DEPLOY).as_posix())
def test_every_file_under_deploy_is_named_by_a_doc(path: Path) -> None:
    """A file no document names is one nobody is told to apply, load or import."""
    name = path.relative_to(LOCAL.repo_root).as_posix()
    assert any(name in doc.read_text() for doc in documents()), f"no document names {name}"


def test_every_deploy_path_the_docs_name_exists() -> None:
    missing = [
        (str(doc.relative_to(LOCAL.repo_root)), match)
        for doc in documents()
        for match in DEPLOY_PATH.findall(doc.read_text())
        if not (LOCAL.repo_root / match).exists()
    ]
    assert missing == []


def test_deploy_path_pattern_finds_paths_as_the_docs_write_them() -> None:
    text = ("`deploy/kubernetes/batch-job.yaml`, [the file](../deploy/prometheus/scrape-config.yaml), "
            "`deploy/monitoring/`, deploy/. and no redeploy/x or my-deploy/y")
    assert DEPLOY_PATH.findall(text) == [
        "deploy/kubernetes/batch-job.yaml", "deploy/prometheus/scrape-config.yaml", "deploy/monitoring/", "deploy/",
    ]


# --- the bucket's lifecycle rule -----------------------------------------------------------

LIFECYCLE = DEPLOY / "s3" / "lifecycle.json"


def test_the_bucket_lifecycle_rule_aborts_incomplete_multipart_uploads_in_the_whole_bucket_within_a_day() -> None:
    rules = json.loads(LIFECYCLE.read_text())["Rules"]

    [rule] = [rule for rule in rules if "AbortIncompleteMultipartUpload" in rule]
    assert rule["Status"] == "Enabled"
    assert rule["Filter"] in ({}, {"Prefix": ""})  # every key: batch output may go anywhere it is allowed
    days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
    # Older than any run can be (the batch Job's deadline), and gone within a day.
    assert days == 1 and days * 86400 > yaml.safe_load(BATCH_JOB.read_text())["spec"]["activeDeadlineSeconds"]
    assert set(rule) <= {"ID", "Status", "Filter", "AbortIncompleteMultipartUpload"}  # it expires nothing else


def test_the_local_s3_accepts_the_bucket_lifecycle_rule_as_written(s3: Any, bucket: str) -> None:
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=json.loads(LIFECYCLE.read_text()))

    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


def test_the_batch_docs_and_the_deployment_docs_link_the_lifecycle_rule() -> None:
    for doc in ("batch-scoring.md", "deployment.md"):
        assert "](../deploy/s3/lifecycle.json)" in (LOCAL.repo_root / "docs" / doc).read_text(), doc
