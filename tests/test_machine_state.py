""".ci/machine-state.sh, the one definition of the state the suite leaves on a machine, and
.ci/reset-machine, which removes it again.

- Sourcing the include under `set -u` defines every variable docs/testing.md documents, with
  the defaults the docs give; it sets no shell option and prints nothing.
- `ttd_apt_install` (run against stand-ins for apt-get, dpkg-query and id, so that nothing is
  installed) installs only what is missing, updates old lists first, keeps standard output
  empty, blocks daemons while it installs, records what it installed and fails without
  `set -e`.
- The reset's dry run, with every path moved into a scratch folder, lists exactly the paths
  and packages there and changes nothing; with nothing there it has nothing to do.

The reset itself is never run for real here: the dry run and the refusal without root only.
"""
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Dict, List, Set

import pytest

from pipeline.settings import LOCAL
from tests.helpers import MACHINE_STATE, machine_state

RESET = LOCAL.repo_root / ".ci" / "reset-machine"
TESTING_DOC = LOCAL.repo_root / "docs" / "testing.md"
SECTION = "## Fresh-machine state and the reset"
# Stand-ins put first on PATH. Each logs its arguments (and DEBIAN_FRONTEND) to $FAKE_LOG.
FAKE_DPKG_QUERY = """#!/bin/bash
# dpkg-query -W -f='${Status}' PKG: installed if PKG is a line of $FAKE_DB
pkg=${!#}
if grep -qxF -- "$pkg" "$FAKE_DB" 2>/dev/null; then printf 'install ok installed'; else exit 1; fi
"""
FAKE_APT_GET = """#!/bin/bash
echo "apt-get $* DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-}" >> "$FAKE_LOG"
echo "Reading package lists... (apt-get's own output)"
[ "${FAKE_APT_FAIL:-0}" = 1 ] && exit 100
install=0
for arg in "$@"; do
  if [ "$install" = 1 ] && [ "${arg#-}" = "$arg" ]; then
    [ -x "$TTD_POLICY_RC_D" ] && echo "policy-rc.d present while installing $arg" >> "$FAKE_LOG"
    echo "$arg" >> "$FAKE_DB"
    echo "Setting up $arg"
  fi
  [ "$arg" = install ] && install=1
done
exit 0
"""
FAKE_ANY = """#!/bin/bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
exit 0
"""


def run_bash(script: str, env: Dict[str, str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(["bash", "-c", script, "bash", str(MACHINE_STATE)], env=env, capture_output=True,
                          text=True, timeout=120)


def clean_environment(**extra: str) -> Dict[str, str]:
    """This process's environment without any TTD_ variable, pip's cache folder or apt's
    front end, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TTD_") and k not in ("PIP_CACHE_DIR", "XDG_CACHE_HOME", "CI", "DEBIAN_FRONTEND")}
    env.update(extra)
    return env


def documented() -> Dict[str, List[str]]:
    """docs/testing.md's table of the include: each variable with the code spans of its second
    column (a path, or the packages of a list)."""
    text = TESTING_DOC.read_text()
    assert SECTION in text, f"docs/testing.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"^\| `TTD_\w+` \|", line)]
    found = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        found[cells[0].strip("`")] = re.findall(r"`([^`]+)`", cells[1])
    return found


def include_values(names: List[str], env: Dict[str, str]) -> Dict[str, List[str]]:
    """Each variable's value (a list's elements) after sourcing the include under `set -u`."""
    script = ('set -u; source "$1"; shift\n'
              'for name; do declare -n value=$name; printf "%s" "$name"; printf "\\t%s" "${value[@]}"; echo; '
              'unset -n value; done')
    done = subprocess.run(["bash", "-c", script, "bash", str(MACHINE_STATE), *names], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    values = {}
    for line in done.stdout.splitlines():
        name, *items = line.split("\t")
        values[name] = items
    return values


def write_tool(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake_tools(tmp_path: Path) -> Dict[str, str]:
    """An environment whose apt-get, dpkg-query, podman and id are the stand-ins above (id says
    root), with their log and the installed-packages list in the scratch folder."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    write_tool(bin_dir, "apt-get", FAKE_APT_GET)
    write_tool(bin_dir, "dpkg-query", FAKE_DPKG_QUERY)
    write_tool(bin_dir, "podman", FAKE_ANY)
    write_tool(bin_dir, "id", "#!/bin/bash\necho 0\n")
    (tmp_path / "installed").write_text("bash\n")
    return clean_environment(
        PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "tool.log"),
        FAKE_DB=str(tmp_path / "installed"), TTD_PACKAGE_RECORD=str(tmp_path / "state" / "record"),
        TTD_POLICY_RC_D=str(tmp_path / "policy-rc.d"), TTD_APT_LISTS=str(tmp_path / "lists"),
    )


# --- the include -----------------------------------------------------------------------------

def test_the_docs_list_exactly_the_variables_the_include_defines() -> None:
    kinds = include_values(["TTD_STATE_PATH_VARS", "TTD_PACKAGE_LIST_VARS"], clean_environment())

    assert set(documented()) == set(kinds["TTD_STATE_PATH_VARS"]) | set(kinds["TTD_PACKAGE_LIST_VARS"])


def test_sourcing_under_set_u_defines_every_documented_variable_as_documented() -> None:
    docs = documented()

    values = include_values(sorted(docs), clean_environment())

    for name, expected in docs.items():
        assert values[name] and all(values[name]), f"{name} is empty"
        assert values[name] == expected, f"{name}: the include says {values[name]}, docs/testing.md {expected}"


def test_sourcing_sets_no_shell_option_and_prints_nothing() -> None:
    script = ('before=$(set +o; shopt -p); source "$1"; after=$(set +o; shopt -p); '
              '[ "$before" = "$after" ] || { echo "options changed" >&2; exit 1; }')
    for options in ("", "set -euo pipefail; "):
        done = run_bash(options + script, clean_environment())

        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_every_path_follows_its_environment_variable(tmp_path: Path) -> None:
    names = list(include_values(["TTD_STATE_PATH_VARS"], clean_environment())["TTD_STATE_PATH_VARS"])
    moved = {name: str(tmp_path / name) for name in names}
    moved["TTD_CONTAINERS_ETC"] = str(tmp_path / "etc-containers")

    values = include_values(names, clean_environment(**moved))

    for name in names:
        if name.startswith("TTD_CONTAINERS_") and name.endswith(("_CONF", "_NETWORKS")):
            assert values[name][0].startswith(moved["TTD_CONTAINERS_ETC"] + "/"), name
        else:
            assert values[name] == [moved[name]], name


def test_registry_data_lives_in_the_state_folder_unless_moved(tmp_path: Path) -> None:
    values = include_values(["TTD_K8S_REGISTRY_DATA"], clean_environment(TTD_K8S_STATE=str(tmp_path)))

    assert values["TTD_K8S_REGISTRY_DATA"] == [f"{tmp_path}/registry/data"]


def test_the_python_helper_reads_the_include() -> None:
    paths = machine_state()

    assert set(paths) == set(include_values(["TTD_STATE_PATH_VARS"], dict(os.environ))["TTD_STATE_PATH_VARS"])
    assert paths["TTD_K8S_STATE"] == include_values(["TTD_K8S_STATE"], dict(os.environ))["TTD_K8S_STATE"][0]


# --- ttd_apt_install ---------------------------------------------------------------------------

def test_apt_install_installs_only_the_missing_packages_and_records_them(fake_tools: Dict[str, str],
                                                                         tmp_path: Path) -> None:
    done = run_bash('source "$1" && ttd_apt_install bash ttd-fake-a ttd-fake-b', fake_tools)

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "Setting up ttd-fake-a" in done.stderr and "Reading package lists" in done.stderr
    calls = (tmp_path / "tool.log").read_text().splitlines()
    apt_calls = [call for call in calls if call.startswith("apt-get")]
    # the lists folder is empty: update first; then only the two missing packages
    assert apt_calls == [
        "apt-get -o DPkg::Lock::Timeout=900 update DEBIAN_FRONTEND=noninteractive",
        "apt-get -o DPkg::Lock::Timeout=900 install -y --no-install-recommends ttd-fake-a ttd-fake-b"
        " DEBIAN_FRONTEND=noninteractive",
    ]
    assert "policy-rc.d present while installing ttd-fake-a" in calls
    assert not Path(fake_tools["TTD_POLICY_RC_D"]).exists()
    assert Path(fake_tools["TTD_PACKAGE_RECORD"]).read_text() == "ttd-fake-a\nttd-fake-b\n"


def test_apt_install_skips_update_with_fresh_lists_and_does_nothing_when_all_are_there(
        fake_tools: Dict[str, str], tmp_path: Path) -> None:
    lists = Path(fake_tools["TTD_APT_LISTS"])
    lists.mkdir()
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4").write_text("")

    first = run_bash('source "$1" && ttd_apt_install ttd-fake-a', fake_tools)
    second = run_bash('source "$1" && ttd_apt_install ttd-fake-a bash', fake_tools)

    assert (first.returncode, second.returncode, first.stdout, second.stdout) == (0, 0, "", "")
    apt_calls = [c for c in (tmp_path / "tool.log").read_text().splitlines() if c.startswith("apt-get")]
    assert [call.split()[3] for call in apt_calls] == ["install"]
    assert "already installed: ttd-fake-a bash" in second.stderr
    assert Path(fake_tools["TTD_PACKAGE_RECORD"]).read_text() == "ttd-fake-a\n"


def test_apt_install_fails_without_set_e_and_cleans_up(fake_tools: Dict[str, str]) -> None:
    done = run_bash('source "$1"; ttd_apt_install ttd-fake-a; echo "returned $?"',
                    {**fake_tools, "FAKE_APT_FAIL": "1"})

    assert done.stdout.strip().splitlines()[-1] != "returned 0"
    assert "ERROR" in done.stderr
    assert not Path(fake_tools["TTD_POLICY_RC_D"]).exists()
    assert not Path(fake_tools["TTD_PACKAGE_RECORD"]).exists()


def test_apt_install_needs_root_for_what_is_missing(fake_tools: Dict[str, str], tmp_path: Path) -> None:
    write_tool(tmp_path / "fake-bin", "id", "#!/bin/bash\necho 1000\n")

    done = run_bash('source "$1" && ttd_apt_install bash ttd-fake-a', fake_tools)

    assert done.returncode != 0
    assert "installing ttd-fake-a needs root" in done.stderr
    assert not (tmp_path / "tool.log").exists()


# --- the reset ----------------------------------------------------------------------------------

def tree(root: Path) -> Set[str]:
    """Every path under `root`, with its contents for files."""
    return {f"{p.relative_to(root)}:{p.read_text() if p.is_file() else ''}" for p in root.rglob("*")}


def reset(env: Dict[str, str], *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([str(RESET), *args], env=env, capture_output=True, text=True, timeout=120)


def said(stderr: str, pattern: str) -> List[str]:
    return [m.group(1) for m in re.finditer(pattern, stderr, re.MULTILINE)]


@pytest.fixture
def used_machine(tmp_path: Path, fake_tools: Dict[str, str]) -> Dict[str, str]:
    """Every path of the include moved into the scratch folder, with what a run of the suite
    leaves there: the caches, the cluster's state, podman's storage, setup_engine.sh's files (one
    replacing a packaged original), a policy-rc.d left behind, the deb-src entry, a record of
    packages (one of them since removed), a checkout's .tox, pip's cache."""
    root = tmp_path / "machine"
    paths = {
        "TTD_K8S_CACHE": root / "cache-k8s", "TTD_K8S_STATE": root / "lib-k8s", "TTD_K8S_RUN": root / "run-k8s",
        "TTD_IMAGE_CACHE": root / "cache-image", "TTD_CONTAINERS_STORAGE": root / "containers-storage",
        "TTD_CONTAINERS_RUNROOT": root / "containers-run", "TTD_CONTAINERS_ETC": root / "etc-containers",
        "TTD_CONTAINERS_CACHE": root / "containers-cache",
        "TTD_DEBSRC_FILE": root / "ttd-debsrc.sources", "TTD_PACKAGE_RECORD": root / "lib-ttd" / "installed-packages",
        "TTD_POLICY_RC_D": root / "policy-rc.d", "PIP_CACHE_DIR": root / "pip-cache",
    }
    for name in ("TTD_K8S_CACHE", "TTD_IMAGE_CACHE", "TTD_CONTAINERS_STORAGE", "PIP_CACHE_DIR"):
        (paths[name] / "something").mkdir(parents=True)
    (paths["TTD_K8S_STATE"] / "registry" / "data").mkdir(parents=True)
    etc = paths["TTD_CONTAINERS_ETC"]
    (etc / "registries.conf.d").mkdir(parents=True)
    (etc / "networks").mkdir()
    (etc / "networks" / "netavark.lock").write_text("")
    (paths["TTD_CONTAINERS_CACHE"] / "blob-info-cache-v1.boltdb").parent.mkdir(parents=True)
    (etc / "containers.conf").write_text("# written by setup_engine.sh\n")
    (etc / "storage.conf").write_text("# written by setup_engine.sh\n")
    (etc / "storage.conf.orig").write_text("# the packaged one\n")
    (etc / "registries.conf.d" / "99-local.conf").write_text("# someone else's\n")
    paths["TTD_POLICY_RC_D"].write_text("#!/bin/sh\n# written by ttd_apt_install: ...\nexit 101\n")
    paths["TTD_DEBSRC_FILE"].write_text("Types: deb-src\n")
    paths["TTD_PACKAGE_RECORD"].parent.mkdir()
    paths["TTD_PACKAGE_RECORD"].write_text("ttd-fake-a\n\nttd-fake-gone\nttd-fake-b\nttd-fake-a\n")
    Path(fake_tools["FAKE_DB"]).write_text("bash\nttd-fake-a\nttd-fake-b\n")
    (root / "checkout" / ".tox" / "static").mkdir(parents=True)
    return {**fake_tools, **{name: str(path) for name, path in paths.items()}, "HOME": str(root / "home")}


def test_reset_dry_run_lists_exactly_what_is_there_and_changes_nothing(
        used_machine: Dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "machine"
    before = tree(root)

    done = reset(used_machine, "--dry-run", "--checkout", str(root / "checkout"))

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert set(said(done.stderr, r"would remove (\S+)")) == {
        str(root / name) for name in (
            "cache-k8s", "lib-k8s", "cache-image", "containers-storage", "containers-cache", "etc-containers/networks",
            "etc-containers/containers.conf",
            "policy-rc.d", "ttd-debsrc.sources", "lib-ttd/installed-packages", "checkout/.tox", "pip-cache")
    }
    assert said(done.stderr, r"would restore (\S+) from") == [str(root / "etc-containers" / "storage.conf")]
    assert said(done.stderr, r"would purge: (.+?) \(") == ["ttd-fake-a ttd-fake-b"]
    assert said(done.stderr, r"recorded but not installed, nothing to purge: (.+)$") == ["ttd-fake-gone"]
    assert len(said(done.stderr, r"(would stop the cluster: tests/cluster/cluster\.sh down)")) == 1
    assert len(said(done.stderr, r"(would reset podman's storage)")) == 1
    assert "left alone" in done.stderr and "99-local.conf" in done.stderr
    assert tree(root) == before
    assert not (tmp_path / "tool.log").exists(), "the dry run ran apt-get or podman"


def fresh_machine(fake_tools: Dict[str, str], absent: Path) -> Dict[str, str]:
    """Every path of the include, and pip's cache, moved to where nothing is."""
    moved = ("TTD_K8S_CACHE", "TTD_K8S_STATE", "TTD_K8S_RUN", "TTD_IMAGE_CACHE", "TTD_CONTAINERS_STORAGE",
             "TTD_CONTAINERS_RUNROOT", "TTD_CONTAINERS_CACHE", "TTD_CONTAINERS_ETC", "TTD_DEBSRC_FILE",
             "TTD_PACKAGE_RECORD", "TTD_POLICY_RC_D", "PIP_CACHE_DIR", "HOME")
    return {**fake_tools, **{name: str(absent / name) for name in moved}}


def test_reset_dry_run_with_nothing_there_has_nothing_to_do(fake_tools: Dict[str, str], tmp_path: Path) -> None:
    absent = tmp_path / "absent"

    done = reset(fresh_machine(fake_tools, absent), "--dry-run", "--checkout", str(absent / "checkout"))

    assert done.returncode == 0, done.stderr
    assert "would " not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("nothing to do: none of the suite's state is on this machine")
    assert not absent.exists()


def test_reset_without_root_refuses_unless_it_is_a_dry_run(fake_tools: Dict[str, str], tmp_path: Path) -> None:
    # An `id` that says "not root", and nothing at the (moved) paths: even if the refusal
    # failed, this run would find nothing to change.
    write_tool(tmp_path / "fake-bin", "id", "#!/bin/bash\necho 1000\n")

    done = reset(fresh_machine(fake_tools, tmp_path / "absent"))

    assert done.returncode != 0
    assert "needs root" in done.stderr and "--dry-run" in done.stderr


def test_reset_refuses_an_unknown_argument() -> None:
    done = reset(clean_environment(), "--dryrun")

    assert done.returncode == 2
    assert "unknown argument: --dryrun" in done.stderr


def test_reset_leaves_alone_a_networks_folder_that_defines_a_network(
        used_machine: Dict[str, str], tmp_path: Path) -> None:
    networks = tmp_path / "machine" / "etc-containers" / "networks"
    (networks / "someones.json").write_text("{}")

    done = reset(used_machine, "--dry-run")

    assert done.returncode == 0, done.stderr
    assert f"{networks}: defines networks, left alone" in done.stderr
    assert f"would remove {networks}" not in done.stderr
