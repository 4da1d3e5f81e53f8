"""Run Bodywork's CLI, forwarding SIGTERM and SIGINT to the processes it starts.

Bodywork 3.0.12's stage runner (bodywork.stage_execution.run_stage) runs git, pip and then the
stage itself (`python STAGE.py ARGS`) with subprocess.run and installs no signal handler. So a
SIGTERM sent to the runner either kills it at once (default action), leaving the stage to be
SIGKILLed when the container's init exits, or, when the runner is PID 1, is ignored, and the
pod ends only at the grace period's SIGKILL. Here the runner catches SIGTERM/SIGINT and sends
the same signal to each child process still running; it then goes on waiting, so that when the
stage finishes its graceful shutdown and exits 0, Bodywork reports success and exits 0 (and a
stage that fails or dies of the signal makes Bodywork exit 1, as before).

It also lets Bodywork deploy an image from a registry other than Docker Hub. Before a
deployment, Bodywork 3.0.12's workflow (run_workflow) looks the pipeline's image up on Docker
Hub and refuses any image it does not find there, so an image in the team's ECR repository
could never be deployed. For an image whose name starts with a registry host (a first path
component with a `.` or a `:`, or `localhost`), that lookup is skipped with a message:
CI checks the image is in ECR before it deploys, and the cluster checks it when it pulls.
Images on Docker Hub are still looked up as before.
"""
import signal
import subprocess
import sys

_children = []


def _forward(signum, frame):
    for child in list(_children):
        if child.returncode is None:
            try:
                child.send_signal(signum)
            except OSError:
                pass


# Installed before anything else is imported: importing Bodywork's CLI takes about a second.
signal.signal(signal.SIGTERM, _forward)
signal.signal(signal.SIGINT, _forward)


class _TrackedPopen(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _children.append(self)

    def _forget(self):
        try:
            _children.remove(self)
        except ValueError:
            pass

    def wait(self, timeout=None):
        code = super().wait(timeout)
        self._forget()
        return code


# subprocess.run looks Popen up in the subprocess module at call time.
subprocess.Popen = _TrackedPopen

import bodywork.workflow_execution as _workflow  # noqa: E402
from bodywork.cli.cli import cli_app  # noqa: E402

_image_exists_on_dockerhub = _workflow.image_exists_on_dockerhub


def image_exists(repo_name, tag):
    """Bodywork's Docker Hub lookup for Docker Hub images; True for another registry's."""
    registry = repo_name.split("/", 1)[0]
    if "." in registry or ":" in registry or registry == "localhost":
        print(f"{repo_name}:{tag} is not on Docker Hub but in the registry {registry}: "
              f"not looked up on Docker Hub (the cluster pulls it from {registry})", flush=True)
        return True
    return _image_exists_on_dockerhub(repo_name, tag)


# run_workflow looks the function up in its module's globals at call time.
_workflow.image_exists_on_dockerhub = image_exists

if __name__ == "__main__":
    sys.argv[0] = "bodywork"
    sys.exit(cli_app())
