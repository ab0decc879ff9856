"""Weak scaling of the sharded evaluation on this machine, side by side in one invocation.

    python -m bench.shards [--samples 160]    # the embedded default and the demo's trained adapter

Three runs of the real evaluate job (`detox_entrypoints.evaluate`, each its own process, one
thread each), on the embedded default with the adapter a short train job leaves:

1. one host, `samples` dialogues;
2. two hosts at once (two processes, one core each), `2 x samples` dialogues, half each, then
   the merge job;
3. as 1 again, last, so drift of the machine's speed shows.

Each host does the same amount of measuring. A one-host run also writes the report; on two hosts
the merge job does, once, whatever N is. So two efficiencies are printed (JSON):
`hosts_only` = time of 1 / time of the slower host of 2 (the measuring, minus one report), and
`with_merge` = time of 1 / (slower host of 2 + the merge): the latency a user sees.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flan_t5_detox.contract.hosts import host_name, host_names
from flan_t5_detox.contract.layout import write_processing_layout, write_training_layout

from .common import command_line, embedded_channels

EVALUATE = [sys.executable, "-m", "detox_entrypoints.evaluate"]
SETTINGS = ["--dtype", "float32", "--num-threads", "1", "--bootstrap-samples", "1000"]


def _layout(root: Path, inputs: dict, host: str, hosts: int) -> Path:
    root = write_processing_layout(root, inputs)
    names = host_names(hosts)
    (root / "config" / "resourceconfig.json").write_text(json.dumps({"current_host": host, "hosts": names}))
    return root


def _start(root: Path, samples: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*EVALUATE, "--ml-root", str(root), "--num-samples", str(samples), *SETTINGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait(job: subprocess.Popen, root: Path) -> None:
    if job.wait() != 0:
        raise SystemExit(f"an evaluate job failed: see {root / 'output' / 'failure'}")


def one_host(work: Path, inputs: dict, samples: int, name: str) -> float:
    root = _layout(work / name, inputs, host_name(0), 1)
    started = time.perf_counter()
    _wait(_start(root, samples), root)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = command_line("shards", __doc__)
    parser.add_argument("--samples", type=int, default=160, help="dialogues per host")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    channels = embedded_channels()
    trained = write_training_layout(work / "train", channels, {"max_ppo_steps": 2, "num_threads": 1})
    subprocess.run([sys.executable, "-m", "detox_entrypoints.train", "--ml-root", str(trained)], check=True)
    inputs = {**channels, "detoxified": trained / "model"}

    first = one_host(work, inputs, args.samples, "one-a")
    roots = [_layout(work / f"two-{h + 1}", inputs, host_name(h), 2) for h in range(2)]
    started = time.perf_counter()
    jobs = [_start(root, 2 * args.samples) for root in roots]
    finished = []
    for job, root in zip(jobs, roots):
        _wait(job, root)
        finished.append(time.perf_counter() - started)
    parts = work / "parts"
    parts.mkdir()
    for root in roots:
        for part in (root / "processing" / "output" / "report").glob("part-*.json"):
            shutil.copy(part, parts)
    merge_root = write_processing_layout(work / "merge", {"parts": parts})
    started = time.perf_counter()
    _wait(subprocess.Popen([*EVALUATE, "merge", "--ml-root", str(merge_root)]), merge_root)
    merge = time.perf_counter() - started
    last = one_host(work, inputs, args.samples, "one-b")

    single = (first + last) / 2
    print(
        json.dumps(
            {
                "dialogues_per_host": args.samples,
                "one_host_seconds": [round(first, 2), round(last, 2)],
                "two_hosts_seconds": [round(t, 2) for t in finished],
                "merge_seconds": round(merge, 2),
                "weak_scaling_efficiency": {
                    "hosts_only": round(single / max(finished), 3),
                    "with_merge": round(single / (max(finished) + merge), 3),
                },
                "work_dir": str(work),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
