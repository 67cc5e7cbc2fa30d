"""A 2-node local Ray cluster for the Ray tests, in a loopback-only network namespace.

Ray binds the machine's own address whatever --node-ip-address says for some of its services, so two nodes on one
machine only meet reliably where 127.0.0.1 is the only address: `unshare -n` gives the script a network namespace
holding just `lo`. The script starts a head and a second node (1 CPU each), runs the test's steps one after another
(each a shell command, with $RAY_TEST_ADDRESS set to the head's address) and stops the cluster whatever happened.
Starting and stopping the nodes costs ~15 s, so a test module runs all of its steps in one cluster.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = 6391


def namespaces_work() -> bool:
    """`unshare -n` needs root or user namespaces; the Ray tests skip where neither is allowed."""
    if shutil.which("unshare") is None or shutil.which("ip") is None or shutil.which("ray") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@dataclass
class Step:
    name: str
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"step {self.name}: exit {self.rc}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-6000:]}"


def cluster_script(steps: dict[str, str], out_dir: Path, temp_dir: Path) -> str:
    ray = shlex.quote(shutil.which("ray") or "ray")
    common = "--node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats"
    lines = [
        "set -u",
        "ip link set lo up",
        f"cd {shlex.quote(str(ROOT))}",
        f"trap '{ray} stop --force > {out_dir}/ray-stop.log 2>&1' EXIT",
        f"{ray} start --head --port={PORT} {common} --include-dashboard=false --temp-dir={temp_dir} "
        f"> {out_dir}/ray-head.log 2>&1 || exit 90",
        f"{ray} start --address=127.0.0.1:{PORT} {common} > {out_dir}/ray-node.log 2>&1 || exit 91",
        f"export RAY_TEST_ADDRESS=127.0.0.1:{PORT}",
    ]
    for name, command in steps.items():
        lines.append(f"( {command} ) > {out_dir}/{name}.out 2> {out_dir}/{name}.err; echo $? > {out_dir}/{name}.rc")
    return "\n".join(lines) + "\n"


def run_in_cluster(
    steps: dict[str, str], out_dir: Path, timeout: float = 300, extra_env: dict[str, str] | None = None
) -> dict[str, Step]:
    """Run the steps (name -> shell command) in order in one 2-node cluster; each step's exit code and output.
    `extra_env`: more environment for the nodes and the steps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Ray's unix sockets live under its temp folder and must stay under the 107-byte path limit
    temp_dir = Path(tempfile.mkdtemp(prefix="qray-", dir="/tmp"))
    paths = [str(ROOT), *(p for p in sys.path if p)]
    # no token authentication: `ray start --head` turns it on when ~/.ray/auth_token exists (a local ray.init()
    # writes one), and the second node would then need the token passed explicitly
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join(paths))
    env.update(extra_env or {})
    env.pop("RAY_ADDRESS", None)
    env.pop("QCONV_RAY_ADDRESS", None)
    script = cluster_script(steps, out_dir, temp_dir)
    try:
        proc = subprocess.run(
            ["unshare", "-n", "bash", "-c", script], env=env, capture_output=True, text=True, timeout=timeout
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    if proc.returncode in (90, 91):
        log = (out_dir / ("ray-head.log" if proc.returncode == 90 else "ray-node.log")).read_text()
        raise RuntimeError(f"the Ray cluster did not start:\n{log[-4000:]}")
    results = {}
    for name in steps:
        rc_file = out_dir / f"{name}.rc"
        results[name] = Step(
            name,
            int(rc_file.read_text()) if rc_file.exists() else -1,
            (out_dir / f"{name}.out").read_text() if (out_dir / f"{name}.out").exists() else "",
            (out_dir / f"{name}.err").read_text() if (out_dir / f"{name}.err").exists() else "",
        )
    return results
