"""Running the service process: the checks before serving, and the port it opens."""
import asyncio
import socket
import sys
from typing import Any, List

import pytest
import sklearn
from fastapi import FastAPI

from pipeline.artefact.model import Model
from pipeline.serve.lifecycle import (
    FAST_STACK,
    PURE_PYTHON_STACK,
    ModelCompatibilityError,
    ServerStack,
    available_stack,
    check_library_versions,
    open_port,
    uvicorn_config,
    warm_up,
)
from pipeline.settings import LOCAL
from tests.helpers import free_port


# --- start-up checks --------------------------------------------------------------

def test_model_from_another_scikit_learn_version_is_refused(served_model: Model) -> None:
    served_model.library_versions["scikit-learn"] = "1.5.2"

    with pytest.raises(ModelCompatibilityError, match=r"trained with scikit-learn 1\.5\.2, but scikit-learn "):
        check_library_versions(served_model)


def test_model_from_the_installed_scikit_learn_version_is_accepted(served_model: Model) -> None:
    assert served_model.library_versions["scikit-learn"] == sklearn.__version__

    check_library_versions(served_model)  # raises if refused


def test_warm_up_refuses_a_model_whose_tree_walk_disagrees_with_its_estimator(served_model: Model) -> None:
    served_model.calibration = None  # served as the tree: the single endpoint walks it
    served_model.predict_one("SKU001", 0.0)  # builds the tree walk's tables
    walker = served_model._walker
    assert walker is not None
    walker.value = [v + 0.5 for v in walker.value]

    with pytest.raises(ModelCompatibilityError, match="fast prediction path disagrees with the estimator"):
        warm_up(served_model)


def test_warm_up_accepts_a_faithful_model(served_model: Model) -> None:
    served_model.calibration = None
    warm_up(served_model)  # raises if the paths disagree

    assert served_model._walker is not None


def test_warm_up_accepts_a_faithful_calibrated_model(served_model: Model) -> None:
    assert served_model.calibration is not None

    warm_up(served_model)  # raises if the binary search and numpy's disagree


def test_warm_up_refuses_a_model_whose_binary_search_disagrees_with_the_vectorised_one(served_model: Model) -> None:
    assert served_model.calibration is not None
    steps = served_model.calibration.per_product["SKU002"]
    # The single endpoint's search reads the breakpoints shifted, the batch's the originals.
    shifted = type(steps)(tuple(t + 0.25 for t in steps.thresholds), steps.values)
    served_model.calibration.per_product["SKU002"] = type(steps)(steps.thresholds, steps.values)
    object.__setattr__(served_model.calibration.per_product["SKU002"], "at", shifted.at)

    with pytest.raises(ModelCompatibilityError, match="disagrees with the estimator for SKU002"):
        warm_up(served_model)


# --- the port

def test_connections_to_the_service_port_have_nagles_algorithm_off() -> None:
    # With Nagle on, each response waits for the client's delayed ACK: about 40 ms a request.
    sock = open_port(LOCAL.loopback_host, free_port())

    async def nodelay_of_an_accepted_connection() -> int:
        accepted: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                conn = transport.get_extra_info("socket")
                accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, timeout=10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0


# --- the server stack

def test_the_fast_stack_is_uvloop_and_httptools_when_installed() -> None:
    assert available_stack(FAST_STACK) == ServerStack(loop="uvloop", http="httptools")


@pytest.mark.parametrize("missing, expected", [
    (["uvloop"], ServerStack(loop="asyncio", http="httptools")),
    (["httptools"], ServerStack(loop="uvloop", http="h11")),
    (["uvloop", "httptools"], PURE_PYTHON_STACK),
])
def test_each_missing_part_of_the_fast_stack_falls_back_to_the_pure_python_one(
    missing: List[str], expected: ServerStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError

    assert available_stack(FAST_STACK) == expected


def test_the_pure_python_stack_is_asyncio_and_h11() -> None:
    assert available_stack(PURE_PYTHON_STACK) == ServerStack(loop="asyncio", http="h11")


@pytest.mark.parametrize("stack", [FAST_STACK, PURE_PYTHON_STACK])
def test_uvicorn_is_configured_with_the_stack_and_without_its_own_access_log(stack: ServerStack) -> None:
    config = uvicorn_config(FastAPI(), stack)

    assert (config.loop, config.http.__name__, config.access_log) == (
        stack.loop, {"httptools": "LimitedHttpToolsProtocol", "h11": "LimitedH11Protocol"}[stack.http], False)
