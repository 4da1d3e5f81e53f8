"""Train-stage benchmark: our grid search against a plain serial `GridSearchCV`, where a pool
of worker processes starts paying for itself, and the real train stage's time and peak memory.

Three parts, each optional:

- comparison (`--rows`): for each week size, on the same training split and grid, times the
  plain serial baseline as the issue writes it, `GridSearchCV(DecisionTreeRegressor(), grid,
  cv=5, scoring="r2")`, the same with `DecisionTreeRegressor(random_state=42)`, and our
  `tune_hyperparameters` with n_jobs=1, n_jobs=2 and the default; reports seconds (median of
  the runs), speed-up and whether the chosen hyper-parameters are the same.
- crossover (`--crossover-rows`): ours with n_jobs=1 against n_jobs=2 by week size, to set
  `TRAIN.parallel_min_train_rows`.
- memory (`--memory-rows`): the real train stage CLI, run as Bodywork runs it
  (`python train_model.py BUCKET 0.9 0.8` from `pipeline/`), as a subprocess against a local
  S3 server (moto) on 127.0.0.1 holding one week of that size; wall time from start to exit
  and the peak of the summed RSS of the CLI and all its descendants (the worker processes),
  sampled from /proc every 50 ms.

Every parallel timing starts a fresh pool of worker processes, as each run of the train stage
does, so the pool's start-up cost is inside the figure. Results are printed as tables and,
with `--json PATH`, merged into that file (each part keeps the command that produced it).

Usage, from the repository root (on a shared machine, wrap it in `flock LOCKFILE ...` so no
two benchmarks overlap):

    PYTHONPATH=. python benchmarks/train_benchmark.py --rows 1000 10000 \
        --crossover-rows 1000 2000 3000 5000 10000 --memory-rows 10000 \
        --json benchmarks/results/train.json
"""
import argparse
import functools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import joblib  # type: ignore[import-untyped]
import numpy as np
import sklearn
from sklearn.model_selection import GridSearchCV, ParameterGrid
from sklearn.tree import DecisionTreeRegressor

from benchmarks import use_throwaway_signing_key
from pipeline.local.synthetic import generate_orders
from pipeline.settings import ENVIRONMENT, LOCAL, TRAIN
from pipeline.train.steps import prepare_data
from pipeline.train.tuning import (
    HYPERPARAM_GRID,
    _equivalence_key,
    choose_n_jobs,
    tune_hyperparameters,
)

# Weeks at least this big are timed `--large-repeats` times rather than `--repeats`: one
# serial baseline run on a 10,000-row week takes minutes.
LARGE_ROWS = 5000
SAMPLE_INTERVAL_S = 0.05
# The week the deployment is sized for: a hundred times the usual (bodywork.yaml's train
# resources and time limit are checked against this run's figures).
SIZING_ROWS = 100 * LOCAL.synthetic_rows_per_week
# Thresholds the stage runs with here: any week of the synthetic data passes them.
STAGE_THRESHOLDS = ("0.9", "0.8")
MB = 1024 * 1024


class Timing(NamedTuple):
    """One method timed on one week: seconds of each run and the parameters each run chose."""

    method: str
    n_jobs: Optional[int]
    seconds: List[float]
    best_params: List[Dict[str, Any]]
    mean_scores: List[np.ndarray]

    @property
    def median(self) -> float:
        return float(statistics.median(self.seconds))


def main(argv: Sequence[str]) -> int:
    """Run the parts asked for, print their tables, and merge the figures into `--json`.

    Returns:
        The exit code: 0, or 1 if a train stage run failed.
    """
    args = parse_args(argv)
    command = "PYTHONPATH=. python benchmarks/train_benchmark.py " + " ".join(
        shlex.quote(a) for a in argv
    )
    print(f"$ {command}")
    print(
        f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, scikit-learn {sklearn.__version__}, joblib {joblib.__version__}, "
        f"numpy {np.__version__}, data seed {args.seed}, "
        f"load average {_load_average()}"
    )
    results: Dict[str, Any] = {}
    failed = False
    if args.rows:
        comparison = [
            compare(rows, args.seed, args.repeats if rows < LARGE_ROWS else args.large_repeats,
                    args.skip_baseline)
            for rows in args.rows
        ]
        results["comparison"] = {"command": command, "weeks": comparison}
    if args.crossover_rows:
        results["crossover"] = {"command": command, **crossover(args.crossover_rows, args.seed, args.repeats)}
    if args.memory_rows:
        print("\n== The real train stage, default parallelism, peak RSS of the process tree ==")
        for rows in args.memory_rows:
            run = measure_train_stage(rows, args.seed)
            run["command"] = command
            failed = failed or run["exit_code"] != 0
            results[f"rows_{rows}"] = run
            if rows == SIZING_ROWS:
                # The figures the train stage's time limit and memory request are sized from.
                results.update(
                    {k: run[k] for k in ("rows", "seconds", "peak_rss_mb", "cpu_seconds", "command")}
                )
    print(f"\nload average at the end: {_load_average()}")
    if args.json:
        merge_json(args.json, results)
        print(f"\nfigures merged into {args.json}")
    return 1 if failed else 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1000, 10000],
                        help="week sizes for the comparison with GridSearchCV (none: skip it)")
    parser.add_argument("--repeats", type=int, default=5,
                        help=f"runs per method for weeks under {LARGE_ROWS} rows (median reported)")
    parser.add_argument("--large-repeats", type=int, default=1,
                        help=f"runs per method for weeks of {LARGE_ROWS} rows or more")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="time only ours, not the two GridSearchCV baselines")
    parser.add_argument("--crossover-rows", type=int, nargs="*", default=[],
                        help="week sizes at which to time ours with n_jobs=1 against n_jobs=2")
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[10000],
                        help="week sizes to run the real train stage CLI on (none: skip it)")
    parser.add_argument("--seed", type=int, default=42, help="seed of generate_orders")
    parser.add_argument("--json", type=Path, default=None, help="merge the figures into this file")
    args = parser.parse_args(list(argv))
    if args.repeats < 1 or args.large_repeats < 1:
        parser.error("--repeats and --large-repeats must be at least 1")
    return args


def compare(rows: int, seed: int, repeats: int, skip_baseline: bool) -> Dict[str, Any]:
    """Time the baselines and ours on one week and print the table.

    Returns:
        The week's figures, as stored in the JSON file.
    """
    data = prepare_data(generate_orders(rows, seed))
    X, y = data.X_train, data.y_train
    auto = choose_n_jobs(len(y))
    methods: List[Tuple[str, Optional[int], Callable[[], Tuple[Dict[str, Any], np.ndarray]]]] = []
    if not skip_baseline:
        methods.append(("GridSearchCV(DecisionTreeRegressor())", None, lambda: _baseline(X, y, None)))
        methods.append(
            (f"GridSearchCV(DecisionTreeRegressor(random_state={TRAIN.random_state}))", None,
             lambda: _baseline(X, y, TRAIN.random_state))
        )
    ours = ((1, "ours, n_jobs=1"), (2, "ours, n_jobs=2"), (None, f"ours, default (n_jobs={auto})"))
    for n_jobs, label in ours:
        methods.append((label, n_jobs, functools.partial(_ours, X, y, n_jobs)))
    timings = [Timing(label, n_jobs, [], [], []) for label, n_jobs, _ in methods]
    # Interleaved runs, so a slow spell on the machine hits every method alike.
    for _ in range(repeats):
        for (_, _, run), timing in zip(methods, timings):
            _fresh_worker_pool()
            started = time.perf_counter()
            best, scores = run()
            timing.seconds.append(time.perf_counter() - started)
            timing.best_params.append(best)
            timing.mean_scores.append(scores)
    return _report_comparison(rows, len(y), repeats, timings, skip_baseline)


def crossover(rows_list: Sequence[int], seed: int, repeats: int) -> Dict[str, Any]:
    """Time ours with one process against two by week size, and print where two win.

    Returns:
        The figures and the smallest training size from which two processes were faster at
        every measured size (None if they never were).
    """
    print(f"\n== Parallelism crossover: ours, n_jobs=1 against n_jobs=2 (median of {repeats}) ==")
    print(f"{'week rows':>9} {'train rows':>10} {'n_jobs=1 s':>10} {'n_jobs=2 s':>10} {'2 vs 1':>7}")
    points: List[Dict[str, Any]] = []
    for rows in rows_list:
        data = prepare_data(generate_orders(rows, seed))
        seconds: Dict[int, List[float]] = {1: [], 2: []}
        for _ in range(repeats):
            for n_jobs in (1, 2):
                _fresh_worker_pool()
                started = time.perf_counter()
                tune_hyperparameters(data.X_train, data.y_train, HYPERPARAM_GRID, n_jobs)
                seconds[n_jobs].append(time.perf_counter() - started)
        serial, parallel = statistics.median(seconds[1]), statistics.median(seconds[2])
        points.append({
            "rows": rows, "train_rows": len(data.y_train),
            "n_jobs_1_seconds": seconds[1], "n_jobs_2_seconds": seconds[2],
            "n_jobs_1_median": serial, "n_jobs_2_median": parallel,
        })
        print(
            f"{rows:>9} {len(data.y_train):>10} {serial:>10.2f} {parallel:>10.2f} "
            f"{serial / parallel:>6.2f}x"
        )
    crossover_rows: Optional[int] = None
    for point in reversed(points):
        if point["n_jobs_2_median"] >= point["n_jobs_1_median"]:
            break
        crossover_rows = point["train_rows"]
    print(
        f"two processes faster from {crossover_rows} training rows on (at every measured size); "
        f"TRAIN.parallel_min_train_rows is {TRAIN.parallel_min_train_rows}"
        if crossover_rows is not None
        else f"two processes were not faster at the largest size; TRAIN.parallel_min_train_rows is "
        f"{TRAIN.parallel_min_train_rows}"
    )
    return {"repeats": repeats, "points": points, "parallel_faster_from_train_rows": crossover_rows,
            "parallel_min_train_rows": TRAIN.parallel_min_train_rows}


def measure_train_stage(rows: int, seed: int) -> Dict[str, Any]:
    """Run the real train stage on one week in a local S3 server; time it and sample its memory.

    Returns:
        rows, seconds (start to exit), peak_rss_mb (summed over the process tree),
        peak_processes, largest_process_rss_mb, cpu_seconds, exit_code, the stage's command
        and its grid-search log lines.
    """
    from pipeline.local.local_s3 import LocalS3
    from pipeline.storage.client import s3_client
    from pipeline.storage.datasets import put_dataset

    use_throwaway_signing_key()
    server = LocalS3().start()
    try:
        server.point_environment_here()
        aws = server.environment()
        client = s3_client()
        bucket = server.create_bucket(f"ttd-bench-{rows}")
        put_dataset(bucket, generate_orders(rows, seed), LOCAL.synthetic_first_drop, client)
        stage = ["train_model.py", bucket, *STAGE_THRESHOLDS]
        env = {**os.environ, **aws, ENVIRONMENT.python_path: str(LOCAL.repo_root)}
        load_before = _load_average()
        with tempfile.TemporaryFile(mode="w+") as output:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, *stage], cwd=LOCAL.repo_root / "pipeline", env=env,
                stdout=output, stderr=subprocess.STDOUT,
            )
            peak_bytes, peak_processes = 0, 0
            high_water: Dict[int, int] = {}
            while process.poll() is None:
                sample = tree_memory(process.pid)
                peak_bytes = max(peak_bytes, sum(rss for rss, _ in sample.values()))
                peak_processes = max(peak_processes, len(sample))
                for pid, (_, hwm) in sample.items():
                    high_water[pid] = max(high_water.get(pid, 0), hwm)
                time.sleep(SAMPLE_INTERVAL_S)
            seconds = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            output.seek(0)
            log_lines = output.read().splitlines()
    finally:
        server.stop()
    run: Dict[str, Any] = {
        "rows": rows,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_bytes / MB, 1),
        "peak_processes": peak_processes,
        # Each process's own peak (VmHWM) as last seen, summed: an upper bound that also
        # catches a spike shorter than the sampling interval.
        "sum_of_process_peaks_mb": round(sum(high_water.values()) / MB, 1),
        "largest_process_peak_mb": round(max(high_water.values(), default=0) / MB, 1),
        "cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
        ),
        "exit_code": process.returncode,
        # The machine's load averages (1, 5, 15 min; 2 cores) before and after the run: a
        # figure measured while other programs ran is slower than the stage alone.
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "stage_command": "cd pipeline && PYTHONPATH=.. python train_model.py BUCKET "
        + " ".join(STAGE_THRESHOLDS),
        "stage_log": [line for line in log_lines if "grid search" in line or " ERROR " in line],
    }
    print(
        f"{rows} rows: exit code {run['exit_code']}, {run['seconds']:.1f} s wall, "
        f"{run['cpu_seconds']:.1f} s CPU, peak RSS {run['peak_rss_mb']:.0f} MB summed over up to "
        f"{peak_processes} processes; each process's own peak (VmHWM), summed: "
        f"{run['sum_of_process_peaks_mb']:.0f} MB, largest {run['largest_process_peak_mb']:.0f} MB; "
        f"load average {run['load_average_before']} before, {run['load_average_after']} after"
    )
    for line in run["stage_log"]:
        print(f"    {line}")
    if process.returncode != 0:
        print("\n".join(f"    {line}" for line in log_lines[-20:]))
    return run


def tree_memory(root_pid: int) -> Dict[int, Tuple[int, int]]:
    """Resident set size now and its peak so far (VmRSS, VmHWM) of a process and each of its
    live descendants, in bytes, by process id.

    Processes that exit while /proc is being read are left out.
    """
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    sizes: Dict[int, Tuple[int, int]] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as status:
                kib = {
                    name: int(value.split()[0])
                    for name, value in (line.split(":", 1) for line in status if line.startswith("Vm"))
                }
        except (OSError, ValueError):
            continue
        sizes[pid] = (kib.get("VmRSS", 0) * 1024, kib.get("VmHWM", 0) * 1024)
    return sizes


def merge_json(path: Path, results: Dict[str, Any]) -> None:
    """Update the JSON file with these results, keeping the parts this run did not redo."""
    stored: Dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    stored.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2, default=_jsonable) + "\n")


def _baseline(X: np.ndarray, y: np.ndarray, random_state: Optional[int]) -> Tuple[Dict[str, Any], np.ndarray]:
    # Exactly the baseline: serial, cv=5 (KFold(5) for a regressor), refit on all data.
    search = GridSearchCV(
        DecisionTreeRegressor(random_state=random_state), HYPERPARAM_GRID, cv=5, scoring="r2"
    )
    search.fit(X, y)
    return dict(search.best_params_), np.asarray(search.cv_results_["mean_test_score"])


def _ours(X: np.ndarray, y: np.ndarray, n_jobs: Optional[int]) -> Tuple[Dict[str, Any], np.ndarray]:
    result = tune_hyperparameters(X, y, HYPERPARAM_GRID, n_jobs)
    return dict(result.best_params), np.asarray(result.cv_results["mean_test_score"])


def _fresh_worker_pool() -> None:
    # joblib keeps its worker processes between calls; a train stage run starts them afresh,
    # so every timing does too.
    from joblib.externals.loky import reusable_executor  # type: ignore[import-untyped]

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _report_comparison(
    rows: int, train_rows: int, repeats: int, timings: List[Timing], skip_baseline: bool
) -> Dict[str, Any]:
    candidates = list(ParameterGrid(HYPERPARAM_GRID))
    ours = [t for t in timings if t.method.startswith("ours")]
    reference = ours[0].best_params[0]
    print(
        f"\n== {rows}-row week ({train_rows} training rows), {len(candidates)} candidates, 5-fold CV, "
        f"median of {repeats} run(s) ==\n{'method':<54} {'seconds':>8} {'vs plain':>9} "
        f"{'vs seeded':>9}  best parameters"
    )
    plain = timings[0].median if not skip_baseline else None
    seeded = timings[1].median if not skip_baseline else None
    rows_out = []
    for timing in timings:
        picks = _describe_picks(timing.best_params, reference)
        vs_plain = f"{plain / timing.median:.2f}x" if plain else "-"
        vs_seeded = f"{seeded / timing.median:.2f}x" if seeded else "-"
        print(f"{timing.method:<54} {timing.median:>8.2f} {vs_plain:>9} {vs_seeded:>9}  {picks}")
        rows_out.append({
            "method": timing.method, "n_jobs": timing.n_jobs, "seconds": timing.seconds,
            "median_seconds": timing.median,
            "speedup_vs_plain": plain / timing.median if plain else None,
            "speedup_vs_seeded": seeded / timing.median if seeded else None,
            "best_params": timing.best_params,
            "same_best_params_as_ours_n_jobs_1": [p == reference for p in timing.best_params],
        })
    print(f"  (ours, n_jobs=1 chose {reference})")
    checks: Dict[str, Any] = {}
    all_ours_same = all(p == reference for t in ours for p in t.best_params)
    print(f"  every run of ours chose the same parameters: {'yes' if all_ours_same else 'NO'}")
    checks["ours_always_same"] = all_ours_same
    if not skip_baseline:
        plain_t, seeded_t = timings[0], timings[1]
        ours_scores = ours[0].mean_scores[0]
        seeded_diff = max(float(np.max(np.abs(s - ours_scores))) for s in seeded_t.mean_scores)
        plain_diff = max(float(np.max(np.abs(s - ours_scores))) for s in plain_t.mean_scores)
        same_group = [
            _equivalence_key(p) == _equivalence_key(reference) for p in plain_t.best_params
        ]
        checks.update({
            "seeded_baseline_same_params": [p == reference for p in seeded_t.best_params],
            "plain_baseline_same_params": [p == reference for p in plain_t.best_params],
            "plain_baseline_pick_grows_same_tree_as_ours": same_group,
            "max_abs_cv_score_difference_seeded_vs_ours": seeded_diff,
            "max_abs_cv_score_difference_plain_vs_ours": plain_diff,
        })
        print(
            f"  seeded baseline: same parameters as ours in {sum(checks['seeded_baseline_same_params'])}"
            f"/{repeats} run(s); largest difference of a candidate's mean CV r² from ours: {seeded_diff:.3g}"
        )
        print(
            f"  plain (unseeded) baseline: same parameters as ours in "
            f"{sum(checks['plain_baseline_same_params'])}/{repeats} run(s); its pick is a grid point "
            f"that grows the same tree as ours (same criterion, max_depth and effective "
            f"min_samples_split) in {sum(same_group)}/{repeats}; largest difference of a "
            f"candidate's mean CV r² from ours: {plain_diff:.3g}"
        )
    return {"rows": rows, "train_rows": train_rows, "repeats": repeats, "candidates": len(candidates),
            "methods": rows_out, "checks": checks}


def _describe_picks(picks: List[Dict[str, Any]], reference: Dict[str, Any]) -> str:
    distinct: List[Dict[str, Any]] = []
    for pick in picks:
        if pick not in distinct:
            distinct.append(pick)
    if distinct == [reference]:
        return f"same as ours in {len(picks)}/{len(picks)}"
    return "; ".join(
        f"{_short(p)} x{picks.count(p)}" + (" (= ours)" if p == reference else "") for p in distinct
    )


def _short(params: Dict[str, Any]) -> str:
    return (
        f"{params['criterion']}, depth {params['max_depth']}, split {params['min_samples_split']}, "
        f"leaf {params['min_samples_leaf']}"
    )


def _load_average() -> str:
    # Others may share the machine: a busy spell shows here.
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
